"""Per-source query clients of the spanner: one already-translated query to one source,
answered within a deadline (``time.monotonic()`` based).

- :class:`QidoClient`: QIDO-RS (PS3.18 10.6) over one ``httpx.AsyncClient`` per source,
  paged with ``limit``/``offset``, answering ``application/dicom+json`` rows.
- :class:`CFindClient`: C-FIND, Study Root Query/Retrieve Information Model - FIND
  (PS3.4 C.4.1), in a C-FIND worker process (:mod:`shared.spanner.workers`), one
  association per call (pynetdicom associations are not thread-safe); at the deadline a
  C-CANCEL (PS3.7 9.3.2.3), then an A-ABORT. The answer goes back before the association
  is released.

Both raise :class:`SourceTimeout` once the deadline passed and :class:`SourceError` for
any other failure; neither message carries a response body or a query value (PHI).
The sources' poller settings (``query``, ``lookback_days``, ``interval_s``) are not
applied: a spanner asks what its caller asked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import BrokenExecutor

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from pynetdicom.status import STATUS_PENDING, STATUS_SUCCESS, STATUS_WARNING, code_to_category

from shared.config import DicomWebSource, DimseSource, HealthcareSource, HttpAuth
from shared.dicom import reactor
from shared.errors import SecretError
from shared.httpauth import httpx_auth
from shared.ports import Secrets
from shared.spanner import workers

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
CANCEL_GRACE_S = 0.25  # after the C-CANCEL, how long the peer may take to end the C-FIND before the abort
FIND_MSG_ID = 1  # one C-FIND per association


class SourceError(Exception):
    """A source failed before its deadline (refused, rejected, HTTP error, failure
    status). ``status`` is the HTTP status or the DIMSE status code, when there was one."""

    def __init__(self, source_id: str, reason: str, *, status: int | None = None):
        super().__init__(f"source {source_id}: {reason}")
        self.source_id, self.reason, self.status = source_id, reason, status

    def __reduce__(self):  # back from a C-FIND worker process
        return self.__class__, (self.source_id, self.reason), {"status": self.status}


class SourceTimeout(Exception):
    """A source did not answer in full before its deadline."""

    def __init__(self, source_id: str, reason: str = "deadline passed"):
        super().__init__(f"source {source_id}: {reason}")
        self.source_id, self.reason = source_id, reason

    def __reduce__(self):  # back from a C-FIND worker process
        return self.__class__, (self.source_id, self.reason)


def _time_left(source_id: str, deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SourceTimeout(source_id, f"deadline passed before {what}")
    return left


class QidoClient:
    """QIDO-RS searches against one DICOMweb base URL (``{base_url}/studies`` ...). Its
    connection pool belongs to the event loop of its first search: use it from one loop."""

    def __init__(self, source_id: str, base_url: str, *, page_size: int = 100, auth: httpx.Auth | None = None,
                 headers: dict[str, str] | None = None):
        self.source_id = source_id
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self._http = httpx.AsyncClient(auth=auth, headers={**(headers or {}), "Accept": DICOM_JSON})

    async def search(self, level_path: str, params: list[tuple[str, str]], *, deadline: float) -> list[dict]:
        """The rows of ``GET {base_url}/{level_path}?params``, every page: requests of
        ``page_size`` rows at increasing ``offset`` until a short page. A ``limit`` in
        ``params`` caps the rows asked for in all, an ``offset`` is where the first page
        starts. A server that caps a page below ``limit`` and says so in a ``Warning``
        header (PS3.18 8.3.4.5, "additional results") is asked for the next page."""
        total = next((int(v) for k, v in params if k == "limit"), None)
        offset = next((int(v) for k, v in params if k == "offset"), 0)
        query = [(k, v) for k, v in params if k not in ("limit", "offset")]
        url = f"{self.base_url}/{level_path.strip('/')}"
        rows: list[dict] = []
        while total is None or len(rows) < total:
            size = self.page_size if total is None else min(self.page_size, total - len(rows))
            page, more = await self._page(url, [*query, ("limit", str(size)), ("offset", str(offset))], deadline)
            rows.extend(page)
            if not page or (len(page) < size and not more):
                break
            offset += len(page)
        return rows

    async def _page(self, url: str, params: list[tuple[str, str]], deadline: float) -> tuple[list[dict], bool]:
        left = _time_left(self.source_id, deadline, "a QIDO-RS request")
        # httpx's timeouts bound each phase (connect, each read); the asyncio one bounds the whole exchange
        try:
            async with asyncio.timeout(left):
                response = await self._http.get(url, params=params, timeout=left)
        except (TimeoutError, httpx.TimeoutException):
            raise SourceTimeout(self.source_id, "QIDO-RS request timed out") from None
        except httpx.HTTPError as exc:
            # no chaining: httpx's exceptions name the request URL, whose query may hold patient data
            raise SourceError(self.source_id, f"QIDO-RS request failed ({_transport_reason(exc)})") from None
        except Exception as exc:  # e.g. google-auth's, getting a token: still this source's failure
            raise SourceError(self.source_id, f"QIDO-RS request failed ({type(exc).__name__})") from None
        if response.status_code == 204:
            return [], False
        if response.status_code != 200:
            raise SourceError(self.source_id, f"QIDO-RS answered HTTP {response.status_code}",
                              status=response.status_code)
        try:
            rows = response.json()
        except ValueError:
            raise SourceError(self.source_id, "QIDO-RS answer is not JSON", status=200) from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SourceError(self.source_id, "QIDO-RS answer is not a JSON array of objects", status=200)
        more = "additional results" in response.headers.get("warning", "").lower()
        return rows, more

    async def aclose(self) -> None:
        await self._http.aclose()


def _transport_reason(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, httpx.ConnectError) and isinstance(cause, OSError) and cause.strerror:
        return f"{type(exc).__name__}: {cause.strerror}"
    return type(exc).__name__


class CFindClient:
    """C-FIND (Study Root, PS3.4 C.4.1) against one DIMSE source. Each call runs in a
    C-FIND worker process (:mod:`shared.spanner.workers`), on an association of its
    own. The TLS secrets are read here, once, and handed to the worker with each call."""

    def __init__(self, source: DimseSource, secrets: Secrets | None = None):
        self.source = source
        self.source_id = source.id
        self._tls_secrets = None
        if source.tls:  # a SecretError here is this source's failure (the engine says so)
            refs = [ref for ref in (source.tls.ca, source.tls.certificate, source.tls.key) if ref]
            if refs and secrets is None:
                raise SecretError(f"secret {refs[0]}: no secrets to read it from")
            self._tls_secrets = {ref: secrets.get(ref) for ref in refs}

    async def search(self, identifier: Dataset, *, deadline: float) -> list[Dataset]:
        """The identifiers of the Pending responses (0xFF00, 0xFF01) to ``identifier``
        (a complete C-FIND identifier, QueryRetrieveLevel included)."""
        try:
            pool, running = self._submit(identifier, deadline)
        except Exception:  # noqa: BLE001 - no pool, or a worker that could not start
            log.exception("spanner source %s: no C-FIND worker", self.source_id)
            raise SourceError(self.source_id, "no C-FIND worker process could start") from None
        try:
            return await running
        except BrokenExecutor:
            workers.discard(pool)
            raise SourceError(self.source_id, "the C-FIND worker process ended unexpectedly") from None

    def _submit(self, identifier: Dataset, deadline: float):
        """(pool, future) of the search handed to a C-FIND worker. A pool whose worker died
        since the last search takes no more work: it is replaced once, first."""
        for fresh in (False, True):
            pool = workers.executor()
            try:
                # the deadline crosses as is: time.monotonic() is the system's monotonic clock, the same in
                # every process
                return pool, asyncio.get_running_loop().run_in_executor(
                    pool, find, self.source, self._tls_secrets, identifier, deadline)
            except BrokenExecutor:
                workers.discard(pool)
                if fresh:
                    raise
                log.warning("spanner: a C-FIND worker process had ended; starting new ones")
            except Exception:
                workers.discard(pool)
                raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Nothing to close: the workers are the process's, and running searches end by their deadlines."""


