"""Evaluation: a model's benchmark scores, alone (for its card) or beside simple baselines in one
table (`flight-lstm evaluate`).

Sentiment: SST-2 dev (as given and raw-looking), SST-5 dev as three classes, customer reviews and
MPQA phrases, against VADER (a lexicon, with its own neutral band) and the majority class. Forecast: every
validation set (VALIDATION_SETS: M4 Hourly and Weekly, NN5, tourism, synthetic series), each on
the held-back last horizon of its series, scored M4-style (sMAPE, MASE, OWA where defined, MAPE,
coverage and MSIS of the 95% interval) against seasonal naive (with empirical intervals), Naive2
and, when statsforecast is installed (`pip install -e '.[baselines]'`), Theta and ETS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from flight_lstm import frequencies
from flight_lstm.models.data import (SST5_TO_3, dataset_dir, load_m4, load_nn5, load_skab, load_tourism,
                                     read_labelled, synthetic_series)
from flight_lstm.models.forecast import ForecastModel
from flight_lstm.models.injection import inject
from flight_lstm.models.sentiment import SentimentModel
from flight_lstm.models.series import fill_gaps, to_arrow
from flight_lstm.models.text import detokenize
from udfs.base import load_model


# -- sentiment ------------------------------------------------------------------------------------


VADER_NEUTRAL = 0.05  # VADER's own rule: compound within +-0.05 is neutral


@dataclass(frozen=True)
class SentimentSet:
    """Held-out texts with labels 0/1 (negative/positive) or, when `three`, 0/1/2
    (negative/neutral/positive)."""

    name: str
    texts: pa.Array
    labels: np.ndarray
    three: bool = False


SENTIMENT_SET_FILES = {"customer reviews": "reviews/custrev.tsv", "MPQA phrases": "reviews/mpqa.tsv"}


def _found(data: str | Path, name: str) -> Path | None:
    """A dataset's folder: `data` itself when so named, else data/name when it exists."""
    data = Path(data)
    return data if data.name == name else data / name if (data / name).is_dir() else None


def sentiment_sets(data: str | Path) -> list[SentimentSet]:
    """Every sentiment set found under `data` (the shared root or one set's folder): SST-2 dev,
    the same raw-looking, SST-5 dev as three classes, customer-review sentences, MPQA phrases.
    The shipped model trained on none of them; SST-5 dev holds SST-2 dev's sentences, which
    took part in choosing its recipe (README)."""
    found = []
    if (d := _found(data, "sst2")) and (d / "dev.tsv").exists():
        texts, labels = read_labelled(d / "dev.tsv")
        found += [SentimentSet("SST-2 dev", texts, labels), SentimentSet("SST-2 dev, raw text", detokenize(texts), labels)]
    if (d := _found(data, "sst5")) and (d / "dev.tsv").exists():
        texts, labels = read_labelled(d / "dev.tsv")
        found.append(SentimentSet("SST-5 dev, 3 classes", texts, SST5_TO_3[labels], three=True))
    if d := _found(data, "reviews"):
        for name, file in (("customer reviews", "custrev.tsv"), ("MPQA phrases", "mpqa.tsv")):
            if (d / file).exists():
                found.append(SentimentSet(name, *read_labelled(d / file)))
    return found


