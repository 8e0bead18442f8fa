"""Vectorized LSTM operators over Arrow arrays, the same callables the SQL engine registers.

    from udfs import sentiment, forecast, anomaly_scores
    sentiment(pa.array(["great film", None]))   # -> DoubleArray [0.93, null]

A new operator family is a module here exporting OPERATORS; add it to the tuple below.
"""
from udfs import anomaly as _anomaly_family
from udfs import forecast as _forecast_family
from udfs import sentiment as _sentiment_family
from udfs.anomaly import anomaly_scores, anomaly_scores_multi
from udfs.base import Operator
from udfs.forecast import forecast, forecast_interval
from udfs.sentiment import sentiment, sentiment_label, sentiment_probs

OPERATORS: tuple[Operator, ...] = (_sentiment_family.OPERATORS + _forecast_family.OPERATORS
                                   + _anomaly_family.OPERATORS)

__all__ = ["OPERATORS", "Operator", "anomaly_scores", "anomaly_scores_multi", "forecast", "forecast_interval", "sentiment", "sentiment_label", "sentiment_probs"]
