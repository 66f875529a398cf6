"""The one bisection (sttabt_edge/bisection.py) behind every knob search (#27)."""

import math

import pytest

from sttabt_edge.bisection import bisect, bisect_to


def test_probes_midpoints_in_order_and_returns_the_last_midpoint():
    probes = []
    x = bisect(lambda m: probes.append(m) or m < 0.3, 0.0, 1.0, 4)
    assert probes == [0.5, 0.25, 0.375, 0.3125]
    assert x == pytest.approx(0.28125)


@pytest.mark.parametrize("increasing", [True, False])
def test_meets_the_target_of_a_monotone_measure(increasing):
    f = math.tanh if increasing else (lambda v: -math.tanh(v))
    target = 0.4 if increasing else -0.4
    assert bisect_to(f, target, -3.0, 3.0, 40, increasing) == pytest.approx(math.atanh(0.4), abs=1e-9)


def test_an_unreachable_target_ends_at_an_end():
    assert bisect_to(lambda v: v, 5.0, 0.0, 1.0, 30) == pytest.approx(1.0, abs=1e-8)
    assert bisect_to(lambda v: v, -5.0, 0.0, 1.0, 30) == pytest.approx(0.0, abs=1e-8)