def macro_f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The mean over classes of each class's F1 (0 for a class never predicted nor present)."""
    f1 = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (labels == c))
        denom = np.sum(predicted == c) + np.sum(labels == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def _set_scores(vs: SentimentSet, score: np.ndarray, three_class: np.ndarray) -> dict:
    """Accuracy (the sign of the score on two-class sets; the class on SST-5) and macro-F1."""
    if vs.three:
        return {"accuracy": round(float(np.mean(three_class == vs.labels)), 4),
                "macro_f1": round(macro_f1(three_class, vs.labels, 3), 4)}
    return {"accuracy": round(float(np.mean((score > 0) == (vs.labels == 1))), 4), "macro_f1": None}


def sentiment_report(data: str | Path, model: str | SentimentModel | None = None,
                     trained_on: tuple[str, ...] | None = None) -> pa.Table:
    """The model beside VADER and the majority class on every set `sentiment_sets` finds; the
    three classes are each method's most probable (VADER: its own neutral band).  Sets the
    model trained on (`trained_on`, else read from its card) say so, and the customer reviews
    add the card's cross-validated accuracy where it has one."""
    fitted = load_model("sentiment", model) if model is None or isinstance(model, str) else model
    card = fitted.card
    name = card.ref if card else "this model"
    if trained_on is None:
        files = [f["path"] for f in (card.training.get("data_files") or [])] if card else []
        trained_on = tuple(s for s, file in SENTIMENT_SET_FILES.items() if any(p.endswith(file) for p in files))
    rows = []
    for vs in sentiment_sets(data):
        probabilities, vader = fitted.probabilities(vs.texts), vader_scores(vs.texts)
        ours = probabilities[:, 2] - probabilities[:, 0]
        methods = {
            name + (" (trained on this set)" if vs.name in trained_on else ""):
                (ours, np.nan_to_num(probabilities).argmax(axis=1)),
            "VADER (lexicon)": (vader, np.where(vader >= VADER_NEUTRAL, 2, np.where(vader <= -VADER_NEUTRAL, 0, 1))),
        }
        majority = np.bincount(vs.labels).argmax()
        for method, (score, three) in methods.items():
            rows.append({"set": vs.name, "n": len(vs.labels), "method": method, **_set_scores(vs, score, three)})
        rows.append({"set": vs.name, "n": len(vs.labels), "method": "majority class",
                     **_set_scores(vs, np.full(len(vs.labels), 1.0 if majority else -1.0), np.full(len(vs.labels), majority))})
        cv = card.metrics.get("custrev_cv") if card and vs.name == "customer reviews" else None
        if cv:
            rows.append({"set": vs.name, "n": cv["n"], "method": f"{name}, {len(cv['folds'])}-fold cross-validation",
                         "accuracy": cv["accuracy"], "macro_f1": None})
    return pa.Table.from_pylist(rows)


def vader_scores(texts: pa.Array) -> np.ndarray:
    """VADER's compound score in [-1, 1] per text (a lexicon: the baseline a model must beat)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise SystemExit("the VADER baseline needs the vaderSentiment package: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts.to_pylist()])


# -- forecast -------------------------------------------------------------------------------------

LEVEL = 0.95
SYNTHETIC_SERIES = 1000  # per synthetic set: its even half chooses an interval scale, so 500 series, not luck


@dataclass(frozen=True)
class ValidationSet:
    """Series cut into histories and the `horizon` values that follow, and how to score them."""

    name: str
    freq: str  # the frequency whose model forecasts it (the registry resolves it by its cards)
    horizon: int
    snaive: int  # seasonal naive's lag
    period: int  # M4's frequency: MASE's and MSIS's scale lag, Naive2's and Theta's period
    load: Callable[[Path], tuple[list[np.ndarray], list[np.ndarray]] | None]  # None: no files
    owa: bool = False  # M4 sets: OWA against Naive2
    report_only: bool = False  # published out-of-sample values: reported, never used to choose
    # A set a shipped model is validated on: its even-numbered series choose the model's interval
    # scale (training.choose_alpha_scale), so coverage and MSIS are reported on the odd-numbered.
    interval_choice: bool = False


def _holdout(series: list[np.ndarray], h: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [s[:-h] for s in series], [s[-h:] for s in series]


def _from_file(folder: str, file: str, read: Callable, h: int) -> Callable:
    def load(data: Path):
        path = dataset_dir(data, folder) / file
        return _holdout(list(read(path).values()), h) if path.exists() else None
    return load


def _tourism(freq: str, h: int, oos: bool = False) -> Callable:
    def load(data: Path):
        if not (dataset_dir(data, "tourism") / f"{freq}_in.csv").exists():
            return None
        history, future = load_tourism(data, freq)
        if oos:
            return list(history.values()), [future[k] for k in history]
        return _holdout(list(history.values()), h)
    return load


def _business_days(path: Path) -> dict[str, np.ndarray]:
    return load_nn5(path, weekdays_only=True)


VALIDATION_SETS = (
    ValidationSet("M4 Hourly", "hourly", 48, 24, 24, _from_file("m4_hourly", "Hourly-train.csv", load_m4, 48), owa=True,
                  interval_choice=True),
    ValidationSet("M4 Weekly", "weekly", 13, 52, 1, _from_file("m4_weekly", "Weekly-train.csv", load_m4, 13), owa=True,
                  interval_choice=True),
    ValidationSet("NN5 daily (days 680-735)", "daily", 56, 7, 7, _from_file("nn5", "train.csv", load_nn5, 56),
                  interval_choice=True),
    ValidationSet("NN5 business days", "business_daily", 40, 5, 5, _from_file("nn5", "train.csv", _business_days, 40),
                  interval_choice=True),
    ValidationSet("tourism monthly", "monthly", 24, 12, 12, _tourism("monthly", 24),
                  interval_choice=True),
    ValidationSet("tourism quarterly", "quarterly", 8, 4, 4, _tourism("quarterly", 8),
                  interval_choice=True),
    ValidationSet("tourism yearly", "yearly", 4, 1, 1, _tourism("yearly", 4),
                  interval_choice=True),
    ValidationSet("synthetic hourly", "hourly", 48, 24, 24,
                  lambda data: _holdout(synthetic_series("hourly", SYNTHETIC_SERIES)[0], 48), interval_choice=True),
    ValidationSet("synthetic daily", "daily", 56, 7, 7,
                  lambda data: _holdout(synthetic_series("daily", SYNTHETIC_SERIES)[0], 56), interval_choice=True),
    ValidationSet("tourism monthly, out of sample", "monthly", 24, 12, 12, _tourism("monthly", 24, oos=True), report_only=True),
    ValidationSet("tourism quarterly, out of sample", "quarterly", 8, 4, 4, _tourism("quarterly", 8, oos=True), report_only=True),
    ValidationSet("tourism yearly, out of sample", "yearly", 4, 1, 1, _tourism("yearly", 4, oos=True), report_only=True),
)


def _acf(x: np.ndarray, k: int) -> float:
    d = x - x.mean()
    return float((d[k:] * d[:-k]).sum() / (d * d).sum())


def seasonality_test(x: np.ndarray, m: int) -> bool:
    """M4's 90% test: is the lag-m autocorrelation significant?"""
    if m <= 1 or len(x) < 3 * m or np.all(x == x[0]):
        return False
    acf = np.array([_acf(x, k) for k in range(1, m + 1)])
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(acf[:-1] ** 2)) / len(x))
    return abs(acf[-1]) > limit


