"""build_sender: one builder per destination type, importing a sender's module only when
a destination of that type is configured."""

import subprocess
import sys
import typing

import pytest

from shared.adapters.secrets import LocalSecrets
from shared.config import Destination, parse_config
from shared.destinations import SENDERS, build_sender
from tests.support.procs import REPO

DESTINATIONS = {
    "filesystem": {"path": "out"},
    "cstore": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
    "dicomweb": {"url": "http://127.0.0.1:1/dicom-web"},
    "healthcare": {"project": "p", "location": "l", "dataset": "d", "dicom_store": "s"},
}


def test_every_configured_destination_type_has_a_sender():
    """Adding a destination model to shared.config.Destination without a sender fails here."""
    union = typing.get_args(Destination)[0]
    types = {typing.get_args(model.model_fields["type"].annotation)[0] for model in typing.get_args(union)}
    assert types == set(SENDERS)


@pytest.mark.parametrize("kind, sender", [("filesystem", "FilesystemSender"), ("cstore", "CStoreSender"),
                                          ("dicomweb", "DicomWebSender"), ("healthcare", "DicomWebSender")])
def test_each_type_builds_its_sender(tmp_path, kind, sender):
    dest = parse_config({"destinations": [{"id": "d", "type": kind, **DESTINATIONS[kind]}]}).destination("d")
    built = build_sender(dest, secrets=LocalSecrets(), base_dir=tmp_path)
    try:
        assert type(built).__name__ == sender and built.dest is dest
    finally:
        built.close()


def test_a_sender_module_is_imported_only_for_its_type(tmp_path):
    """A fresh interpreter (other tests import every sender): a filesystem destination
    loads no DIMSE, HTTP or GCS sender; a C-STORE one loads its own only."""
    probe = f"""
import sys
from pathlib import Path
from shared.config import parse_config
from shared.destinations import build_sender
from shared.adapters.secrets import LocalSecrets
config = parse_config({{"destinations": [{{"id": "fs", "type": "filesystem", "path": "out"}},
    {{"id": "pacs", "type": "cstore", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}}]}})
senders = ("shared.destinations.cstore", "shared.destinations.dicomweb", "shared.destinations.gcs")
build_sender(config.destination("fs"), secrets=LocalSecrets(), base_dir=Path({str(tmp_path)!r}))
print(*[m in sys.modules for m in senders])
build_sender(config.destination("pacs"), secrets=LocalSecrets(), base_dir=Path({str(tmp_path)!r}))
print(*[m in sys.modules for m in senders])
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False False False", "True False False"]
