"""Keeping patient data out of logs and exception records.

Tag values (names, IDs, accession numbers, dates...) are patient data. This project's
own messages name elements and say why; they never quote a value. What others write
is handled here:

- **exception text**: an OS error carries the file name (rendered from tags by a name
  template), a library's message may quote the value it choked on. Records and log
  lines describe an error with :func:`describe_error`: the project's own errors as
  they are, an OS error by its errno and text without the file name, anything else by
  its type and where it was raised, without its message.
- **logs**: :func:`install` (called by the runtimes: ``axiom-flow``, its pipeline
  processes and the GCP runtime) makes every log record safe when it is created: the
  messages of pydicom's logger and of Python warnings (pydicom warns and logs the
  same text, quoting invalid values) have quoted values withheld; tracebacks keep
  their frames but lose the exception messages; no other library's message is
  longer than :data:`MAX_MESSAGE`. pydicom's validation of values as they are read, which only
  warns, is turned off (``reading_validation_mode = IGNORE``): match validates what
  it needs itself (``shared/rules.validate_instance``). That setting is made when
  pydicom is imported (:func:`after_import`), so installing imports no pydicom.

Output: :func:`configure` is the one logging setup of every process (``axiom-flow``
and its pipeline children, the SCP gateway, the Cloud Functions). ``text`` is a line
for people; ``json`` is one object a line in Cloud Logging's structured format
(https://cloud.google.com/logging/docs/structured-logging): ``severity``, ``message``,
``time``, ``logging.googleapis.com/labels`` (the ids of what is being worked on, set by
:func:`labelled` for everything logged inside) and ``logging.googleapis.com/trace``
(set by :func:`traced`). The field names are those of google-cloud-logging's
``StructuredLogHandler``; that library (and its gRPC stack) is not needed to write them.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Literal, Mapping

from shared.errors import DeliveryRefused, RetryLater, Unprocessable

# Errors this project raises with reasons written for an operator, without values.
OWN_ERRORS = (RetryLater, Unprocessable, DeliveryRefused)
# Loggers of libraries that put values in their messages.
VALUE_ECHOING_LOGGERS = ("pydicom", "py.warnings")
# Loggers of this project: their messages hold no values and are left as they are.
PROJECT_LOGGERS = ("shared", "scp_gateway", "functions", "axiom")
MAX_MESSAGE = 2000
WITHHELD = "<value withheld>"
# From the first quote to the last one of the same kind: a value quoted by repr() may
# itself hold the other kind of quote, and one holding its own kind ends at the last.
_QUOTED = re.compile(r"(['\"]).*\1", re.DOTALL)
_REPO = Path(__file__).resolve().parents[1]


def describe_os_error(exc: OSError) -> str:
    """``ENOSPC: No space left on device``: the errno and its text, never the file
    names (``str(exc)`` includes them)."""
    if exc.errno is None:
        return type(exc).__name__
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name}: {exc.strerror or os.strerror(exc.errno)}"


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``path:line`` (relative to the project when in it)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return ""
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        shown = str(path.resolve().relative_to(_REPO))
    except ValueError:
        shown = path.name
    return f"{shown}:{frame.lineno}"


def describe_error(exc: BaseException, *, typed: bool = False) -> str:
    """A description of ``exc`` fit for a log line or an exception record: the
    project's own errors by their reason (with ``typed``, after their type name), an
    OS error by errno (no file name), any other by its type and where it was raised
    (its message may quote a value)."""
    if isinstance(exc, OWN_ERRORS):
        return f"{type(exc).__name__}: {exc}" if typed else str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} ({describe_os_error(exc)})"
    where = _raised_at(exc)
    return f"{type(exc).__name__} raised at {where}" if where else type(exc).__name__


def size_text(n: int) -> str:
    """A byte count as people read it in a reason: 1.5 GB, 256 MB, 12 KB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def redact(text: str) -> str:
    """``text`` with quoted parts withheld and cut to :data:`MAX_MESSAGE` characters:
    for messages of libraries that quote the values they complain about."""
    return _cap(_QUOTED.sub(WITHHELD, text))


def _cap(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE} characters withheld)"


def safe_traceback(exc_info) -> str:
    """A traceback with its frames (files, lines, code) but without exception
    messages: each exception of the chain is shown by :func:`describe_error`."""
    _, exc, _ = exc_info
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    parts = []
    for exc in reversed(chain):
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
        parts.append("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
                     + describe_error(exc))
    return "\n\nThe above exception led to the following one:\n\n".join(parts)


def _scrub(record: logging.LogRecord) -> None:
    try:
        if record.name.startswith(VALUE_ECHOING_LOGGERS):
            record.msg, record.args = redact(record.getMessage()), ()
        elif not record.name.startswith(PROJECT_LOGGERS):
            message = record.getMessage()
            if len(message) > MAX_MESSAGE:
                record.msg, record.args = _cap(message), ()
    except Exception:  # arguments that do not fit the message: logging would print them raw
        record.msg, record.args = f"a log message of {record.name} withheld: it could not be formatted", ()
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = safe_traceback(record.exc_info)


