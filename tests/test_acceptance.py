"""The acceptance test and the noise model (no TVM)."""

import pytest

from ms_droplet._acceptance import (
    NOISE_MARGIN,
    Outcome,
    between_call_noise,
    compare_samples,
    sure_gain_bound,
)
from ms_droplet._descent import compare_samples as reexported


@pytest.mark.parametrize(
    "inc, cand, outcome",
    [
        ([1.0, 1.01, 0.99], [0.5, 0.51, 0.49], Outcome.ACCEPT),
        ([1.0, 1.01, 0.99], [1.2, 1.21, 1.19], Outcome.REJECT),
        ([1.0], [0.5], Outcome.UNDECIDED),
        ([1.0, 1.0], [0.999, 0.999], Outcome.REJECT),  # below min_gain
        ([1.0, 1.0], [0.5, 0.5], Outcome.ACCEPT),  # zero variance, clear difference
        ([1.0, 0.6, 1.4], [0.9, 0.5, 1.3], Outcome.UNDECIDED),  # faster but not significant
        ([1.0, 1.0], [], Outcome.REJECT),
    ],
)
def test_compare_samples(inc, cand, outcome):
    assert compare_samples(inc, cand, p_value=0.05, min_gain=0.01).outcome is outcome


def test_descent_reexports_the_acceptance_test():
    assert reexported is compare_samples


def test_noise_needs_three_schedules_measured_twice():
    assert between_call_noise([[1.0, 1.1], [2.0, 2.2], [1.0]]) is None
    noise = between_call_noise([[1.0, 1.01], [2.0, 2.02], [3.0, 3.03]])
    assert noise == pytest.approx(0.00995, rel=1e-3)


def test_sure_gain_bound_is_clamped():
    assert sure_gain_bound(None, 0.01, 0.1) == 0.1
    assert sure_gain_bound(0.001, 0.01, 0.1) == 0.01
    assert sure_gain_bound(0.01, 0.01, 0.1) == pytest.approx(NOISE_MARGIN * 0.01)
    assert sure_gain_bound(1.0, 0.01, 0.1) == 0.1
