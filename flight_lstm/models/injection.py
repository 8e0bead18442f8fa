"""Anomalies planted into clean series, with their labels: the test material of the anomaly
detector where no labelled data exists (forecasting series, synthetic ones).

Five kinds, sized in units of the series' own noise (the robust spread of its first differences,
so a quiet series gets small anomalies and a noisy one large ones): a spike (1-3 points), a level
shift, a variance change, stuck values (the last value repeated) and a drift (a ramp); all but the
spike last a segment of 10-100 points and then end, and the whole segment is labelled.
"""
from __future__ import annotations

import numpy as np

KINDS = ("spike", "level_shift", "variance", "stuck", "drift")


def noise_scale(x: np.ndarray) -> float:
    """Robust spread of the first differences over sqrt(2): the noise of one point."""
    d = np.diff(x[np.isfinite(x)])
    if len(d) == 0:
        return 0.0
    mad = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)
    return float(mad if mad > 0 else np.mean(np.abs(d)) + 1e-12)


def inject(x: np.ndarray, rng: np.random.Generator, count: int, first: int = 32,
           kinds: tuple[str, ...] = KINDS) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """`count` anomalies of random kinds planted at random places after `first` points, apart
    from each other; returns (values, labels, [(kind, start, end exclusive)])."""
    x = np.array(x, np.float64)
    n = len(x)
    labels = np.zeros(n, bool)
    events = []
    sigma = noise_scale(x)
    for _ in range(count):
        kind = kinds[rng.integers(len(kinds))]
        length = 1 + int(rng.integers(3)) if kind == "spike" else int(rng.integers(10, 101))
        lo, hi = first, n - length - 1
        if hi <= lo:
            break
        start = int(rng.integers(lo, hi))
        if labels[max(start - 50, 0):start + length + 50].any():
            continue  # keep events apart, so each is its own incident
        seg = slice(start, start + length)
        sign = rng.choice([-1.0, 1.0])
        if kind == "spike":
            x[seg] += sign * rng.uniform(6, 20) * sigma
        elif kind == "level_shift":
            x[seg] += sign * rng.uniform(4, 10) * sigma
        elif kind == "variance":
            x[seg] += rng.normal(0, rng.uniform(4, 8) * sigma, length)
        elif kind == "stuck":
            before = x[:start][np.isfinite(x[:start])]
            x[seg] = before[-1] if len(before) else 0.0
        else:
            x[seg] += sign * np.linspace(0, rng.uniform(8, 20) * sigma, length)
        labels[seg] = True
        events.append((kind, start, start + length))
    return x, labels, sorted(events, key=lambda e: e[1])