def naive2(x: np.ndarray, h: int, m: int) -> np.ndarray:
    """M4's Naive2: naive forecast of the classically (multiplicatively) deseasonalized series;
    the plain naive forecast for a series with a value <= 0, which that cannot deseasonalize."""
    n = len(x)
    if not seasonality_test(x, m) or x.min() <= 0:
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


def seasonal_naive_interval(x: np.ndarray, h: int, m: int, level: float = LEVEL):
    """Seasonal naive with empirical intervals: the `level` quantile of the series' own in-sample
    |errors| at lag m, widened by sqrt(1 + k) in the k-th season ahead."""
    m = m if len(x) > m else 1
    f = seasonal_naive(x, h, m)
    errors = np.abs(x[m:] - x[:-m]) if len(x) > m else np.zeros(1)
    width = np.quantile(errors, level) * np.sqrt(1 + np.arange(h) // m)
    return f, f - width, f + width


def _filled(x: np.ndarray) -> np.ndarray:
    """A history with its NaN gaps interpolated, as the model's input is."""
    return fill_gaps(np.asarray(x, np.float64), np.array([len(x)]))[0]


def mase_scale(x: np.ndarray, lag: int) -> float:
    """In-sample MAE of the naive forecast at `lag` (1 for a history too short for it)."""
    lag = lag if len(x) > lag else 1
    return float(np.mean(np.abs(x[lag:] - x[:-lag]))) if len(x) > lag else np.nan


def _point_scores(y, f, lo, hi, scale, level) -> dict[str, float]:
    """One series' scores over the steps whose actual value is known."""
    ok = np.isfinite(y)
    y, f = y[ok], f[ok]
    denom = np.abs(y) + np.abs(f)
    smape = np.where(denom > 0, 2 * np.abs(y - f) / np.where(denom > 0, denom, 1), 0.0)
    nonzero = y != 0
    good = scale > 0 and np.isfinite(scale)
    out = {"smape": 100 * smape.mean(), "mase": np.abs(y - f).mean() / scale if good else np.nan,
           "mape": 100 * np.mean(np.abs(y - f)[nonzero] / np.abs(y[nonzero])) if nonzero.any() else np.nan}
    if lo is not None:
        lo, hi = lo[ok], hi[ok]
        bounded = np.isfinite(lo) & np.isfinite(hi)
        alpha = 1 - level
        penalty = (hi - lo) + 2 / alpha * ((lo - y) * (y < lo) + (y - hi) * (y > hi))
        out["coverage"] = np.mean((y >= lo) & (y <= hi)) if bounded.all() else np.nan
        out["msis"] = penalty.mean() / scale if good and bounded.all() else np.nan
    return out


def _theta(x: np.ndarray, h: int, m: int, level: float):
    """statsforecast's Theta (additive where a multiplicative decomposition fails, e.g. on zeros);
    the naive forecast with empirical intervals for a series too short for it."""
    from statsforecast.models import Theta

    tag = round(level * 100)
    for decomposition in ("multiplicative", "additive"):
        try:
            r = Theta(season_length=m, decomposition_type=decomposition).forecast(y=x, h=h, level=[tag])
            return r["mean"], r[f"lo-{tag}"], r[f"hi-{tag}"]
        except Exception:  # noqa: BLE001 - statsforecast raises several kinds on series it cannot fit
            continue
    return seasonal_naive_interval(x, h, 1, level)


def has_theta() -> bool:
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        return False
    return True


def score_set(model: ForecastModel, histories: list[np.ndarray], actuals: list[np.ndarray],
              vs: ValidationSet, level: float = LEVEL, theta: bool = False) -> dict[str, dict]:
    """Scores of the model and the baselines on one set: method -> {smape, mase, owa, mape,
    coverage_95, msis_95} (means over series; OWA only for M4 sets; None where not defined;
    coverage and MSIS over the odd-numbered series only where the even-numbered chose)."""
    h = vs.horizon
    r = model.predict(to_arrow(histories), horizon=h, level=level,
                      period=frequencies.period_of(vs.freq))
    methods: dict[str, list[dict]] = {"model": [], "seasonal_naive": [], "naive2": []}
    if theta:
        methods["theta"] = []
    for i, raw in enumerate(histories):
        x, y = _filled(raw), np.asarray(actuals[i], np.float64)
        scale = mase_scale(x, vs.period)
        methods["model"].append(_point_scores(y, r.mean[i], r.lo[i], r.hi[i], scale, level))
        f, lo, hi = seasonal_naive_interval(x, h, vs.snaive, level)
        methods["seasonal_naive"].append(_point_scores(y, f, lo, hi, scale, level))
        methods["naive2"].append(_point_scores(y, naive2(x, h, vs.period), None, None, scale, level))
        if theta:
            methods["theta"].append(_point_scores(y, *_theta(x, h, vs.period, level), scale, level))
    out, tag = {}, round(level * 100)
    for name, rows in methods.items():
        out[name] = {k: _mean([row.get(k, np.nan) for row in rows]) for k in ("smape", "mase", "mape")}
        reported = rows[1::2] if vs.interval_choice else rows
        out[name].update({f"{k}_{tag}": _mean([row.get(k, np.nan) for row in reported]) for k in ("coverage", "msis")})
    base = out["naive2"]
    defined = vs.owa and all(base[k] and scores[k] is not None for k in ("smape", "mase") for scores in out.values())
    for scores in out.values():
        scores["owa"] = (round(0.5 * (scores["smape"] / base["smape"] + scores["mase"] / base["mase"]), 4)
                         if defined else None)
    return out


def _mean(values: list[float]) -> float | None:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 4) if len(values) else None


