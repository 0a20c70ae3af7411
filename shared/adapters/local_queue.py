"""The embedded runtime's bus: a durable SQLite queue with acknowledgement semantics.

A message is a row. A worker leases it (attempts + 1), runs the handler, and deletes
the row only when the handler returns: a ``kill -9`` at any point leaves the row, and
the next start releases every lease, so nothing is lost. A failed attempt makes the
row visible again after an exponential backoff; after ``max_attempts`` it moves, in
the same transaction, to the ``dead_letters`` table and onto the ``dead-letter``
topic, whose handler turns it into an exception record.

persist-queue's SQLiteAckQueue was the first candidate, but it has no delayed
visibility (backoff) and no per-topic consumers, which are the point here.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.adapters.sqlite import SQLiteDatabase
from shared.errors import RetryLater
from shared.logs import describe_error
from shared.messages import TOPIC_DEAD_LETTER, DeadLetter, Message

log = logging.getLogger(__name__)

Handler = Callable[[bytes, int], None]  # (body, attempt starting at 1)


@dataclass
class Subscription:
    topic: str
    handler: Handler
    workers: int = 2
    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL,
  body BLOB NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  available_at REAL NOT NULL,
  leased INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (topic, leased, available_at, id);
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL,
  body BLOB NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  created_at REAL NOT NULL
);
"""


class LocalQueue:
    def __init__(self, path: Path, poll_s: float = 0.5):
        # Publishes fsync (a C-STORE answer may depend on them); lease/ack bookkeeping
        # need not: a lost ack after power loss only means one redelivery.
        self._publish_db = SQLiteDatabase(path, synchronous="FULL")
        self._work_db = SQLiteDatabase(path, synchronous="NORMAL")
        self._publish_db.conn().executescript(_SCHEMA)
        self._poll_s = poll_s
        self._subs: dict[str, Subscription] = {}
        self._wake: dict[str, threading.Condition] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # --- Bus port ---------------------------------------------------------------

    def publish(self, topic: str, message: Message | bytes, *, sync: bool = True) -> None:
        """Commit ``message``; with ``sync`` (the default) the commit is fsynced before
        this returns. See :meth:`from_handlers` for when that can be skipped."""
        body = message if isinstance(message, bytes) else message.to_bytes()
        now = time.time()
        db = self._publish_db if sync else self._work_db
        db.conn().execute(
            "INSERT INTO messages (topic, body, available_at, created_at) VALUES (?,?,?,?)",
            (topic, body, now, now),
        )
        cond = self._wake.get(topic)
        if cond:
            with cond:
                cond.notify()

    def from_handlers(self) -> "HandlerBus":
        """The bus for stage handlers. Their publishes need no fsync of their own: the
        handler's ack is committed after them to the same write-ahead log, so a power
        loss can only drop a publish together with the ack that follows it, and the
        message is then handled again."""
        return HandlerBus(self)

    # --- consumers --------------------------------------------------------------

    def subscribe(self, sub: Subscription) -> None:
        self._subs[sub.topic] = sub
        self._wake[sub.topic] = threading.Condition()

    def start(self, *, release_leases: bool = True) -> None:
        """Start the consumers. ``release_leases``: this process owns the queue, so every
        lease left is from a previous run that died (a worker process of a running
        owner passes False)."""
        if release_leases:
            released = self._work_db.conn().execute("UPDATE messages SET leased=0 WHERE leased=1").rowcount
            if released:
                log.info("released %d message lease(s) left by the previous run", released)
        for sub in self._subs.values():
            for n in range(sub.workers):
                t = threading.Thread(target=self._work, args=(sub,), name=f"queue-{sub.topic}-{n}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        for cond in self._wake.values():
            with cond:
                cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _lease(self, topic: str):
        return self._work_db.conn().execute(
            "UPDATE messages SET leased=1, attempts=attempts+1 WHERE id = ("
            " SELECT id FROM messages WHERE topic=? AND leased=0 AND available_at<=?"
            " ORDER BY available_at, id LIMIT 1) RETURNING id, body, attempts",
            (topic, time.time()),
        ).fetchone()

    def _work(self, sub: Subscription) -> None:
        cond = self._wake[sub.topic]
        while not self._stopping.is_set():
            row = self._lease(sub.topic)
            if row is None:
                with cond:
                    cond.wait(self._poll_s)
                continue
            msg_id, body, attempt = row
            try:
                sub.handler(body, attempt)
            except Exception as exc:  # any failure: retry, then dead-letter
                delay = exc.delay_s if isinstance(exc, RetryLater) and exc.delay_s is not None else sub.backoff(attempt)
                # described without file names or library messages: they may hold tag values
                self._nack(sub, msg_id, body, attempt, describe_error(exc, typed=True), delay)
            else:
                self._work_db.conn().execute("DELETE FROM messages WHERE id=?", (msg_id,))

    def _nack(self, sub: Subscription, msg_id: int, body: bytes, attempt: int, error: str, delay: float) -> None:
        now = time.time()
        if attempt < sub.max_attempts:
            log.warning("%s message %d attempt %d failed, retry in %.1fs: %s", sub.topic, msg_id, attempt, delay, error)
            self._work_db.conn().execute(
                "UPDATE messages SET leased=0, available_at=?, last_error=? WHERE id=?",
                (now + delay, error, msg_id),
            )
            return
        log.error("%s message %d dead-lettered after %d attempts: %s", sub.topic, msg_id, attempt, error)
        with self._work_db.transaction() as conn:
            conn.execute("DELETE FROM messages WHERE id=?", (msg_id,))
            conn.execute(
                "INSERT INTO dead_letters (topic, body, attempts, last_error, created_at) VALUES (?,?,?,?,?)",
                (sub.topic, body, attempt, error, now),
            )
            if sub.topic != TOPIC_DEAD_LETTER:
                letter = DeadLetter(topic=sub.topic, body=bytes(body).decode(errors="replace"), attempts=attempt,
                                    last_error=error)
                conn.execute(
                    "INSERT INTO messages (topic, body, available_at, created_at) VALUES (?,?,?,?)",
                    (TOPIC_DEAD_LETTER, letter.to_bytes(), now, now),
                )

    # --- inspection ---------------------------------------------------------------

    def pending(self, topic: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM messages", ()
        if topic:
            sql, args = sql + " WHERE topic=?", (topic,)
        return self._work_db.conn().execute(sql, args).fetchone()[0]

    def queued(self) -> list[tuple[str, bytes]]:
        """(topic, body) of every message not yet acknowledged, leased ones included
        (retention keeps the objects they name)."""
        rows = self._work_db.conn().execute("SELECT topic, body FROM messages").fetchall()
        return [(topic, bytes(body)) for topic, body in rows]

    def dead_letters(self) -> list[dict]:
        rows = self._work_db.conn().execute(
            "SELECT topic, body, attempts, last_error FROM dead_letters ORDER BY id"
        ).fetchall()
        return [dict(topic=t, body=bytes(b).decode(), attempts=a, last_error=e) for t, b, a, e in rows]


class HandlerBus:
    """Bus port for code running inside a queue handler (see LocalQueue.from_handlers)."""

    def __init__(self, queue: LocalQueue):
        self._queue = queue

    def publish(self, topic: str, message: Message | bytes) -> None:
        self._queue.publish(topic, message, sync=False)
