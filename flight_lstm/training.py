"""Training, in one place: the recipe that fits each model, the shipped models' recipes, and
training a new version on the user's own lakehouse data, read through the same read-only planner
and source as any query and registered where the server will find it by name.

The loop itself (optimizer, early stopping, weight averaging) is `BaseModel.fit`, shared by all.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shlex
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from flight_lstm.errors import InvalidQuery
from flight_lstm.evaluate import (LEVEL, VALIDATION_SETS, Labelled, ValidationSet, anomaly_data_files, anomaly_scores,
                                  anomaly_splits, macro_f1, score_set, sentiment_report, validation_scores,
                                  vader_scores)
from flight_lstm.models import ModelCard, Registry, default_registry
from flight_lstm.models.anomaly import AnomalyModel, plan_runs, prepare
from flight_lstm.models.base import BaseModel, seed_everything
from flight_lstm.models.data import (CLASSES, HOLDOUT, REVIEW_FOLDS, REVIEW_TEACHERS, SENTIMENT_FILES, SOFT_LABELS,
                                     dataset_dir, generic_series, load_m4, load_nn5, load_tourism, review_folds,
                                     sentiment_split)
from flight_lstm.models.forecast import ForecastModel
from flight_lstm.models.registry import user_models_dir
from flight_lstm.models.sentiment import SentimentModel
from flight_lstm.models.series import TrainingWindows
from flight_lstm.models.text import Encoded, build_vocab, tokenize
from flight_lstm.service import Service
from flight_lstm.sources import open_source

log = logging.getLogger(__name__)


# -- saving, with a card -------------------------------------------------------------------------


def training_record(info: dict, seed: int, epochs: int, data_files, command: str) -> dict:
    """The card's `training` entry: data provenance, command, seed and what `fit` reported."""
    files = [{"path": str(p), "sha256_16": hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]}
             for p in data_files]
    return {"data_files": files, "command": command, "seed": seed, "epochs": epochs,
            "torch": torch.__version__, **info}


def save_with_card(model: BaseModel, out_dir: str | Path, *, name: str, version: str,
                   training: dict, metrics: dict) -> ModelCard:
    """Save a trained model and its card as out_dir/name/version, where a registry finds it."""
    card = ModelCard(name=name, version=str(version), kind=model.kind,
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     training=training, metrics=metrics)
    return model.save(out_dir, card)


# -- forecast -------------------------------------------------------------------------------------


def fit_forecast(series: list[np.ndarray], *, seed: int = 0, epochs: int = 30,
                 steps_per_epoch: int = 100, batch_size: int = 256, lr: float = 1e-3,
                 holdout: int = 48, calib_windows: int = 2, window: int = 336, horizon: int = 48,
                 season: int = 24, chunk: int | None = None, tail: int | None = None,
                 hidden: int = 128, layers: int = 2, dropout: float = 0.1, trunc_p: float = 0.2,
                 gap_p: float = 0.2, patience: int = 8, average_last: int = 0,
                 min_history: int | None = None, shift_p: float = 0.0, relative_loss: bool = False,
                 synthetic: int = 0, intervals: str = "conformal", members: int = 1,
                 shrink: float = 1.0, start: ForecastModel | None = None,
                 progress: bool = True) -> tuple[ForecastModel, dict]:
    """Train on random windows; stop early and calibrate intervals on the calibration windows.

    The last `holdout` points of every series are never used, so they can serve as a test set;
    the `calib_windows` horizons before them choose the epoch and calibrate the intervals.
    `synthetic` generic series (data.generic_series, as long as the median series) join the
    training windows, to widen what the model has seen, and the interval calibration, whose
    windows they widen too (a data set's own errors can run tighter than other data's: M4
    Hourly's first steps do); the epoch is chosen on the data's own windows alone.
    With `start` (fine-tuning), training continues from a copy of that model, in its shape.
    `members` > 1 trains that many networks apart, from seeds seed, seed + 1, ..., and averages
    them (ForecastModel.ensemble); `shrink` < 1 pulls the forecast toward seasonal naive.  Both
    apply after training, before the intervals are calibrated (not when fine-tuning).
    """
    if start is None and (members > 1 or shrink != 1.0):
        options = {k: v for k, v in locals().items() if k not in ("series", "seed", "members", "shrink", "start")}
        fits = [fit_forecast(series, seed=seed + k, **options) for k in range(members)]
        model = ForecastModel.ensemble([m for m, _ in fits], shrink)
        windows = TrainingWindows([np.asarray(s, np.float64) for s in series], window, horizon, holdout,
                                  calib_windows, relative_loss)
        z_c, obs_c, target_c, weight_c = windows.calibration()
        model.calibrate_intervals(z_c, obs_c, target_c)
        best = float((np.abs(model.scaled_forecast(z_c, obs_c) - target_c) * weight_c).mean())
        info = {**fits[0][1], "best_val": best, "seconds": round(sum(i["seconds"] for _, i in fits), 1),
                "members": [{k: i.get(k) for k in ("epochs_run", "best_val", "seconds")} for _, i in fits]}
        info["hparams"] = {**info["hparams"], "members": members, "shrink": shrink}
        return model, info
    rng = seed_everything(seed)
    if start is not None:
        model = copy.deepcopy(start)
        shape = start.config
        window, horizon, season, hidden, layers, dropout, intervals = (
            shape[k] for k in ("window", "horizon", "season", "hidden", "layers", "dropout", "intervals"))
        chunk, tail = shape["chunk"], shape["tail"]
    else:
        model = ForecastModel(window=window, horizon=horizon, season=season, chunk=chunk, tail=tail,
                              hidden=hidden, layers=layers, dropout=dropout, intervals=intervals)
    series = [np.asarray(s, np.float64) for s in series]
    extra = generic_series(synthetic, int(np.median([len(s) for s in series])), season, seed + 1)
    windows = TrainingWindows(series + extra, window, horizon, holdout, calib_windows, relative_loss)
    z_c, obs_c, target_c, weight_c = windows.calibration(len(series))

    def calib_mae() -> float:
        error = np.abs(model.scaled_forecast(z_c, obs_c) - target_c) * weight_c
        return float(error.mean())

    batches = windows.sampler(batch_size, steps_per_epoch, trunc_p, gap_p, min_history, shift_p)
    info = model.fit(batches, calib_mae, rng=rng, epochs=epochs, lr=lr, patience=patience,
                     average_last=average_last, desc="forecast", progress=progress)
    model.round_to_float16()  # calibrate the weights that will be shipped
    z_i, obs_i, target_i, _ = windows.calibration()
    model.calibrate_intervals(z_i, obs_i, target_i)
    info.update(calibration_windows=len(target_i), steps_per_epoch=steps_per_epoch,
                hparams=dict(window=window, horizon=horizon, season=season, chunk=model.chunk,
                             tail=model.tail, hidden=hidden, layers=layers, dropout=dropout,
                             batch_size=batch_size, lr=lr, holdout=holdout,
                             calib_windows=calib_windows, trunc_p=trunc_p, gap_p=gap_p,
                             patience=patience, average_last=average_last,
                             min_history=min_history, shift_p=shift_p, synthetic=synthetic,
                             relative_loss=relative_loss, intervals=intervals))
    return model, info


