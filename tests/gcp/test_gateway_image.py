"""The gateway image (scp_gateway/Dockerfile) built and run for real with podman, on
a base made here from Debian packages (mmdebstrap, ``podman import``) and passed as
the BASE build argument (../shared/TESTBED.md, "Containers"): it runs as a user
without privileges, its health check (a C-ECHO to its listener) passes, and, with
its listener read from the config in the Firestore emulator, it answers dcmtk's
C-ECHO and C-STORE, the received instance landing in fake-gcs-server's ingest bucket
with the data set's bytes unchanged.

The base tar is cached between runs (AXIOM_CACHE_DIR, default ~/.cache/axiom-flow);
podman caches the image's layers, so only a changed lock or source rebuilds them.
Skipped, loudly, only when podman cannot run a container on this machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from shared.adapters.firestore import FirestoreDocumentStore
from shared.config import parse_config
from shared.runtime import gcp as gcp_runtime
from tests.support.gcp import PROJECT, unique
from tests.support.procs import DCMTK_ENV, REPO, free_port, require, storescu, wait_for, wait_port

pytestmark = [pytest.mark.container, pytest.mark.dcmtk]

# python3-venv: the Dockerfile's virtualenv; passwd: useradd; ca-certificates: pip's TLS
BASE_PACKAGES = ["python3", "python3-venv", "passwd", "ca-certificates"]
SUITE = "bookworm"
IMAGE = "localhost/axiom-scp-gateway:test"
CT = Path(get_testdata_file("CT_small.dcm"))
# runc, not crun (crun refuses this VM's hybrid cgroups), and rlimits a rootful
# podman can set here (TESTBED.md, "Containers")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stdout[-3000:]}"
                             f"\n{done.stderr[-3000:]}")
    return done


def host_ca_bundle() -> Path:
    """The CA bundle this machine trusts (an egress proxy's CA included): pip in the
    build reaches PyPI through the same network as the host."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("no CA bundle found on this machine")


@pytest.fixture(scope="session")
def podman_ready():
    why = None
    if not shutil.which("podman"):
        why = "podman is not installed (scripts/test.sh installs podman, mmdebstrap and runc)"
    elif not shutil.which("runc"):
        why = "runc is not installed"
    else:
        info = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, timeout=120)
        if info.returncode != 0:
            why = f"podman cannot run here: {info.stderr.strip()[-500:]}"
    if why:
        warnings.warn(f"THE GATEWAY IMAGE IS NOT TESTED: {why}", stacklevel=1)
        pytest.skip(f"THE GATEWAY IMAGE IS NOT TESTED: {why}")


@pytest.fixture(scope="session")
def local_base(podman_ready) -> str:
    """``localbase:bookworm-<key>``: a Debian base from mmdebstrap, its tar cached
    under a name that changes with the package list and the host's CA bundle."""
    ca = host_ca_bundle()
    key = hashlib.sha256(" ".join([SUITE, *BASE_PACKAGES]).encode() + ca.read_bytes()).hexdigest()[:12]
    tag = f"localbase:{SUITE}-{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    cache = Path(os.environ.get("AXIOM_CACHE_DIR") or Path.home() / ".cache" / "axiom-flow") / "container"
    tar = cache / f"{SUITE}-{key}.tar"
    if not tar.exists():
        require("mmdebstrap")
        cache.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        started = time.monotonic()
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                        f"--customize-hook=copy-in {ca} /tmp",
                        f'--customize-hook=cp "$1/tmp/{ca.name}" "$1/etc/ssl/certs/ca-certificates.crt"',
                        f'--customize-hook=rm -f "$1/tmp/{ca.name}"',
                        SUITE, str(partial)], check=True, capture_output=True, timeout=900)
        partial.replace(tar)
        print(f"mmdebstrap {SUITE} base: {time.monotonic() - started:.0f} s")
    # pip in a virtualenv carries its own CA list: point it at the system's
    podman("import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", str(tar), tag)
    return tag


