"""The gateway container's health check, ``python -m scp_gateway.healthcheck``: a
C-ECHO (Verification, PS3.7 9.1.5) to the first plain-TCP listener the running gateway
has open (else its first TLS one), or to the one on ``AXIOM_HEALTHCHECK_PORT``. Exits 0 when the listener answers, 1 when
it does not (or none is open). An A-ASSOCIATE-RJ (PS3.8 9.3.4) counts as an answer:
the listener is up and its allow-lists refused us (add 127.0.0.1 to its
``allowed_sources`` so that such checks are not counted as refusals). A TLS listener
is only checked for accepting a TCP connection: echoing it would need a client
certificate.

The gateway writes the listeners it has open to ``listeners.json`` in its spool
directory (``AXIOM_SPOOL_DIR``, else the system temporary directory): the check reads
that file, not the config store, so it says whether this process listens and does
not fail while Firestore is unreachable.

Environment: AXIOM_SPOOL_DIR (as the gateway's), AXIOM_HEALTHCHECK_PORT (check the
listener on this port; one the gateway has not written is echoed with called AE
``AXIOM``), AXIOM_HEALTHCHECK_TIMEOUT_S (default 5).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Mapping

CALLING_AE = "HEALTHCHECK"
STATE_FILE = "listeners.json"


def state_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("AXIOM_SPOOL_DIR") or tempfile.gettempdir()) / STATE_FILE


def write_state(path: Path, listeners: list[dict]) -> None:
    """Replace the state file at once (a check never reads half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"listeners": listeners}))
    os.replace(tmp, path)


def read_state(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["listeners"]
    except (OSError, ValueError, KeyError):
        return []


def _local_address(host: str) -> str:
    """Where to connect for a listener bound to ``host`` (any address: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def check(target: dict, timeout_s: float) -> tuple[bool, str]:
    """(up, why) for ``target``: a listener as :func:`write_state` writes it."""
    address, port = _local_address(target.get("host", "")), int(target["port"])
    if target.get("tls"):
        try:
            socket.create_connection((address, port), timeout=timeout_s).close()
        except OSError as exc:
            return False, f"TLS listener {target.get('id')} on port {port}: no connection ({exc.strerror or exc})"
        return True, f"TLS listener {target.get('id')} on port {port} accepts connections"
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=target.get("calling_ae") or CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    assoc = ae.associate(address, port, ae_title=target.get("called_ae") or "AXIOM")
    if assoc.is_rejected:
        return True, f"listener {target.get('id')} on port {port} answered with A-ASSOCIATE-RJ (allow-lists)"
    if not assoc.is_established:
        return False, f"listener {target.get('id')} on port {port}: no association"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is not None and getattr(status, "Status", None) == 0x0000:
        return True, f"listener {target.get('id')} on port {port} answered C-ECHO Success"
    return False, f"listener {target.get('id')} on port {port}: no C-ECHO Success"


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    listeners = read_state(state_path(env))
    wanted = env.get("AXIOM_HEALTHCHECK_PORT")
    if wanted:
        listeners = ([lsn for lsn in listeners if int(lsn["port"]) == int(wanted)]
                     or [{"id": "?", "host": "127.0.0.1", "port": int(wanted)}])
    if not listeners:
        print("unhealthy: the gateway has no listener open", file=sys.stderr)
        return 1
    plain = [lsn for lsn in listeners if not lsn.get("tls")]
    up, why = check((plain or listeners)[0], float(env.get("AXIOM_HEALTHCHECK_TIMEOUT_S", "5")))
    print(("healthy: " if up else "unhealthy: ") + why, file=sys.stdout if up else sys.stderr)
    return 0 if up else 1


if __name__ == "__main__":
    raise SystemExit(main())
