"""The anomaly detector: a global LSTM that predicts each next point of a series with a Student-t
distribution, online with a bounded past, and a calibrated tail probability as its score.

Online with a bounded past: absolute positions are cut into blocks of BLOCK points.  The points
of block j are judged by one run of the LSTM from the start of block j - 1 through them, carrying
its state, so each point is read about twice and a point's answer depends on at most
2 * BLOCK - 1 <= MAX_CONTEXT points before it, never on later ones.  A run is normalized by the
robust level and spread of its warm-up span (block j - 1), so one network serves any scale, and a
scheduled job that passes a series from `context_start` of its first new point gets the same
answers as one that passes it whole.  Block 0 has no block before it: its points are judged in
pieces whose warm-up doubles, [MIN_HISTORY, 2 MIN_HISTORY) from the series' first MIN_HISTORY
points, then [2 MIN_HISTORY, 4 MIN_HISTORY) from its first 2 MIN_HISTORY, and so on, each read
from the series' start: a series that grows is judged at the scale of at least half its past,
not of its first points (block 0 is read about twice as often; one run was normalized by the
first points alone, and series that grew tenfold then drew false alarms).

What is scored: the residual of the point over the network's predicted scale, divided by the run's
recent RMS residual (local recalibration), u; and, for anomalies that last, the sums of the last w
u's (clipped, less the recent mean) over sqrt(w), and the excess of the last VAR_WINDOW squared
u's (a change of variance); and a run of exact repeats that is unlikely for the series (a stuck
sensor), counted only once the run's pass has seen the value change (a series flat since its pass
began shows no sensor that was ever live, so it is no news); and a level that moved (the last few
values against the many before them, a two-sample z divided by its own recent RMS, read on the
values and again on the run's steadiest differences: seasonal, first or none), which the network,
following each step, barely sees in a slow fault or a shift on a cycle.  The statistic is the largest of |u|
and those.
Its score is 1 - p, with p the share of normal points whose statistic is at least as large: the
empirical distribution on held-out normal series of many domains in the body, a fitted
generalized Pareto tail beyond it down to p = P_FAR, then a power law so slow that p reaches
P_MIN only at the float64 limit.  Scores are strictly increasing in the statistic and never 1.0.

k columns are scored channel by channel and combined by Sidak's rule (row p = 1 - (1 - min p)^k),
so a row is as calibrated as a single column, and each column's bounds are at level^(1/k).  The
bounds [lo, hi] hold the values of the point that would not be flagged: outside them in some
column is exactly score > level.  When the recent sums, squares or stuck run alone exceed the bound,
no value would be normal, and lo and hi are NaN (NULL) while the score is above the level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import BaseModel
from .checks import between_batches
from .series import EPS_REL, MAX_CONTEXT, TINY, overflow_shift

BLOCK = 512  # context: a point is read from the start of the block before its own
MIN_HISTORY = 32  # points a series needs before its first scored point (its first run's warm-up)
LAGS = (7, 12, 24, 52, 168)  # seasonal anchors fed beside the last value (weekly, monthly, hourly)
RUNS_PER_BATCH = 256  # runs per network call
# Steps the network reads per call, its state carried from one to the next: the same numbers as one
# call over the whole run, but no tensor over 256 runs x 128 steps x 4 gates x 64 x 4 bytes (34 MB).
# A thread other than the main one keeps freed blocks only under 64 MB (flight_lstm/heap.py), and
# every server call runs on one: over whole runs of 1,024 steps, the gates alone were 268 MB, mapped
# afresh each batch (1.5 million page faults per `anomaly_table` query over 5 million points).
STEPS_PER_CALL = 128
Z_MAX = 1e300  # scaled values are clipped here so no inf reaches the arithmetic
TARGET_CLIP = 1e4  # training targets in scaled space
SIGMA_FLOOR = 1e-3  # smallest predicted scale, in units of the warm-up spread
# Local recalibration: each residual is divided by the clipped RMS of the RECAL_WINDOW residuals
# before it in its run (shrunk towards 1 by RECAL_PRIOR points, at least RECAL_FLOOR), so a series
# the network reads as too calm or too wild is judged by its own recent surprise.  The network reads
# a clean daily cycle with noise as about 4.5 times too calm: clipped at 4, the RMS could not follow,
# and 35-50% of its points were flagged at level 0.9, 2-7% at 0.99.  Clipped at 8 over 512 points
# (so a fault is not absorbed as fast), 12% and 1%; chosen on the validation split.
RECAL_WINDOW, RECAL_CLIP, RECAL_PRIOR, RECAL_FLOOR = 512, 8.0, 4.0, 0.3
# Sustained anomalies (shifts, drifts) surprise a little, many times: the statistic also takes the
# sums of the last w residuals (each clipped to +-SUM_CLIP, so one spike cannot carry them, less
# the run's recent mean residual, so a steady bias does not) / sqrt(w).
WINDOWS, SUM_CLIP = (4, 16, 64), 3.0
# A change of variance: the mean of the last VAR_WINDOW squared residuals (each at most SUM_CLIP^2)
# as a chi-square z-score, weighted by VAR_WEIGHT (chosen on the validation split).
VAR_WINDOW, VAR_WEIGHT = 32, 0.5
# A stuck value: the run of exact repeats that ended at the previous point, L repeats beyond the
# longest run earlier in its pass, is as likely as p^L where p is the pass's recent share of
# repeats (of RECAL_WINDOW points, with one repeat and one change as a prior), scored as the normal
# deviate of that chance, sqrt(2 L ln(1/p)), times STUCK_WEIGHT (chosen on the validation split).
# Past points only, so it bounds a point like the sums do.  Series that repeat often (counts,
# constants) have p near 1, and runs no longer than the pass has seen (weekend zeros) are no news;
# nor is a run that began before the pass saw any change (an observed value unlike the last observed
# one; a gap is none): a series flat since its pass began, whether constant or stuck for longer than
# the pass reaches back, could never be told from a constant one, so it adds nothing.
STUCK_WEIGHT = 2.5
# A level that moved: the mean of the last LEVEL_SHORT values (this one included) against the mean
# and spread of the LEVEL_REFERENCE values before them, as a two-sample z, divided by that z's own
# clipped RMS over the pass's last RECAL_WINDOW points (as the residuals are: a trend or a cycle
# keeps it large, so it is no news), times LEVEL_WEIGHT.  The network follows a slow fault within
# a few steps, so its residuals see little of it (SKAB's valve faults), while this term holds for as
# long as the reference has not moved.  Past values are read clipped to +-LEVEL_CLIP warm-up spreads
# (so their running sums of squares stay exact to ~1e-4); the point judged is read as it is, so the
# term is linear in it and its bounds exact (clipped too, a step of over 1e6 warm-up spreads after a
# flat warm-up scored as inside bounds it was outside).  The reference needs LEVEL_MIN_REFERENCE
# observed values.  Sizes and weight chosen on the validation split and SKAB's training experiments
# (4 of 1-8 values, 256 of 64-512, weight 1.7 of 0.7-2.5).
# The same term is also read on each run's values differenced at the lag of LEVEL_LAGS (0: as they
# are) whose differences vary least over the run's warm-up, times DIFFERENCED_WEIGHT: on a seasonal
# series the spread of its values is mostly the cycle, which hid a shift its seasonal differences
# show (planted level shifts found: 0.42 -> 0.53 on the validation split).  Both terms are kept:
# on SKAB's slowly sinking sensors the steadiest differences are the first ones, in which a slow
# fault barely shows.  The weight chosen as the others were (1.3 of 1.2-1.4, with 1.7 kept).
LEVEL_SHORT, LEVEL_REFERENCE, LEVEL_MIN_REFERENCE, LEVEL_WEIGHT = 4, 256, 16, 1.7
LEVEL_LAGS, DIFFERENCED_WEIGHT = (0, 1, *LAGS), 1.3
LEVEL_CLIP, LEVEL_SD_FLOOR = 1e6, 1e-3
P_FAR, P_MIN = 1e-9, 1e-15  # where the Pareto tail hands over, and p at the float64 limit
CAL_GRID = 80  # points of the calibrated body (p from 1 down to where the Pareto tail starts)
FLOAT_MAX = np.finfo(np.float64).max

assert 2 * BLOCK - 1 <= MAX_CONTEXT


@dataclass(frozen=True)
class AnomalyResult:
    expected: np.ndarray  # (points, k) float64: the one-step-ahead expectation; NaN where none
    lo: np.ndarray  # (points, k) the `level` interval per column; NaN where none
    hi: np.ndarray  # (points, k)
    score: np.ndarray  # (points,) float64 in [0, 1), NaN where not scored


@dataclass(frozen=True)
class Points:
    """Per point and column (points, k), what the score and the bounds are made of; NaN where the
    value is missing or the point not scored."""

    expected: np.ndarray  # the one-step-ahead expectation
    unit: np.ndarray  # of the recalibrated residual u: value = expected + u * unit
    stat: np.ndarray  # the statistic that is scored, the largest of its terms (module docstring)
    sums: np.ndarray  # (points, k, windows) the previous w - 1 clipped u's less w times the recent bias
    var_before: np.ndarray  # the variance term's previous squares less their count n
    var_norm: np.ndarray  # and its VAR_WEIGHT / sqrt(2n)
    stuck: np.ndarray  # the stuck term, of past points only
    level_centre: np.ndarray  # (points, k, 2) each level term's centre in u: on values, on differences
    level_half: np.ndarray  # (points, k, 2) and its distance in u per unit of the statistic


@dataclass(frozen=True)
class Runs:
    """LSTM runs over flat values: run r reads flat[first[r] : first[r] + length[r]], is
    normalized by its first `span[r]` points and scores the points after them."""

    first: np.ndarray
    length: np.ndarray
    span: np.ndarray

    def take(self, rows: np.ndarray) -> Runs:
        return Runs(self.first[rows], self.length[rows], self.span[rows])


def context_start(positions: np.ndarray) -> np.ndarray:
    """The first absolute position the answer for each absolute position depends on."""
    block = np.asarray(positions, np.int64) // BLOCK
    return np.maximum(block - 1, 0) * BLOCK


def plan_runs(lengths: np.ndarray, starts: np.ndarray) -> Runs:
    """The runs that score each series (given from absolute position starts[i]): one per block it
    touches, that of a block without the block before it cut where its warm-up doubles."""
    lengths, starts = np.asarray(lengths, np.int64), np.asarray(starts, np.int64)
    ends = starts + lengths
    first_block = starts // BLOCK
    count = np.where(lengths > 0, (ends - 1) // BLOCK - first_block + 1, 0)
    series = np.repeat(np.arange(len(lengths)), count)
    block = first_block[series] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    a = np.maximum(starts[series], (block - 1) * BLOCK)  # absolute run start
    e = np.minimum(ends[series], (block + 1) * BLOCK)
    scored_from = np.maximum(block * BLOCK, a + MIN_HISTORY)
    # Pieces [x, y) of the scored span [scored_from, e), cut at a + 2^i MIN_HISTORY, each read
    # from a with warm-up x - a (a full block before it: one piece).
    cuts = [scored_from]
    for i in range(1, int(math.log2(BLOCK // MIN_HISTORY))):
        cuts.append(np.clip(a + (MIN_HISTORY << i), scored_from, e))
    bounds = np.stack([*cuts, e], axis=1)
    x, y = bounds[:, :-1], bounds[:, 1:]
    run = np.broadcast_to(np.arange(len(a))[:, None], x.shape)[y > x]
    x, y = x[y > x], y[y > x]
    offsets = np.cumsum(lengths) - lengths
    flat_first = offsets[series[run]] + a[run] - starts[series[run]]
    return Runs(flat_first, y - a[run], x - a[run])


def _compress(z: np.ndarray) -> np.ndarray:
    """The network's view of a scaled value: linear near 0, logarithmic far out (spikes of 1e300
    must not saturate or overflow it)."""
    return 4.0 * np.arcsinh(z / 4.0)


def _masked_quantiles(x: np.ndarray, valid: np.ndarray, probs: tuple[float, ...]) -> np.ndarray:
    """Per row, linear-interpolated quantiles of the valid entries; (len(probs), rows)."""
    s = np.sort(np.where(valid, x, np.inf), axis=1)
    n = valid.sum(axis=1)
    out = []
    rows = np.arange(len(x))
    for p in probs:
        pos = np.maximum(n - 1, 0) * p
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        w = pos - lo
        a, b = (np.where(n > 0, s[rows, i], 0.0) for i in (lo, hi))
        out.append(a + (b - a) * w)
    return np.array(out)


def _trailing(x: np.ndarray, w: int) -> np.ndarray:
    """Per row, the sum of the w entries before each step (fewer at the start)."""
    c = np.concatenate([np.zeros((len(x), 1)), np.cumsum(x, axis=1)], axis=1)
    steps = np.arange(x.shape[1])
    return c[:, steps] - c[:, np.maximum(steps - w, 0)]


def _stuck(z: np.ndarray) -> np.ndarray:
    """Per row and step, the stuck term (STUCK_WEIGHT) of the run of repeats ending one step before."""
    steps = np.arange(z.shape[1])
    repeat = np.zeros(z.shape, bool)
    repeat[:, 1:] = z[:, 1:] == z[:, :-1]  # NaN never repeats: a gap ends a run
    started = np.maximum.accumulate(np.where(repeat, 0, steps), axis=1)
    length = (steps - started).astype(np.float64)
    longest = np.take_along_axis(np.maximum.accumulate(length, axis=1), started, axis=1)  # before the run
    observed = ~np.isnan(z)
    seen = np.maximum.accumulate(np.where(observed, steps, -1), axis=1)
    before = np.full(z.shape, -1)
    before[:, 1:] = seen[:, :-1]  # the last observed step before each step
    changed = observed & (before >= 0) & (z != np.take_along_axis(z, before.clip(0), axis=1))
    first_change = np.where(changed.any(axis=1), changed.argmax(axis=1), z.shape[1])
    live = started >= first_change[:, None]  # the run began at or after a change in the pass
    excess = np.zeros(z.shape)
    excess[:, 1:] = np.where(live, np.maximum(length - longest, 0), 0.0)[:, :-1]
    share = (_trailing(repeat.astype(np.float64), RECAL_WINDOW) + 1) / (np.minimum(steps, RECAL_WINDOW) + 2)
    return STUCK_WEIGHT * np.sqrt(-2 * excess * np.log(share))


def _steady_lag(z: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Per run, the lag of LEVEL_LAGS whose differences (values clipped as the level term reads
    them) have the least variance over the run's warm-up, its first `span` steps; a lag needs
    LEVEL_MIN_REFERENCE differences observed there.  Past points only, like the warm-up itself."""
    head = np.clip(z[:, :int(span.max(initial=0))], -LEVEL_CLIP, LEVEL_CLIP)
    warm = np.arange(head.shape[1]) < span[:, None]
    best, pick = np.full(len(z), np.inf), np.zeros(len(z), np.int64)
    for lag in (lag for lag in LEVEL_LAGS if lag + LEVEL_MIN_REFERENCE <= head.shape[1]):
        d = head[:, lag:] - head[:, :head.shape[1] - lag] if lag else head
        ok = warm[:, lag:] & np.isfinite(d)
        n = ok.sum(axis=1)
        mean = np.where(ok, d, 0.0).sum(axis=1) / np.maximum(n, 1)
        var = np.where(ok, d - mean[:, None], 0.0) ** 2
        var = np.where(n >= LEVEL_MIN_REFERENCE, var.sum(axis=1) / np.maximum(n, 1), np.inf)
        pick = np.where(var < best, lag, pick)
        best = np.minimum(var, best)
    return pick


