"""One global LSTM forecaster for hourly series, robust to scale, gaps and short histories.

Each series' last WINDOW points are scaled by their own mean and std, so one network serves any
level (1e-3 .. 1e6, negatives, constants).  An "observed" channel marks real points (0 for
left padding of short histories and for interpolated NaN gaps).  The LSTM reads the window one day
(SEASON points) per step, and a direct head predicts the HORIZON-step residual over a seasonal-naive
baseline in scaled space.  Longer horizons roll forward by feeding forecasts back in.  Intervals
are per-step quantiles of |scaled residual| measured on calibration windows that training never
saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch
from torch import nn

from .base import BaseModel, dataset_dir, now_iso, seed_everything, training_record
from .checks import between_batches
from .registry import ModelCard

MAX_HORIZON = 8760  # one year of hourly steps
EPS_REL = 1e-6  # scale floor relative to the level, so constant windows stay well defined
TINY = 1e-300  # scale floor for all-zero windows
TARGET_CLIP = 20.0  # training targets in scaled space; bounds degenerate (near-constant) windows
CHUNK_ROWS = 8192  # inference rows per network call
LEVELS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


@dataclass(frozen=True)
class ForecastResult:
    mean: np.ndarray  # (n, horizon) float64, 0 for invalid rows
    lo: np.ndarray | None  # (n, horizon) when a level was given
    hi: np.ndarray | None
    valid: np.ndarray  # (n,) bool: False for null, empty or all-NaN series


# -- vectorized series preparation ---------------------------------------------------------------


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


# -- the model -----------------------------------------------------------------------------------


class ForecastModel(BaseModel):
    kind = "forecast"

    def __init__(self, window: int = 336, horizon: int = 48, season: int = 24, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.1, levels: tuple[float, ...] = LEVELS):
        super().__init__(window=window, horizon=horizon, season=season, hidden=hidden,
                         layers=layers, dropout=dropout, levels=list(levels))
        if window % season or window < 7 * season:
            raise ValueError("window must be a multiple of season and at least 7 seasons")
        self.window, self.horizon, self.season = window, horizon, season
        self.tail = 7 * season  # last week, also fed straight to the head
        self.lstm = nn.LSTM(2 * season, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(hidden + 2 * self.tail, 256), nn.GELU(),
                                  nn.Linear(256, horizon))
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float64))
        self.register_buffer("abs_resid_q", torch.ones(len(levels), horizon, dtype=torch.float64))
        self.register_buffer("seasonal_lag", window - season + torch.arange(horizon) % season)

    def forward(self, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Scaled forecast (batch, horizon) from scaled window z and observed mask obs."""
        steps = torch.stack([z, obs], dim=-1).reshape(z.shape[0], -1, 2 * self.season)
        h = self.lstm(steps)[0][:, -1]
        tail = torch.cat([z[:, -self.tail:], obs[:, -self.tail:]], dim=1)
        return z[:, self.seasonal_lag] + self.head(torch.cat([h, tail], dim=1))

    def _scaled(self, x: np.ndarray, present: np.ndarray, obs: np.ndarray):
        z, mu, scale = robust_scale(x, present)
        with torch.inference_mode():
            out = self(torch.from_numpy(z).float(), torch.from_numpy(obs).float())
        return out.double().numpy(), mu, scale

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z, obs, target = batch
        return (self(z, obs) - target).abs().mean()

    def predict(self, series: pa.Array | pa.ChunkedArray, horizon: int = 48,
                level: float | None = None) -> ForecastResult:
        """Point forecasts (and a central `level` interval) for each series in a list array."""
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise ValueError(f"horizon must be an integer, got {horizon!r}")
        if not 1 <= horizon <= MAX_HORIZON:
            raise ValueError(f"horizon must be between 1 and {MAX_HORIZON}, got {horizon}")
        if level is not None and not 0.0 < float(level) < 1.0:
            raise ValueError(f"level must be in (0, 1), got {float(level):g}")
        values, lengths = flatten(series)
        filled, observed, valid = fill_gaps(values, lengths)
        x, present, obs = last_window(filled, observed, lengths, valid, self.window)
        shift = overflow_shift(x)
        x = np.ldexp(x, -shift[:, None])
        n, blocks = len(lengths), math.ceil(horizon / self.horizon)
        mean = np.zeros((n, blocks * self.horizon))
        scale0 = np.zeros(n)
        was_training = self.training
        self.eval()
        rows_all = np.flatnonzero(valid)
        for start in range(0, len(rows_all), CHUNK_ROWS):
            rows = rows_all[start:start + CHUNK_ROWS]
            xc, pc_, oc = x[rows], present[rows], obs[rows]
            for b in range(blocks):
                between_batches()  # a caller's cancel or time limit may stop a long horizon here
                out, mu, scale = self._scaled(xc, pc_, oc)
                y = mu[:, None] + scale[:, None] * out
                mean[rows, b * self.horizon:(b + 1) * self.horizon] = y
                if b == 0:
                    scale0[rows] = scale
                ones = np.ones_like(y, dtype=bool)
                xc = np.concatenate([xc[:, self.horizon:], y], axis=1)
                pc_ = np.concatenate([pc_[:, self.horizon:], ones], axis=1)
                oc = np.concatenate([oc[:, self.horizon:], ones], axis=1)
        self.train(was_training)
        mean = mean[:, :horizon]
        if level is None:
            return ForecastResult(unshift(mean, shift), None, None, valid)
        width = scale0[:, None] * self.interval_quantile(float(level), horizon)[None, :]
        return ForecastResult(unshift(mean, shift), unshift(mean - width, shift), unshift(mean + width, shift), valid)

    def interval_quantile(self, level: float, horizon: int) -> np.ndarray:
        """|scaled residual| quantile per step for `level`, interpolated over the stored grid.

        Steps past the direct head repeat its per-step quantiles, widened by sqrt(1 + block) for
        the error that recursive roll-forward accumulates.
        """
        levels = np.concatenate([[0.0], self.levels.numpy()])
        q = np.concatenate([np.zeros((1, self.horizon)), self.abs_resid_q.numpy()])
        lv = min(level, levels[-1])
        j = int(np.clip(np.searchsorted(levels, lv), 1, len(levels) - 1))
        frac = (lv - levels[j - 1]) / (levels[j] - levels[j - 1])
        per_step = q[j - 1] + frac * (q[j] - q[j - 1])
        steps = np.arange(horizon)
        return per_step[steps % self.horizon] * np.sqrt(1 + steps // self.horizon)


# -- training ------------------------------------------------------------------------------------


class _Windows:
    """Training and calibration windows cut from a padded matrix of series."""

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
        (z, observed, scaled target, mean, scale, raw target)."""
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
        return z, obs, target, mu, scale, y

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
        def epoch(rng: np.random.Generator):
            for _ in range(steps):
                rows = rng.choice(self.trainable, batch_size)
                last = self.train_end[rows] - self.horizon
                # Full windows where the series allows; short histories come from truncation.
                origins = rng.integers(np.minimum(self.window, last), last + 1)
                short = np.ceil(np.exp(rng.uniform(0, np.log(self.window), batch_size)))
                hist = np.where(rng.random(batch_size) < trunc_p,
                                np.minimum(origins, short.astype(np.int64)), origins)
                z, obs, target, *_ = self.cut(rows, origins, hist, rng, gap_p)
                yield (torch.from_numpy(z).float(), torch.from_numpy(obs).float(),
                       torch.from_numpy(target).float())
        return epoch

    def calibration(self):
        return self.cut(self.calib_rows, self.calib_origins, self.calib_origins)


def fit_forecast(series: list[np.ndarray], *, seed: int = 0, epochs: int = 30,
                 steps_per_epoch: int = 100, batch_size: int = 256, lr: float = 1e-3,
                 holdout: int = 48, calib_windows: int = 2, window: int = 336,
                 hidden: int = 128, layers: int = 2, trunc_p: float = 0.2, gap_p: float = 0.2,
                 patience: int = 8, progress: bool = True) -> tuple[ForecastModel, dict]:
    """Train on random windows; stop early and calibrate intervals on the calibration windows.

    The last `holdout` points of every series are never used, so they can serve as a test set.
    """
    rng = seed_everything(seed)
    model = ForecastModel(window=window, hidden=hidden, layers=layers)
    data = _Windows([np.asarray(s, np.float64) for s in series], window, model.horizon,
                    holdout, calib_windows)
    z_c, obs_c, target_c, *_ = data.calibration()
    z_c, obs_c = torch.from_numpy(z_c).float(), torch.from_numpy(obs_c).float()

    def calib_mae() -> float:
        return float(np.abs(model(z_c, obs_c).double().numpy() - target_c).mean())

    info = model.fit(data.sampler(batch_size, steps_per_epoch, trunc_p, gap_p), calib_mae,
                     rng=rng, epochs=epochs, lr=lr, patience=patience, desc="forecast",
                     progress=progress)
    with torch.inference_mode():
        resid = np.abs(model(z_c, obs_c).double().numpy() - target_c)
    model.abs_resid_q.copy_(torch.from_numpy(np.quantile(resid, LEVELS, axis=0)))
    info.update(calibration_windows=len(target_c), steps_per_epoch=steps_per_epoch,
                hparams=dict(window=window, hidden=hidden, layers=layers, batch_size=batch_size,
                             lr=lr, holdout=holdout, calib_windows=calib_windows,
                             trunc_p=trunc_p, gap_p=gap_p, patience=patience))
    return model, info


def load_m4_hourly(csv_path: str | Path) -> dict[str, np.ndarray]:
    """M4 hourly training series by id (H1..H414), trailing padding removed."""
    table = pacsv.read_csv(csv_path)
    ids = table.column(0).to_pylist()
    values = np.column_stack([
        pc.cast(table.column(j), pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        for j in range(1, table.num_columns)])
    lengths = (~np.isnan(values)).sum(axis=1)
    return {sid: values[i, :lengths[i]].copy() for i, sid in enumerate(ids)}


def train_forecast(series: list[np.ndarray], *, name: str, version: str, out_dir: str | Path,
                   seed: int = 0, epochs: int = 30, data_files=(),
                   command: str = "train_forecast", **hparams: Any) -> ModelCard:
    """Train and save a forecast model; the card's metrics hold the calibration-window MAE."""
    model, info = fit_forecast(series, seed=seed, epochs=epochs, **hparams)
    card = ModelCard(name=name, version=str(version), kind="forecast", created=now_iso(),
                     training=training_record(info, seed, epochs, data_files, command),
                     metrics={"calibration_scaled_mae": round(info["best_val"], 4)})
    return model.save(out_dir, card)


def train_shipped_forecast(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                           epochs: int = 40, command: str | None = None, **hparams: Any
                           ) -> ModelCard:
    """The shipped m4-hourly-lstm@1, evaluated M4-style on the held-back last 48 points.

    data_dir is the shared data root (holding m4_hourly/) or the m4_hourly folder itself.
    """
    data_dir = dataset_dir(data_dir, "m4_hourly")
    csv = data_dir / "Hourly-train.csv"
    series = list(load_m4_hourly(csv).values())
    model, info = fit_forecast(series, seed=seed, epochs=epochs, holdout=48, **hparams)
    command = command or f"train_shipped_forecast({str(data_dir)!r}, {str(out_dir)!r})"
    card = ModelCard(name="m4-hourly-lstm", version="1", kind="forecast", created=now_iso(),
                     training=training_record(info, seed, epochs, [csv], command),
                     metrics=evaluate_forecast(model, series))
    return model.save(out_dir, card)


# -- M4-style evaluation -------------------------------------------------------------------------


def _acf(x: np.ndarray, k: int) -> float:
    d = x - x.mean()
    return float((d[k:] * d[:-k]).sum() / (d * d).sum())


def seasonality_test(x: np.ndarray, m: int) -> bool:
    """M4's 90% test: is the lag-m autocorrelation significant?"""
    if len(x) < 3 * m or np.all(x == x[0]):
        return False
    acf = np.array([_acf(x, k) for k in range(1, m + 1)])
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(acf[:-1] ** 2)) / len(x))
    return abs(acf[-1]) > limit


