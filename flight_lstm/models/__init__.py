"""Model layer of flight-lstm: BiLSTM sentiment and a global LSTM forecaster, with a registry.

The sentiment model is distilled from a MiniLM teacher (`teacher`, needing the `teacher` extra).
"""

from .base import BaseModel
from .forecast import (
    MAX_HORIZON,
    ForecastModel,
    ForecastResult,
    evaluate_forecast,
    load_m4_hourly,
    train_forecast,
    train_shipped_forecast,
)
from .registry import ModelCard, ModelNotFound, Registry, default_registry
from .sentiment import (
    SentimentModel,
    evaluate_sentiment,
    holdout_split,
    load_sst2,
    read_soft_labels,
    train_sentiment,
    train_shipped_sentiment,
)
from .teacher import soft_labels, train_teacher
from .text import normalize, tokenize

__all__ = [
    "MAX_HORIZON",
    "BaseModel",
    "ForecastModel",
    "ForecastResult",
    "ModelCard",
    "ModelNotFound",
    "Registry",
    "SentimentModel",
    "default_registry",
    "evaluate_forecast",
    "evaluate_sentiment",
    "holdout_split",
    "load_m4_hourly",
    "load_sst2",
    "normalize",
    "read_soft_labels",
    "soft_labels",
    "tokenize",
    "train_forecast",
    "train_sentiment",
    "train_shipped_forecast",
    "train_shipped_sentiment",
    "train_teacher",
]