def evaluate_forecast(model: ForecastModel, series: list[np.ndarray], horizon: int = 48,
                      season: int = 24, level: float = LEVEL) -> dict[str, Any]:
    """Hold back the last `horizon` points per series; the model's and the baselines' sMAPE,
    MASE, OWA vs Naive2, MAPE, and coverage / MSIS of the `level` intervals (MASE-scaled)."""
    name = frequencies.by_period(season).name if frequencies.by_period(season) else str(season)
    vs = ValidationSet("given", name, horizon, season, season, lambda data: None, owa=True)
    hist, actual = _holdout([np.asarray(s, np.float64) for s in series], horizon)
    return {"series": len(series), "horizon": horizon, "season": season,
            **score_set(model, hist, actual, vs, level)}


def validation_scores(model: ForecastModel, data: str | Path, sets: list[ValidationSet],
                      theta: bool | None = None, level: float = LEVEL) -> dict[str, Any]:
    """A model's card metrics: for each validation set found under `data`, its scores beside the
    baselines'."""
    theta = has_theta() if theta is None else theta
    out = {}
    for vs in sets:
        loaded = vs.load(Path(data))
        if loaded is not None:
            out[vs.name] = {"series": len(loaded[0]), "horizon": vs.horizon,
                            **score_set(model, *loaded, vs, level, theta)}
    return out


