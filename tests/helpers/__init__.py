"""Shared test helpers: the RFC 4475 corpus, fakes for the proxy, hypothesis strategies."""
