"""Temperature and weight schedules (spec 4.6 ATS, mean-teacher ramp-up, U2PL linear decay)."""
import math

import pytest

from nnunet_semicl.schedules import cosine_temperature, linear_decay, sigmoid_rampup


@pytest.mark.parametrize("period", [1.0, 4.0, 1000.0, 250 * 1000])
def test_cosine_temperature_quarter_points(period):
    lo, hi = 0.1, 1.0          # the paper's best tau-, tau+ (spec 4.6)
    mid = (lo + hi) / 2
    expected = [hi, mid, lo, mid, hi]
    got = [cosine_temperature(f * period, period, lo, hi) for f in (0, 0.25, 0.5, 0.75, 1.0)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_cosine_temperature_values_between_and_periodic():
    lo, hi, period = 0.07, 1.0, 10.0
    for t in [0.3, 1.7, 4.9, 6.2, 9.99]:
        tau = cosine_temperature(t, period, lo, hi)
        assert lo <= tau <= hi
        # the formula, independently: tau- + (tau+ - tau-) * cos^2(pi t / T)
        assert tau == pytest.approx(lo + (hi - lo) * math.cos(math.pi * t / period) ** 2, abs=1e-12)
        # periodic (the code's multi-cycle variant runs several periods)
        assert cosine_temperature(t + 3 * period, period, lo, hi) == pytest.approx(tau, abs=1e-12)
    # monotone decreasing over the first half period
    taus = [cosine_temperature(t, period, lo, hi) for t in range(0, 6)]
    assert all(a > b for a, b in zip(taus, taus[1:]))


def test_cosine_temperature_constant_when_bounds_equal():
    assert cosine_temperature(3.3, 10, 0.07, 0.07) == pytest.approx(0.07)


@pytest.mark.parametrize("period,lo,hi", [(0, 0.1, 1.0), (-5, 0.1, 1.0), (10, 0.0, 1.0), (10, -0.1, 1.0),
                                          (10, 1.0, 0.1)])
def test_cosine_temperature_invalid(period, lo, hi):
    with pytest.raises(ValueError):
        cosine_temperature(0, period, lo, hi)


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(1e6, 100) == 1.0           # clamped after the ramp
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5.0))   # clamped before it
    assert sigmoid_rampup(5, 0) == 1.0 and sigmoid_rampup(5, -1) == 1.0  # no ramp
    vals = [sigmoid_rampup(t, 40) for t in range(41)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert isinstance(sigmoid_rampup(3, 10), float)


def test_linear_decay():
    assert linear_decay(0, 100, 20.0) == 20.0
    assert linear_decay(100, 100, 20.0) == 0.0
    assert linear_decay(25, 100, 20.0) == pytest.approx(15.0)
    assert linear_decay(50, 100, 20.0, end=10.0) == pytest.approx(15.0)
    assert linear_decay(500, 100, 20.0, end=10.0) == 10.0          # clamped
    assert linear_decay(-5, 100, 20.0) == 20.0                     # clamped
    assert linear_decay(7, 0, 20.0, end=3.0) == 3.0                # zero length -> end
    assert linear_decay(50, 100, 1.0, end=3.0) == pytest.approx(2.0)  # increasing is allowed