BASELINE_NAMES = {"seasonal_naive": "seasonal naive", "naive2": "Naive2", "theta": "Theta (statsforecast)"}


def forecast_report(data: str | Path, model: str | None = None, sets: list[str] | None = None,
                    theta: bool | None = None) -> pa.Table:
    """Every validation set found under `data` (or those named in `sets`) in one table: the
    model of the set's frequency (or `model` for all) beside the baselines."""
    theta = has_theta() if theta is None else theta
    chosen = [vs for vs in VALIDATION_SETS if not sets or any(s.lower() in vs.name.lower() for s in sets)]
    rows = []
    for vs in chosen:
        loaded = vs.load(Path(data))
        if loaded is None:
            continue
        fitted = load_model("forecast", model or vs.freq)
        scores = score_set(fitted, *loaded, vs, LEVEL, theta)
        for key, s in scores.items():
            rows.append({"set": vs.name, "method": fitted.card.ref if key == "model" else BASELINE_NAMES[key],
                         "series": len(loaded[0]), "horizon": vs.horizon, "smape": s["smape"],
                         "mase": s["mase"], "owa": s["owa"], "mape": s["mape"],
                         "coverage_95": s["coverage_95"], "msis_95": s["msis_95"]})
    return pa.Table.from_pylist(rows)


# -- anomaly --------------------------------------------------------------------------------------

ANOMALY_LEVEL = 0.999  # the operators' default level
TOLERANCE = 10  # points after an event's end that still count as detecting it (alarms lag)
SPLIT = (0.7, 0.1)  # shares of each domain's series that train and validate; the rest reports
SKAB_SPLIT = (0.5, 0.2)  # of each SKAB folder's experiments: more report, as there are few
SPLIT_SEED = 19


@dataclass(frozen=True)
class Labelled:
    """One series for the anomaly detector: its values (points, k), its anomaly labels, the
    domain it comes from and its seasonal period (the seasonal-difference baseline's lag)."""

    domain: str
    values: np.ndarray
    labels: np.ndarray
    period: int


def _domain_series(data: Path) -> list[tuple[str, int, list[np.ndarray | None]]]:
    """The univariate domains that train and test the detector: the forecasting series and
    synthetic ones, each with its seasonal period.  A synthetic series of the level-shift kind (a
    step of 30-60% in 5% noise) is an anomaly, not normal data: it is None, keeping its place."""
    out = []
    for name, folder, file, read, period in (
            ("M4 Hourly", "m4_hourly", "Hourly-train.csv", load_m4, 24),
            ("M4 Weekly", "m4_weekly", "Weekly-train.csv", load_m4, 52),
            ("NN5", "nn5", "train.csv", load_nn5, 7)):
        path = dataset_dir(data, folder) / file
        if path.exists():
            out.append((name, period, list(read(path).values())))
    if (dataset_dir(data, "tourism") / "monthly_in.csv").exists():
        out.append(("tourism monthly", 12, list(load_tourism(data, "monthly")[0].values())))
    for freq, period in (("hourly", 24), ("daily", 7)):
        series, kinds = synthetic_series(freq, 100, seed=SPLIT_SEED)
        out.append((f"synthetic {freq}", period, [None if kind == "level_shift" else s
                                                   for s, kind in zip(series, kinds)]))
    return out


