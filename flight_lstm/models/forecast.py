"""Global LSTM forecasters, one per frequency group, robust to scale, gaps and short histories.

Each series' last WINDOW points are scaled by their own mean and std, so one network serves any
level (1e-3 .. 1e6, negatives, constants).  An "observed" channel marks real points (0 for
left padding of short histories and for interpolated NaN gaps).  The LSTM reads the window CHUNK
points per step (a day of hourly points, a week of daily ones, a year of monthly ones), and a
direct head, which also sees the last TAIL points, predicts the HORIZON-step residual over a
seasonal-naive baseline at lag SEASON (1: the naive forecast) in scaled space.  Longer horizons
roll forward by feeding forecasts back in.

A model may hold MEMBERS such networks, trained apart from different seeds, whose residuals it
averages (a seed ensemble), and may SHRINK the residual toward the seasonal-naive baseline: the
forecast is naive + SHRINK * (network - naive).  Both default to 1 (one network, no shrinking), so
models saved before they existed load and forecast as they did.

Intervals ("conformal", what new models calibrate): split-conformal quantiles, per horizon step,
of the signed error divided by the series' own seasonal-naive MAE over the window
(`series.error_scale`), measured on calibration windows that training never saw.  A series'
bounds are its forecast plus its scale times the step's quantiles, so they follow its own noise
and widen with the step.  m4-hourly-lstm@1 keeps its "window_std" intervals (per-step quantiles
of |error| in window-std units), with the same wide floor for 1-2 point series.

A model of period P also serves series of period k * P (an hourly model a 15-minute series of
period 96): `predict(period=...)` forecasts each of the k phases as a series of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from flight_lstm import frequencies

from .base import BaseModel
from .checks import between_batches
from .series import (SHORT, error_scale, fill_gaps, flatten, interleave, last_window,
                     overflow_shift, robust_scale, split_phases, unshift)

MAX_HORIZON = frequencies.MAX_STEPS  # the horizon rule's step cap (frequencies.py says why)
CHUNK_ROWS = 8192  # inference rows per network call
LEVELS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
_TAILS = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25,
          0.3, 0.35, 0.4, 0.45)
PROBS = (*_TAILS, 0.5, *(1 - p for p in reversed(_TAILS)))  # conformal quantile grid
INTERVALS = ("window_std", "conformal")
ALPHA_SCALE = 1.0  # conformal: miscoverage asked of the calibration windows, relative to the level's


@dataclass(frozen=True)
class ForecastResult:
    mean: np.ndarray  # (n, horizon) float64, 0 for invalid rows
    lo: np.ndarray | None  # (n, horizon) when a level was given; NaN: no honest bound (NULL)
    hi: np.ndarray | None
    valid: np.ndarray  # (n,) bool: False for null, empty or all-NaN series


class ForecastModel(BaseModel):
    kind = "forecast"

    def __init__(self, window: int = 336, horizon: int = 48, season: int = 24, hidden: int = 128,
                 layers: int = 2, dropout: float = 0.1, levels: tuple[float, ...] = LEVELS,
                 chunk: int | None = None, tail: int | None = None,
                 intervals: str = "window_std", probs: tuple[float, ...] = PROBS,
                 scale_window: int | None = None, alpha_scale: float = ALPHA_SCALE,
                 members: int = 1, shrink: float = 1.0):
        chunk, tail = chunk or season, 7 * season if tail is None else tail
        scale_window = scale_window or window
        super().__init__(window=window, horizon=horizon, season=season, hidden=hidden,
                         layers=layers, dropout=dropout, levels=list(levels), chunk=chunk,
                         tail=tail, intervals=intervals, probs=list(probs),
                         scale_window=scale_window, alpha_scale=alpha_scale, members=members,
                         shrink=shrink)
        if window % chunk or window < max(tail, season, 2 * chunk):
            raise ValueError("window must be a multiple of chunk, at least two chunks, a season "
                             "and the tail")
        if intervals not in INTERVALS:
            raise ValueError(f"intervals must be one of {INTERVALS}, got {intervals!r}")
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.window, self.horizon, self.season = window, horizon, season
        self.chunk, self.tail, self.intervals = chunk, tail, intervals
        self.scale_window, self.alpha_scale = min(scale_window, window), alpha_scale
        self.shrink = float(shrink)
        self.lstm, self.head = self._network(chunk, hidden, layers, dropout, tail, horizon)
        # Members 2.. of a seed ensemble; empty for one member, so the weights' names are unchanged.
        self.more = nn.ModuleList(nn.ModuleList(self._network(chunk, hidden, layers, dropout, tail, horizon))
                                  for _ in range(members - 1))
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float64))
        self.register_buffer("abs_resid_q", torch.ones(len(levels), horizon, dtype=torch.float64))
        if intervals == "conformal":
            self.register_buffer("probs", torch.tensor(probs, dtype=torch.float64))
            self.register_buffer("resid_q", torch.zeros(len(probs), horizon, dtype=torch.float64))
        self.register_buffer("seasonal_lag", window - season + torch.arange(horizon) % season)

    @staticmethod
    def _network(chunk, hidden, layers, dropout, tail, horizon) -> tuple[nn.LSTM, nn.Sequential]:
        lstm = nn.LSTM(2 * chunk, hidden, layers, batch_first=True,
                       dropout=dropout if layers > 1 else 0.0)
        head = nn.Sequential(nn.Linear(hidden + 2 * tail, 256), nn.GELU(), nn.Linear(256, horizon))
        return lstm, head

    @classmethod
    def ensemble(cls, models: list[ForecastModel], shrink: float = 1.0) -> ForecastModel:
        """One model averaging the networks of one-member models of the same shape (trained from
        different seeds), with its residual shrunk by `shrink`; intervals still to calibrate."""
        out = cls(**{**models[0].config, "members": len(models), "shrink": shrink})
        nets = [(out.lstm, out.head), *out.more]
        for (lstm, head), m in zip(nets, models):
            lstm.load_state_dict(m.lstm.state_dict())
            head.load_state_dict(m.head.state_dict())
        return out.eval()

    def forward(self, z: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Scaled forecast (batch, horizon) from scaled window z and observed mask obs: the
        seasonal-naive baseline plus the members' mean residual, times `shrink`."""
        steps = torch.stack([z, obs], dim=-1).reshape(z.shape[0], -1, 2 * self.chunk)
        tail = torch.cat([z[:, -self.tail:], obs[:, -self.tail:]], dim=1)
        resid = [head(torch.cat([lstm(steps)[0][:, -1], tail], dim=1))
                 for lstm, head in ((self.lstm, self.head), *self.more)]
        resid = resid[0] if len(resid) == 1 else torch.stack(resid).mean(dim=0)
        return z[:, self.seasonal_lag] + (resid if self.shrink == 1.0 else self.shrink * resid)

    def scaled_forecast(self, z: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """`forward` on numpy windows, without gradients."""
        with torch.inference_mode():
            return self(torch.from_numpy(z).float(), torch.from_numpy(obs).float()).double().numpy()

    def training_loss(self, batch: tuple[np.ndarray, ...]) -> torch.Tensor:
        """Mean (weighted) absolute scaled error on a batch of (z, observed, scaled target,
        weight per step) windows."""
        z, obs, target, weight = (torch.from_numpy(a).float() for a in batch)
        return ((self(z, obs) - target).abs() * weight).mean()

    def calibrate_intervals(self, z: np.ndarray, obs: np.ndarray, target: np.ndarray) -> None:
        """Store the per-step error quantiles on windows that training never saw: of |error| in
        window-std units, and (conformal) of the signed error over the window's error scale.
        The conformal bounds never narrow with the step (uncertainty does not shrink ahead): each
        quantile's steps get their closest monotone fit (isotonic regression), which also evens
        out the noise of a quantile measured per step."""
        out = self.scaled_forecast(z, obs)
        resid = np.abs(out - target)
        self.abs_resid_q.copy_(torch.from_numpy(np.quantile(resid, self.levels.numpy(), axis=0)))
        if self.intervals == "conformal":
            scaled = (target - out) / self.error_scale(z, obs)[:, None]
            scaled = scaled[np.isfinite(scaled).all(axis=1)]
            q = np.quantile(scaled, self.probs.numpy(), axis=0)
            for i, p in enumerate(self.probs.numpy()):
                q[i] = -_isotonic(-q[i]) if p < 0.5 else _isotonic(q[i])
            self.resid_q.copy_(torch.from_numpy(q))

    def predict(self, series: pa.Array | pa.ChunkedArray, horizon: int = 48,
                level: float | None = None, period: int | None = None) -> ForecastResult:
        """Point forecasts (and a central `level` interval) for each series in a list array.

        `period`, the series' seasonal period when known, is used when it is a multiple k > 1 of
        the model's season: each of a long enough series' k phases is then forecast apart."""
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise ValueError(f"horizon must be an integer, got {horizon!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        if horizon > MAX_HORIZON:
            raise ValueError(f"horizon {horizon} is more than {frequencies.horizon_limit()}")
        if level is not None and not 0.0 < float(level) < 1.0:
            raise ValueError(f"level must be in (0, 1), got {float(level):g}")
        values, lengths = flatten(series)
        k = period // self.season if period and self.season > 1 and period % self.season == 0 else 1
        split = lengths >= 2 * k if k > 1 else np.zeros(len(lengths), bool)
        n = len(lengths)
        mean, valid = np.zeros((n, horizon)), np.zeros(n, bool)
        lo, hi = (None, None) if level is None else (np.zeros((n, horizon)), np.zeros((n, horizon)))
        if split.any():
            pv, pl = split_phases(values[np.repeat(split, lengths)], lengths[split], k)
            r = self._predict_flat(pv, pl, math.ceil(horizon / k), level)
            rows, ok = np.flatnonzero(split), r.valid.reshape(-1, k).all(axis=1)
            rows = rows[ok]
            for out, part in ((mean, r.mean), (lo, r.lo), (hi, r.hi)):
                if out is not None:
                    out[rows] = interleave(part, k, horizon)[ok]
            valid[rows], split[split] = True, ok
        rest = ~split
        if rest.any():
            r = self._predict_flat(values[np.repeat(rest, lengths)], lengths[rest], horizon, level)
            for out, part in ((mean, r.mean), (lo, r.lo), (hi, r.hi)):
                if out is not None:
                    out[rest] = part
            valid[rest] = r.valid
        return ForecastResult(mean, lo, hi, valid)

    def _predict_flat(self, values: np.ndarray, lengths: np.ndarray, horizon: int,
                      level: float | None) -> ForecastResult:
        filled, observed, valid = fill_gaps(values, lengths)
        x, present, obs = last_window(filled, observed, lengths, valid, self.window)
        shift = overflow_shift(x)
        x = np.ldexp(x, -shift[:, None])
        n, blocks = len(lengths), math.ceil(horizon / self.horizon)
        mean = np.zeros((n, blocks * self.horizon))
        width_scale = np.zeros(n)
        was_training = self.training
        self.eval()
        rows_all = np.flatnonzero(valid)
        for start in range(0, len(rows_all), CHUNK_ROWS):
            rows = rows_all[start:start + CHUNK_ROWS]
            xc, pc_, oc = x[rows], present[rows], obs[rows]
            if level is not None:  # the interval's scale, only when an interval is asked
                width_scale[rows] = self._width_scale(xc, pc_, oc)
            for b in range(blocks):
                between_batches()  # a caller's cancel or time limit may stop a long horizon here
                z, mu, scale = robust_scale(xc, pc_)
                y = mu[:, None] + scale[:, None] * self.scaled_forecast(z, oc)
                mean[rows, b * self.horizon:(b + 1) * self.horizon] = y
                ones = np.ones_like(y, dtype=bool)
                xc = np.concatenate([xc[:, self.horizon:], y], axis=1)
                pc_ = np.concatenate([pc_[:, self.horizon:], ones], axis=1)
                oc = np.concatenate([oc[:, self.horizon:], ones], axis=1)
        self.train(was_training)
        mean = mean[:, :horizon]
        if level is None:
            return ForecastResult(unshift(mean, shift), None, None, valid)
        q_lo, q_hi = self.interval_quantiles(float(level), horizon)
        lo = np.where(valid[:, None], mean + width_scale[:, None] * q_lo[None, :], 0.0)
        hi = np.where(valid[:, None], mean + width_scale[:, None] * q_hi[None, :], 0.0)
        return ForecastResult(unshift(mean, shift), unshift(lo, shift), unshift(hi, shift), valid)

    def _width_scale(self, x: np.ndarray, present: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Each row's interval scale: its error scale (conformal) or window std (window_std);
        a row with fewer than SHORT observed points gets at least its mean |value|, or NaN."""
        if self.intervals == "conformal":
            return self.error_scale(x, obs)
        scale = robust_scale(x, present)[2]
        n_obs = obs.sum(axis=1)
        level = np.where(obs, np.abs(x), 0.0).sum(axis=1) / np.maximum(n_obs, 1)
        short = n_obs < SHORT
        scale = np.where(short, np.maximum(scale, level), scale)
        return np.where(short & (level == 0), np.nan, scale)

    def error_scale(self, x: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """The conformal interval scale: the seasonal-naive MAE of the last `scale_window`
        points (by default the whole window)."""
        return error_scale(x[:, -self.scale_window:], obs[:, -self.scale_window:], self.season)

    def interval_quantiles(self, level: float, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Per step, the (lower, upper) error quantiles for a central `level` interval, in units
        of the interval scale; lower <= 0 <= upper, so the mean lies inside.

        Conformal bounds for `level` use the calibration quantiles of miscoverage
        alpha_scale * (1 - level): the calibration windows end before the forecast origin, and
        errors further from the training data may run larger (a shipped model's alpha_scale is
        chosen on held-back data: training.choose_alpha_scale)."""
        if self.intervals == "window_std":
            width = self.interval_quantile(level, horizon)
            return -width, width
        probs, q = self.probs.numpy(), self.resid_q.numpy()
        tail = self.alpha_scale * (1 - level) / 2
        p = np.clip([tail, 1 - tail], probs[0], probs[-1])
        j = np.clip(np.searchsorted(probs, p), 1, len(probs) - 1)
        frac = (p - probs[j - 1]) / (probs[j] - probs[j - 1])
        per_step = q[j - 1] + frac[:, None] * (q[j] - q[j - 1])
        steps = np.arange(horizon)
        # Past the direct head: the last step's quantiles, widened as a random walk's would be.
        grow = np.sqrt(np.maximum(1.0, (steps + 1) / self.horizon))
        lower = per_step[0][np.minimum(steps, self.horizon - 1)] * grow
        upper = per_step[1][np.minimum(steps, self.horizon - 1)] * grow
        return np.minimum(lower, 0.0), np.maximum(upper, 0.0)

    def interval_quantile(self, level: float, horizon: int) -> np.ndarray:
        """window_std: |scaled error| quantile per step for `level`, interpolated over the
        stored grid.  Steps past the direct head repeat its per-step quantiles, widened by
        sqrt(1 + block) for the error that recursive roll-forward accumulates.
        """
        levels = np.concatenate([[0.0], self.levels.numpy()])
        q = np.concatenate([np.zeros((1, self.horizon)), self.abs_resid_q.numpy()])
        lv = min(level, levels[-1])
        j = int(np.clip(np.searchsorted(levels, lv), 1, len(levels) - 1))
        frac = (lv - levels[j - 1]) / (levels[j] - levels[j - 1])
        per_step = q[j - 1] + frac * (q[j] - q[j - 1])
        steps = np.arange(horizon)
        return per_step[steps % self.horizon] * np.sqrt(1 + steps // self.horizon)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to y in least squares (pool adjacent violators)."""
    means: list[float] = []
    sizes: list[int] = []
    for v in y:
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            size = sizes[-2] + sizes[-1]
            means[-2:] = [(means[-2] * sizes[-2] + means[-1] * sizes[-1]) / size]
            sizes[-2:] = [size]
    return np.repeat(means, sizes)
