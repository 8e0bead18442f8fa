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
SHORT = 3  # a window with fewer observed points than this shows no spread to scale intervals by
WEIGHT_CLIP = 5.0  # relative-error loss weights (scale / |actual|), bounded for near-zero values
# Anomaly scoring is online with a bounded past: a point's answer depends on at most this many
# points before it, so a scheduled run reads this much context and no more (plan/anomaly_table.py).
MAX_CONTEXT = 2048


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


def error_scale(x: np.ndarray, obs: np.ndarray, lag: int) -> np.ndarray:
    """Per row, the mean absolute error of the seasonal naive forecast at `lag` over the window's
    observed points (lag 1 where they hold no pair `lag` apart): the scale of interval widths.

    Scale-equivariant and shift-invariant, so it may be computed on scaled windows.  A row with
    fewer than SHORT observed points shows no spread, so it is scaled by at least its mean |value|
    (wide bounds, never near-zero ones), and by NaN (NULL bounds) when that is 0 too.
    """
    def mae(k: int):
        if k >= x.shape[1]:
            return np.zeros(len(x)), np.zeros(len(x), np.int64)
        ok = obs[:, k:] & obs[:, :-k]
        total = np.where(ok, np.abs(x[:, k:] - x[:, :-k]), 0.0).sum(axis=1)
        count = ok.sum(axis=1)
        return total / np.maximum(count, 1), count

    scale, count = mae(lag)
    if lag > 1:
        naive, _ = mae(1)
        scale = np.where(count > 0, scale, naive)
    n_obs = obs.sum(axis=1)
    level = np.where(obs, np.abs(x), 0.0).sum(axis=1) / np.maximum(n_obs, 1)
    short = n_obs < SHORT
    scale = np.where(short, np.maximum(scale, level), np.maximum(scale, EPS_REL * level + TINY))
    return np.where(short & (scale == 0), np.nan, scale)


def split_phases(values: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row cut into its k phases, counted back from its end: phase r of a row of length L
    holds its points at times t = L + r (mod k), whose next value is step r + 1 of the row.
    A 15-minute series becomes 4 hourly ones. Returns the flat values and lengths of the n * k
    rows, ordered by row, then phase."""
    n = len(lengths)
    row = np.repeat(np.arange(n), lengths)
    t = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    phase = (t - lengths[row]) % k
    order = np.lexsort((t, phase, row))
    return values[order], np.bincount(row * k + phase, minlength=n * k)


def interleave(parts: np.ndarray, k: int, horizon: int) -> np.ndarray:
    """The (n * k, m) forecasts of `split_phases`' rows woven back into (n, horizon) steps."""
    n = len(parts) // k
    return parts.reshape(n, k, -1).transpose(0, 2, 1).reshape(n, -1)[:, :horizon]


class TrainingWindows:
    """Training and calibration windows cut from a padded matrix of series.

    The last `holdout` points of every series are never cut, so they can serve as a test set;
    the `calib_windows` horizons before them are kept for validation and interval calibration.
    """

    def __init__(self, series: list[np.ndarray], window: int, horizon: int, holdout: int,
                 calib_windows: int, relative_loss: bool = False):
        self.window, self.horizon, self.relative_loss = window, horizon, relative_loss
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
        keep = origins >= 1
        self.calib_rows, self.calib_origins = rows[keep], origins[keep]

    def cut(self, rows, origins, hist, rng=None, gap_p=0.0, shift_p=0.0):
        """Windows ending at `origins` with `hist` points of history, as (z, observed, scaled
        target, loss weight per step).  The weight is 1, or with `relative_loss` scale / |actual|
        (the loss then measures errors relative to the actual value, as MAPE does; actuals below a
        tenth of the window's level count as that), bounded and of mean 1."""
        w = self.window
        cols = origins[:, None] - w + np.arange(w)
        present = cols >= (origins - hist)[:, None]
        x = np.where(present, self.data[rows[:, None], cols.clip(0)], 0.0)
        y = self.data[rows[:, None], origins[:, None] + np.arange(self.horizon)]
        obs = present.copy()
        if rng is not None and shift_p > 0:
            x, y = self._level_shift(x, y, hist, rng, shift_p)
        if rng is not None and gap_p > 0:
            x, obs = self._gaps(x, obs, hist, rng, gap_p)
        z, mu, scale = robust_scale(x, present)
        target = np.clip((y - mu[:, None]) / scale[:, None], -TARGET_CLIP, TARGET_CLIP)
        weight = np.ones_like(target)
        if self.relative_loss:
            floor = np.maximum(0.1 * np.abs(mu), TINY)[:, None]
            weight = np.clip(scale[:, None] / np.maximum(np.abs(y), floor), 0, WEIGHT_CLIP)
            weight /= max(weight.mean(), TINY)
        return z, obs, target, weight

    def _level_shift(self, x, y, hist, rng, p):
        """Scale everything from a random point of the history on, targets too, by 1 +- 20-60%:
        a level shift, after which the new level is the one to follow."""
        b, w = x.shape
        sel = (rng.random(b) < p) & (hist >= 8)
        at = w - 2 - (rng.random(b) * np.maximum(hist - 5, 1)).astype(np.int64)  # 2 .. hist-3 back
        factor = np.where(sel, 1 + rng.choice([-1, 1], b) * rng.uniform(0.2, 0.6, b), 1.0)
        after = np.arange(w)[None, :] >= at[:, None]
        return np.where(after, x * factor[:, None], x), y * factor[:, None]

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

    def sampler(self, batch_size: int, steps: int, trunc_p: float, gap_p: float,
                min_history: int | None = None, shift_p: float = 0.0):
        """`BaseModel.fit`'s epoch: `steps` batches of random windows, each cut to a short history
        with probability `trunc_p`, given a filled-in gap with probability `gap_p` and a level
        shift with probability `shift_p`.  Windows end anywhere after `min_history` points
        (default: a full window, where the series allows)."""
        first = self.window if min_history is None else min_history

        def epoch(rng: np.random.Generator):
            for _ in range(steps):
                rows = rng.choice(self.trainable, batch_size)
                last = self.train_end[rows] - self.horizon
                # Full windows where the series allows; short histories come from truncation.
                origins = rng.integers(np.minimum(first, last), last + 1)
                short = np.ceil(np.exp(rng.uniform(0, np.log(self.window), batch_size)))
                hist = np.where(rng.random(batch_size) < trunc_p,
                                np.minimum(origins, short.astype(np.int64)), origins)
                yield self.cut(rows, origins, hist, rng, gap_p, shift_p)

        return epoch

    def calibration(self, series: int | None = None):
        """The calibration windows (of the first `series` series only, when given), with all the
        history they have."""
        keep = slice(None) if series is None else self.calib_rows < series
        return self.cut(self.calib_rows[keep], self.calib_origins[keep], self.calib_origins[keep])
