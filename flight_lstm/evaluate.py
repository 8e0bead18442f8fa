"""Evaluation: a model's benchmark scores, alone (for its card) or beside simple baselines in one
table (`flight-lstm evaluate`).

Sentiment: SST-2 dev accuracy, on the treebank text and on a raw-looking copy, against VADER
(a lexicon; compound score > 0 read as positive) and the majority class. Forecast: M4-style
validation on the held-back last 48 points (sMAPE, MASE, OWA, MSIS), against Naive2 and seasonal
naive.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flight_lstm.models.data import dataset_dir, load_m4_hourly, load_sst2
from flight_lstm.models.forecast import ForecastModel
from flight_lstm.models.sentiment import SentimentModel
from flight_lstm.models.series import to_arrow
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


def forecast_report(data: str | Path, model: str | None = None) -> pa.Table:
    series = list(load_m4_hourly(dataset_dir(data, "m4_hourly") / "Hourly-train.csv").values())
    fitted = load_model("forecast", model)
    scores = evaluate_forecast(fitted, series)
    rows = []
    for key, method in (("model", fitted.card.ref), ("seasonal_naive", "seasonal naive"), ("naive2", "Naive2")):
        s = scores[key]
        rows.append({"method": method, "smape": s["smape"], "mase": s["mase"], "owa": s["owa"],
                     "coverage_95": s.get("coverage_95"), "msis_95": s.get("msis_95")})
    return pa.Table.from_pylist(rows)
