"""Our errors become Flight statuses with one-line messages; anything else is logged here and
reaches the client only as an internal error with an id, never as a traceback.

Only pyarrow's Flight exception classes leave a Python server without a traceback attached
(any other exception, ArrowInvalid included, ships its formatted traceback as the status detail).
So a bad query is a FlightServerError (gRPC UNKNOWN) rather than INVALID_ARGUMENT, and a limit
reached is UNAVAILABLE (retryable): Arrow's transport has no RESOURCE_EXHAUSTED, and Arrow clients
read a RESOURCE_EXHAUSTED from elsewhere as UNAVAILABLE too."""
from __future__ import annotations

import functools
import logging
import time
import traceback
import uuid

import pyarrow.flight as flight

from flight_lstm.errors import (InvalidQuery, QueryCancelled, QueryRefused, QueryTimedOut, ResourceExhausted,
                                SourceUnavailable)

log = logging.getLogger("flight_lstm.server")

STATUS = {
    InvalidQuery: flight.FlightServerError,
    QueryRefused: flight.FlightUnauthorizedError,  # PERMISSION_DENIED
    SourceUnavailable: flight.FlightUnavailableError,  # UNAVAILABLE: retryable
    QueryCancelled: flight.FlightCancelledError,
    QueryTimedOut: flight.FlightTimedOutError,  # DEADLINE_EXCEEDED
    ResourceExhausted: flight.FlightUnavailableError,
}


TRACEBACK_EVERY = 60.0  # seconds between two tracebacks of the same failure in the log
_traced: dict[str, float] = {}  # failure (type and place) -> when its traceback was last logged


def to_flight_error(error: BaseException) -> BaseException:
    if isinstance(error, flight.FlightError):
        return error
    for ours, theirs in STATUS.items():
        if isinstance(error, ours):
            return theirs(str(error))
    if isinstance(error, MemoryError):
        return flight.FlightUnavailableError("resource exhausted: the server ran out of memory for this request")
    incident = uuid.uuid4().hex[:12]
    failure = _failure(error)
    now = time.monotonic()
    if now - _traced.get(failure, -TRACEBACK_EVERY) >= TRACEBACK_EVERY:
        if len(_traced) > 1000:
            _traced.clear()
        _traced[failure] = now
        log.error("internal error %s", incident, exc_info=error)
    else:  # a client repeating a failure cannot flood the log with its traceback
        log.error("internal error %s: %s again (traceback logged at most once a minute)", incident, failure)
    return flight.FlightInternalError(f"internal error {incident}; the server log has the details")


def _failure(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    place = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{place}"


def flight_errors(handler):
    """Wrap a Flight handler so every exception leaves it as a Flight status."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as e:
            raise to_flight_error(e) from None

    return wrapped


def mapped(batches):
    """The same for errors raised while a result streams."""
    try:
        yield from batches
    except Exception as e:
        raise to_flight_error(e) from None
