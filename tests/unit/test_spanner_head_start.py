"""How long a fast source lets the slowest of a fan-out go first (shared/spanner/engine.py)."""

from __future__ import annotations

import math

import pytest

from shared.spanner.engine import HEAD_START_MAX_S, _head_start


@pytest.mark.parametrize(("expected_ms", "slowest_ms", "wait_s"), [
    (40.0, 230.0, 0.0115),  # much faster: 5% of the slowest's time
    (40.0, 2000.0, HEAD_START_MAX_S),  # capped
    (130.0, 230.0, 0.0),  # more than half the slowest's time: starts at once
    (230.0, 230.0, 0.0),  # the slowest itself
    (40.0, math.inf, 0.0),  # a source not asked yet: nothing is known
    (math.inf, math.inf, 0.0),
])
def test_head_start(expected_ms, slowest_ms, wait_s):
    assert _head_start(expected_ms, slowest_ms) == pytest.approx(wait_s)
