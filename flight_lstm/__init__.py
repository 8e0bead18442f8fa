"""flight-lstm: LSTM sentiment and forecasting as SQL operators over Arrow Flight."""

__version__ = "0.1.0"
