"""The Vertex AI standardizer with google-genai's real client, pointed at a local HTTP
server that answers like Vertex AI's ``:generateContent`` endpoint: what the request
carries, the persistent cache, the daily budget, and the fallbacks."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.oauth2.credentials import Credentials

from shared.adapters.sqlite import SQLiteDatabase, SQLiteDocumentStore
from shared.config import AppConfig
from shared.config.settings import AIStandardizer
from shared.errors import LookupFailed, RetryLater
from shared.morph_services import FakeStandardizer, Standardized
from shared.vertex_standardizer import BUDGET, VertexStandardizer, standardizer_from_config, value_hash

ALLOWED = ["T1 AX", "T2 AX", "FLAIR AX"]
MODEL = "gemini-test"
PATH = f"/v1beta1/projects/proj/locations/europe-west4/publishers/google/models/{MODEL}:generateContent"
# a value that stands for patient data: it must never appear in a log line
VALUE = "t2 axial  MRN-778899"
# a fixed access token: the client's own auth path (ADC on GCP) without a credential
TOKEN = Credentials(token="test-token")


class FakeVertex:
    """A threaded HTTP server answering ``:generateContent`` with ``self.answer`` (text
    of the candidate), ``self.status`` (an error) or after ``self.delay_s``; it keeps
    every request (path, JSON body)."""

    def __init__(self):
        self.answer = "T2 AX"
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[tuple[str, dict]] = []
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.requests.append((self.path, body))
                fake.authorizations.append(self.headers.get("Authorization"))
                time.sleep(fake.delay_s)
                if fake.status != 200:
                    payload = {"error": {"code": fake.status, "message": "unavailable", "status": "UNAVAILABLE"}}
                else:
                    payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": fake.answer}]},
                                               "finishReason": "STOP"}],
                               "modelVersion": MODEL}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vertex():
    fake = FakeVertex()
    yield fake
    fake.close()


@pytest.fixture
def store(tmp_path):
    return lambda: SQLiteDocumentStore(SQLiteDatabase(tmp_path / "docs.db"))


def settings(vertex: FakeVertex, **overrides) -> AIStandardizer:
    return AIStandardizer(**{"model": MODEL, "project": "proj", "location": "europe-west4",
                             "endpoint": vertex.url, "timeout_s": 2, **overrides})


def standardizer(vertex, docs, **overrides) -> VertexStandardizer:
    return VertexStandardizer(settings(vertex, **overrides), docs, credentials=TOKEN)


def test_request_carries_temperature_zero_and_the_allowed_values_as_schema(vertex, store):
    result = standardizer(vertex, store(), instructions="Site style.").answer(
        "series_description", VALUE, allowed=ALLOWED, instructions="Axial only.")
    assert (result.value, result.source) == ("T2 AX", "model") and result.latency_ms is not None
    [(path, body)] = vertex.requests
    assert path == PATH
    assert vertex.authorizations == ["Bearer test-token"]
    generation = body["generationConfig"]
    assert generation["temperature"] == 0
    assert generation["responseMimeType"] == "text/x.enum"
    assert generation["responseSchema"] == {"type": "STRING", "enum": ALLOWED}
    prompt = body["contents"][0]["parts"][0]["text"]
    assert VALUE in prompt and "Site style." in prompt and "Axial only." in prompt


def test_free_text_asks_for_a_json_object(vertex, store):
    vertex.answer = json.dumps({"value": "T2 AXIAL"})
    assert standardizer(vertex, store()).standardize("series_description", VALUE) == "T2 AXIAL"
    generation = vertex.requests[0][1]["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseSchema"]["properties"] == {"value": {"type": "STRING"}}


def test_a_value_costs_one_call_ever_also_after_a_restart(vertex, store):
    first = standardizer(vertex, store())
    assert first.answer("series_description", VALUE, allowed=ALLOWED).source == "model"
    assert first.answer("series_description", VALUE, allowed=ALLOWED) == Standardized("T2 AX", "cache")
    restarted = standardizer(vertex, store())  # a new process over the same SQLite file
    assert restarted.answer("series_description", VALUE, allowed=ALLOWED) == Standardized("T2 AX", "cache")
    assert len(vertex.requests) == 1
    # another kind, other allowed values or other instructions are another question
    restarted.answer("body_part", VALUE, allowed=ALLOWED)
    restarted.answer("series_description", VALUE, allowed=[*ALLOWED, "DWI"])
    restarted.answer("series_description", VALUE, allowed=ALLOWED, instructions="Other.")
    assert len(vertex.requests) == 4


def test_the_daily_budget_stops_calls(vertex, store):
    docs = store()
    service = standardizer(vertex, docs, daily_budget=2)
    assert [service.answer("free_text", v, allowed=ALLOWED).source for v in ("a", "b")] == ["model", "model"]
    assert service.budget_left() == 0
    spent = service.answer("free_text", "c", allowed=ALLOWED)
    assert spent.source == "fallback" and spent.value == "c" and "budget" in spent.reason
    # another process shares the day's budget; cached values are still answered
    other = standardizer(vertex, store(), daily_budget=2)
    assert other.answer("free_text", "d", allowed=ALLOWED).source == "fallback"
    assert other.answer("free_text", "a", allowed=ALLOWED).source == "cache"
    assert len(vertex.requests) == 2
    assert list(docs.list(BUDGET).values()) == [{"calls": 2}]


def test_concurrent_workers_never_spend_more_than_the_budget(vertex, store):
    vertex.delay_s = 0.05
    workers = [standardizer(vertex, store(), daily_budget=3) for _ in range(4)]  # four processes' worth
    results: list[Standardized] = []

    def ask(worker: VertexStandardizer, n: int) -> None:
        results.append(worker.answer("free_text", f"value {n}", allowed=ALLOWED))

    threads = [threading.Thread(target=ask, args=(workers[n % 4], n)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(vertex.requests) <= 3
    assert sum(r.source == "model" for r in results) == len(vertex.requests)
    assert sum(r.source == "fallback" for r in results) == 12 - len(vertex.requests)


def test_a_held_value_waits_for_the_budget_of_the_next_day(vertex, store):
    service = standardizer(vertex, store(), daily_budget=0, fallback="hold")
    with pytest.raises(RetryLater, match="budget") as held:
        service.answer("free_text", VALUE, allowed=ALLOWED)
    assert 0 < held.value.delay_s <= 24 * 3600
    assert vertex.requests == []


def test_an_answer_outside_the_allowed_values_takes_the_fallback_and_is_not_cached(vertex, store):
    vertex.answer = "T2 CORONAL"
    service = standardizer(vertex, store(), fallback="default", default="UNKNOWN")
    result = service.answer("series_description", VALUE, allowed=ALLOWED)
    assert result.source == "fallback" and result.value == "UNKNOWN" and "outside" in result.reason
    vertex.answer = "T2 AX"  # asked again, as nothing was cached
    again = service.answer("series_description", VALUE, allowed=ALLOWED)
    assert (again.value, again.source) == ("T2 AX", "model")
    assert len(vertex.requests) == 2


def test_a_server_error_takes_the_fallback(vertex, store):
    vertex.status = 503
    assert standardizer(vertex, store()).answer("free_text", VALUE, allowed=ALLOWED) == Standardized(
        VALUE, "fallback", "the model is unavailable (ServerError 503)")
    assert len(vertex.requests) == 1  # no retries: the fallback (or a hold) decides what happens next
    with pytest.raises(LookupFailed, match="unavailable"):
        standardizer(vertex, store(), fallback="fail").answer("free_text", VALUE, allowed=ALLOWED)
    with pytest.raises(RetryLater, match="unavailable") as held:
        standardizer(vertex, store(), fallback="hold").answer("free_text", VALUE, allowed=ALLOWED)
    assert held.value.delay_s > 0


def test_a_slow_model_takes_the_fallback_after_the_timeout(vertex, store):
    vertex.delay_s = 3.0
    started = time.monotonic()
    result = standardizer(vertex, store(), timeout_s=0.5).answer("free_text", VALUE, allowed=ALLOWED)
    assert time.monotonic() - started < 2.5
    assert result.source == "fallback" and "unavailable" in result.reason


def test_the_rate_limit_takes_the_fallback_when_no_slot_frees_in_time(vertex, store):
    service = standardizer(vertex, store(), rate_per_minute=1, timeout_s=0.2)
    assert service.answer("free_text", "a", allowed=ALLOWED).source == "model"
    limited = service.answer("free_text", "b", allowed=ALLOWED)
    assert limited.source == "fallback" and "rate" in limited.reason
    assert len(vertex.requests) == 1


def test_logs_carry_the_value_hash_never_the_value(vertex, store, caplog):
    caplog.set_level(logging.DEBUG)
    service = standardizer(vertex, store())
    service.answer("series_description", VALUE, allowed=ALLOWED)
    service.answer("series_description", VALUE, allowed=ALLOWED)
    vertex.status = 500
    service.answer("series_description", VALUE + " 2", allowed=ALLOWED)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert value_hash(VALUE) in text and value_hash(VALUE + " 2") in text
    assert "MRN-778899" not in text and "t2 axial" not in text


def test_config_picks_the_standardizer(vertex, store):
    assert isinstance(standardizer_from_config(AppConfig(), store()), FakeStandardizer)
    config = AppConfig.model_validate({"settings": {"ai_standardizer": {"model": MODEL, "endpoint": vertex.url}}})
    assert isinstance(standardizer_from_config(config, store()), VertexStandardizer)
    with pytest.raises(ValueError, match="default"):
        AIStandardizer(fallback="default")


def _rule_test_config(vertex) -> AppConfig:
    return AppConfig.model_validate({
        "settings": {"ai_standardizer": settings(vertex).model_dump()},
        "destinations": [{"id": "a", "type": "filesystem", "path": "out"}],
        "rulesets": [{"id": "main", "rules": [{"id": "r", "destinations": ["a"], "actions": [
            {"action": "ai_standardize", "tag": "SeriesDescription", "kind": "series_description",
             "allowed": ALLOWED}]}]}]})


def test_the_rule_test_shows_what_the_model_answered_and_whether_from_the_cache(vertex, tmp_path, capsys):
    """The dry run lists each value looked up and its source; the command line's
    --dry-run asks no model and answers from serve's cache only."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from shared.cli import main
    from shared.dryrun import dry_run
    from shared.messages import IngestMetadata
    from shared.morph_services import MorphServices

    config = _rule_test_config(vertex)
    instance = tmp_path / "mr.dcm"
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    ds.SeriesDescription = "t2 axial"
    ds.save_as(instance)
    docs = SQLiteDocumentStore(SQLiteDatabase(tmp_path / "data" / "state.db"))  # serve's store
    services = MorphServices.from_config(config, standardizer=standardizer(vertex, docs))
    first, second = (dry_run(config, instance, IngestMetadata(), services=services) for _ in range(2))
    assert [(lk["value"], lk["source"]) for lk in first["lookups"]] == [("T2 AX", "model")]
    assert first["lookups"][0]["latency_ms"] is not None and first["standardizer"] == MODEL
    assert [(lk["value"], lk["source"]) for lk in second["lookups"]] == [("T2 AX", "cache")]
    assert {d["name"]: d["after"] for d in first["diff"]}["SeriesDescription"] == "T2 AX"
    assert len(vertex.requests) == 1

    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.model_dump_json(by_alias=True, exclude_none=True))
    other = tmp_path / "other.dcm"
    ds.SeriesDescription = "flair"
    ds.save_as(other)
    assert main(["rules", "test", "--config", str(config_file), "--data-dir", str(tmp_path / "data"), "--dry-run",
                 str(instance), str(other)]) == 0
    out = capsys.readouterr().out
    cached, uncached = (json.loads(part) for part in out.replace("}\n{", "}\n\x00{").split("\x00"))
    assert [(lk["value"], lk["source"]) for lk in cached["lookups"]] == [("T2 AX", "cache")]
    [lookup] = uncached["lookups"]
    assert (lookup["value"], lookup["source"]) == ("flair", "fallback")
    assert len(vertex.requests) == 1  # --dry-run asked nothing