class _GivenSecrets:
    """The secrets a :class:`CFindClient` read, as the Secrets port in a worker."""

    def __init__(self, values: dict[str, bytes]):
        self._values = values

    def get(self, ref: str) -> bytes:
        return self._values[ref]

    def text(self, ref: str) -> str:
        return self.get(ref).decode().strip()


_tls_contexts: dict[tuple, object] = {}  # this worker's SSL contexts, by TLS config and secrets


def _tls_for(source: DimseSource, tls_secrets: dict[str, bytes] | None):
    if not source.tls:
        return None
    from shared.dicom.tls import client_context

    key = (source.tls.model_dump_json(), tuple(sorted((tls_secrets or {}).items())))
    context = _tls_contexts.get(key)
    if context is None:
        context = _tls_contexts[key] = client_context(source.tls, _GivenSecrets(tls_secrets or {}))
    return context, source.host


def _ae(source: DimseSource, left: float) -> AE:
    ae = AE(ae_title=source.calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    # every timeout explicit: pynetdicom's connection timeout defaults to none (wait forever).
    # Connecting and negotiating end at the deadline; responses may come until the C-CANCEL's grace.
    ae.connection_timeout = left
    ae.acse_timeout = left
    ae.dimse_timeout = left + CANCEL_GRACE_S
    ae.network_timeout = left + CANCEL_GRACE_S
    return ae


def find(source: DimseSource, tls_secrets: dict[str, bytes] | None, identifier: Dataset,
         deadline: float) -> list[Dataset]:
    """One C-FIND of ``identifier`` on an association of its own, by ``deadline``; in a
    C-FIND worker (a process, or a thread with ``AXIOM_SPANNER_CFIND_PROCESSES=0``)."""
    source_id = source.id
    left = _time_left(source_id, deadline, "the association")
    tls = _tls_for(source, tls_secrets)
    assoc = _ae(source, left).associate(source.host, source.port, ae_title=source.ae_title,
                                        **({"tls_args": tls} if tls else {}))
    if not assoc.is_established:
        if time.monotonic() >= deadline:
            raise SourceTimeout(source_id, "association not established before the deadline")
        how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "refused or failed"
        raise SourceError(source_id, f"association with {source.ae_title}@{source.host}:{source.port} {how}")
    if not assoc.accepted_contexts:
        assoc.abort()
        raise SourceError(source_id, "the peer accepts no Study Root C-FIND")
    reactor.keep_responses(assoc)  # a response the reactor takes first goes back to us
    reactor.no_delay(assoc)
    cancelled = threading.Event()

    def cancel() -> None:
        cancelled.set()
        try:
            assoc.send_c_cancel(FIND_MSG_ID, query_model=StudyRootQueryRetrieveInformationModelFind)
            log.info("spanner source %s: C-CANCEL sent at the deadline", source_id)
        except RuntimeError:  # the association ended meanwhile
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cancel)
    timer.daemon = True
    timer.start()
    found: list[Dataset] = []
    final: int | None = None
    undecodable = 0
    end_by = deadline + CANCEL_GRACE_S

    def bound_next_wait() -> None:
        # pynetdicom reads dimse_timeout at each wait for a response: each wait ends by the
        # deadline plus the C-CANCEL's grace, then pynetdicom aborts (its "no response")
        assoc.dimse_timeout = max(end_by - time.monotonic(), 0.001)

    try:
        bound_next_wait()
        for status, found_identifier in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind,
                                                          msg_id=FIND_MSG_ID):
            if "Status" not in status:  # pynetdicom's "no response": DIMSE timeout or connection lost
                break
            bound_next_wait()
            code = int(status.Status)
            if code_to_category(code) == STATUS_PENDING:
                if found_identifier is None:
                    undecodable += 1
                else:
                    found.append(found_identifier)
                continue
            final = code
    finally:
        timer.cancel()
        # the answer does not wait for the association's end: an A-RELEASE round trip,
        # then pynetdicom's waits for its threads (about 12 ms on loopback)
        threading.Thread(target=_end, args=(assoc,), name=f"cfind-end-{source_id}", daemon=True,
                         kwargs={"abort": cancelled.is_set() or final is None, "deadline": deadline}).start()
    if cancelled.is_set():
        raise SourceTimeout(source_id, "C-FIND not complete at the deadline; C-CANCEL sent")
    if final is None:
        raise SourceError(source_id, "C-FIND: no final response (connection lost)")
    if code_to_category(final) not in (STATUS_SUCCESS, STATUS_WARNING):
        raise SourceError(source_id, f"C-FIND failed: status 0x{final:04X}", status=final)
    if undecodable:
        raise SourceError(source_id, "C-FIND: a response identifier could not be decoded")
    return found


