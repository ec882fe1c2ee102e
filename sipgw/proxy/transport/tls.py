"""TLS for the tls (SIP over TLS) and wss listeners, with pyOpenSSL.

One ``ServerTls`` holds the context every new connection gets: certificate chain and key
from ``[tls]``, TLS 1.2 or newer (``tls.min_version``), the cipher string (``tls.ciphers``,
or a safe default). ``reload`` (SIGHUP) reads the files again and swaps the context: live
connections keep the one they were made with, new ones get the new certificate. A file that
is missing, unreadable or does not match its key is a ``TlsError`` naming the file and the
key, at start-up (sipgw refuses to start) and at reload (the running certificate is kept).

SIP over TLS connections are ``StreamConnection`` flows (``stream.py``) named "tls". A
backend over TLS (a destination with ``transport=tls``) is connected to as TCP is, its
certificate checked against the name or address of the destination by ``BackendTls``: the
authorities of ``tls.backend_ca_file``, or the system's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import protocol
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from sipgw.config import ConfigError, TlsConfig
from sipgw.proxy.transport import transport_address
from sipgw.proxy.transport.listen import listen_stream
from sipgw.proxy.transport.stream import StreamConnection, StreamTransport
from sipgw.rpc.registry import rpc

log = Logger(namespace="sipgw.tls")

# Mozilla's "intermediate" list: forward secrecy and AEAD ciphers only (TLS 1.2);
# TLS 1.3 suites are OpenSSL's defaults and not affected by this string.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_CLIENT_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


class TlsError(ConfigError):
    """A certificate, key or TLS setting sipgw cannot use."""


def _read(path: str, key: str) -> bytes:
    if not path:
        raise TlsError("is not set (listen.tls and listen.wss need it)", key=key)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsError(f"cannot read {path}: {e.strerror or e}", key=key) from None


def build_context(settings: TlsConfig) -> SSL.Context:
    """A server context from the settings; ``TlsError`` names what is wrong."""
    chain_pem = _read(settings.certificate, "tls.certificate")
    key_path = settings.private_key or settings.certificate
    key_pem = _read(key_path, "tls.private_key" if settings.private_key else "tls.certificate")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TlsError(f"{settings.certificate}: no PEM certificate in it",
                       key="tls.certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{key_path}: no PEM private key in it (or it is encrypted)",
                       key="tls.private_key") from None
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[settings.min_version])
    # A peer that closes TCP without a TLS close alert (a browser tab closed, a phone
    # off the network) is an end, not an error: SIP framing already refuses a message
    # cut short, so a truncated stream delivers nothing. As an error, Twisted's TLS layer
    # would keep it in a Failure that holds its own frame, a reference cycle per such
    # connection freed only by the collector's rare full pass (gcpolicy).
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | SSL.OP_IGNORE_UNEXPECTED_EOF)
    try:
        ctx.set_cipher_list((settings.ciphers or DEFAULT_CIPHERS).encode())
    except SSL.Error:
        raise TlsError(f"no usable cipher in {settings.ciphers!r}", key="tls.ciphers") from None
    ctx.use_certificate(certs[0])
    for cert in certs[1:]:
        ctx.add_extra_chain_cert(cert)
    try:
        # pyOpenSSL's annotation lists fewer key types than cryptography can load.
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except SSL.Error:
        raise TlsError(f"{key_path} is not the key of {settings.certificate}",
                       key="tls.private_key") from None
    return ctx


@implementer(IOpenSSLContextFactory)
class ServerTls:
    """The context factory Twisted's listenSSL asks on every new connection."""

    def __init__(self, settings: TlsConfig) -> None:
        self.settings = settings
        self._context = build_context(settings)
        self._leaf = _leaf(settings.certificate)

    def getContext(self) -> SSL.Context:
        return self._context

    def reload(self, settings: TlsConfig) -> bool:
        """Read the files again; on error keep the running context and say why."""
        try:
            context = build_context(settings)
        except TlsError as e:
            log.error("tls reload refused, keeping the running certificate: {err}", err=e)
            return False
        self.settings = settings
        self._context = context
        self._leaf = _leaf(settings.certificate)
        log.info("tls: certificate {path} loaded", path=settings.certificate)
        return True

    @rpc("tls.info", help="The certificate new TLS/WSS connections get: subject, issuer, "
         "names, validity and days to expiry; the minimum TLS version and ciphers.")
    def rpc_info(self) -> dict:
        return certificate_info(self._leaf, self.settings, time.time())


