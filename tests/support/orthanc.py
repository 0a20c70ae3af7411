"""Orthanc (Debian package) with its DICOMweb plugin as a real PACS peer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.support.procs import DCMTK_ENV, free_port, terminate, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class PortTaken(RuntimeError):
    """Orthanc could not listen: another process holds one of its ports."""


class Orthanc:
    """``Orthanc`` with DICOM and HTTP on free loopback ports. ``modalities`` maps a
    name to (AE title, host, port) for C-MOVE targets and SendToModality."""

    def __init__(self, workdir: Path, *, ae_title: str = "ORTHANC", modalities: dict | None = None,
                 extra: dict | None = None, dicom_port: int | None = None, http_port: int | None = None):
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self._chosen_ports = dicom_port is None and http_port is None  # ours to choose again
        self.modalities = modalities or {}
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": self.ae_title,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(spec) for name, spec in self.modalities.items()},
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowStore": True,
            "StableAge": 1,
            **self.extra,
        }

    def start(self) -> "Orthanc":
        """Start and wait until it answers. A port chosen here that another process took
        meanwhile (free_port's race) is chosen again, twice at most."""
        for attempt in range(3):
            try:
                return self._start()
            except PortTaken:
                if not self._chosen_ports or attempt == 2:
                    raise
                self._log.close()
                for log in (self.workdir / "logs").glob("Orthanc.log*"):
                    log.unlink()  # the next attempt's failure is read from its own log
                self.dicom_port, self.http_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start(self) -> "Orthanc":
        binary = shutil.which("Orthanc")
        if not binary or not DICOMWEB_PLUGIN.exists():
            raise RuntimeError("Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "orthanc.json"
        conf.write_text(json.dumps(self.config(), indent=2))
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._log = open(self.workdir / "orthanc.out", "ab")
        self.proc = subprocess.Popen([binary, f"--logdir={self.workdir / 'logs'}", str(conf)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=DCMTK_ENV)

        def ready():
            if self.proc.poll() is not None:
                if any("already in use" in log.read_text(errors="replace")
                       for log in (self.workdir / "logs").glob("Orthanc.log*")):
                    raise PortTaken(f"Orthanc's port {self.dicom_port} or {self.http_port} was taken")
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.workdir}/logs")
            try:
                return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 20, what="Orthanc to answer")
        return self

    def stop(self) -> None:
        terminate(self.proc, 10)
        if self.proc:
            self._log.close()

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    # --- REST helpers -----------------------------------------------------------------

    def instances(self) -> list[str]:
        return httpx.get(f"{self.url}/instances", timeout=10).json()

    def sop_instance_uids(self) -> list[str]:
        return [httpx.get(f"{self.url}/instances/{i}", timeout=10).json()["MainDicomTags"]["SOPInstanceUID"]
                for i in self.instances()]

    def instance_file(self, orthanc_id: str) -> bytes:
        return httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30).content

    def upload(self, path: Path) -> dict:
        r = httpx.post(f"{self.url}/instances", content=Path(path).read_bytes(), timeout=30)
        r.raise_for_status()
        return r.json()
