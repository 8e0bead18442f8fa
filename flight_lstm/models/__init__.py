"""Model layer of flight-lstm: BiLSTM sentiment and a global LSTM forecaster, with a registry."""

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
    load_sst2,
    train_sentiment,
    train_shipped_sentiment,
)
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
    "load_m4_hourly",
    "load_sst2",
    "normalize",
    "tokenize",
    "train_forecast",
    "train_sentiment",
    "train_shipped_forecast",
    "train_shipped_sentiment",
]
