"""Sans-I/O SIP core: bytes, events and ``now`` in; messages, effects and timer requests out.

Nothing in this package touches a socket, a reactor, a clock or a random source: those are
arguments. That keeps it fast to test and safe to fuzz.
"""
