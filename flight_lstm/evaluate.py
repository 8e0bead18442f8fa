"""`flight-lstm evaluate`: a model's benchmark scores beside simple baselines, in one table.

Sentiment: SST-2 dev accuracy, on the treebank text and on a raw-looking copy, against VADER
(a lexicon; compound score > 0 read as positive) and the majority class. Forecast: M4-style
validation on the held-back last 48 points, against Naive2 and seasonal naive.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from flight_lstm.models import evaluate_forecast, evaluate_sentiment, load_m4_hourly, load_sst2
from flight_lstm.models.base import dataset_dir
from flight_lstm.models.sentiment import detokenize
from udfs.base import load_model


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
