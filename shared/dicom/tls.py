"""SSL contexts for DICOM TLS (PS3.15 Annex B.1) from config, with PEM material read
through the Secrets port."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from shared.config import TLS
from shared.ports import Secrets


def _load_chain(ctx: ssl.SSLContext, tls: TLS, secrets: Secrets) -> None:
    # ssl only loads certificate chains from files: write them to a private temp dir
    # that lives only for the call.
    with tempfile.TemporaryDirectory(prefix="axiom-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, ref in ((cert, tls.certificate), (key, tls.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.get(ref))
        ctx.load_cert_chain(cert, key)


def client_context(tls: TLS, secrets: Secrets) -> ssl.SSLContext:
    """For our SCU: verify the peer against ``tls.ca`` only (or, with no ``ca``, the
    system CAs), present our certificate when one is configured. A configured CA is a
    pin: with ``check_hostname`` off (the default), also trusting the system CAs would
    let any holder of a publicly issued certificate pose as the PACS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca:
        ctx.load_verify_locations(cadata=secrets.get(tls.ca).decode())
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate:
        _load_chain(ctx, tls, secrets)
    return ctx


def server_context(tls: TLS, secrets: Secrets) -> ssl.SSLContext:
    """For a listener: our certificate, and client certificates verified against
    ``tls.ca`` when ``require_client_certificate`` (mutual TLS, the PS3.15 default)."""
    if not tls.certificate:
        raise ValueError("a TLS listener needs a certificate and key")
    if tls.require_client_certificate and not tls.ca:
        # without a CA no client certificate can verify: every association would fail
        # its handshake with nothing in the log but the handshake error
        raise ValueError("a TLS listener that requires client certificates needs tls.ca to verify them")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, tls, secrets)
    if tls.ca:
        ctx.load_verify_locations(cadata=secrets.get(tls.ca).decode())
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return ctx
