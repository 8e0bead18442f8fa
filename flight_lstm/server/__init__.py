"""Serving: the Flight face over the Service."""
from flight_lstm.server.flight import FlightLSTMServer

__all__ = ["FlightLSTMServer"]
