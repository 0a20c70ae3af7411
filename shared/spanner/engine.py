"""The fan-out: one QIDO-RS query (PS3.18 10.6) asked of every source of a spanner at
once, each within its own deadline, the answers merged (:mod:`shared.spanner.merge`).

Sources are asked concurrently, at most ``max_concurrency`` at a time, the slowest of
late first (a moving average of each source's time in this process; one not asked yet
counts as slowest), so that the query's critical path starts first, and those expected
to take less than half its time a moment later (:func:`_head_start`); a source's
deadline starts when it gets its slot. A failure before the deadline is tried again
(``retry_attempts``), a timeout is not. With ``partial_results`` the answer is what the
others found and :class:`SpanResult` names the sources that failed (the API's
``Warning`` header, PS3.18 8.3.5.1, and per-source status); with ``fail_fast`` the
first failure cancels the rest and raises :class:`SpanFailed`. Identical queries within
``cache_ttl_s`` are answered from a per-process cache."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from cachetools import TTLCache

from shared import counters
from shared.errors import SecretError
from shared.spanner.clients import CFindClient, SourceError, SourceTimeout, client_for
from shared.spanner.merge import SourceAnswer, apply_paging, merge
from shared.spanner.query import QidoQuery, cache_key, from_cfind, qido_path, to_cfind_identifier, to_qido_params

if TYPE_CHECKING:  # pragma: no cover
    from shared.config import Spanner
    from shared.ports import DocumentStore, Secrets

log = logging.getLogger(__name__)

State = Literal["ok", "failed", "timeout"]
RECENT_WEIGHT = 0.3  # of the newest time in a source's moving average
HEAD_START_FRACTION = 0.05  # of the slowest source's time: the others' wait (_head_start)
HEAD_START_MAX_S = 0.025


@dataclass
class SourceStatus:
    """How one source answered: ``state``, rows returned, milliseconds (all tries),
    tries, and for a failure its reason (the error's kind and status, never a body)."""

    source: str
    state: State
    rows: int = 0
    ms: int = 0
    attempts: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpanResult:
    rows: list[dict]
    statuses: list[SourceStatus]
    cached: bool = False
    total: int = 0  # merged rows before paging

    @property
    def missing(self) -> list[SourceStatus]:
        return [s for s in self.statuses if s.state != "ok"]

    def warning(self, agent: str = "axiom-flow") -> str | None:
        """The ``Warning`` header of a partial answer (PS3.18 8.3.5.1: code 299, the
        agent, a quoted text), naming every source that did not answer, or None."""
        missing = self.missing
        if not missing:
            return None
        names = ", ".join(f"{s.source} ({s.state}{': ' + s.error if s.error else ''})" for s in missing)
        text = f"partial results: {len(missing)} of {len(self.statuses)} sources did not answer: {names}"
        return f'299 {agent} "{text.replace(chr(34), chr(39))}"'


class SpanFailed(Exception):
    """``fail_fast``: a source failed or timed out; the statuses so far."""

    def __init__(self, statuses: list[SourceStatus]):
        self.statuses = statuses
        failed = [s for s in statuses if s.state != "ok"]
        super().__init__("; ".join(f"source {s.source} {s.state}{': ' + s.error if s.error else ''}" for s in failed))


class ClientPool:
    """The query clients of the sources, made on first use and kept per event loop
    (an httpx client's connections belong to the loop that opened them) and per
    source config (a changed source gets a new client)."""

    def __init__(self, secrets: "Secrets"):
        self.secrets = secrets
        self._clients: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, source):
        key = (id(asyncio.get_running_loop()), source.id)
        with self._lock:
            held = self._clients.get(key)
            if held is not None and held[0] == source:
                return held[1]
            client = client_for(source, self.secrets)
            self._clients[key] = (source, client)
        return client


