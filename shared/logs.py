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
  it needs itself (``shared/rules.validate_instance``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import traceback
from pathlib import Path

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


def install() -> None:
    """Make every log record of this process safe (see the module docstring).
    Idempotent; call it once per process, early."""
    global _installed
    if _installed:
        return
    _installed = True
    from pydicom import config as pydicom_config

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    make_record = logging.getLogRecordFactory()

    def safe_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(safe_record)
    logging.captureWarnings(True)  # warnings become records of "py.warnings"
