"""Sentiment operators: one batched model call per Arrow array, NULL in gives NULL out."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from flight_lstm.models.data import CLASSES
from udfs.base import Operator, as_array, load_model

PROBS_TYPE = pa.struct([(name, pa.float64()) for name in CLASSES])


def _probabilities(texts, model: str | None) -> np.ndarray:
    """The one model call behind every sentiment operator."""
    return load_model("sentiment", model).probabilities(as_array(texts))


def sentiment(texts, model: str | None = None) -> pa.Array:
    """Score in [-1, 1], P(positive) - P(negative). NULL for NULL, empty or token-less text."""
    probabilities = _probabilities(texts, model)
    return pa.array(probabilities[:, 2] - probabilities[:, 0], type=pa.float64(), from_pandas=True)


def sentiment_label(texts, model: str | None = None) -> pa.Array:
    """'negative', 'neutral' or 'positive': the most probable class (a one-logit model, such as
    sst2-bilstm@4, never says neutral and calls a score of exactly 0 negative). NULL where
    `sentiment` is NULL."""
    probabilities = _probabilities(texts, model)
    missing = np.isnan(probabilities[:, 0])
    best = np.nan_to_num(probabilities).argmax(axis=1)
    return pa.DictionaryArray.from_arrays(pa.array(best, pa.int8(), mask=missing),
                                          pa.array(CLASSES)).cast(pa.string())


def sentiment_probs(texts, model: str | None = None) -> pa.Array:
    """STRUCT(negative, neutral, positive) of probabilities summing to 1; NULL where `sentiment`
    is NULL."""
    probabilities = _probabilities(texts, model)
    missing = np.isnan(probabilities[:, 0])
    fields = [pa.array(probabilities[:, i], pa.float64(), from_pandas=True) for i in range(len(CLASSES))]
    return pa.StructArray.from_arrays(fields, fields=list(PROBS_TYPE), mask=pa.array(missing))


OPERATORS = (
    Operator("sentiment", ("VARCHAR",), "DOUBLE", sentiment, "sentiment"),
    Operator("sentiment_label", ("VARCHAR",), "VARCHAR", sentiment_label, "sentiment"),
    Operator("sentiment_probs", ("VARCHAR",), f"STRUCT({', '.join(f'{c} DOUBLE' for c in CLASSES)})",
             sentiment_probs, "sentiment"),
)
