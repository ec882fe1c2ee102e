"""sipgw.toml: its keys (``schema``, each declared once, with the kinds of ``kinds``),
loading with FILE:LINE: key errors (``load``), and which file (``locate``).

Pure: no Twisted, nothing of sipgw above it, so the CLI, the tools and the tests use it too.
A section of ``Config`` is the settings of the component it configures.
"""

from sipgw.config.kinds import (
    LOG_LEVEL_NAMES,
    Address,
    Advertise,
    IPNetwork,
    parse_log_level,
)
from sipgw.config.load import (
    ConfigError,
    LoadedConfig,
    config_to_dict,
    default_config,
    load_config,
    parse_config,
)
from sipgw.config.locate import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, config_path_from_env
from sipgw.config.redis_url import MASK
from sipgw.config.schema import (
    SCHEMA,
    SECTIONS,
    AclConfig,
    AuthConfig,
    Config,
    ControlConfig,
    DispatcherConfig,
    Key,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    MetricsConfig,
    OverloadConfig,
    PikeConfig,
    ProxyConfig,
    Section,
    StateConfig,
    SubscribersConfig,
    TimersConfig,
    TlsConfig,
    TraceConfig,
    WebSocketConfig,
)

__all__ = [
    "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH", "LOG_LEVEL_NAMES", "MASK", "SCHEMA", "SECTIONS",
    "AclConfig", "Address", "Advertise", "AuthConfig", "Config", "ConfigError",
    "ControlConfig", "DispatcherConfig", "IPNetwork", "Key", "LimitsConfig", "ListenConfig",
    "LoadedConfig", "LogConfig", "MetricsConfig", "OverloadConfig", "PikeConfig", "ProxyConfig",
    "Section", "StateConfig", "SubscribersConfig", "TimersConfig", "TlsConfig", "TraceConfig",
    "WebSocketConfig", "config_path_from_env", "config_to_dict", "default_config",
    "load_config", "parse_config", "parse_log_level",
]  # fmt: skip