def _roles(n: int, seed: int, shares: tuple[float, float] = SPLIT) -> np.ndarray:
    """Deterministic roles of n items: 0 train, 1 validation, 2 report."""
    order = np.random.default_rng(seed).permutation(n)
    cut = np.round(np.array(shares).cumsum() * n).astype(int)
    roles = np.full(n, 2)
    roles[order[:cut[0]]], roles[order[cut[0]:cut[1]]] = 0, 1
    return roles


def anomaly_splits(data: str | Path) -> dict[str, list[Labelled]]:
    """'train', 'validation' and 'report' series, split deterministically: each domain's series
    70/10/20, each SKAB folder's experiments 50/20/30, and SKAB's anomaly-free run in time (its
    first 60% trains, the next 20% validates, the last 20% reports).  Nothing of the report split
    trains or chooses anything."""
    data = Path(data)
    split: dict[str, list[Labelled]] = {"train": [], "validation": [], "report": []}
    names = list(split)
    for domain, period, series in _domain_series(data):
        for s, role in zip(series, _roles(len(series), SPLIT_SEED)):
            if s is None:
                continue
            split[names[role]].append(Labelled(domain, np.asarray(s, np.float64)[:, None],
                                               np.zeros(len(s), bool), period))
    if (dataset_dir(data, "skab") / "valve1").is_dir():
        skab = load_skab(data)
        values, _ = skab.pop("anomaly-free")
        cuts = (np.array([0.6, 0.8]) * len(values)).astype(int)
        for role, part in zip(names, np.split(values, cuts)):
            split[role].append(Labelled("SKAB anomaly-free", part, np.zeros(len(part), bool), 1))
        for folder in ("valve1", "valve2", "other"):
            runs = sorted(k for k in skab if k.startswith(folder + "/"))
            for name, role in zip(runs, _roles(len(runs), SPLIT_SEED, SKAB_SPLIT)):
                split[names[role]].append(Labelled("SKAB", *skab[name], 1))
    return split


def anomaly_data_files(data: str | Path) -> list[Path]:
    """The files `anomaly_splits` reads (for the card's provenance)."""
    data = Path(data)
    files = [dataset_dir(data, folder) / file for folder, file in (
        ("m4_hourly", "Hourly-train.csv"), ("m4_weekly", "Weekly-train.csv"), ("nn5", "train.csv"),
        ("tourism", "monthly_in.csv"))]
    skab = dataset_dir(data, "skab")
    files += sorted(skab.glob("*/*.csv"))
    return [f for f in files if f.exists()]


# Baselines: online, each point judged from the BASELINE_WINDOW points before it.
BASELINE_WINDOW = 100


def rolling_z(x: np.ndarray, window: int = BASELINE_WINDOW, first: int = 16) -> np.ndarray:
    """Per point of a (points, k) series, the max over columns of |x - mean| / std of the
    `window` observed points before it (NaN for missing points and the first `first` points)."""
    ok = np.isfinite(x)
    anchor = np.array([c[np.isfinite(c)][0] if np.isfinite(c).any() else 0.0 for c in x.T])
    v = np.where(ok, x - anchor, 0.0)  # centred on the first value, for the sums' precision
    sums = [np.vstack([np.zeros((1, x.shape[1])), np.cumsum(a, axis=0)]) for a in (ok, v, v * v)]
    t = np.arange(len(x))
    back = np.maximum(t - window, 0)
    cnt, s1, s2 = (s[t] - s[back] for s in sums)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = s1 / cnt
        sd = np.sqrt(np.maximum(s2 / cnt - mean * mean, 0)) + 1e-9 * np.abs(mean + anchor) + 1e-300
        z = np.abs(v - mean) / sd
    z = np.where(ok & (cnt >= 2) & (t[:, None] >= first), z, -np.inf)
    best = z.max(axis=1)
    return np.where(best > -np.inf, best, np.nan)


