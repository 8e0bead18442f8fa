"""Sentiment operators: one batched model call per Arrow array, NULL in gives NULL out."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from udfs.base import Operator, as_array, load_model


def sentiment(texts, model: str | None = None) -> pa.Array:
    """Score in [-1, 1]; above 0 is positive. NULL for NULL, empty or token-less text."""
    scores = load_model("sentiment", model).score(as_array(texts))
    return pa.array(scores, type=pa.float64(), from_pandas=True)


def sentiment_label(texts, model: str | None = None) -> pa.Array:
    """'positive' or 'negative', by the sign of `sentiment` (0 counts as negative)."""
    scores = sentiment(texts, model)
    return pc.if_else(pc.greater(scores, 0.0), "positive", "negative")


OPERATORS = (
    Operator("sentiment", ("VARCHAR",), "DOUBLE", sentiment, "sentiment"),
    Operator("sentiment_label", ("VARCHAR",), "VARCHAR", sentiment_label, "sentiment"),
)