def train_forecast(series: list[np.ndarray], *, name: str, version: str, out_dir: str | Path,
                   seed: int = 0, epochs: int = 30, data_files=(),
                   command: str = "train_forecast", parent: str | None = None, **hparams: Any) -> ModelCard:
    """Train and save a forecast model (from scratch, or fine-tuned from the registered model
    `parent`). The card holds the calibration-window MAE and, on the last `holdout` points of each
    series (which training never saw), the new model beside seasonal naive and, when fine-tuned,
    beside its parent, so `flight-lstm models` shows whether the new version is better."""
    start = default_registry().load("forecast", parent) if parent else None
    model, info = fit_forecast(series, seed=seed, epochs=epochs, start=start, **hparams)
    holdout = info["hparams"]["holdout"]
    metrics = {**holdout_scores(series, holdout, model.season, {"model": model, **({"parent": start} if start else {})}),
               "calibration_scaled_mae": round(info["best_val"], 4)}
    if start is not None:
        metrics["parent"] = start.card.ref
    return save_with_card(model, out_dir, name=name, version=version,
                          training=training_record(info, seed, epochs, data_files, command), metrics=metrics)


def holdout_scores(series: list[np.ndarray], holdout: int, season: int, models: dict[str, ForecastModel]) -> dict:
    """MASE of each model and of seasonal naive on the last `holdout` points of the series long
    enough to have them after a season of history, as `holdout_mase_<name>` (means over series)."""
    kept = [np.asarray(s, np.float64) for s in series if len(s) > holdout + season + 1]
    if not kept:
        return {}
    vs = ValidationSet("holdout", str(season), holdout, season, season, lambda _: None)
    scores, baseline = {}, None
    for label, fitted in models.items():
        scored = score_set(fitted, [s[:-holdout] for s in kept], [s[-holdout:] for s in kept], vs)
        scores[f"holdout_mase_{label}"] = scores_mase(scored["model"])
        baseline = scores_mase(scored["seasonal_naive"])
    return {**scores, "holdout_mase_seasonal_naive": baseline}


def scores_mase(scores: dict) -> float | None:
    return None if scores.get("mase") is None else round(scores["mase"], 4)


@dataclass(frozen=True)
class ForecastRecipe:
    """A shipped forecaster: its data, the frequencies it serves, and how it trains."""

    name: str
    version: str
    frequencies: tuple[str, ...]
    folder: str  # under the shared data root
    file: str
    read: Callable[[Path], dict[str, np.ndarray]]
    sets: tuple[str, ...]  # VALIDATION_SETS scored on its card (the first: its own held-back data)
    epochs: int
    hparams: dict[str, Any]


def _tourism_in(freq: str) -> Callable[[Path], dict[str, np.ndarray]]:
    return lambda path: load_tourism(path.parent, freq)[0]


