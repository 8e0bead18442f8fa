"""Series mechanics shared by every series model: Arrow lists in and out, gap filling, the last
window, scaling, and the windows cut for training.

All of it is vectorized numpy over every series of a batch at once, and none of it needs torch, so
a new series model (another frequency, another task) reuses it and only adds its network.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPS_REL = 1e-6  # scale floor relative to the level, so constant windows stay well defined
TINY = 1e-300  # scale floor for all-zero windows
TARGET_CLIP = 20.0  # training targets in scaled space; bounds degenerate (near-constant) windows


def to_arrow(series: list[np.ndarray]) -> pa.Array:
    """A list<float64> array from numpy series, built from one concatenated buffer."""
    lengths = np.array([len(s) for s in series], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([np.asarray(s, np.float64) for s in series]) if series else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float64()))


def flatten(series: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 with NaN for null/non-finite, per-row lengths) of a list array."""
    if isinstance(series, pa.ChunkedArray):
        series = series.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(series), 0).to_numpy().astype(np.int64)
    flat = pc.cast(pc.list_flatten(series), pa.float64(), safe=False)
    values = np.array(pc.fill_null(flat, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return values, lengths


def fill_gaps(values: np.ndarray, lengths: np.ndarray):
    """Linear interpolation of NaN inside each series, nearest value at the edges.

    Works on the flat values with per-position row ids: the previous/next observed position comes
    from a running max/min over positions and is used only if it belongs to the same row.
    Returns (filled values, observed mask, valid rows).
    """
    n, total = len(lengths), len(values)
    observed = np.isfinite(values)
    if observed.all():
        return values, observed, lengths > 0
    row = np.repeat(np.arange(n), lengths)
    valid = np.bincount(row, weights=observed, minlength=n) > 0
    pos = np.arange(total)
    prev = np.maximum.accumulate(np.where(observed, pos, -1))
    nxt = np.minimum.accumulate(np.where(observed, pos, total)[::-1])[::-1]
    prev_c, nxt_c = prev.clip(0), nxt.clip(max=total - 1)
    has_prev = (prev >= 0) & (row[prev_c] == row)
    has_next = (nxt < total) & (row[nxt_c] == row)
    pv, nv = values[prev_c], values[nxt_c]
    filled = values.copy()
    both = ~observed & has_prev & has_next
    w = (pos[both] - prev[both]) / (nxt[both] - prev[both])
    filled[both] = pv[both] * (1 - w) + nv[both] * w  # no overflow between values near the float64 limit
    only_prev = ~observed & has_prev & ~has_next
    only_next = ~observed & has_next & ~has_prev
    filled[only_prev], filled[only_next] = pv[only_prev], nv[only_next]
    return filled, observed, valid


def last_window(filled, observed, lengths, valid, window):
    """Right-aligned (n, window) matrices of the last points: values, present, observed.

    Invalid rows (no observed value) stay empty. One gather of n x window flat positions."""
    n = len(lengths)
    k = np.where(valid, np.minimum(lengths, window), 0)
    present = np.arange(window) >= (window - k)[:, None]
    if not present.any():
        return np.zeros((n, window)), present, present.copy()
    idx = np.where(present, np.cumsum(lengths)[:, None] - window + np.arange(window), 0)
    return np.where(present, filled[idx], 0.0), present, present & observed[idx]


def overflow_shift(x: np.ndarray) -> np.ndarray:
    """Per row, the power of two that brings values near the float64 limit down to [0.5, 1), so
    their variance cannot overflow (0 for every row below 2**500 ~ 3e150: their forecasts are
    unchanged). Dividing by a power of two is exact."""
    peak = np.abs(x).max(axis=1, initial=0.0)
    return np.where(peak > 2.0**500, np.frexp(peak)[1], 0)


def unshift(y: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Undo `overflow_shift`; a forecast past the float64 range stays at its largest finite value."""
    if not shift.any():
        return y
    limit = np.finfo(np.float64).max
    with np.errstate(over="ignore"):
        return np.clip(np.ldexp(y, shift[:, None]), -limit, limit)


def robust_scale(x: np.ndarray, present: np.ndarray):
    """Per-row (z, mean, scale) with scale = std + EPS_REL*|mean| + TINY; z is 0 where absent."""
    count = np.maximum(present.sum(axis=1), 1)
    mu = np.where(present, x, 0.0).sum(axis=1) / count
    dev = np.where(present, x - mu[:, None], 0.0)
    scale = np.sqrt((dev**2).sum(axis=1) / count) + EPS_REL * np.abs(mu) + TINY
    return dev / scale[:, None], mu, scale


class TrainingWindows:
    """Training and calibration windows cut from a padded matrix of series.

    The last `holdout` points of every series are never cut, so they can serve as a test set;
    the `calib_windows` horizons before them are kept for validation and interval calibration.
    """

    def __init__(self, series: list[np.ndarray], window: int, horizon: int, holdout: int,
                 calib_windows: int):
        self.window, self.horizon = window, horizon
        self.lengths = np.array([len(s) for s in series])
        filled, _, _ = fill_gaps(np.concatenate(series), self.lengths)
        self.data = np.full((len(series), self.lengths.max() + horizon), np.nan)
        r = np.repeat(np.arange(len(series)), self.lengths)
        c = np.arange(len(r)) - np.repeat(np.cumsum(self.lengths) - self.lengths, self.lengths)
        self.data[r, c] = filled
        # Training targets end before the calibration windows, which end before the holdout.
        self.train_end = self.lengths - holdout - calib_windows * horizon
        self.trainable = np.flatnonzero(self.train_end >= horizon + 1)
        if len(self.trainable) == 0:
            raise ValueError("series are too short for the holdout and calibration windows")
        origins = np.concatenate([self.train_end + k * horizon for k in range(calib_windows)])
        rows = np.tile(np.arange(len(series)), calib_windows)
        self.calib_rows, self.calib_origins = rows[origins >= 1], origins[origins >= 1]

    def cut(self, rows, origins, hist, rng=None, gap_p=0.0):
        """Windows ending at `origins` with `hist` points of history, as
        (z, observed, scaled target)."""
        w = self.window
        cols = origins[:, None] - w + np.arange(w)
        present = cols >= (origins - hist)[:, None]
        x = np.where(present, self.data[rows[:, None], cols.clip(0)], 0.0)
        obs = present.copy()
        if rng is not None and gap_p > 0:
            x, obs = self._gaps(x, obs, hist, rng, gap_p)
        z, mu, scale = robust_scale(x, present)
        y = self.data[rows[:, None], origins[:, None] + np.arange(self.horizon)]
        target = np.clip((y - mu[:, None]) / scale[:, None], -TARGET_CLIP, TARGET_CLIP)
        return z, obs, target

    def _gaps(self, x, obs, hist, rng, p):
        """Replace a random span with its linear interpolation and mark it unobserved."""
        b, w = x.shape
        g = rng.integers(1, self.horizon + 1, b)
        sel = (rng.random(b) < p) & (hist >= g + 3)
        a = w - hist + 1 + (rng.random(b) * np.maximum(hist - g - 2, 0)).astype(np.int64)
        pos = np.arange(w)[None, :]
        inside = sel[:, None] & (pos >= a[:, None]) & (pos < (a + g)[:, None])
        ar = np.arange(b)
        left, right = x[ar, (a - 1).clip(0, w - 1)], x[ar, (a + g).clip(0, w - 1)]
        t = (pos - a[:, None] + 1) / (g[:, None] + 1)
        x = np.where(inside, left[:, None] + (right - left)[:, None] * t, x)
        return x, obs & ~inside

    def sampler(self, batch_size: int, steps: int, trunc_p: float, gap_p: float):
        """`BaseModel.fit`'s epoch: `steps` batches of random windows, each cut to a short history
        with probability `trunc_p` and given a filled-in gap with probability `gap_p`."""

        def epoch(rng: np.random.Generator):
            for _ in range(steps):
                rows = rng.choice(self.trainable, batch_size)
                last = self.train_end[rows] - self.horizon
                # Full windows where the series allows; short histories come from truncation.
                origins = rng.integers(np.minimum(self.window, last), last + 1)
                short = np.ceil(np.exp(rng.uniform(0, np.log(self.window), batch_size)))
                hist = np.where(rng.random(batch_size) < trunc_p,
                                np.minimum(origins, short.astype(np.int64)), origins)
                yield self.cut(rows, origins, hist, rng, gap_p)

        return epoch

    def calibration(self):
        """The calibration windows, with all the history they have."""
        return self.cut(self.calib_rows, self.calib_origins, self.calib_origins)