_installed = False


def _ignore_reading_validation(pydicom_config: ModuleType) -> None:
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class _ThenLoader(importlib.abc.Loader):
    """``loader``, calling ``then(module)`` once it has run the module's code."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[ModuleType], None]):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.then(module)

    def __getattr__(self, name: str):  # get_source, get_filename... for tracebacks and inspect
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Ahead of the other finders until module ``name`` is imported: its spec gets a
    loader that calls ``then`` after the module's code ran."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once; the finders after it find the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


def after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Call ``then(module)`` with module ``name``: now when it is imported already, else
    as soon as something imports it. A process that never uses the module does not
    pay for importing it (pydicom imports numpy, when installed, for its pixel
    handlers: the Cloud Functions' cold start, docs/architecture.md)."""
    module = sys.modules.get(name)
    if module is not None:
        then(module)
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def install() -> None:
    """Make every log record of this process safe (see the module docstring).
    Idempotent; call it once per process, early."""
    global _installed
    if _installed:
        return
    _installed = True
    after_import("pydicom.config", _ignore_reading_validation)
    make_record = logging.getLogRecordFactory()

    def safe_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(safe_record)
    logging.captureWarnings(True)  # warnings become records of "py.warnings"


# --- output ---------------------------------------------------------------------------

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Cloud Logging's LogSeverity names, from the highest Python level each covers
_SEVERITIES = ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
               (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG"))
LABELS_FIELD = "logging.googleapis.com/labels"
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
SOURCE_FIELD = "logging.googleapis.com/sourceLocation"

# What is being worked on (stage, sop_uid, destination, rule, listener, source): ids,
# never tag values. A context variable, so every line logged inside carries them
# without each call passing them, and each worker thread has its own.
_LABELS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("axiom_log_labels", default={})
_TRACE: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar("axiom_log_trace", default={})
_format: LogFormat = "text"


def severity(levelno: int) -> str:
    """Cloud Logging's severity for a Python level (a custom level counts as the one below it)."""
    for floor, name in _SEVERITIES:
        if levelno >= floor:
            return name
    return "DEFAULT"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, as Cloud Logging reads it from stdout/stderr: the special
    fields become the entry's severity, labels, trace and source location; the others
    (``logger``, the fields a line adds with ``extra={"fields": {...}}``) its jsonPayload.
    An exception's text is the safe traceback (:func:`safe_traceback`) after the message."""

    def __init__(self, static_labels: Mapping[str, str] | None = None):
        super().__init__()
        self.static_labels = dict(static_labels or {})

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}\n{record.exc_text or safe_traceback(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
        entry: dict[str, object] = {
            "severity": severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds")
                            .replace("+00:00", "Z"),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        labels = {**self.static_labels, **getattr(record, "labels", _LABELS.get())}
        if labels:
            entry[LABELS_FIELD] = {k: str(v) for k, v in labels.items()}
        entry.update(getattr(record, "trace", _TRACE.get()))
        entry[SOURCE_FIELD] = {"file": record.pathname, "line": record.lineno, "function": record.funcName}
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Context(logging.Filter):
    """Copies the labels and trace of the logging thread onto the record when it is
    handled (a handler may format it later, elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "labels"):
            record.labels = _LABELS.get()
        if not hasattr(record, "trace"):
            record.trace = _TRACE.get()
        return True


def configure(level: int | str = "INFO", fmt: LogFormat | None = None, *, process_label: str | None = None,
              stream=None, force: bool = False) -> None:
    """The logging setup of a process: ``level``, ``fmt`` (``text`` or ``json``; default
    ``$AXIOM_LOG_FORMAT``, else text) on stderr, pynetdicom at WARNING unless
    ``$AXIOM_PYNETDICOM_LOG_LEVEL`` says otherwise (its INFO is a line per association
    and request), httpx at WARNING, and :func:`install`'s scrubbing. ``process_label`` names a child
    process (``pipeline``): in the logger name in text, as the ``process`` label in JSON.
    As ``logging.basicConfig``, it leaves a root logger that has handlers as it is (a host
    that set up logging, such as a test running ``main()``) unless ``force``; the scrubbing
    is installed either way."""
    global _format
    fmt = fmt or os.environ.get("AXIOM_LOG_FORMAT") or "text"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    if root.handlers and not force:
        install()
        return
    _format = fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter({"process": process_label} if process_label else None))
    else:
        name = f"%(name)s[{process_label}]" if process_label else "%(name)s"
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", name)))
    handler.addFilter(_Context())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(os.environ.get("AXIOM_PYNETDICOM_LOG_LEVEL", "WARNING"))
    # httpx logs every request at INFO: a line per API call of the CLI, per STOW-RS batch
    logging.getLogger("httpx").setLevel(logging.WARNING)
    install()


def current_format() -> LogFormat:
    """The format :func:`configure` set in this process (for its child processes)."""
    return _format


@contextlib.contextmanager
def labelled(**labels: object) -> Iterator[None]:
    """Every line logged inside (in this thread or task) carries ``labels`` (ids only:
    UIDs, destination, rule and listener ids; never a tag value). ``None`` values are left out."""
    token = _LABELS.set({**_LABELS.get(), **{k: str(v) for k, v in labels.items() if v is not None}})
    try:
        yield
    finally:
        _LABELS.reset(token)


def add_labels(**labels: object) -> None:
    """Add labels for the rest of the enclosing :func:`labelled` block (say, the SOP
    Instance UID once the header is read)."""
    _LABELS.set({**_LABELS.get(), **{k: str(v) for k, v in labels.items() if v is not None}})


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d+))?(?:;o=([01]))?$")


def trace_fields(headers: Mapping[str, str], project: str | None = None) -> dict[str, object]:
    """Cloud Logging's trace fields for a request: from its W3C ``traceparent`` header
    (https://www.w3.org/TR/trace-context/) or else Google's ``X-Cloud-Trace-Context``
    (``TRACE_ID/SPAN_ID;o=1``, the span id in decimal); the trace as
    ``projects/PROJECT/traces/TRACE_ID``, PROJECT from ``$GOOGLE_CLOUD_PROJECT``. Empty
    without a project or a well-formed header."""
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        return {}
    get = {k.lower(): v for k, v in headers.items() if isinstance(v, str)}.get
    parsed = _TRACEPARENT.match((get("traceparent") or "").strip())
    if parsed and parsed[1] != "0" * 32:
        trace_id, span_id, sampled = parsed[1], parsed[2], bool(int(parsed[3], 16) & 1)
    else:
        parsed = _CLOUD_TRACE.match((get("x-cloud-trace-context") or "").strip())
        if not parsed:
            return {}
        trace_id, sampled = parsed[1].lower(), parsed[3] == "1"
        span_id = f"{int(parsed[2]):016x}" if parsed[2] and int(parsed[2]) < 2**64 else None
    fields: dict[str, object] = {TRACE_FIELD: f"projects/{project}/traces/{trace_id}", SAMPLED_FIELD: sampled}
    if span_id and span_id != "0" * 16:
        fields[SPAN_FIELD] = span_id
    return fields


@contextlib.contextmanager
def traced(headers: Mapping[str, str], project: str | None = None) -> Iterator[None]:
    """Every line logged inside carries the trace of the request with ``headers``
    (:func:`trace_fields`), so Cloud Logging shows it under that request."""
    token = _TRACE.set(trace_fields(headers, project))
    try:
        yield
    finally:
        _TRACE.reset(token)


class StageRun:
    """One call of a pipeline stage: its outcome, noted by the stage where its return
    value does not tell (quarantined), and its timing."""

    def __init__(self, stage: str):
        self.stage = stage
        self.outcome: str | None = None
        self.started = time.perf_counter()


_RUN: contextvars.ContextVar[StageRun | None] = contextvars.ContextVar("axiom_stage_run", default=None)
STAGE_LOGGER = logging.getLogger("axiom.stages")
# outcomes that are a problem of the instance or the destination (WARNING), or of this program (ERROR)
_WARNING_OUTCOMES = frozenset({"quarantined", "failed", "refused", "retry"})


@contextlib.contextmanager
def stage_run(stage: str, **labels: object) -> Iterator[StageRun]:
    """Runs a stage call with ``stage`` and ``labels`` on every line logged inside, then
    logs its line: ``stage_done`` with ``stage``, ``outcome`` (the caller's
    ``run.outcome``; ``retry`` when it raised RetryLater, ``error`` when it raised
    anything else, unless it noted one) and ``duration_ms``
    (docs/architecture.md, "Observability": the log-based metrics count these)."""
    run = StageRun(stage)
    token = _RUN.set(run)
    try:
        with labelled(stage=stage, **labels):
            try:
                yield run
            except RetryLater:
                run.outcome = run.outcome or "retry"
                raise
            except BaseException:
                run.outcome = run.outcome or "error"
                raise
            finally:
                _stage_done(run)
    finally:
        _RUN.reset(token)


def note_outcome(outcome: str) -> None:
    """The outcome of the stage call running in this context (see :func:`stage_run`)."""
    run = _RUN.get()
    if run is not None:
        run.outcome = outcome


def _stage_done(run: StageRun) -> None:
    outcome = run.outcome or "done"
    duration_ms = round((time.perf_counter() - run.started) * 1000, 3)
    level = (logging.ERROR if outcome == "error" else logging.WARNING if outcome in _WARNING_OUTCOMES
             else logging.INFO)
    if STAGE_LOGGER.isEnabledFor(level):
        labels = _LABELS.get()
        about = " ".join(f"{k}={v}" for k, v in labels.items() if k != "stage")
        STAGE_LOGGER.log(level, "stage %s done: %s in %.1f ms (%s)", run.stage, outcome, duration_ms, about,
                         extra={"fields": {"event": "stage_done", "stage": run.stage, "outcome": outcome,
                                           "duration_ms": duration_ms}})
