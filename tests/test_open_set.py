"""How many known groups the open-set threshold calls unknown (`inference.open_set.rate_interval`)."""

from __future__ import annotations

import numpy as np
import pytest

from trafficlens.inference.open_set import _beta_cdf, rate_interval


def test_the_interval_is_where_simulated_thresholds_fall():
    """A threshold at the `rate` quantile of n validation fits: for uniform fits, the share of new
    known groups under it is the threshold itself, so the spread of thresholds over many draws of
    n validation groups is the spread of that share (for any continuous fit: ranks alone matter)."""
    rng = np.random.default_rng(0)
    for rate, n in ((0.05, 90), (0.025, 90), (0.1, 300), (0.05, 20)):
        thresholds = np.quantile(rng.random((20_000, n)), rate, axis=1)
        lo, hi = rate_interval(rate, n)
        assert (lo, hi) == pytest.approx((np.quantile(thresholds, 0.05), np.quantile(thresholds, 0.95)), abs=0.003)
    # more validation groups, a narrower interval around the rate
    assert np.diff(rate_interval(0.05, 1000)) < np.diff(rate_interval(0.05, 90)) / 3


@pytest.mark.parametrize("x, a, b, expected", [
    (0.5, 2.0, 3.0, 11 / 16),  # I_0.5(2, 3), by the binomial sum
    (0.3, 1.0, 1.0, 0.3),  # the uniform distribution
    (0.2, 1.0, 4.0, 1 - 0.8 ** 4),  # I_x(1, b) = 1 - (1 - x)^b
    (0.9, 3.0, 1.0, 0.9 ** 3),  # I_x(a, 1) = x^a
])
def test_incomplete_beta_against_closed_forms(x, a, b, expected):
    assert _beta_cdf(x, a, b) == pytest.approx(expected, abs=1e-10)
