"""Evaluation: a model's benchmark scores, alone (for its card) or beside simple baselines in one
table (`flight-lstm evaluate`).

Sentiment: SST-2 dev accuracy, on the treebank text and on a raw-looking copy, against VADER
(a lexicon; compound score > 0 read as positive) and the majority class. Forecast: every
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
from flight_lstm.models.data import (dataset_dir, load_m4, load_nn5, load_sst2, load_tourism,
                                     synthetic_series)
from flight_lstm.models.forecast import ForecastModel
from flight_lstm.models.sentiment import SentimentModel
from flight_lstm.models.series import fill_gaps, to_arrow
from flight_lstm.models.text import detokenize
from udfs.base import load_model


# -- sentiment ------------------------------------------------------------------------------------


def evaluate_sentiment(model: SentimentModel, texts: pa.Array, labels: np.ndarray) -> dict:
    """Accuracy on the texts as given and on a detokenized, raw-looking copy of them."""
    labels = np.asarray(labels)
    acc = float(np.mean((model.score(texts) > 0) == (labels == 1)))
    raw = float(np.mean((model.score(detokenize(texts)) > 0) == (labels == 1)))
    return {"accuracy": round(acc, 4), "raw_text_accuracy": round(raw, 4), "n": int(len(labels))}


def sentiment_report(data: str | Path, model: str | None = None) -> pa.Table:
    texts, labels = load_sst2(data)["dev"]
    fitted = load_model("sentiment", model)
    ours = evaluate_sentiment(fitted, texts, labels)
    positive = labels == 1
    rows = [
        {"method": fitted.card.ref, "dev_accuracy": ours["accuracy"], "raw_text_dev_accuracy": ours["raw_text_accuracy"]},
        {"method": "VADER (lexicon)", "dev_accuracy": _vader_accuracy(texts, positive),
         "raw_text_dev_accuracy": _vader_accuracy(detokenize(texts), positive)},
        {"method": "majority class", "dev_accuracy": round(float(max(positive.mean(), 1 - positive.mean())), 4),
         "raw_text_dev_accuracy": None},
    ]
    return pa.Table.from_pylist(rows)


def _vader_accuracy(texts: pa.Array, positive: np.ndarray) -> float:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise SystemExit("the VADER baseline needs the vaderSentiment package: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    scores = np.array([analyzer.polarity_scores(t)["compound"] for t in texts.to_pylist()])
    return round(float(np.mean((scores > 0) == positive)), 4)


# -- forecast -------------------------------------------------------------------------------------

LEVEL = 0.95


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
    ValidationSet("M4 Hourly", "hourly", 48, 24, 24, _from_file("m4_hourly", "Hourly-train.csv", load_m4, 48), owa=True),
    ValidationSet("M4 Weekly", "weekly", 13, 52, 1, _from_file("m4_weekly", "Weekly-train.csv", load_m4, 13), owa=True),
    ValidationSet("NN5 daily (days 680-735)", "daily", 56, 7, 7, _from_file("nn5", "train.csv", load_nn5, 56)),
    ValidationSet("NN5 business days", "business_daily", 40, 5, 5, _from_file("nn5", "train.csv", _business_days, 40)),
    ValidationSet("tourism monthly", "monthly", 24, 12, 12, _tourism("monthly", 24)),
    ValidationSet("tourism quarterly", "quarterly", 8, 4, 4, _tourism("quarterly", 8)),
    ValidationSet("tourism yearly", "yearly", 4, 1, 1, _tourism("yearly", 4)),
    ValidationSet("synthetic hourly", "hourly", 48, 24, 24, lambda data: _holdout(synthetic_series("hourly")[0], 48)),
    ValidationSet("synthetic daily", "daily", 56, 7, 7, lambda data: _holdout(synthetic_series("daily")[0], 56)),
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
    coverage_95, msis_95} (means over series; OWA only for M4 sets; None where not defined)."""
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
        out[name].update({f"{k}_{tag}": _mean([row.get(k, np.nan) for row in rows]) for k in ("coverage", "msis")})
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