def seasonal_difference_z(x: np.ndarray, period: int) -> np.ndarray:
    """`rolling_z` of the differences at the seasonal lag (lag 1 for a series without season)."""
    lag = period if len(x) > 2 * period else 1
    d = np.full(x.shape, np.nan)
    d[lag:] = x[lag:] - x[:-lag]
    return rolling_z(d)


BASELINES: dict[str, Callable[[Labelled, np.random.Generator], np.ndarray]] = {
    "rolling z-score": lambda s, rng: rolling_z(s.values),
    "seasonal-difference z-score": lambda s, rng: seasonal_difference_z(s.values, s.period),
    "random scores": lambda s, rng: rng.random(len(s.values)),
}


def model_scores(model, series: list[Labelled], level: float = ANOMALY_LEVEL) -> list[np.ndarray]:
    """The model's score of every point, one array per series (series of k columns together)."""
    out: list[np.ndarray | None] = [None] * len(series)
    for k in sorted({s.values.shape[1] for s in series}):
        idx = [i for i, s in enumerate(series) if s.values.shape[1] == k]
        lengths = np.array([len(series[i].values) for i in idx])
        score = model.score(np.concatenate([series[i].values for i in idx]), lengths, level).score
        for i, part in zip(idx, np.split(score, np.cumsum(lengths)[:-1])):
            out[i] = part
    return out


# Metrics, over the points of many series pooled (scores are comparable across series).


def _ranked(score: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(score), -np.inf, score)  # an unscored point is never flagged


def average_precision(score: np.ndarray, labels: np.ndarray) -> float:
    """AUC-PR: the mean over anomalous points of the precision when flagging every point scored
    at least as high (ties flagged together)."""
    s, labels = _ranked(score), np.asarray(labels, bool)
    if not labels.any():
        return float("nan")
    ranked, pos = np.sort(s), np.sort(s[labels])
    at = s[labels]
    flagged = len(s) - np.searchsorted(ranked, at, "left")
    hits = len(pos) - np.searchsorted(pos, at, "left")
    return float(np.mean(hits / flagged))


def event_windows(labels: np.ndarray, lengths: np.ndarray, tolerance: int = TOLERANCE):
    """Each event (a run of anomalous points) as the flat window [start, stop) that detects it:
    from its start to `tolerance` points past its end, not past its series or the next event."""
    labels = np.asarray(labels, bool)
    ends = np.cumsum(lengths)[np.asarray(lengths) > 0]
    first, last = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    first[ends - np.asarray(lengths)[np.asarray(lengths) > 0]], last[ends - 1] = True, True
    starts = np.flatnonzero(labels & (first | ~np.r_[False, labels[:-1]]))
    stops = np.flatnonzero(labels & (last | ~np.r_[labels[1:], False])) + 1
    series_end = ends[np.searchsorted(ends, starts, "right")]
    nxt = np.r_[starts[1:], len(labels)][:len(starts)]
    return starts, np.minimum.reduce([stops + tolerance, series_end, nxt])