FORECAST_RECIPES: dict[str, ForecastRecipe] = {r.frequencies[0]: r for r in (
    ForecastRecipe("m4-hourly-lstm", "5", ("hourly", "30min", "15min", "10min", "5min"), "m4_hourly",
                   "Hourly-train.csv", load_m4, ("M4 Hourly", "synthetic hourly"), 40,
                   dict(window=336, horizon=48, season=24, holdout=48, average_last=8, shift_p=0.1,
                        synthetic=100)),
    ForecastRecipe("nn5-daily-lstm", "3", ("daily",), "nn5", "train.csv", load_nn5,
                   ("NN5 daily (days 680-735)", "synthetic daily"), 20,
                   dict(window=196, horizon=56, season=7, tail=49, holdout=56, hidden=64,
                        dropout=0.2, average_last=8, shift_p=0.1, synthetic=160)),
    ForecastRecipe("nn5-business-daily-lstm", "2", ("business_daily",), "nn5", "train.csv",
                   lambda path: load_nn5(path, weekdays_only=True), ("NN5 business days",), 20,
                   dict(window=140, horizon=40, season=5, tail=35, holdout=40, hidden=64,
                        dropout=0.2, average_last=8, shift_p=0.1)),
    ForecastRecipe("m4-weekly-lstm", "2", ("weekly",), "m4_weekly", "Weekly-train.csv", load_m4,
                   ("M4 Weekly",), 20,
                   dict(window=104, horizon=13, season=1, chunk=4, tail=52, holdout=13, hidden=64,
                        average_last=8, shift_p=0.1)),
    ForecastRecipe("tourism-monthly-lstm", "2", ("monthly",), "tourism", "monthly_in.csv",
                   _tourism_in("monthly"), ("tourism monthly", "tourism monthly, out of sample"), 30,
                   dict(window=96, horizon=24, season=12, tail=36, holdout=24, calib_windows=2,
                        min_history=24, hidden=64, relative_loss=True, average_last=8)),
    ForecastRecipe("tourism-quarterly-lstm", "3", ("quarterly",), "tourism", "quarterly_in.csv",
                   _tourism_in("quarterly"), ("tourism quarterly", "tourism quarterly, out of sample"),
                   30, dict(window=48, horizon=8, season=4, tail=24, holdout=8, calib_windows=2,
                            min_history=8, hidden=32, dropout=0.3, relative_loss=True,
                            average_last=8, members=5, shrink=0.7)),
    # Yearly series are short (median 23 points): a 6-year window.  Both tourism recipes average 5
    # seeds and shrink toward (seasonal) naive, chosen on "tourism quarterly"/"tourism yearly".
    ForecastRecipe("tourism-yearly-lstm", "3", ("yearly",), "tourism", "yearly_in.csv",
                   _tourism_in("yearly"), ("tourism yearly", "tourism yearly, out of sample"), 15,
                   dict(window=6, horizon=4, season=1, chunk=1, tail=6, holdout=4, calib_windows=1,
                        min_history=4, hidden=64, relative_loss=True, average_last=8, members=5,
                        shrink=0.6)),
)}


ALPHA_GRID = tuple(np.round(np.arange(0.3, 2.01, 0.1), 1).tolist())  # interval scales a shipped model may take


def choose_alpha_scale(model: ForecastModel, data: Path, sets: list[ValidationSet],
                       level: float = LEVEL) -> dict:
    """Set a conformal model's alpha_scale (ForecastModel.interval_quantiles) to the ALPHA_GRID
    value whose `level` bounds cover the held-back horizons of the even-numbered series of its
    validation sets (those marked interval_choice) closest to `level`, each set counting alike.
    Calibration windows end a horizon or more before a forecast origin, and how much wider or
    narrower errors run there differs by data set, so it is measured past the end of training.
    The odd-numbered series chose nothing and report (score_set), as do the published
    out-of-sample values. Returns what it saw."""
    loaded = [(vs, vs.load(data)) for vs in sets if vs.interval_choice]
    loaded = [(replace(vs, interval_choice=False), got) for vs, got in loaded if got is not None]
    if not loaded:  # none of its sets' files is here: the model keeps its scale
        return {"alpha_scale": model.alpha_scale, "sets": []}
    coverage = {}
    for alpha in ALPHA_GRID:
        model.alpha_scale = alpha
        per_set = [score_set(model, hist[::2], actual[::2], vs, level)["model"][f"coverage_{round(level * 100)}"]
                   for vs, (hist, actual) in loaded]
        coverage[alpha] = float(np.mean(per_set))
    model.alpha_scale = min(ALPHA_GRID, key=lambda a: (abs(coverage[a] - level), a))
    model.config["alpha_scale"] = model.alpha_scale
    return {"alpha_scale": model.alpha_scale, "sets": [vs.name for vs, _ in loaded],
            "coverage": {str(a): round(c, 4) for a, c in coverage.items()}}


def train_shipped_forecast(data_dir: str | Path, out_dir: str | Path, *, freq: str = "hourly",
                           seed: int = 0, epochs: int | None = None, command: str | None = None,
                           **hparams: Any) -> ModelCard:
    """The shipped forecaster of `freq` (FORECAST_RECIPES), trained without the last horizon of
    each series and scored on it (and its other validation sets) beside the baselines.

    data_dir is the shared data root, or the recipe's own folder (e.g. m4_hourly/) in it.
    """
    if freq not in FORECAST_RECIPES:
        raise ValueError(f"no shipped forecast recipe for {freq!r}; recipes: {', '.join(FORECAST_RECIPES)}")
    recipe = FORECAST_RECIPES[freq]
    folder = dataset_dir(data_dir, recipe.folder)
    root = folder.parent if folder.name == recipe.folder else folder
    path = folder / recipe.file
    series = list(recipe.read(path).values())
    epochs = epochs or recipe.epochs
    options = {**recipe.hparams, **hparams}
    started = time.perf_counter()
    model, info = fit_forecast(series, seed=seed, epochs=epochs, **options)
    info["training_seconds"] = round(time.perf_counter() - started, 1)
    sets = [vs for name in recipe.sets for vs in VALIDATION_SETS if vs.name == name]
    if model.intervals == "conformal":
        info["interval_choice"] = choose_alpha_scale(model, root, sets)
    command = command or (f"flight-lstm train forecast --freq {freq} --data {root} --out {out_dir}"
                          + (f" --seed {seed}" if seed else ""))
    scores = validation_scores(model, root, sets)
    metrics = {**scores.get(recipe.sets[0], {}), "sets": scores}
    card = ModelCard(name=recipe.name, version=recipe.version, kind=model.kind,
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     training=training_record(info, seed, epochs, [path], command),
                     metrics=metrics, frequencies=list(recipe.frequencies))
    return model.save(out_dir, card)


