"""sipgw: a SIP edge proxy and WebRTC gateway on Twisted."""

__version__ = "0.1.0"
