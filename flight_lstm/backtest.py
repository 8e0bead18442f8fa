"""Backtests on the user's own data: would the predictions have been right here?

Forecasts: the rows of the user's query, (key, ts, value) or (ts, value), go through
`forecast_backtest` (plan/forecast_backtest.py), so the CLI and SQL give the same numbers; the
verdict line sums them up. Sentiment: a labelled query's texts scored by the model beside VADER,
with accuracy, the confusion table and calibration (how often texts given a probability p of
being positive really are).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flight_lstm.errors import InvalidQuery
from flight_lstm.service import Service

INPUT = "_backtest_rows"
BINS = 5  # calibration bins of P(positive)


def forecast_backtest(service: Service, sql: str, horizon: int, *, origins: int = 3, level: float = 0.95,
                      model: str | None = None, freq: str | None = None) -> pa.Table:
    """One row per series (forecast_backtest's columns) for the rows `sql` returns."""
    columns = service.schema(service.plan(sql)).names
    if len(columns) not in (2, 3):
        raise InvalidQuery(f"a forecast backtest reads (key, ts, value) or (ts, value) rows; the query gives "
                           f"{len(columns)} columns: {', '.join(columns)}")
    names = ("key", "ts", "value")[3 - len(columns):]
    options = [f"{name} => '{name}'" for name in names]
    options += [f"horizon => {int(horizon)}", f"origins => {int(origins)}", f"level => {float(level)!r}"]
    options += [f"{name} => '{value.replace(chr(39), chr(39) * 2)}'" for name, value in (("model", model), ("freq", freq))
                if value]
    wrapped = (f"WITH {INPUT} AS (SELECT * FROM ({sql}) AS _q({', '.join(names)})) "
               f"SELECT * FROM forecast_backtest('{INPUT}', {', '.join(options)})" + (" ORDER BY key" if "key" in names else ""))
    return service.collect(service.plan(wrapped), {})


def forecast_verdict(rows: pa.Table, level: float) -> str:
    """'beats seasonal naive on 41 of 50 series; median MASE 0.71 vs 1.00 (naive 1.20); ...'"""
    if rows.num_rows == 0:
        return "no series long enough for one origin (each needs 2 points more than horizon x origins)"
    beats = pc.sum(rows.column("beats_seasonal_naive")).as_py() or 0

    def median(column: str) -> float:
        return float(np.nanmedian(rows.column(column).to_numpy(zero_copy_only=False).astype(float)))

    return (f"beats seasonal naive on {beats} of {rows.num_rows} series; median MASE {median('mase'):.2f} vs "
            f"{median('seasonal_naive_mase'):.2f} (naive {median('naive_mase'):.2f}); {level:.0%} intervals cover "
            f"{median('coverage'):.2f} (seasonal naive {median('seasonal_naive_coverage'):.2f}), median MSIS "
            f"{median('msis'):.2f} vs {median('seasonal_naive_msis'):.2f}")


def sentiment_backtest(texts: pa.Array, positive: np.ndarray, scores: np.ndarray, vader: np.ndarray | None) -> dict:
    """Accuracy and confusion (sign of the score against the label), and calibration of
    P(positive) = (score + 1) / 2 in BINS bins; VADER's accuracy and confusion beside, if given."""
    scored = ~np.isnan(scores)
    positive, scores = positive[scored], scores[scored]

    def judged(score: np.ndarray) -> dict:
        said = score > 0
        return {"accuracy": round(float(np.mean(said == positive)), 4),
                "confusion": {"positive labelled positive": int(np.sum(said & positive)),
                              "negative labelled positive": int(np.sum(~said & positive)),
                              "positive labelled negative": int(np.sum(said & ~positive)),
                              "negative labelled negative": int(np.sum(~said & ~positive))}}

    p = (scores + 1) / 2
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    calibration = [{"p": f"{b / BINS:.1f}-{(b + 1) / BINS:.1f}", "texts": int(np.sum(bins == b)),
                    "mean_p": round(float(p[bins == b].mean()), 3) if np.any(bins == b) else None,
                    "positive_share": round(float(positive[bins == b].mean()), 3) if np.any(bins == b) else None}
                   for b in range(BINS)]
    weights = np.array([c["texts"] for c in calibration]) / max(len(p), 1)
    gaps = [abs(c["mean_p"] - c["positive_share"]) if c["texts"] else 0.0 for c in calibration]
    report = {"texts": int(len(scores)), "unscored": int(np.sum(~scored)), "model": judged(scores),
              "calibration": calibration, "expected_calibration_error": round(float(np.dot(weights, gaps)), 4),
              "majority_class": round(float(max(positive.mean(), 1 - positive.mean())), 4) if len(positive) else None}
    if vader is not None:
        report["vader"] = judged(vader[scored])
    return report


def labels_of(values: pa.Array) -> np.ndarray:
    """True for positive: labels 0/1, booleans, or 'negative'/'positive' (any case)."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        words = pc.utf8_lower(values)
        unknown = pc.unique(words.filter(pc.invert(pc.is_in(words, pa.array(["negative", "positive"])))))
        if len(unknown):
            raise InvalidQuery(f"sentiment labels are 0/1, true/false or 'negative'/'positive'; found {unknown[0].as_py()!r}")
        return np.asarray(pc.equal(words, "positive").to_numpy(zero_copy_only=False), bool)
    labels = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
    if not np.isin(labels, (0, 1)).all():
        raise InvalidQuery(f"sentiment labels are 0/1, true/false or 'negative'/'positive'; found {labels[~np.isin(labels, (0, 1))][0]}")
    return labels == 1
