"""scripts/bench_sketches.py's randomized cases at small sizes: every estimate within the bound its answer states
(unique-dup, Zipf, floats, strings; 1 to 8 ranks, uneven and empty ones; every kind of the sketch op), and no rank
sends more than 64 KiB."""
from __future__ import annotations

import pytest

from scripts.bench_sketches import WIRE_GOAL, judge, run_cases


@pytest.mark.timeout(180)
def test_two_hundred_randomized_cases_within_their_stated_bounds():
    s = run_cases(200, 1000, seed=7)
    assert s["cases"] == 200 and s["judged"] >= 150
    assert s["within"] == s["judged"], s["failures"][:3]
    assert s["max_wire_bytes"] <= WIRE_GOAL
    assert set(s["by_kind"]) == {"kll", "tdigest", "frequent", "hll", "theta", "cpc", "count_min", "bloom"}


def test_the_judge_can_fail():
    """The referee itself: answers outside their bounds are caught (else the test above could not fail)."""
    assert judge("kll", [1, 2, 3, 4], {"quantiles": {"0.5": {"value": 4}}, "rank_error_bound": 0.1}, {})[0] is False
    assert judge("hll", [1, 2, 3], {"value": 30, "relative_standard_error": 0.01}, {})[0] is False
    assert judge("theta", [1, 2], {"value": 5, "lower": 4, "upper": 6}, {})[0] is False
    assert judge("frequent", [1, 1, 1, 2], {"items": [{"value": 2, "estimate": 1, "lower": 1, "upper": 1}],
                                             "max_error": 0}, {})[0] is False
    assert judge("count_min", ["a", "a"], {"total": 2, "relative_error": 0.1, "counts": [{"estimate": 1}]},
                 {"values": ["a"]})[0] is False
    assert judge("bloom", [1], {"contains": [{"maybe": False}]}, {"present": 1})[0] is False
