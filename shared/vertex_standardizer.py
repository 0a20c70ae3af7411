"""The AI standardizer over Vertex AI Gemini, through google-genai's client
(``client.models.generate_content``; the older ``vertexai.generative_models`` is gone).

A value is asked with temperature 0 and, when the action lists ``allowed`` values,
those values as the response schema (``text/x.enum``: the model can only pick one);
without them the answer is a JSON object ``{"value": ...}``. Every answer in the allowed
list is kept in the document store (:data:`CACHE`, by a sha256 of model, kind, value,
allowed values and instructions), so each distinct value costs one call ever, across
restarts and processes, and a re-run writes the same bytes.

Calls are bounded: a per-day budget over all processes (a counter document per UTC day
in :data:`BUDGET`, raised with the store's atomic ``increment`` before each call, so
concurrent workers never spend more than the budget), a per-process rate (calls per
minute) and a timeout. When the budget is spent, the model fails or is slow, or it
answers outside the allowed list, the configured fallback is taken: ``keep`` the value,
a ``default``, ``fail`` (:class:`~shared.errors.LookupFailed`: an exception record) or
``hold`` (:class:`~shared.errors.LookupUnavailable`: the stage tries again later). Fallback
answers are not cached: the model is asked again once it can answer.

Values are often patient data: they are logged only as :func:`value_hash`, never as
text, and errors are described by :func:`shared.logs.describe_error` (no library
message, which may quote the request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from shared.errors import LookupFailed, LookupUnavailable
from shared.logs import describe_error
from shared.morph_services import FakeStandardizer, Standardized, Standardizer
from shared.ports import DocumentStore

if TYPE_CHECKING:  # pragma: no cover
    from google.auth.credentials import Credentials

    from shared.config import AppConfig
    from shared.config.settings import AIStandardizer

log = logging.getLogger(__name__)

CACHE = "standardizer_cache"  # DocumentStore collection: answers by cache key
BUDGET = "standardizer_budget"  # DocumentStore collection: {"calls": n} per UTC day (YYYY-MM-DD)
HOLD_DELAY_S = 300.0  # a held value is tried again after this long (the model may be back)


def value_hash(value: str) -> str:
    """How a value appears in logs: the first 16 hex digits of its sha256."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def cache_key(model: str, kind: str, value: str, allowed: list[str] | None, instructions: str | None) -> str:
    """The id of a cached answer: a sha256 over everything the answer depends on."""
    parts = json.dumps([model, kind, value, allowed, instructions], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(parts.encode("utf-8")).hexdigest()


class RateLimit:
    """At most ``per_minute`` calls in any 60 s, in this process (a sliding window)."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self, wait_s: float) -> bool:
        """Take a slot, waiting at most ``wait_s`` for one; False when none came free."""
        deadline = self._clock() + wait_s
        while True:
            with self._lock:
                now = self._clock()
                while self._calls and self._calls[0] <= now - 60.0:
                    self._calls.popleft()
                if len(self._calls) < self.per_minute:
                    self._calls.append(now)
                    return True
                free_at = self._calls[0] + 60.0
            if free_at > deadline:
                return False
            time.sleep(max(0.0, free_at - self._clock()))


class VertexStandardizer:
    """:class:`~shared.morph_services.Standardizer` over Vertex AI Gemini, configured by
    ``settings.ai_standardizer``. ``credentials``: None uses Application Default
    Credentials (on GCP, the function's service account)."""

    def __init__(self, settings: "AIStandardizer", docs: DocumentStore, *,
                 credentials: "Credentials | None" = None, clock: Callable[[], datetime] | None = None,
                 ask_model: bool = True):
        self.settings = settings
        self.docs = docs
        self.ask_model = ask_model  # False: answers from the cache only (the rule test's --dry-run)
        self._credentials = credentials
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self._rate = RateLimit(settings.rate_per_minute)
        self._client: Any = None
        self._client_lock = threading.Lock()

    def standardize(self, kind: str, value: str, *, allowed: list[str] | None = None,
                    instructions: str | None = None) -> str:
        return self.answer(kind, value, allowed=allowed, instructions=instructions).value

    def answer(self, kind: str, value: str, *, allowed: list[str] | None = None,
               instructions: str | None = None) -> Standardized:
        """The standardized value and whether it came from the cache, the model or the
        fallback. Raises LookupFailed (fallback ``fail``) or LookupUnavailable (``hold``)."""
        guidance = "\n".join(text for text in (self.settings.instructions, instructions) if text) or None
        key = cache_key(self.settings.model, kind, value, allowed, guidance)
        hashed = value_hash(value)
        cached = self.docs.get(CACHE, key)
        if cached is not None:
            log.info("standardizer: %s value %s answered from the cache", kind, hashed)
            return Standardized(cached["answer"], "cache")
        if not self.ask_model:
            return Standardized(value, "fallback", "not in the cache, and the model is not asked in a dry run")
        if not self._take_budget():
            return self._fallback(kind, value, hashed, "the daily budget of model calls is spent", budget_spent=True)
        if not self._rate.acquire(self.settings.timeout_s):
            return self._fallback(kind, value, hashed, "the model call rate limit is reached")
        started = time.monotonic()
        try:
            answer = self._ask(kind, value, allowed, guidance)
        except Exception as exc:  # noqa: BLE001 - any failure of the call takes the fallback
            return self._fallback(kind, value, hashed, f"the model is unavailable ({_describe_call_error(exc)})")
        latency_ms = round((time.monotonic() - started) * 1000)
        if answer is None or (allowed and answer not in allowed):
            return self._fallback(kind, value, hashed, "the model answered outside the allowed values")
        self.docs.set(CACHE, key, {"answer": answer, "model": self.settings.model, "kind": kind,
                                   "at": self._now().isoformat()})
        log.info("standardizer: %s value %s answered by %s in %d ms", kind, hashed, self.settings.model, latency_ms)
        return Standardized(answer, "model", latency_ms=latency_ms)

    def budget_left(self) -> int:
        """Model calls left today (UTC) over all processes."""
        return budget_left(self.docs, self.settings, self._now())

    def _today(self) -> str:
        return _day(self._now())

    def _take_budget(self) -> bool:
        """Count one call against today's budget; False (nothing counted beyond it) when
        spent. Counted before the call, so concurrent processes cannot overspend: one
        that sees the count past the budget after its increment does not call."""
        if self.budget_left() <= 0:
            return False
        day = self._today()
        self.docs.increment(BUDGET, day, {"calls": 1})
        calls = int((self.docs.get(BUDGET, day) or {}).get("calls") or 0)
        return calls <= self.settings.daily_budget

    def _fallback(self, kind: str, value: str, hashed: str, reason: str, *, budget_spent: bool = False) -> Standardized:
        fallback = self.settings.fallback
        log.warning("standardizer: %s value %s takes the fallback %r: %s", kind, hashed, fallback, reason)
        if fallback == "fail":
            raise LookupFailed(f"AI standardization of a {kind} value failed: {reason}")
        if fallback == "hold":
            delay = self._seconds_to_tomorrow() if budget_spent else HOLD_DELAY_S  # a budget renews at 00:00 UTC
            raise LookupUnavailable(f"AI standardization of a {kind} value waits: {reason}", delay_s=delay)
        return Standardized(self.settings.default if fallback == "default" else value, "fallback", reason)

    def _seconds_to_tomorrow(self) -> float:
        now = self._now().astimezone(timezone.utc)
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
        return max(1.0, (tomorrow - now).total_seconds())

    def _client_once(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from google import genai  # imported on first use: a config without the model never loads it
                from google.genai import types

                options = types.HttpOptions(timeout=int(self.settings.timeout_s * 1000),
                                            retry_options=types.HttpRetryOptions(attempts=1))
                if self.settings.endpoint:
                    options.base_url = self.settings.endpoint
                self._client = genai.Client(
                    vertexai=True, project=self.settings.project or os.environ.get("GOOGLE_CLOUD_PROJECT"),
                    location=self.settings.location, credentials=self._credentials, http_options=options)
            return self._client

    def _ask(self, kind: str, value: str, allowed: list[str] | None, guidance: str | None) -> str | None:
        """The model's answer, or None when it is not of the requested form."""
        from google.genai import types

        prompt = [f"Standardize this {kind.replace('_', ' ')} value."]
        if guidance:
            prompt.append(guidance)
        if allowed:
            prompt.append("Answer with the one allowed value that means the same.")
            config = types.GenerateContentConfig(
                temperature=0, response_mime_type="text/x.enum",
                response_schema=types.Schema(type=types.Type.STRING, enum=list(allowed)))
        else:
            prompt.append('Answer with a JSON object {"value": the standardized text}.')
            config = types.GenerateContentConfig(
                temperature=0, response_mime_type="application/json",
                response_schema=types.Schema(type=types.Type.OBJECT, required=["value"],
                                             properties={"value": types.Schema(type=types.Type.STRING)}))
        prompt.append(f"Value: {value}")
        response = self._client_once().models.generate_content(
            model=self.settings.model, contents="\n".join(prompt), config=config)
        text = (response.text or "").strip()
        if allowed:
            return text or None
        try:
            answer = json.loads(text).get("value")
        except (ValueError, AttributeError):
            return None
        return answer.strip() if isinstance(answer, str) and answer.strip() else None


def _day(now: datetime) -> str:
    return now.astimezone(timezone.utc).date().isoformat()


def budget_left(docs: DocumentStore, settings: "AIStandardizer", now: datetime | None = None) -> int:
    """Model calls left on ``now``'s UTC day (default: today) over all processes."""
    doc = docs.get(BUDGET, _day(now or datetime.now(timezone.utc))) or {}
    return max(0, settings.daily_budget - int(doc.get("calls") or 0))


def _describe_call_error(exc: BaseException) -> str:
    """A failed call by its HTTP status when it has one (never the body, which may
    quote the request), else by :func:`shared.logs.describe_error`."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return f"{type(exc).__name__} {code}"
    return describe_error(exc)


def standardizer_from_config(config: "AppConfig", docs: DocumentStore, *,
                             credentials: "Credentials | None" = None, ask_model: bool = True) -> Standardizer:
    """The standardizer ``config`` asks for: Vertex AI when ``settings.ai_standardizer``
    is set, else the deterministic :class:`~shared.morph_services.FakeStandardizer`.
    ``ask_model=False``: the cache only (a value not in it is kept)."""
    settings = config.settings.ai_standardizer
    if settings is None:
        return FakeStandardizer()
    return VertexStandardizer(settings, docs, credentials=credentials, ask_model=ask_model)
