"""Model layer of flight-lstm: BiLSTM sentiment and a global LSTM forecaster, with a registry.

Importing the package does not load torch: the registry imports a model's module (and torch) when
the first model of that kind loads.  The networks are in `sentiment` and `forecast`, the shared
mechanics in `series`, `text` and `base`, the data sets in `data`; training and evaluation are
`flight_lstm.training` and `flight_lstm.evaluate`.
"""

from .card import ModelCard
from .registry import ModelNotFound, Registry, default_registry

__all__ = ["ModelCard", "ModelNotFound", "Registry", "default_registry"]
