"""The embedded bus: acknowledgement, retry with backoff, dead letters, crash recovery."""

import subprocess
import sys
import textwrap
import threading

from shared.adapters.local_queue import LocalQueue, Subscription
from shared.errors import RetryLater
from shared.messages import TOPIC_DEAD_LETTER, DeadLetter
from tests.support.procs import REPO, wait_for


def run_queue(queue: LocalQueue, *subs: Subscription):
    for sub in subs:
        queue.subscribe(sub)
    queue.start()
    return queue


def test_message_is_handled_once_and_acknowledged(tmp_path):
    seen = []
    q = run_queue(LocalQueue(tmp_path / "q.db", poll_s=0.05), Subscription("t", lambda b, a: seen.append((b, a))))
    try:
        for n in range(20):
            q.publish("t", f"m{n}".encode())
        wait_for(lambda: len(seen) == 20 and q.pending() == 0, 10)
        assert sorted(b for b, _ in seen) == sorted(f"m{n}".encode() for n in range(20))
        assert {a for _, a in seen} == {1}
    finally:
        q.stop()


def test_failures_are_retried_with_the_attempt_number(tmp_path):
    attempts = []

    def flaky(body, attempt):
        attempts.append(attempt)
        if attempt < 3:
            raise RetryLater("peer down", delay_s=0.05)

    q = run_queue(LocalQueue(tmp_path / "q.db", poll_s=0.02), Subscription("t", flaky, workers=1, max_attempts=5))
    try:
        q.publish("t", b"x")
        wait_for(lambda: q.pending() == 0, 10)
        assert attempts == [1, 2, 3]
        assert q.dead_letters() == []
    finally:
        q.stop()


def test_exhausted_message_goes_to_dead_letters_with_its_last_error(tmp_path):
    letters = []

    def broken(body, attempt):
        raise ValueError(f"broken on attempt {attempt}")

    q = run_queue(
        LocalQueue(tmp_path / "q.db", poll_s=0.02),
        Subscription("t", broken, workers=1, max_attempts=3, initial_backoff_s=0.01),
        Subscription(TOPIC_DEAD_LETTER, lambda b, a: letters.append(DeadLetter.from_bytes(b)), workers=1),
    )
    try:
        q.publish("t", b"payload")
        wait_for(lambda: letters, 10)
        assert letters[0].topic == "t" and letters[0].body == "payload" and letters[0].attempts == 3
        # a library's message may quote a tag value: the error is its type and where it was raised
        assert letters[0].last_error.startswith("ValueError raised at tests/unit/test_local_queue.py:")
        assert "broken" not in letters[0].last_error
        assert q.dead_letters()[0]["last_error"] == letters[0].last_error
        wait_for(lambda: q.pending() == 0, 5)
    finally:
        q.stop()


def test_message_leased_by_a_killed_process_is_redelivered(tmp_path):
    db, marker = tmp_path / "q.db", tmp_path / "leased"
    script = textwrap.dedent(f"""
        import pathlib, time
        from shared.adapters.local_queue import LocalQueue, Subscription
        q = LocalQueue(pathlib.Path({str(db)!r}), poll_s=0.02)
        def hang(body, attempt):
            pathlib.Path({str(marker)!r}).write_text(str(attempt))
            time.sleep(600)
        q.subscribe(Subscription("t", hang, workers=1))
        q.publish("t", b"survivor")
        q.start()
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        wait_for(marker.exists, 20)
    finally:
        child.kill()
        child.wait()
    got = []
    done = threading.Event()
    q = run_queue(LocalQueue(db, poll_s=0.02),
                  Subscription("t", lambda b, a: (got.append((b, a)), done.set()), workers=1))
    try:
        assert done.wait(10)
        assert got == [(b"survivor", 2)]
        wait_for(lambda: q.pending() == 0, 5)
    finally:
        q.stop()