class Spanning:
    """Answers spanner queries: :meth:`query` (async) and its per-process cache."""

    def __init__(self, secrets: "Secrets", *, docs: "DocumentStore | None" = None,
                 clock: Callable[[], float] = time.monotonic):
        self.clients = ClientPool(secrets)
        self.docs = docs  # the status counters (shared.counters.count_span), if given
        self._clock = clock
        self._caches: dict[str, TTLCache] = {}
        self._lock = threading.Lock()
        self._recent_ms: dict[str, float] = {}  # source id -> moving average of its time

    async def query(self, spanner: "Spanner", sources: dict, query: QidoQuery) -> SpanResult:
        """The merged answer of ``spanner``'s sources (``sources``: the config's, by id)."""
        cache = self._cache(spanner)
        key = cache_key(spanner.id, query)
        if cache is not None:
            with self._lock:
                hit = cache.get(key)
            if hit is not None:
                await self._count(spanner.id, [], cached=True)
                return SpanResult(rows=apply_paging(hit[0], query.limit, query.offset), statuses=hit[1],
                                  cached=True, total=len(hit[0]))
        try:
            answers, statuses = await self._fan_out(spanner, sources, query)
        except SpanFailed as exc:
            await self._count(spanner.id, exc.statuses, failed=True)
            raise
        counting = asyncio.ensure_future(self._count(spanner.id, statuses))  # written while merging
        merged = merge(query.level, answers, deduplicate=spanner.deduplicate)
        await counting
        if cache is not None and not any(s.state != "ok" for s in statuses):  # a partial answer is not kept
            with self._lock:
                cache[key] = (merged, statuses)
        return SpanResult(rows=apply_paging(merged, query.limit, query.offset), statuses=statuses,
                          total=len(merged))

    async def _count(self, spanner_id: str, statuses: list[SourceStatus], *, cached: bool = False,
                     failed: bool = False) -> None:
        # in a thread: the write (one transaction or batch commit) does not hold up the loop's other queries
        if self.docs is not None:
            await asyncio.to_thread(counters.count_span, self.docs, spanner_id, [s.to_dict() for s in statuses],
                                    cached=cached, failed=failed)

    def _cache(self, spanner: "Spanner") -> TTLCache | None:
        if spanner.cache_ttl_s <= 0:
            return None
        with self._lock:
            cache = self._caches.get(spanner.id)
            if cache is None or cache.ttl != spanner.cache_ttl_s:
                cache = self._caches[spanner.id] = TTLCache(1024, spanner.cache_ttl_s, timer=self._clock)
            return cache

    async def _fan_out(self, spanner: "Spanner", sources: dict, query: QidoQuery):
        slots = asyncio.Semaphore(spanner.max_concurrency)
        # `order` stays the config's (merge priority ties); only the start order changes
        expected = {m.source: self._recent_ms.get(m.source, math.inf) for m in spanner.sources}
        members = sorted(enumerate(spanner.sources), key=lambda m: -expected[m[1].source])
        slowest = max(expected.values(), default=0.0)
        started = {order: asyncio.create_task(self._ask(slots, spanner, member, order, sources, query,
                                                        head_start_s=_head_start(expected[member.source], slowest)))
                   for order, member in members}
        tasks = [started[order] for order in sorted(started)]  # statuses and answers in the config's order
        if spanner.failure_strategy == "fail_fast":
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.result()[1].state != "ok" for t in done):
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    raise SpanFailed([t.result()[1] for t in tasks if t.done() and not t.cancelled()])
        results = await asyncio.gather(*tasks)
        answers = [answer for answer, status in results if answer is not None]
        return answers, [status for _, status in results]

    async def ask_one(self, spanner: "Spanner", member, order: int, sources: dict,
                      query: QidoQuery) -> tuple[SourceAnswer | None, SourceStatus]:
        """One source of ``spanner`` (``member``, at ``order`` in its list), alone: an
        async query's task (:mod:`shared.spanner.job`)."""
        return await self._ask(asyncio.Semaphore(1), spanner, member, order, sources, query)

    async def _ask(self, slots: asyncio.Semaphore, spanner: "Spanner", member, order: int, sources: dict,
                   query: QidoQuery, *, head_start_s: float = 0.0) -> tuple[SourceAnswer | None, SourceStatus]:
        status = SourceStatus(member.source, "failed")
        source = sources.get(member.source)
        if source is None:  # the config check refuses this; a source removed meanwhile
            status.error = "not configured"
            return None, status
        timeout = member.timeout_s or spanner.timeout_s
        if head_start_s:
            await asyncio.sleep(head_start_s)
        async with slots:
            started = self._clock()
            deadline = started + timeout
            rows = None
            for attempt in range(1 + spanner.retry_attempts):
                status.attempts = attempt + 1
                try:
                    rows = await self._search(source, query, deadline)
                except SourceTimeout:
                    status.state, status.error = "timeout", f"no answer within {timeout:g} s"
                    break
                except SourceError as exc:
                    status.state, status.error = "failed", str(exc)
                    if self._clock() >= deadline:
                        break
                    continue
                except Exception as exc:  # noqa: BLE001 - a defect fails its source, not the whole query
                    log.exception("spanner %s: source %s failed unexpectedly", spanner.id, source.id)
                    status.state, status.error = "failed", f"internal error ({type(exc).__name__})"
                    break
                status.state, status.rows, status.error = "ok", len(rows), None
                break
            status.ms = round((self._clock() - started) * 1000)
        self._note_time(source.id, status.ms)
        if status.state != "ok":
            log.warning("spanner %s: source %s %s: %s", spanner.id, source.id, status.state, status.error)
            return None, status
        retrieve_ae = source.ae_title if getattr(source, "type", "") == "dimse_poller" else None
        retrieve_url = getattr(source, "url", None) if retrieve_ae is None else None
        return SourceAnswer(source_id=source.id, priority=member.priority, order=order, rows=rows,
                            retrieve_ae=retrieve_ae, retrieve_url=retrieve_url), status

    def _note_time(self, source_id: str, ms: float) -> None:
        last = self._recent_ms.get(source_id)
        self._recent_ms[source_id] = ms if last is None else last + RECENT_WEIGHT * (ms - last)

    async def _search(self, source, query: QidoQuery, deadline: float) -> list[dict]:
        try:
            client = self.clients.get(source)
        except SecretError as exc:  # this source's failure, not the query's: names the reference, never a value
            raise SourceError(source.id, f"its credentials cannot be read: {exc}") from None
        if isinstance(client, CFindClient):
            found = await client.search(to_cfind_identifier(query), deadline=deadline)
            return [from_cfind(ds, query) for ds in found]
        return await client.search(qido_path(query), to_qido_params(query), deadline=deadline)