def _level(z: np.ndarray, lag: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row and step, the level term (unweighted) of the row's values differenced at its `lag`
    (0: as they are) and, for bounds, the value that would make it 0 and the distance from there
    per unit of the term (inf where it is not defined): the term is linear in the value."""
    lag = lag[:, None]
    steps = np.arange(z.shape[1])
    partner = np.take_along_axis(z, np.maximum(steps - lag, 0), axis=1)
    partner = np.where(lag == 0, 0.0, np.where(steps >= lag, partner, np.nan))
    z = z - partner
    observed = np.isfinite(z)
    v = np.where(observed, np.clip(z, -LEVEL_CLIP, LEVEL_CLIP), 0.0)  # as past values
    seen = observed.astype(np.float64)
    short, span = LEVEL_SHORT - 1, LEVEL_SHORT - 1 + LEVEL_REFERENCE
    n_short, s_short = _trailing(seen, short), _trailing(v, short)  # the values before this one
    n_ref = _trailing(seen, span) - n_short
    mean_ref = (_trailing(v, span) - s_short) / np.maximum(n_ref, 1)
    square_ref = (_trailing(v * v, span) - _trailing(v * v, short)) / np.maximum(n_ref, 1)
    sd_ref = np.sqrt(np.maximum(square_ref - mean_ref ** 2, 0.0)) + LEVEL_SD_FLOOR
    n = n_short + 1  # with this value
    spread = sd_ref * np.sqrt(1 / n + 1 / np.maximum(n_ref, 1))
    ready = observed & (n_ref >= LEVEL_MIN_REFERENCE)
    z2 = np.where(ready, ((s_short + np.where(observed, z, 0.0)) / n - mean_ref) / spread, 0.0)
    local = _trailing(np.minimum(z2 * z2, RECAL_CLIP ** 2), RECAL_WINDOW)
    rms = np.sqrt((local + RECAL_PRIOR) / (_trailing(ready.astype(np.float64), RECAL_WINDOW) + RECAL_PRIOR))
    half = np.where(ready, n * spread * rms, np.inf)
    return np.abs(z2) / rms, np.where(ready, n * mean_ref - s_short + partner, 0.0), half


@dataclass(frozen=True)
class Prepared:
    """A batch of runs ready for the network, and what it takes to map its outputs back."""

    features: torch.Tensor  # (runs, steps, features) float32
    z: np.ndarray  # (runs, steps) scaled values, NaN where missing or past the run's end
    last: np.ndarray  # (runs, steps) the last observed scaled value up to each step (0 before)
    loc: np.ndarray  # (runs,) after the overflow shift
    scale: np.ndarray
    shift: np.ndarray  # (runs,) power of two taken out (series.overflow_shift)
    ok: np.ndarray  # (runs,) False where the warm-up span holds no value: nothing scored


def prepare(flat: np.ndarray, runs: Runs) -> Prepared:
    """Gather, normalize and featurize a batch of runs (numpy, all runs at once)."""
    width = int(runs.length.max())
    steps = np.arange(width)
    inside = steps < runs.length[:, None]
    x = np.where(inside, flat[np.where(inside, runs.first[:, None] + steps, 0)], np.nan)
    observed = np.isfinite(x)
    warm = observed & (steps < runs.span[:, None])
    ok = warm.any(axis=1)
    shift = overflow_shift(np.where(warm, x, 0.0))
    x = np.ldexp(x, -shift[:, None])
    q25, q50, q75 = _masked_quantiles(x, warm, (0.25, 0.5, 0.75))
    spread = np.where(warm, np.abs(x - q50[:, None]), 0.0).sum(axis=1) / np.maximum(warm.sum(axis=1), 1)
    scale = np.maximum((q75 - q25) / 1.349, spread) + EPS_REL * np.abs(q50) + TINY
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.clip((x - q50[:, None]) / scale[:, None], -Z_MAX, Z_MAX)
    seen = np.maximum.accumulate(np.where(observed, steps, -1), axis=1)
    last = np.where(seen >= 0, np.take_along_axis(z, seen.clip(0), axis=1), 0.0)
    feats = [_compress(last), observed.astype(np.float64)]
    for lag in LAGS:  # the value `lag` steps before the one predicted (step + 1)
        src = steps + 1 - lag
        has = src >= 0
        lagged = np.where(has, np.take_along_axis(last, np.broadcast_to(src.clip(0), x.shape), 1), 0.0)
        avail = has & np.take_along_axis(observed, np.broadcast_to(src.clip(0), x.shape), 1)
        feats += [_compress(np.where(avail, lagged, 0.0)), avail.astype(np.float64)]
    features = torch.from_numpy(np.stack(feats, axis=-1).astype(np.float32))
    return Prepared(features, z, last, q50, scale, shift, ok)


class AnomalyModel(BaseModel):
    kind = "anomaly"

    def __init__(self, hidden: int = 64, layers: int = 2, dropout: float = 0.0, nu: float = 4.0):
        super().__init__(hidden=hidden, layers=layers, dropout=dropout, nu=nu)
        self.nu = nu
        self.block, self.min_history = BLOCK, MIN_HISTORY
        n_features = 2 + 2 * len(LAGS)
        self.lstm = nn.LSTM(n_features, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(hidden + n_features, 64), nn.GELU(), nn.Linear(64, 2))
        # The calibration map from |standardized residual| to p (`calibrate`); until calibrated,
        # a standard normal's body stands in.
        r = np.linspace(0.0, 3.0, CAL_GRID)
        self.register_buffer("cal_r", torch.tensor(r, dtype=torch.float64))
        self.register_buffer("cal_logp", torch.tensor(np.log(np.maximum(
            [math.erfc(v / math.sqrt(2)) for v in r], 1e-300)), dtype=torch.float64))
        self.register_buffer("cal_tail", torch.tensor([0.5, 1.0], dtype=torch.float64))  # xi, beta

    # -- the network ------------------------------------------------------------------------

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per step, (change of the next value over the last one, its scale), scaled units."""
        outs, state = [], None
        for start in range(0, max(features.shape[1], 1), STEPS_PER_CALL):  # an empty run still calls it once
            part = features[:, start:start + STEPS_PER_CALL]
            h, state = self.lstm(part, state)
            outs.append(self.head(torch.cat([h, part], dim=-1)))
        out = torch.cat(outs, dim=1)
        return out[..., 0], nn.functional.softplus(out[..., 1]) + SIGMA_FLOOR

    def training_loss(self, batch: tuple[Prepared, np.ndarray]) -> torch.Tensor:
        """Student-t negative log-likelihood of each next observed point (weights 0 where the
        target is missing, past the run or labelled anomalous)."""
        prep, weight = batch
        delta, sigma = self(prep.features)
        last = torch.from_numpy(np.clip(prep.last, -TARGET_CLIP, TARGET_CLIP)).float()
        target = torch.from_numpy(np.nan_to_num(np.clip(prep.z, -TARGET_CLIP, TARGET_CLIP))).float()
        w = torch.from_numpy(weight).float()[:, 1:]
        u = (target[:, 1:] - last[:, :-1] - delta[:, :-1]) / sigma[:, :-1]
        nll = torch.log(sigma[:, :-1]) + (self.nu + 1) / 2 * torch.log1p(u * u / self.nu)
        return (nll * w).sum() / w.sum().clamp_min(1.0)

    def residuals(self, flat: np.ndarray, runs: Runs):
        """For every run batch: (runs, prepared batch, predicted next mean, next scale), the
        predictions in scaled units and float64, indexed by the step they predict."""
        order = np.argsort(-runs.length, kind="stable")  # similar lengths share a batch
        was_training = self.training
        self.eval()
        try:
            for i in range(0, len(order), RUNS_PER_BATCH):
                between_batches()
                batch = runs.take(order[i:i + RUNS_PER_BATCH])
                prep = prepare(flat, batch)
                with torch.inference_mode():
                    delta, sigma = self(prep.features)
                mean = np.full(prep.z.shape, np.nan)
                scale = np.full(prep.z.shape, np.nan)
                mean[:, 1:] = prep.last[:, :-1] + delta.double().numpy()[:, :-1]
                scale[:, 1:] = sigma.double().numpy()[:, :-1]
                yield batch, prep, mean, scale
        finally:
            self.train(was_training)

    # -- scoring ----------------------------------------------------------------------------

    def score(self, values: np.ndarray, lengths: np.ndarray, level: float,
              starts: np.ndarray | None = None) -> AnomalyResult:
        """Expected value, `level` interval and score of every point of every series: values
        (points, k) float64, NaN missing; series are consecutive rows of `lengths`; `starts` their
        first rows' absolute positions (default 0).  k columns: Sidak (module docstring)."""
        level = float(level)
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level:g}")
        points = self.predict_points(values, lengths, starts)
        p = self.tail_probability(points.stat)  # NaN where the value is missing or not scored
        present = np.isfinite(p)
        k_present = present.sum(axis=1)
        p_min = np.where(present, p, 1.0).min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            score = np.where(k_present > 0, np.exp(k_present * np.log1p(-p_min)), np.nan)
            q = self.residual_at(-np.expm1(np.log(level) / np.maximum(k_present, 1)))[:, None]
            # The values of the point whose statistic stays <= q: |u| <= q and, per window,
            # |previous sum + clip(u)| <= q sqrt(w).  An interval, empty when the sums alone
            # already exceed it (then no value is normal: NULL bounds, and the score is above).
            u_lo, u_hi = -q, q
            for w, before in zip(WINDOWS, np.moveaxis(points.sums, -1, 0)):
                upper, lower = q * math.sqrt(w) - before, -q * math.sqrt(w) - before
                u_hi = np.where(upper < SUM_CLIP, np.minimum(u_hi, upper), u_hi)
                u_lo = np.where(lower > -SUM_CLIP, np.maximum(u_lo, lower), u_lo)
                u_hi = np.where(upper < -SUM_CLIP, -np.inf, u_hi)
                u_lo = np.where(lower > SUM_CLIP, np.inf, u_lo)
            # and VAR_WEIGHT * (before + min(u^2, SUM_CLIP^2)) / sqrt(2n) <= q
            room = q / points.var_norm - points.var_before
            inner = np.sqrt(np.maximum(room, 0.0))
            u_hi = np.where(room < SUM_CLIP ** 2, np.minimum(u_hi, inner), u_hi)
            u_lo = np.where(room < SUM_CLIP ** 2, np.maximum(u_lo, -inner), u_lo)
            u_hi = np.where((room < 0) | (points.stuck > q), -np.inf, u_hi)
            # and each level term: |u - centre| <= q * half
            for centre, half in zip(np.moveaxis(points.level_centre, -1, 0), np.moveaxis(points.level_half, -1, 0)):
                u_lo = np.maximum(u_lo, centre - q * half)
                u_hi = np.minimum(u_hi, centre + q * half)
            bounded = present & (u_lo <= u_hi)
            lo = np.where(bounded, np.clip(points.expected + u_lo * points.unit, -FLOAT_MAX, FLOAT_MAX), np.nan)
            hi = np.where(bounded, np.clip(points.expected + u_hi * points.unit, -FLOAT_MAX, FLOAT_MAX), np.nan)
        return AnomalyResult(points.expected, lo, hi, score)

    def predict_points(self, values: np.ndarray, lengths: np.ndarray, starts: np.ndarray | None = None) -> Points:
        """What every point of every column is scored and bounded by (`Points`)."""
        values = np.asarray(values, np.float64)
        if values.ndim == 1:
            values = values[:, None]
        points, k = values.shape
        lengths = np.asarray(lengths, np.int64)
        if lengths.sum() != points:
            raise ValueError(f"lengths add up to {lengths.sum()}, but there are {points} points")
        starts = np.zeros(len(lengths), np.int64) if starts is None else np.asarray(starts, np.int64)
        values = np.where(np.isfinite(values), values, np.nan)
        base = plan_runs(lengths, starts)
        # Every column is a series of its own: columns are laid end to end in one flat array.
        flat = values.T.reshape(-1)
        runs = Runs(np.concatenate([base.first + c * points for c in range(k)]),
                    np.tile(base.length, k), np.tile(base.span, k))
        expected, unit, stat = (np.full(points * k, np.nan) for _ in range(3))
        sums = np.full((points * k, len(WINDOWS)), np.nan)
        var_before, var_norm, stuck = (np.full(points * k, np.nan) for _ in range(3))
        level_centre, level_half = (np.full((points * k, 2), np.nan) for _ in range(2))
        for batch, prep, mean, scale in self.residuals(flat, runs):
            steps = np.arange(prep.z.shape[1])
            scored = (steps >= batch.span[:, None]) & (steps < batch.length[:, None]) & prep.ok[:, None]
            pos = (batch.first[:, None] + steps)[scored]
            with np.errstate(over="ignore", invalid="ignore"):
                # First, while little else is held: a thread's heap keeps freed blocks only under 64 MB
                levels = [[a[scored] for a in _level(prep.z, lag)]  # (term, anchor, reach): values, differences
                          for lag in (np.zeros(len(prep.z), np.int64), _steady_lag(prep.z, batch.span))]
                r = (prep.z - mean) / scale
                local = _trailing(np.minimum(np.nan_to_num(r * r, nan=0.0), RECAL_CLIP ** 2), RECAL_WINDOW)
                count = _trailing(np.isfinite(r).astype(np.float64), RECAL_WINDOW)
                s = np.maximum(np.sqrt((local + RECAL_PRIOR) / (count + RECAL_PRIOR)), RECAL_FLOOR)
                u = np.clip(r / s, -FLOAT_MAX, FLOAT_MAX)
                psi = np.clip(np.nan_to_num(u, nan=0.0), -SUM_CLIP, SUM_CLIP)
                bias = _trailing(psi, RECAL_WINDOW) / (count + RECAL_PRIOR)  # a steady bias is no news
                t = np.abs(u)
                for i, w in enumerate(WINDOWS):
                    before = _trailing(psi, w - 1) - w * bias
                    t = np.maximum(t, np.abs(before + psi) / math.sqrt(w))
                    sums[pos, i] = before[scored]
                square = np.minimum(np.nan_to_num(u * u, nan=0.0), SUM_CLIP ** 2)
                n = _trailing(np.isfinite(u).astype(np.float64), VAR_WINDOW - 1) + 1
                before = _trailing(square, VAR_WINDOW - 1) - n
                norm = VAR_WEIGHT / np.sqrt(2 * n)
                t = np.maximum(t, norm * (before + square))
                var_before[pos], var_norm[pos] = before[scored], norm[scored]
                held = _stuck(prep.z)
                t = np.maximum(t, held)
                stuck[pos] = held[scored]
                for i, ((_, anchor, reach), weight) in enumerate(zip(levels, (LEVEL_WEIGHT, DIFFERENCED_WEIGHT))):
                    level_centre[pos, i] = (anchor - mean[scored]) / (scale * s)[scored]
                    level_half[pos, i] = reach / (scale * s)[scored] / weight
                centre = (np.ldexp(prep.loc, prep.shift)[:, None]
                          + np.ldexp(prep.scale[:, None] * mean, prep.shift[:, None]))
                expected[pos] = np.clip(centre, -FLOAT_MAX, FLOAT_MAX)[scored]
                width = np.ldexp(prep.scale, prep.shift)[:, None] * scale * s
                unit[pos] = np.clip(width, 0, FLOAT_MAX)[scored]
            stat[pos] = np.maximum.reduce([t[scored], LEVEL_WEIGHT * levels[0][0], DIFFERENCED_WEIGHT * levels[1][0]])
        return Points(*(a.reshape(k, points).T for a in (expected, unit, stat)),
                      sums.reshape(k, points, len(WINDOWS)).transpose(1, 0, 2),
                      *(a.reshape(k, points).T for a in (var_before, var_norm, stuck)),
                      *(a.reshape(k, points, 2).transpose(1, 0, 2) for a in (level_centre, level_half)))

    # -- calibration ------------------------------------------------------------------------

    def calibrate(self, residuals: np.ndarray, body: float = 1e-3, min_tail: int = 150) -> dict:
        """Fit the map from |standardized residual| to p on held-out normal points: empirical
        quantiles down to p_u = max(body, min_tail / n), then a generalized Pareto tail fitted to
        the exceedances by probability-weighted moments (Hosking and Wallis, 1987: valid for shapes
        up to 1, where plain moments need a finite variance, shape < 0.5), the shape held in
        [0.02, 0.9] so the tail neither ends nor explodes."""
        r = np.sort(np.abs(residuals[np.isfinite(residuals)]))
        n = len(r)
        p_u = max(body, min_tail / n)
        probs = np.geomspace(1.0, p_u, CAL_GRID)
        grid = np.quantile(r, 1 - probs)
        grid[0] = 0.0
        for i in range(1, len(grid)):  # strictly increasing, so the map is strictly monotone
            grid[i] = max(grid[i], grid[i - 1] * (1 + 1e-9) + 1e-12)
        excess = np.sort(r[r > grid[-1]] - grid[-1])
        a0 = excess.mean()
        a1 = np.mean((1 - (np.arange(1, len(excess) + 1) - 0.35) / len(excess)) * excess)
        xi = float(np.clip(2 - a0 / (a0 - 2 * a1), 0.02, 0.9)) if a0 - 2 * a1 > 0 else 0.02
        beta = float(max(a0 * (1 - xi), 1e-6))  # the mean of the excesses is beta / (1 - xi)
        self.cal_r = torch.tensor(grid, dtype=torch.float64)
        self.cal_logp = torch.tensor(np.log(probs), dtype=torch.float64)
        self.cal_tail = torch.tensor([xi, beta], dtype=torch.float64)
        return {"points": int(n), "body_to_p": round(p_u, 6), "pareto_shape": round(xi, 4),
                "pareto_scale": round(beta, 4), "residual_at_p": {
                    str(pp): round(float(self.residual_at(np.array([pp]))[0]), 3)
                    for pp in (1e-2, 1e-3, 1e-4, 1e-6, P_FAR)}}

    def _tail(self):
        grid, logp = self.cal_r.numpy(), self.cal_logp.numpy()
        xi, beta = self.cal_tail.numpy()
        u, lp_u = grid[-1], logp[-1]
        r_far = u + beta / xi * math.expm1(xi * (lp_u - math.log(P_FAR)))
        slope = math.log(P_FAR / P_MIN) / (math.log(FLOAT_MAX) - math.log(r_far))
        return grid, logp, xi, beta, u, lp_u, r_far, slope

    def tail_probability(self, r: np.ndarray) -> np.ndarray:
        """p of |standardized residuals| r (NaN stays NaN): strictly decreasing, >= P_MIN."""
        grid, logp, xi, beta, u, lp_u, r_far, slope = self._tail()
        r = np.asarray(r, np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lp = np.interp(r, grid, logp)
            lp = np.where(r > u, lp_u - np.log1p(xi * (r - u) / beta) / xi, lp)
            lp = np.where(r > r_far, math.log(P_FAR) - slope * (np.log(r) - math.log(r_far)), lp)
        return np.where(np.isnan(r), np.nan, np.exp(np.maximum(lp, math.log(P_MIN))))

    def residual_at(self, p: np.ndarray) -> np.ndarray:
        """The inverse of `tail_probability`: the |residual| whose p is p (FLOAT_MAX below P_MIN)."""
        grid, logp, xi, beta, u, lp_u, r_far, slope = self._tail()
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            lp = np.log(np.asarray(p, np.float64))
            body = np.interp(-lp, -logp, grid)
            pareto = u + beta / xi * np.expm1(xi * (lp_u - lp))
            far = r_far * np.exp((math.log(P_FAR) - lp) / slope)
            r = np.where(lp >= lp_u, body, np.where(lp >= math.log(P_FAR), pareto, far))
        return np.where(lp < math.log(P_MIN), FLOAT_MAX, np.minimum(r, FLOAT_MAX))
