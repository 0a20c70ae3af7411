"""The gateway polls fast only on associations that are receiving instances."""

import time

from scp_gateway.gateway import LoopDelay


class _Dul:
    _run_loop_delay = 0.001  # pynetdicom's default


class _Assoc:
    def __init__(self, alive=True):
        self.dul = _Dul()
        self.alive = alive

    def is_alive(self):
        return self.alive


def test_busy_while_storing_then_back_to_idle_when_quiet():
    delay = LoopDelay(busy_s=0.0001, idle_s=0.001, idle_after_s=0.05)
    active, quiet, closed = _Assoc(), _Assoc(), _Assoc()
    for assoc in (active, quiet, closed):
        delay.stored(assoc)
    assert {a.dul._run_loop_delay for a in (active, quiet, closed)} == {0.0001}
    time.sleep(0.06)
    delay.stored(active)
    delay.relax_idle()
    assert active.dul._run_loop_delay == 0.0001
    assert quiet.dul._run_loop_delay == 0.001 and closed.dul._run_loop_delay == 0.001
    closed.alive = False
    delay.stored(closed)
    delay.relax_idle()  # a finished association is forgotten at once
    assert closed.dul._run_loop_delay == 0.001
    assert list(delay._last_store) == [active]


def test_the_association_reactors_sleep_is_short_only_on_busy_threads(monkeypatch):
    import threading

    import pynetdicom.association

    from scp_gateway import gateway

    requested = []
    monkeypatch.setattr(gateway.time, "sleep", requested.append)
    clock = pynetdicom.association.time  # what pynetdicom's reactor calls sleep on

    class _Thread(threading.Thread):
        dul = _Dul()

        def run(self):
            clock.sleep(0.001)  # the reactor's own sleep
            clock.sleep(0.01)  # any other sleep in pynetdicom.association

    delay = LoopDelay(idle_after_s=60)
    busy, quiet = _Thread(), _Thread()
    delay.stored(busy)
    for thread in (busy, quiet):
        thread.start()
        thread.join()
    assert requested == [gateway.BUSY_LOOP_DELAY_S, 0.01, 0.001, 0.01]
    delay.relax_idle()
    assert busy not in LoopDelay._busy  # a finished association is forgotten