@pytest.fixture(scope="session")
def gateway_image(local_base) -> str:
    started = time.monotonic()
    podman("build", "--isolation", "chroot", "--format", "docker", "--build-arg", f"BASE={local_base}",
           "-f", str(REPO / "scp_gateway" / "Dockerfile"), "-t", IMAGE, str(REPO), timeout=1200)
    print(f"gateway image built in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture
def gateway(gateway_image, fake_gcs, firestore_emulator):
    bucket, port, name = unique("ingest"), free_port(), f"axiom-gw-{uuid.uuid4().hex[:8]}"
    collections = unique("img") + "-"
    fake_gcs.create_buckets(bucket)
    listener = {"id": "main", "ae_title": "AXIOMGW", "host": "0.0.0.0", "port": port}
    gcp_runtime.load_config(parse_config({"listeners": [listener]}), FirestoreDocumentStore(prefix=collections))
    podman("run", "-d", "--rm", "--name", name, "--network", "host", *RUN_LIMITS,
           "-e", f"AXIOM_INGEST_BUCKET={bucket}", "-e", f"GOOGLE_CLOUD_PROJECT={PROJECT}",
           "-e", f"STORAGE_EMULATOR_HOST={fake_gcs.url}", "-e", f"FIRESTORE_EMULATOR_HOST={firestore_emulator.host}",
           "-e", f"AXIOM_COLLECTION_PREFIX={collections}", "-e", "AXIOM_MIN_FREE_BYTES=0", gateway_image)
    try:
        try:
            wait_port(port, timeout=60)
        except TimeoutError:
            raise AssertionError(f"the gateway never listened:\n{podman('logs', name, check=False).stderr}") from None
        yield {"name": name, "port": port, "bucket": bucket, "gcs": fake_gcs}
    finally:
        podman("stop", "--time", "10", name, check=False)


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what follows the preamble, "DICM" and the file meta
    group, whose length is its first element, (0002,0000) UL (PS3.10 7.1)."""
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL", data[128:140]
    return data[144 + int.from_bytes(data[140:144], "little"):]


def test_the_image_runs_unprivileged_with_its_health_check_and_its_base_as_an_argument(gateway, gateway_image):
    config = podman("image", "inspect", "--format", "{{.Config.User}}|{{json .Config.Healthcheck.Test}}",
                    gateway_image).stdout.strip()
    user, healthcheck = config.split("|", 1)
    assert user == "10001" and "scp_gateway.healthcheck" in healthcheck
    assert podman("exec", gateway["name"], "id", "-u").stdout.strip() == "10001"
    # the gateway notes its open listeners for the check every second after they open
    # (the image's start period covers that)
    wait_for(lambda: podman("healthcheck", "run", gateway["name"], check=False).returncode == 0, 30,
             what="the container's health check to pass")
    # the health check fails when nothing answers (another port, the same image)
    wrong = podman("exec", "-e", f"AXIOM_HEALTHCHECK_PORT={free_port()}", gateway["name"],
                   "python", "-m", "scp_gateway.healthcheck", check=False)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr


def test_the_container_answers_c_echo_and_c_store_into_the_ingest_bucket(gateway):
    echo = subprocess.run([require("echoscu"), "-aec", "AXIOMGW", "127.0.0.1", str(gateway["port"])],
                          capture_output=True, env=DCMTK_ENV, timeout=60)
    assert echo.returncode == 0, echo.stderr.decode(errors="replace")
    storescu(gateway["port"], [CT], called_ae="AXIOMGW", timeout=120)
    [blob] = list(gateway["gcs"].client().list_blobs(gateway["bucket"]))
    stored = blob.download_as_bytes()
    # what storescu sent: the file's data set but its Data Set Trailing Padding
    # (FFFC,FFFC), an element of files only (PS3.10 7.2), which dcmtk leaves out
    sent = dataset_bytes(CT.read_bytes())
    padding = sent.rfind(b"\xfc\xff\xfc\xffOB")
    assert padding > 0
    assert dataset_bytes(stored) == sent[:padding]
