"""``follow_listeners``, the loop both runtimes run over their config store: a config
that cannot be read keeps what runs and is logged once per reason, then the listeners
open when it is readable; a config with no listeners is said once; ``stop`` ends it."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.secrets import LocalSecrets
from shared.config import parse_config
from shared.inputs.cstore.follow import follow_listeners
from shared.inputs.cstore.gateway import Gateway
from shared.inputs.ingest import Ingestor
from tests.support.procs import wait_for


class FlakyConfig:
    """A config getter that fails ``failures`` times before answering ``listeners``."""

    def __init__(self, failures: int, listeners: list[dict]):
        self.failures, self.calls = failures, 0
        self.value = parse_config({"listeners": listeners})

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.value


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway([], Ingestor(LocalBlobStore(tmp_path / "blobs"), "ingest"), secrets=LocalSecrets())
    yield gw
    gw.stop()


def run(gateway, config, **kwargs) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=follow_listeners, args=(gateway, config, stop, 0.01),
                              kwargs={"max_backoff_s": 0.05, **kwargs}, daemon=True)
    thread.start()
    return stop, thread


def test_an_unreadable_config_is_logged_once_then_its_listeners_open(gateway, caplog):
    caplog.set_level(logging.INFO, logger="shared.inputs.cstore.follow")
    config = FlakyConfig(4, [{"id": "a", "host": "127.0.0.1", "port": 0}])
    stop, thread = run(gateway, config)
    port = wait_for(lambda: gateway.ports.get("a"), 10, what="listener a open")
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot read the config" in errors[0].getMessage()
    assert any("readable again after 4 failed read(s)" in r.getMessage() for r in caplog.records)


def test_a_config_without_listeners_is_said_once_at_the_level_asked(gateway, caplog):
    caplog.set_level(logging.INFO, logger="shared.inputs.cstore.follow")
    config = FlakyConfig(0, [])
    stop, thread = run(gateway, config, no_listeners_level=logging.WARNING)
    wait_for(lambda: config.calls >= 5, 10, what="five looks at the config")
    stop.set()
    thread.join(5)
    said = [r for r in caplog.records if "names no listeners" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING]
    assert gateway.ports == {}
