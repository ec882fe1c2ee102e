"""Pure codecs that are not SIP: WebSocket framing (RFC 6455), HEP v3, pcap.

Bytes in, bytes out, stdlib only: no Twisted, no sockets, nothing of sipgw above them.
The proxy, the tools and the tests share these one copy each.
"""
