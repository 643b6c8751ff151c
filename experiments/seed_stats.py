"""How far a handful of seeds can be trusted: 90% intervals for comparisons over seeds.

The variants of a grid share their seeds (the same data draw, initialisation and batch order),
so their scores are compared seed by seed. A mean difference gets the paired t interval. A ratio
of seed stds gets the Pitman-Morgan interval, which uses the correlation between the paired
scores; with 5 seeds even two models of equal spread show ratios from about 0.4x to 2.5x, and
the interval says so. Exact for integer degrees of freedom, so no statistics package is needed.
"""

from __future__ import annotations

import math
import statistics

LEVEL = 0.90


def t_central_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    cos, sin = math.cos(theta), math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= (2 * j - 1) / (2 * j) * cos * cos
            total += term
        return sin * total
    term, total = cos, 0.0
    for j in range(1, (df - 1) // 2 + 1):
        total += term
        term *= (2 * j) / (2 * j + 1) * cos * cos
    return 2 / math.pi * (theta + sin * total)


def t_critical(df: int, level: float = LEVEL) -> float:
    """The t with P(|T| <= t) = level: the half-width of a `level` interval in standard errors."""
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < level:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central_probability(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def paired_difference(x: list[float], y: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean of x - y over paired seeds and the half-width of its `level` t interval."""
    d = [a - b for a, b in zip(x, y, strict=True)]
    if len(d) < 2:
        raise ValueError(f"a paired interval needs at least 2 seeds, got {len(d)}")
    half = t_critical(len(d) - 1, level) * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.fmean(d), half


def std_ratio_interval(
    x: list[float], y: list[float], level: float = LEVEL
) -> tuple[float, float] | None:
    """`level` interval for std(x) / std(y) over paired seeds (Pitman-Morgan); None when either
    has no spread. Needs at least 3 seeds."""
    n = len(x)
    if n != len(y) or n < 3:
        raise ValueError(f"a std-ratio interval needs at least 3 paired seeds, got {n}, {len(y)}")
    vx, vy = statistics.variance(x), statistics.variance(y)
    if vx == 0 or vy == 0:
        return None
    r = statistics.correlation(x, y)
    k = 1 + 2 * (1 - r * r) * t_critical(n - 2, level) ** 2 / (n - 2)
    spread = math.sqrt(k * k - 1)
    ratio_sq = vx / vy
    return math.sqrt(ratio_sq * (k - spread)), math.sqrt(ratio_sq * (k + spread))