def _in_windows(n: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    mark = np.zeros(n + 1, np.int64)
    np.add.at(mark, starts, 1)
    np.add.at(mark, stops, -1)
    return np.cumsum(mark)[:n] > 0


def _event_peaks(s: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    if not len(starts):
        return np.zeros(0)
    bounds = np.stack([starts, stops], axis=1).ravel()
    return np.maximum.reduceat(np.r_[s, -np.inf], bounds)[::2]


def range_average_precision(score: np.ndarray, labels: np.ndarray, lengths: np.ndarray,
                            tolerance: int = TOLERANCE) -> float:
    """Range-based AUC-PR with a tolerance: the mean over events of the precision at the
    threshold that first detects the event (its peak score within its window), precision being
    the share of flagged points that fall in some event's window.  Long events count once, so
    random scores do not look good by hitting every long event somewhere."""
    s = _ranked(score)
    starts, stops = event_windows(labels, lengths, tolerance)
    if not len(starts):
        return float("nan")
    inside = _in_windows(len(s), starts, stops)
    peaks = _event_peaks(s, starts, stops)
    ranked, hit = np.sort(s), np.sort(s[inside])
    flagged = len(s) - np.searchsorted(ranked, peaks, "left")
    hits = len(hit) - np.searchsorted(hit, peaks, "left")
    return float(np.mean(np.where(peaks > -np.inf, hits / np.maximum(flagged, 1), 0.0)))


def alarm_scores(score: np.ndarray, labels: np.ndarray, lengths: np.ndarray, threshold: float,
                 tolerance: int = TOLERANCE) -> tuple[float, float]:
    """(event recall, false alarms per 1,000 points) when flagging scores above `threshold`:
    the share of events with a flag in their window, and flags outside every window."""
    s = _ranked(score)
    starts, stops = event_windows(labels, lengths, tolerance)
    inside = _in_windows(len(s), starts, stops)
    recall = float(np.mean(_event_peaks(s, starts, stops) > threshold)) if len(starts) else float("nan")
    return recall, float(1000 * np.sum((s > threshold) & ~inside) / max(len(s), 1))


def injected(series: list[Labelled], seed: int) -> list[Labelled]:
    """The univariate series with anomalies planted (one per 300 points, at least one)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in series:
        if s.values.shape[1] == 1 and len(s.values) >= 100:
            x, labels, _ = inject(s.values[:, 0], rng, max(1, len(s.values) // 300))
            out.append(Labelled(s.domain, x[:, None], labels, s.period))
    return out


def anomaly_sets(series: list[Labelled], seed: int = SPLIT_SEED) -> dict[str, list[Labelled]]:
    """A split's evaluation sets: its SKAB experiments (real faults), its clean series with
    anomalies planted, and its clean series as they are (for false alarms)."""
    clean = [s for s in series if s.domain != "SKAB"]
    return {"SKAB": [s for s in series if s.domain == "SKAB"],
            "injected": injected(clean, seed), "clean": clean}


def anomaly_scores(model, series: list[Labelled], train: list[Labelled], level: float = ANOMALY_LEVEL,
                   seed: int = 0) -> dict[str, dict[str, dict]]:
    """Set -> method -> metrics: AUC-PR, range AUC-PR, and event recall and false alarms per
    1,000 points when flagging (the model: score > level; a baseline: above its own `level`
    quantile on the clean training series).  The clean set reports false alarms only."""
    rng = np.random.default_rng(seed)
    clean_train = [s for s in train if s.domain != "SKAB"]
    thresholds = {name: float(np.quantile(np.nan_to_num(np.concatenate(
        [fn(s, rng) for s in clean_train]), nan=-np.inf), level)) for name, fn in BASELINES.items()}
    out = {}
    for set_name, members in anomaly_sets(series).items():
        if not members:
            continue
        labels = np.concatenate([s.labels for s in members])
        lengths = np.array([len(s.values) for s in members])
        scored = {model.card.ref if model.card else "model": (np.concatenate(model_scores(model, members, level)), level)}
        for name, fn in BASELINES.items():
            scored[name] = (np.concatenate([fn(s, rng) for s in members]), thresholds[name])
        rows = {}
        for name, (score, threshold) in scored.items():
            recall, false_alarms = alarm_scores(score, labels, lengths, threshold)
            row = {"series": len(members), "points": int(len(labels)),
                   "events": int(len(event_windows(labels, lengths)[0]))}
            if labels.any():
                row.update(auc_pr=round(average_precision(score, labels), 4),
                           range_auc_pr=round(range_average_precision(score, labels, lengths), 4),
                           event_recall=round(recall, 4))
            row["false_alarms_per_1000"] = round(false_alarms, 3)
            rows[name] = row
        out[set_name] = rows
    return out


def anomaly_report(data: str | Path, model: str | None = None, split: str = "report") -> pa.Table:
    """The detector beside the baselines on a split of `anomaly_splits` (default: the report
    split, which chose nothing), one row per set and method."""
    fitted = load_model("anomaly", model)
    splits = anomaly_splits(data)
    scores = anomaly_scores(fitted, splits[split], splits["train"])
    return pa.Table.from_pylist([{"set": s, "method": m, **row} for s, rows in scores.items()
                                 for m, row in rows.items()])