class BackendTls:
    """Whom sipgw connects to over TLS, its backends (``is_backend(host, port)``), and what
    it trusts there: the authorities of ``tls.backend_ca_file``, or the system's; at least
    ``tls.min_version``. Re-read on SIGHUP like the certificate."""

    def __init__(self, settings: TlsConfig, is_backend: Callable[[str, int], bool]) -> None:
        self._trust = _trust(settings)
        self._minimum = _CLIENT_VERSIONS[settings.min_version]
        self.is_backend = is_backend

    def creator(self, name: str):
        """The TLS client side of a connection to ``name`` (a host name or an address,
        which the backend's certificate must carry)."""
        return optionsForClientTLS(name, trustRoot=self._trust,
                                   extraCertificateOptions={"raiseMinimumTo": self._minimum})

    def reload(self, settings: TlsConfig) -> None:
        try:
            self._trust = _trust(settings)
        except TlsError as e:
            log.error("tls reload refused, keeping the running authorities: {err}", err=e)
            return
        self._minimum = _CLIENT_VERSIONS[settings.min_version]


def _trust(settings: TlsConfig):
    path = settings.backend_ca_file
    if not path:
        return platformTrust()
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "tls.backend_ca_file"))
    except ValueError:
        raise TlsError(f"{path}: no PEM certificate in it", key="tls.backend_ca_file") from None
    return trustRootFromCertificates(
        [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs])


def _leaf(path: str) -> x509.Certificate:
    """The server's own certificate: the first in the chain file (build_context read it)."""
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0]


def certificate_info(cert: x509.Certificate, settings: TlsConfig, now: float) -> dict:
    """What an operator asks about a certificate, as JSON (``tls.info``)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*sans.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = []
    after = cert.not_valid_after_utc
    return {
        "CERTIFICATE": settings.certificate,
        "SUBJECT": cert.subject.rfc4514_string(),
        "ISSUER": cert.issuer.rfc4514_string(),
        "NAMES": names,
        "NOT_BEFORE": cert.not_valid_before_utc.isoformat(),
        "NOT_AFTER": after.isoformat(),
        "DAYS_LEFT": int((after.timestamp() - now) // 86400),
        "SERIAL": format(cert.serial_number, "x"),
        "MIN_VERSION": settings.min_version,
        "CIPHERS": settings.ciphers or DEFAULT_CIPHERS,
    }


class TlsConnection(StreamConnection):
    transport_name = "tls"

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if self.outbound and self.source is not None and reason.check(SSL.Error,
                                                                      VerificationError):
            # A backend whose certificate we refuse (or that refuses us): what waits for
            # it fails now, as for a connection refused, not when its timer runs out.
            host, port = self.source.host, self.source.port
            log.warn("tls connection to {h}:{p} failed: {why}", h=host, p=port,
                     why=reason.getErrorMessage())
            if self.stack.on_send_failed is not None:
                self.stack.on_send_failed(host, port, self.transport_name)


class TlsTransport(StreamTransport):
    """SIP over TLS: listeners, and connections to backends over TLS (``backend``).

    sipgw connects to its backends only: a message for a TLS client without an open flow
    fails that branch at once (a phone's certificate is no one's to check, and a browser
    cannot be connected to anyway).
    """

    transport_name = "tls"

    def __init__(self, *args, backend: BackendTls | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def may_connect(self, name: str, port: int) -> bool:
        return self.backend is not None and self.backend.is_backend(name, port)

    def connection(self, *, outbound: bool) -> TlsConnection:
        return TlsConnection(self, outbound=outbound)

    def listen_tls(self, host: str, port: int, tls: ServerTls, fd: int | None = None):
        listening = listen_stream(self.reactor, host, port, _TlsServerFactory(self), tls=tls,
                                  fd=fd)
        log.info("listening on {a}", a=transport_address("tls", host, port))
        return listening

    def client_factory(self, factory: protocol.ClientFactory, name: str):
        assert self.backend is not None, "made with a BackendTls (make_service)"
        return TLSMemoryBIOFactory(self.backend.creator(name), True, factory)


class _TlsServerFactory(protocol.ServerFactory):
    def __init__(self, stack: TlsTransport) -> None:
        self.stack = stack

    def buildProtocol(self, addr) -> TlsConnection:
        return self.stack.connection(outbound=False)
