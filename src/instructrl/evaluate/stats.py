"""Small statistics for evaluation tables (pure Python)."""

from __future__ import annotations

import math


def mean_ci(xs: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95 % confidence interval (mean, low, high).
    For win rates the outcomes are 1 (win), 0.5 (tie), 0 (loss), as the paper counts ties."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return m, m - half, m + half


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
