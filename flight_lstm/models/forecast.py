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

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from .base import BaseModel
from .checks import between_batches
from .series import fill_gaps, flatten, last_window, overflow_shift, robust_scale, unshift

MAX_HORIZON = 8760  # one year of hourly steps
CHUNK_ROWS = 8192  # inference rows per network call
LEVELS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


@dataclass(frozen=True)
class ForecastResult:
    mean: np.ndarray  # (n, horizon) float64, 0 for invalid rows
    lo: np.ndarray | None  # (n, horizon) when a level was given
    hi: np.ndarray | None
    valid: np.ndarray  # (n,) bool: False for null, empty or all-NaN series


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

    def scaled_forecast(self, z: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """`forward` on numpy windows, without gradients."""
        with torch.inference_mode():
            return self(torch.from_numpy(z).float(), torch.from_numpy(obs).float()).double().numpy()

    def _scaled(self, x: np.ndarray, present: np.ndarray, obs: np.ndarray):
        z, mu, scale = robust_scale(x, present)
        return self.scaled_forecast(z, obs), mu, scale

    def training_loss(self, batch: tuple[np.ndarray, ...]) -> torch.Tensor:
        """Mean absolute scaled error on a batch of (z, observed, scaled target) windows."""
        z, obs, target = (torch.from_numpy(a).float() for a in batch)
        return (self(z, obs) - target).abs().mean()

    def calibrate_intervals(self, z: np.ndarray, obs: np.ndarray, target: np.ndarray) -> None:
        """Store the per-step quantiles of |scaled residual| on windows that training never saw."""
        resid = np.abs(self.scaled_forecast(z, obs) - target)
        self.abs_resid_q.copy_(torch.from_numpy(np.quantile(resid, self.levels.numpy(), axis=0)))

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