# -- anomaly --------------------------------------------------------------------------------------


class AnomalyTraining:
    """The detector's training material: every column of every series laid end to end, a loss
    weight per point (0 where missing or labelled anomalous) and the runs that score them
    (`anomaly.plan_runs`, the same as in serving), grouped by domain so each domain is drawn
    equally often whatever its size."""

    def __init__(self, series: list[Labelled]):
        cols = [(s.domain, s.values[:, c], s.labels) for s in series for c in range(s.values.shape[1])]
        self.flat = np.concatenate([c[1] for c in cols])
        self.weight = (np.concatenate([~c[2] for c in cols]) & np.isfinite(self.flat)).astype(np.float64)
        lengths = np.array([len(c[1]) for c in cols])
        self.runs = plan_runs(lengths, np.zeros(len(lengths), np.int64))
        column = np.searchsorted(np.cumsum(lengths), self.runs.first, side="right")
        names = sorted({c[0] for c in cols})
        domain = np.array([names.index(c[0]) for c in cols])[column]
        self.domains = [np.flatnonzero(domain == d) for d in range(len(names))]

    def batch(self, rows: np.ndarray):
        """Prepared runs and their loss weights (0 past each run's end)."""
        runs = self.runs.take(rows)
        steps = np.arange(runs.length.max())
        inside = steps < runs.length[:, None]
        weight = np.where(inside, self.weight[np.where(inside, runs.first[:, None] + steps, 0)], 0.0)
        return prepare(self.flat, runs), weight

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        picks = rng.integers(len(self.domains), size=size)
        return np.array([self.domains[d][rng.integers(len(self.domains[d]))] for d in picks])

    def sampler(self, batch_size: int, steps: int):
        def epoch(rng: np.random.Generator):
            for _ in range(steps):
                yield self.batch(self.sample(rng, batch_size))
        return epoch


def calibration_residuals(model: AnomalyModel, series: list[Labelled], per_domain: int = 200_000,
                          seed: int = 0) -> np.ndarray:
    """The scored statistic (`AnomalyModel.predict_points`) of the normal (unlabelled) points of
    `series`, each column a sample, at most `per_domain` from each domain, so no domain sets the
    scale of the score."""
    rng = np.random.default_rng(seed)
    out = []
    for domain in sorted({s.domain for s in series}):
        group = [s for s in series if s.domain == domain]
        for k in sorted({s.values.shape[1] for s in group}):
            same = [s for s in group if s.values.shape[1] == k]
            resid = model.predict_points(np.concatenate([s.values for s in same]),
                                         np.array([len(s.values) for s in same])).stat
            normal = ~np.concatenate([s.labels for s in same])
            r = resid[normal].ravel()
            r = r[np.isfinite(r)]
            out.append(r if len(r) <= per_domain else rng.choice(r, per_domain, replace=False))
    return np.concatenate(out)