def naive2(x: np.ndarray, h: int, m: int) -> np.ndarray:
    """M4's Naive2: naive forecast of the classically (multiplicatively) deseasonalized series."""
    n = len(x)
    if not seasonality_test(x, m):
        return np.full(h, x[-1])
    kernel = np.r_[0.5, np.ones(m - 1), 0.5] / m  # centred 2xm moving average
    trend = np.convolve(x, kernel, mode="valid")
    half = m // 2
    ratio = x[half:half + len(trend)] / trend
    phase = (np.arange(len(ratio)) + half) % m
    index = np.bincount(phase, weights=ratio, minlength=m) / np.bincount(phase, minlength=m)
    index /= index.mean()
    return x[-1] / index[(n - 1) % m] * index[(n + np.arange(h)) % m]


def seasonal_naive(x: np.ndarray, h: int, m: int) -> np.ndarray:
    last = x[-m:] if len(x) >= m else np.full(m, x[-1])
    return last[np.arange(h) % m]


def _scores(y, f, mase_scale):
    smape = np.mean(2 * np.abs(y - f) / (np.abs(y) + np.abs(f))) * 100
    return smape, np.mean(np.abs(y - f)) / mase_scale


def evaluate_forecast(model: ForecastModel, series: list[np.ndarray], horizon: int = 48,
                      season: int = 24, level: float = 0.95) -> dict[str, Any]:
    """Hold back the last `horizon` points per series; sMAPE, MASE, OWA vs Naive2, seasonal
    naive, and coverage / MSIS of the `level` interval (MASE-scaled, as in M4)."""
    hist = [np.asarray(s, np.float64)[:-horizon] for s in series]
    actual = np.stack([np.asarray(s, np.float64)[-horizon:] for s in series])
    r = model.predict(to_arrow(hist), horizon=horizon, level=level)
    alpha = 1 - level
    rows = {"model": [], "naive2": [], "seasonal_naive": []}
    msis, covered = [], []
    for i, x in enumerate(hist):
        y = actual[i]
        scale = np.mean(np.abs(x[season:] - x[:-season]))
        rows["model"].append(_scores(y, r.mean[i], scale))
        rows["naive2"].append(_scores(y, naive2(x, horizon, season), scale))
        rows["seasonal_naive"].append(_scores(y, seasonal_naive(x, horizon, season), scale))
        lo, hi = r.lo[i], r.hi[i]
        penalty = (hi - lo) + 2 / alpha * ((lo - y) * (y < lo) + (y - hi) * (y > hi))
        msis.append(penalty.mean() / scale)
        covered.append(np.mean((y >= lo) & (y <= hi)))
    out: dict[str, Any] = {"series": len(series), "horizon": horizon, "season": season}
    base_smape, base_mase = np.mean(rows["naive2"], axis=0)
    for name, vals in rows.items():
        smape, mase = np.mean(vals, axis=0)
        out[name] = {"smape": round(float(smape), 3), "mase": round(float(mase), 4),
                     "owa": round(float(0.5 * (smape / base_smape + mase / base_mase)), 4)}
    out["model"].update({f"coverage_{int(level * 100)}": round(float(np.mean(covered)), 4),
                         f"msis_{int(level * 100)}": round(float(np.mean(msis)), 3)})
    return out
