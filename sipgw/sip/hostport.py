"""``host:port`` as SIP, logs and config files write it: an IPv6 address in brackets.

One spelling for every layer (Via and Record-Route, listeners in logs, trace records,
config values, pcap and HEP addresses), so that ``[::1]:5060`` never comes out as
``:::1:5060`` in one place.
"""

from __future__ import annotations


def join_hostport(host: str, port: int | None = None) -> str:
    """``192.0.2.1:5060``, ``[2001:db8::1]:5060``, or the host alone without a port."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address → the host
    without brackets and the port (None when there is none or it is not a number)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        return text, None
    return host, int(port) if port.isascii() and port.isdigit() else None


def split_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``, the port required: ValueError without one."""
    host, port = split_hostport(text)
    if port is None:
        raise ValueError(f"{text!r}: expected host:port")
    return host, port
