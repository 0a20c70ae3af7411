"""The stages in-process over the local adapters, for tests that call them directly:
a bus that records what is published, ports over a temporary dir, and shortcuts."""

from __future__ import annotations

from pathlib import Path

from shared import stages
from shared.adapters.local_blobs import LocalBlobStore
from shared.adapters.secrets import LocalSecrets
from shared.adapters.sqlite import SQLiteDatabase, SQLiteDeliveryLedger, SQLiteDocumentStore
from shared.config import parse_config
from shared.destinations import Senders
from shared.inputs.ingest import Ingestor
from shared.messages import IngestMetadata
from shared.ports import Ports


class RecordingBus:
    def __init__(self):
        self.sent = []

    def publish(self, topic, message):
        self.sent.append((topic, message))

    def on(self, topic):
        return [m for t, m in self.sent if t == topic]


def build_ports(tmp_path: Path, config: dict) -> Ports:
    """Ports over the local adapters; ``ports.reconfigure(dict)`` swaps the config and
    ``ports.events`` lists the ingest bucket's finalize events."""
    db = SQLiteDatabase(tmp_path / "state.db")
    current = [parse_config(config)]
    events = []
    blobs = LocalBlobStore(tmp_path / "blobs", on_finalize=events.append, notify_buckets=frozenset({"ingest"}))
    secrets = LocalSecrets()
    ports = Ports(blobs=blobs, docs=SQLiteDocumentStore(db), ledger=SQLiteDeliveryLedger(db), bus=RecordingBus(),
                  config=lambda: current[0], senders=Senders(base_dir=tmp_path, secrets=secrets), secrets=secrets)
    ports.events = events
    ports.reconfigure = lambda new: current.__setitem__(0, parse_config(new))
    return ports


def ingest(ports, path: Path, calling_ae="MOD1"):
    Ingestor(ports.blobs, "ingest").ingest_file(path, IngestMetadata(source_type="cstore", calling_ae=calling_ae))
    return ports.events[-1]


def config(*rules, destinations=None, default=None):
    return {
        "destinations": destinations or [{"id": "archive", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "mode": "FIRST_MATCH", "rules": list(rules)}],
        "default_route": default or {},
    }


def run_all(ports, event):
    plan = stages.match(ports, event)
    if plan is None:
        return None, []
    deliveries = stages.morph(ports, plan) if ports.bus.on(stages.TOPIC_PLANNED) else []
    return plan, [stages.route(ports, d) for d in deliveries]