def _head_start(expected_ms: float, slowest_ms: float) -> float:
    """How long a source lets the slowest go first: one expected to take less than half
    the slowest's time waits 5% of it (at most HEAD_START_MAX_S), so the slowest's
    first protocol steps (connection, association) get the CPU, not a crowd; it still
    ends long before the slowest. Nothing while any time is unknown."""
    if not math.isfinite(slowest_ms) or expected_ms >= slowest_ms / 2:
        return 0.0
    return min(HEAD_START_FRACTION * slowest_ms / 1000, HEAD_START_MAX_S)


def statuses_block(result: SpanResult) -> list[dict]:
    """The per-source status a caller can read (the API's ``X-Spanner-Status``)."""
    return [s.to_dict() for s in result.statuses]



_SPANNINGS: dict[tuple[int, int], Spanning] = {}
_SPANNINGS_LOCK = threading.Lock()


def spanning(secrets: "Secrets", docs: "DocumentStore | None" = None) -> Spanning:
    """The process's :class:`Spanning` over ``secrets`` (its clients and cache shared
    by every request), counting into ``docs``."""
    with _SPANNINGS_LOCK:
        key = (id(secrets), id(docs))
        found = _SPANNINGS.get(key)
        if found is None or found.clients.secrets is not secrets or found.docs is not docs:
            found = _SPANNINGS[key] = Spanning(secrets, docs=docs)
        return found


_LOOP: asyncio.AbstractEventLoop | None = None


def run_sync(coroutine):
    """Run ``coroutine`` on the process's spanner event loop (a daemon thread) and wait
    for its result: for callers that are not async (the C-FIND front's association
    threads, the embedded runtime's query tasks), so that their clients' connections
    stay on one loop and are reused."""
    global _LOOP
    with _SPANNINGS_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="spanner-loop", daemon=True).start()
        loop = _LOOP
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
