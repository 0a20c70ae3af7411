"""The container's health check (``python -m scp_gateway.healthcheck``): a C-ECHO
(Verification Service, PS3.4 Annex A) to the gateway's own listener, as configured
by the same environment as ``python -m scp_gateway``. Exit 0 when the listener
answers Success, 1 otherwise: a listener that accepts TCP but no association is
unhealthy too.
"""

from __future__ import annotations

import logging
import os
import sys

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from scp_gateway.__main__ import listener_from_env

CALLING_AE = "HEALTHCHECK"
SUCCESS = 0x0000


def echo(host: str, port: int, called_ae: str, timeout_s: float = 5.0) -> bool:
    """True when ``called_ae`` at ``host:port`` answers a C-ECHO with Success."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == SUCCESS
    finally:
        assoc.release()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    listener = listener_from_env()
    # a wildcard bind answers on loopback; a specific address only there
    host = "127.0.0.1" if listener.host in ("0.0.0.0", "", "::") else listener.host
    healthy = echo(host, listener.port, listener.ae_title, float(os.environ.get("AXIOM_HEALTHCHECK_TIMEOUT_S", "5")))
    print(f"C-ECHO {listener.ae_title}@{host}:{listener.port}: {'ok' if healthy else 'failed'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
