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


def proportion_ci(p: float, n: int, z: float = 1.96) -> list[float]:
    """Wilson's 95 % interval [low, high] of a share `p` of `n` items (sound at 0 % and
    100 %, where the normal approximation collapses to a point)."""
    if not n or p != p:
        return [float("nan"), float("nan")]
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def clustered_ratio_ci(parts: list[tuple[float, float]], z: float = 1.96) -> list[float]:
    """95 % normal interval [low, high] of sum(hits) / sum(n) over clusters of (hits, n),
    with the cluster-robust (linearised ratio) variance: items of one cluster (the pairs of
    one ranking) count as dependent, clusters as independent draws."""
    g = len(parts)
    total = sum(n for _, n in parts)
    if g < 2 or not total:
        return [float("nan"), float("nan")]
    p = sum(h for h, _ in parts) / total
    var = g / (g - 1) * sum((h - p * n) ** 2 for h, n in parts) / total ** 2
    half = z * math.sqrt(var)
    return [p - half, p + half]


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def figure(xs: list[float], **extra) -> dict:
    """{mean, low, high, n} of per-item values with the normal 95 % CI (`mean_ci`); every
    figure in results.json has this shape, plus what `extra` adds."""
    m, lo, hi = mean_ci([float(x) for x in xs])
    return {"mean": m, "low": lo, "high": hi, "n": len(xs), **extra}


def bootstrap_figure(xs: list[float], *, stat=None, n_boot: int = 1000, seed: int = 0,
                     **extra) -> dict:
    """{mean, low, high, n}: `stat` (default the mean) of per-item values with a 95 %
    percentile-bootstrap CI over items (for skewed figures such as the expected maximum
    toxicity and the toxicity probability, Gehman et al. 2020)."""
    import random

    stat = stat or (lambda v: sum(v) / len(v))
    xs = [float(x) for x in xs]
    if not xs:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0,
                **extra}
    rng = random.Random(seed)
    n = len(xs)
    boots = sorted(stat([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo, hi = boots[int(0.025 * (n_boot - 1))], boots[int(round(0.975 * (n_boot - 1)))]
    return {"mean": stat(xs), "low": lo, "high": hi, "n": n, "ci": "bootstrap", **extra}


def win_figure(outcomes: list[float]) -> dict:
    """A win rate: outcomes 1 (win), 0.5 (tie), 0 (loss), ties counted half (paper section
    4.1), with the counts so that runs can be pooled exactly."""
    return figure(outcomes, wins=outcomes.count(1.0), ties=outcomes.count(0.5),
                  losses=outcomes.count(0.0))
