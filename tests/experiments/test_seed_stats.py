import numpy as np
import pytest

from experiments.seed_stats import (
    paired_difference,
    std_ratio_interval,
    t_central_probability,
    t_critical,
)


@pytest.mark.parametrize(
    "df, level, table",
    [
        (1, 0.90, 6.314),
        (2, 0.90, 2.920),
        (3, 0.90, 2.353),
        (4, 0.90, 2.132),
        (7, 0.90, 1.895),
        (30, 0.90, 1.697),
        (1, 0.95, 12.706),
        (4, 0.95, 2.776),
        (9, 0.99, 3.250),
    ],
)
def test_t_critical_matches_the_printed_tables(df, level, table):
    assert t_critical(df, level) == pytest.approx(table, abs=1e-3)


def test_t_probability_is_symmetric_and_tends_to_the_normal():
    assert t_central_probability(-2.0, 5) == t_central_probability(2.0, 5)
    assert t_central_probability(0.0, 3) == 0.0
    assert t_central_probability(1.959964, 2000) == pytest.approx(0.95, abs=1e-3)
    with pytest.raises(ValueError, match="at least 1"):
        t_central_probability(1.0, 0)


def correlated_pairs(rng, n, ratio, rho):
    z = rng.standard_normal((n, 2))
    return ratio * z[:, 0], rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_intervals_cover_the_truth_90_percent_of_the_time(rho):
    """5 paired seeds, true std ratio 1.5 and true mean difference 3 (simulated)."""
    rng = np.random.default_rng(0)
    trials, ratio_hits, diff_hits = 2000, 0, 0
    for _ in range(trials):
        x, y = correlated_pairs(rng, 5, 1.5, rho)
        lo, hi = std_ratio_interval(list(x), list(y))
        ratio_hits += lo <= 1.5 <= hi
        mean, half = paired_difference(list(x + 3), list(y))
        diff_hits += abs(mean - 3) <= half
    assert 0.87 < ratio_hits / trials < 0.93
    assert 0.87 < diff_hits / trials < 0.93


def test_correlated_seeds_give_a_narrower_ratio_interval():
    rng = np.random.default_rng(1)
    x, y = correlated_pairs(rng, 5, 1.0, 0.0)
    lo, hi = std_ratio_interval(list(x), list(y))
    near = list(y + 0.05 * rng.standard_normal(5))
    lo_near, hi_near = std_ratio_interval(near, list(y))
    assert hi_near / lo_near < hi / lo
    assert std_ratio_interval(list(y), list(y)) == pytest.approx((1.0, 1.0))


def test_too_few_seeds_or_no_spread_is_refused():
    assert std_ratio_interval([1.0, 1.0, 1.0], [0.1, 0.2, 0.4]) is None
    with pytest.raises(ValueError, match="at least 3 paired seeds"):
        std_ratio_interval([1.0, 2.0], [1.0, 3.0])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference([1.0], [2.0])
    # differences 0.1 and 0.2: standard error 0.05, t(1) = 6.314
    assert paired_difference([0.5, 0.7], [0.4, 0.5]) == pytest.approx(
        (0.15, 6.314 * 0.05), rel=1e-3
    )