def _end(assoc, *, abort: bool, deadline: float) -> None:
    """Release an association that finished in time; abort one that did not (past the
    deadline an A-RELEASE would wait for the peer's reply, an A-ABORT does not). Runs
    in a thread of its own, after the answer went back."""
    if not assoc.is_established:
        return
    left = deadline - time.monotonic()
    if abort or left <= 0:
        assoc.abort()
        return
    assoc.acse_timeout = left  # the release, too, ends by the deadline (then pynetdicom aborts)
    assoc.release()


def client_for(source: DicomWebSource | DimseSource | HealthcareSource,
               secrets: Secrets | None) -> QidoClient | CFindClient:
    """The query client of a configured source: QIDO-RS for DICOMweb servers and
    Healthcare API stores (their DICOMweb URL, Application Default Credentials), C-FIND
    for DIMSE peers."""
    if isinstance(source, DimseSource):
        return CFindClient(source, secrets)
    if isinstance(source, HealthcareSource):
        auth, headers = httpx_auth(HttpAuth(type="google"), secrets=None)
        return QidoClient(source.id, source.dicomweb_url, page_size=source.page_size, auth=auth, headers=headers)
    if isinstance(source, DicomWebSource):
        auth, headers = httpx_auth(source.auth, secrets)
        return QidoClient(source.id, source.url, page_size=source.page_size, auth=auth, headers=headers)
    raise TypeError(f"no query client for a source of type {type(source).__name__}")