def fit_anomaly(train: list[Labelled], validation: list[Labelled], *, seed: int = 0,
                epochs: int = 20, steps_per_epoch: int = 60, batch_size: int = 48, lr: float = 2e-3,
                hidden: int = 64, layers: int = 2, dropout: float = 0.0, nu: float = 4.0,
                average_last: int = 4, validation_runs: int = 384,
                progress: bool = True) -> tuple[AnomalyModel, dict]:
    """Train the next-point distribution on the training series (labelled points are never
    targets), with validation NLL on a fixed draw of validation runs; then calibrate the score on
    the validation series' normal points."""
    rng = seed_everything(seed)
    model = AnomalyModel(hidden=hidden, layers=layers, dropout=dropout, nu=nu)
    material = AnomalyTraining(train)
    held = AnomalyTraining(validation)
    fixed = [held.batch(rows) for rows in np.array_split(
        held.sample(np.random.default_rng(seed + 1), validation_runs), max(validation_runs // 64, 1))]

    def validate() -> float:
        return float(np.mean([model.training_loss(b).item() for b in fixed]))

    info = model.fit(material.sampler(batch_size, steps_per_epoch), validate, rng=rng, epochs=epochs,
                     lr=lr, average_last=average_last, desc="anomaly", progress=progress)
    info["calibration"] = model.calibrate(calibration_residuals(model, validation, seed=seed))
    info["hparams"] = dict(hidden=hidden, layers=layers, dropout=dropout, nu=nu, lr=lr,
                           batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                           average_last=average_last, block=model.block,
                           min_history=model.min_history, max_context=2 * model.block - 1)
    info["train_runs"], info["train_points"] = len(material.runs.first), int(len(material.flat))
    return model, info


def train_shipped_anomaly(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                          epochs: int | None = None, version: str = "6", command: str | None = None,
                          **hparams: Any) -> ModelCard:
    """The shipped anomaly-lstm: trained on the training split of `evaluate.anomaly_splits`
    (forecasting series, synthetic ones, SKAB), its epochs kept by validation NLL (mean of the
    last few) and its score calibrated on the validation split; the card holds the validation
    and the report tables beside the baselines (the report split chose nothing)."""
    data_dir = Path(data_dir)
    split = anomaly_splits(data_dir)
    started = time.perf_counter()
    model, info = fit_anomaly(split["train"], split["validation"], seed=seed,
                              **({"epochs": epochs} if epochs else {}), **hparams)
    info["training_seconds"] = round(time.perf_counter() - started, 1)
    command = command or (f"flight-lstm train anomaly --data {data_dir} --out {out_dir}"
                          + (f" --seed {seed}" if seed else ""))
    metrics = {"validation": anomaly_scores(model, split["validation"], split["train"], seed=seed),
               "report": anomaly_scores(model, split["report"], split["train"], seed=seed)}
    card = ModelCard(name="anomaly-lstm", version=version, kind=model.kind,
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     training=training_record(info, seed, info["epochs_run"],
                                              anomaly_data_files(data_dir), command),
                     metrics=metrics)
    return model.save(out_dir, card)


# -- sentiment ------------------------------------------------------------------------------------


def _sentiment_batches(enc: Encoded, columns: tuple[np.ndarray, ...], batch_size: int):
    """Epoch iterator: shuffled buckets of rows with similar length, each batch (ids, lengths,
    *columns at its rows)."""
    keep = np.flatnonzero(enc.lengths > 0)

    def epoch(rng: np.random.Generator):
        noisy = enc.lengths[keep] + rng.uniform(0, 2, len(keep))
        order = keep[np.argsort(noisy)]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for k in rng.permutation(len(chunks)):
            rows = chunks[k]
            yield (torch.from_numpy(enc.pad(rows)), torch.from_numpy(enc.lengths[rows]),
                   *(torch.from_numpy(c[rows]) for c in columns))

    return epoch


def _label_columns(model: SentimentModel, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Binary labels as the batches of `model` carry them: floats for one logit; (three-class,
    binary) for three, with no three-class label."""
    if model.classes == 1:
        return (labels.astype(np.float32),)
    return (np.full(len(labels), -1, np.int64), labels)


def _positive(model: SentimentModel, enc: Encoded) -> np.ndarray:
    """Whether the model leans positive: P(positive) > P(negative)."""
    logits = model.logits(enc)
    return logits > 0 if model.classes == 1 else logits[:, 2] > logits[:, 0]


def fit_sentiment(texts: pa.Array, labels: np.ndarray, *, seed: int = 0, epochs: int = 8,
                  dev: tuple[pa.Array, np.ndarray] | None = None, vocab_size: int = 14_000,
                  embed_dim: int = 128, hidden: int = 128, dropout: float = 0.5,
                  batch_size: int = 128, lr: float = 3e-3, patience: int = 3,
                  average_last: int = 0, start: SentimentModel | None = None,
                  progress: bool = True) -> tuple[SentimentModel, dict[str, Any]]:
    """Train a SentimentModel on texts labelled 0/1 (the user's own): from scratch, one logit,
    or fine-tuned from `start`, keeping its classes.  Selects the epoch by accuracy on `dev` (or
    a 10% held-out split), or with `average_last` keeps the mean weights of the last epochs
    (BaseModel.fit)."""
    rng = seed_everything(seed)
    labels = np.asarray(labels, dtype=np.int64)
    if dev is None:
        perm = rng.permutation(len(labels))
        perm = perm[labels[perm] >= 0]
        cut = max(1, len(perm) // 10)
        dev = (texts.take(pa.array(perm[:cut])), labels[perm[:cut]])
        train = np.setdiff1d(np.arange(len(labels)), perm[:cut])
        texts, labels = texts.take(pa.array(train)), labels[train]
    vocab = build_vocab(tokenize(texts), vocab_size)
    if start is not None:  # fine-tuning: the parent's weights, its vocabulary grown with these words
        model = start.grown(vocab)
        embed_dim, hidden, dropout = (start.config[k] for k in ("embed_dim", "hidden", "dropout"))
        vocab = model.vocab.to_pylist()
    else:
        model = SentimentModel(vocab, embed_dim=embed_dim, hidden=hidden, dropout=dropout)
    enc, dev_enc = model.encode(texts), model.encode(dev[0])
    dev_pos = np.asarray(dev[1]) == 1

    def dev_error() -> float:
        return float(np.mean(_positive(model, dev_enc) != dev_pos))

    info = model.fit(_sentiment_batches(enc, _label_columns(model, labels), batch_size), dev_error, rng=rng,
                     epochs=epochs, lr=lr, patience=patience, average_last=average_last,
                     desc="sentiment", progress=progress)
    if start is not None:
        info.update(parent_vocab_size=len(start.vocab),
                    parent_selection_accuracy=round(float(np.mean(_positive(start, start.encode(dev[0])) == dev_pos)), 4))
    info["baselines"] = {"majority_class": round(float(max(dev_pos.mean(), 1 - dev_pos.mean())), 4)}
    try:  # the lexicon, where it is installed (a dev dependency)
        info["baselines"]["vader"] = round(float(np.mean((vader_scores(dev[0]) > 0) == dev_pos)), 4)
    except SystemExit:
        pass
    info.update(vocab_size=len(vocab), train_rows=len(labels), dev_rows=len(dev[1]),
                hparams=dict(embed_dim=embed_dim, hidden=hidden, dropout=dropout,
                             batch_size=batch_size, lr=lr, patience=patience,
                             average_last=average_last))
    return model, info


def train_sentiment(texts: pa.Array, labels: np.ndarray, *, name: str, version: str,
                    out_dir: str | Path, seed: int = 0, epochs: int = 8,
                    dev: tuple[pa.Array, np.ndarray] | None = None, data_files=(),
                    command: str = "train_sentiment", parent: str | None = None, **hparams: Any) -> ModelCard:
    """Train and save a sentiment model (from scratch, or fine-tuned from the registered model
    `parent`); the card holds the selection accuracy, and the parent's on the same texts."""
    start = default_registry().load("sentiment", parent) if parent else None
    model, info = fit_sentiment(texts, labels, seed=seed, epochs=epochs, dev=dev, start=start, **hparams)
    metrics = {"selection_accuracy": round(1 - info["best_val"], 4)}
    if start is not None:
        metrics.update(selection_accuracy_parent=info["parent_selection_accuracy"], parent=start.card.ref)
    metrics.update({f"selection_accuracy_{name}": value for name, value in info["baselines"].items()})
    return save_with_card(model, out_dir, name=name, version=version,
                          training=training_record(info, seed, epochs, data_files, command), metrics=metrics)


def _soft_label_columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-class labels, binary labels (-1: none) and the teacher's (rows, 3) logits."""
    three, binary = (pc.fill_null(table[c], -1).to_numpy().astype(np.int64) for c in ("three", "binary"))
    return three, binary, _teacher_logits(table)


def _teacher_logits(table: pa.Table) -> np.ndarray:
    return pc.list_flatten(table["teacher_logits"]).to_numpy().astype(np.float32).reshape(-1, len(CLASSES))


NEUTRAL_BIASES = np.round(np.arange(-2.0, 4.01, 0.1), 1)  # the neutral logit's shifts tried


def choose_neutral_bias(logits: np.ndarray, labels: np.ndarray) -> float:
    """The shift of the neutral logit that maximises the mean of three-class accuracy and
    macro-F1 on held-out labels: a network trained mostly on two-class text rarely says neutral."""
    def merit(bias: float) -> float:
        predicted = (logits + [0.0, bias, 0.0]).argmax(axis=1)
        return float(np.mean(predicted == labels)) + macro_f1(predicted, labels, len(CLASSES))

    return float(max(NEUTRAL_BIASES, key=merit))


def fit_three_class(table: pa.Table, held_out: tuple[pa.Array, np.ndarray], *, seed: int = 0, epochs: int = 4,
                    average_last: int = 2, vocab_size: int = 14_000, min_count: int = 3, embed_dim: int = 128,
                    hidden: int = 128, dropout: float = 0.5, batch_size: int = 128, lr: float = 3e-3,
                    progress: bool = True, start: Callable | None = None) -> tuple[SentimentModel, dict[str, Any]]:
    """Distil the teacher's soft labels (`teacher.soft_labels` rows) into a three-class BiLSTM
    that reads unknown words as MiniLM word pieces, its embeddings started from MiniLM's
    (`teacher.student_start`); keep the mean of the last `average_last` epochs, then shift the
    neutral logit by `choose_neutral_bias` on `held_out`.  `start` (vocab, dim) -> (pieces, first
    embeddings) stands in for student_start where MiniLM is not installed."""
    if start is None:
        from flight_lstm.models.teacher import student_start as start

    rng = seed_everything(seed)
    labelled = pc.invert(table["augmented"])
    vocab = build_vocab(tokenize(table["text"].filter(labelled)), vocab_size, min_count)
    pieces, first = start(vocab, embed_dim)
    model = SentimentModel(vocab, embed_dim=embed_dim, hidden=hidden, dropout=dropout, classes=len(CLASSES),
                           pieces=pieces)
    with torch.no_grad():
        model.embed.weight.copy_(first)
    enc, held_enc = model.encode(table["text"]), model.encode(held_out[0])

    def held_out_error() -> float:
        return float(np.mean(model.logits(held_enc).argmax(axis=1) != held_out[1]))

    info = model.fit(_sentiment_batches(enc, _soft_label_columns(table), batch_size), held_out_error, rng=rng,
                     epochs=epochs, lr=lr, average_last=average_last, desc="sentiment", progress=progress)
    bias = choose_neutral_bias(model.logits(held_enc), held_out[1])
    with torch.no_grad():
        model.out.bias[1] += bias
    model.round_to_float16()
    info.update(neutral_bias=bias, vocab_size=len(vocab), pieces=len(pieces), train_rows=table.num_rows,
                labelled_rows=int(pc.sum(labelled).as_py()),
                hparams=dict(vocab_size=vocab_size, min_count=min_count, embed_dim=embed_dim, hidden=hidden,
                             dropout=dropout, batch_size=batch_size, lr=lr, average_last=average_last))
    return model, info


def three_class_scores(model: SentimentModel, texts: pa.Array, labels: np.ndarray) -> dict:
    """Three-class accuracy and macro-F1 of the most probable class."""
    predicted = np.nan_to_num(model.probabilities(texts)).argmax(axis=1)
    return {"accuracy": round(float(np.mean(predicted == labels)), 4),
            "macro_f1": round(macro_f1(predicted, labels, len(CLASSES)), 4), "n": int(len(labels))}


def with_review_teacher(table: pa.Table, review_teachers: Path, name: str) -> pa.Table:
    """The soft labels with the review rows' and their copies' polarity taken from review teacher
    `name` (`teacher.review_teacher`: 'all', or 'fold<k>' for cross-validation fold k).

    The review teacher learned from two-class labels, which say how negative against positive a
    text is, not how neutral (`sentiment_loss`), and taken as they are its logits lowered the
    neutral share of review rows (mean P(neutral) 0.195 -> 0.119; of copies 0.321 -> 0.246) and
    the student's held-out macro-F1 with it (0.641 -> 0.627).  So a row keeps the base teacher's
    P(neutral), and the review teacher splits the rest between negative and positive; the new
    logits are those log-probabilities."""
    part = pq.read_table(Path(review_teachers) / f"{name}.parquet")
    rows = part["index"].to_numpy()
    logits = _teacher_logits(table).copy()
    base, review = (torch.from_numpy(a).log_softmax(dim=1) for a in (logits[rows], _teacher_logits(part)))
    polar = review[:, [0, 2]].log_softmax(dim=1) + torch.log1p(-base[:, 1].exp().clamp(max=1 - 1e-6))[:, None]
    logits[rows] = torch.stack([polar[:, 0], base[:, 1], polar[:, 1]], dim=1).numpy()
    return table.set_column(table.column_names.index("teacher_logits"), "teacher_logits",
                            pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), len(CLASSES)))


def custrev_cross_validation(table: pa.Table, held_out: tuple[pa.Array, np.ndarray], *, folds: int = REVIEW_FOLDS,
                             seed: int = 0, review_teachers: Path | None = None, **recipe: Any) -> dict:
    """Accuracy on the customer reviews by `folds`-fold cross-validation: each fold's student
    trains without that fold's sentences and their augmented copies and is scored on them.  With
    `review_teachers`, fold k's review rows carry the logits of the review teacher that never saw
    fold k's labels; else the base teacher's, which never saw a review label."""
    fold = review_folds(table, folds, seed)
    originals = (fold >= 0) & ~table["augmented"].to_numpy(zero_copy_only=False)
    accuracy = []
    for k in range(folds):
        rows = table if review_teachers is None else with_review_teacher(table, review_teachers, f"fold{k}")
        model, _ = fit_three_class(rows.filter(pa.array(fold != k)), held_out, seed=seed, **recipe)
        test = table.filter(pa.array(originals & (fold == k)))
        positive = model.score(test["text"]) > 0
        accuracy.append(round(float(np.mean(positive == (test["binary"].to_numpy() == 1))), 4))
        log.info("custrev fold %d: accuracy %.4f", k, accuracy[-1])
    return {"accuracy": round(float(np.mean(accuracy)), 4), "folds": accuracy, "n": int(originals.sum())}


def train_shipped_sentiment(data_dir: str | Path, out_dir: str | Path, soft_labels: str | Path | None = None, *,
                            seed: int = 0, epochs: int = 4, version: str = "2", cross_validate: bool = True,
                            review_teachers: str | Path | None = None, command: str | None = None,
                            **recipe: Any) -> ModelCard:
    """The shipped sentiment-bilstm: `fit_three_class` on the teacher's soft labels, the review
    rows relabelled by the review teachers (all made by flight_lstm.models.teacher: train_teacher,
    soft_labels, then review_teacher for all reviews and for each fold).  The recipe was fixed on
    the held-out SST-5 training sentences; the card reports SST-2 dev and SST-5 dev, which chose
    nothing, and the customer reviews by 5-fold cross-validation, beside VADER and sst2-bilstm@4.

    data_dir is the shared data root (holding sst2/, sst5/ and reviews/).
    """
    data_dir = Path(data_dir)
    soft_labels = Path(soft_labels or SOFT_LABELS)
    if not soft_labels.exists():
        raise FileNotFoundError(f"no soft labels at {soft_labels}; make them with "
                                "flight_lstm.models.teacher.train_teacher and soft_labels")
    review_teachers = Path(review_teachers or REVIEW_TEACHERS)
    needed = ["all", *(f"fold{k}" for k in range(REVIEW_FOLDS) if cross_validate)]
    if missing := [name for name in needed if not (review_teachers / f"{name}.parquet").exists()]:
        raise FileNotFoundError(f"no review teacher {', '.join(missing)} in {review_teachers}; make each with "
                                "flight_lstm.models.teacher.review_teacher")
    table = pq.read_table(soft_labels)
    notes = json.loads(table.schema.metadata[b"flight_lstm"])
    if (notes["seed"], notes["holdout"]) != (seed, HOLDOUT):
        raise ValueError(f"{soft_labels} was made for another held-out split: {notes}")
    held_out = sentiment_split(data_dir, HOLDOUT, seed)["held_out"]
    shipped = with_review_teacher(table, review_teachers, "all")
    model, info = fit_three_class(shipped, held_out, seed=seed, epochs=epochs, **recipe)
    metrics = {"held_out": {**three_class_scores(model, *held_out), "note": "chose the recipe and the neutral bias"}}
    if cross_validate:
        metrics["custrev_cv"] = custrev_cross_validation(table, held_out, seed=seed, epochs=epochs, progress=False,
                                                         review_teachers=review_teachers, **recipe)
    files = [*(data_dir / f for f in SENTIMENT_FILES), data_dir / "sst2" / "dev.tsv", data_dir / "sst5" / "dev.tsv",
             soft_labels, *(review_teachers / f"{name}.parquet" for name in needed)]
    command = command or f"flight-lstm train sentiment --data {data_dir} --out {out_dir}"
    training = training_record(info, seed, epochs, files, command)
    training["teacher"] = notes
    training["review_teachers"] = {
        name: json.loads(pq.read_schema(review_teachers / f"{name}.parquet").metadata[b"flight_lstm"])
        for name in needed}
    card = save_with_card(model, out_dir, name="sentiment-bilstm", version=version, training=training,
                          metrics=metrics)
    card.metrics["report"] = sentiment_report(data_dir, model).to_pylist()  # as `flight-lstm evaluate` will
    card.write(Path(card.path))
    return card


# -- on the user's own data -----------------------------------------------------------------------


def read_query(service: Service, sql: str) -> pa.Table:
    schema, batches = service.stream(service.plan(sql))
    return pa.Table.from_batches(list(batches), schema)


def series_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """(series id, ts, value) rows → one array per series (by its id, as text) in time order."""
    if table.num_columns != 3:
        raise InvalidQuery(f"forecast training data needs 3 columns (series id, ts, value), got {table.column_names}")
    key, ts, value = table.column_names
    table = table.filter(pc.is_valid(table[ts])).sort_by([(key, "ascending"), (ts, "ascending")])
    ids = table[key].combine_chunks()
    if len(ids) == 0:
        raise InvalidQuery("the training query returned no rows")
    starts = np.flatnonzero(pc.not_equal(ids[1:], ids[:-1]).fill_null(True).to_numpy(zero_copy_only=False)) + 1
    values = pc.cast(table[value], pa.float64()).to_numpy().astype(np.float64)
    names = [str(ids[int(i)].as_py()) for i in np.concatenate([[0], starts])]
    return dict(zip(names, np.split(values, starts)))


def check_lengths(series: dict[str, np.ndarray], *, holdout: int = 48, calib_windows: int = 2,
                  horizon: int = 48) -> None:
    """Forecast training holds back `holdout` points and `calib_windows` horizons of each series
    and needs one more horizon (and a point) before them: refuse data with no such series, naming
    the longest and what it lacks."""
    needed = holdout + (calib_windows + 1) * horizon + 1
    longest = max(series, key=lambda name: len(series[name]))
    if len(series[longest]) < needed:
        raise InvalidQuery(f"every series is too short to train on: the longest, {longest!r}, has "
                           f"{len(series[longest])} points, and a series needs at least {needed} ({holdout} held "
                           f"out, {calib_windows} calibration windows and one training window of {horizon} each); "
                           "select longer series or more history")


def texts_and_labels(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """(text, label) rows with label 0/1 or boolean; rows with a NULL are left out."""
    if table.num_columns != 2:
        raise InvalidQuery(f"sentiment training data needs 2 columns (text, label), got {table.column_names}")
    text, label = table.column_names
    table = table.filter(pc.and_(pc.is_valid(table[text]), pc.is_valid(table[label])))
    labels = pc.cast(table[label], pa.int64()).to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise InvalidQuery("sentiment labels must be 0/1 or boolean")
    return table[text].combine_chunks().cast(pa.string()), labels


def next_version(name: str, out_dir: Path) -> str:
    """One past the highest version of `name` in the target directory or anywhere the server looks."""
    cards = Registry([out_dir]).cards() + default_registry().cards()
    versions = [int(c.version) for c in cards if c.name == name and c.version.isdigit()]
    return str(max(versions, default=0) + 1)


FINE_TUNE = {"epochs": 8, "lr": 3e-4, "sentiment_lr": 1e-3}
SMALL_DATA = 100  # series: fewer, and training from scratch tells the user fine-tuning is likely better
SMALL_TEXTS = 20_000  # labelled texts: the same for sentiment


def train_from_source(kind: str, source_uri: str, sql: str, name: str, *, out_dir: Path | None = None,
                      seed: int = 0, epochs: int | None = None, parent: str | None = None, **hparams):
    service = Service(open_source(source_uri))
    table = read_query(service, sql)
    # The card records the source by its secret-free description, never the URI.
    command = shlex.join(["flight-lstm", "train", kind, "--source", service.source.describe(), "--sql", sql, "--name", name])
    out_dir = Path(out_dir or user_models_dir())
    options = {"seed": seed, "name": name, "version": next_version(name, out_dir), "out_dir": out_dir,
               "command": command, **({"epochs": epochs} if epochs else {}), **hparams}
    if kind == "forecast":
        series = series_from_table(table)
        check_lengths(series, **{k: hparams[k] for k in ("holdout", "calib_windows", "horizon") if k in hparams})
        if not parent and len(series) < SMALL_DATA:
            log.warning("%d series is little to learn a forecaster from scratch; fine-tuning a shipped model "
                        "(--from m4-hourly-lstm, or the model of your data's frequency) is likely better", len(series))
        if parent:  # continue from what the parent knows: fewer epochs at a lower rate, unless told otherwise
            options = {"epochs": FINE_TUNE["epochs"], "lr": FINE_TUNE["lr"], **options,
                       "parent": parent, "command": command + " --from " + parent}
        return train_forecast(list(series.values()), **options)
    texts, labels = texts_and_labels(table)
    if parent:  # few labelled texts need small batches to take enough steps
        options = {"epochs": FINE_TUNE["epochs"], "lr": FINE_TUNE["sentiment_lr"],
                   "batch_size": int(np.clip(len(labels) // 50, 16, 128)), **options,
                   "parent": parent, "command": command + " --from " + parent}
    elif len(labels) < SMALL_TEXTS:
        log.warning("%d labelled texts is little to learn a sentiment model from scratch; fine-tuning the shipped "
                    "one (--from sentiment-bilstm) keeps what it knows and is likely better", len(labels))
    return train_sentiment(texts, labels, **options)

