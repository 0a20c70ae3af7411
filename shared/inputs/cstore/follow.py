"""Listeners that follow the config: the one loop both runtimes run (the embedded
runtime over SQLite, ``python -m scp_gateway`` over Firestore) to open, close and
change a :class:`~shared.inputs.cstore.gateway.Gateway`'s listeners without a restart."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from shared.config import AppConfig
from shared.inputs.cstore.gateway import Gateway
from shared.logs import describe_error

log = logging.getLogger(__name__)

# after a failed read, the next comes later and later, up to this (a store that is down
# for long is not asked every second, and says so once, not every second)
MAX_BACKOFF_S = 60.0


def follow_listeners(gateway: Gateway, config: Callable[[], AppConfig], stop: threading.Event, every_s: float,
                     *, max_backoff_s: float = MAX_BACKOFF_S, no_listeners_level: int = logging.INFO) -> None:
    """Apply ``config().listeners`` to ``gateway`` now, then every ``every_s`` seconds
    until ``stop`` is set. A config that cannot be read (store unreachable, invalid
    documents) keeps the listeners as they are, is logged when it starts failing (and
    when the reason changes) and when it is readable again, and is tried again after
    ``every_s`` doubled at each failure, up to ``max_backoff_s``. A config naming no
    listener is logged, at ``no_listeners_level``, each time it becomes so."""
    failures = 0
    last_error: str | None = None
    had_listeners: bool | None = None
    wait_s = 0.0
    while not stop.wait(wait_s):
        try:
            listeners = config().listeners
        except Exception as exc:  # noqa: BLE001 - keep what runs, and try again
            failures += 1
            error = describe_error(exc)
            wait_s = min(every_s * 2 ** failures, max(max_backoff_s, every_s))
            if error != last_error:
                log.error("cannot read the config to follow its listeners (%s); the listeners stay as they are,"
                          " trying again in %.0f s and backing off up to %.0f s", error, wait_s, max_backoff_s)
                last_error = error
            continue
        if failures:
            log.info("config readable again after %d failed read(s)", failures)
        failures, last_error, wait_s = 0, None, every_s
        if not listeners and had_listeners is not False:
            log.log(no_listeners_level, "the config names no listeners: no DICOM port is open until it names one")
        had_listeners = bool(listeners)
        try:
            gateway.apply(listeners)  # a listener that cannot open is logged and counted by apply
        except Exception:  # noqa: BLE001 - try again on the next round
            log.exception("applying the listeners of the config failed")
