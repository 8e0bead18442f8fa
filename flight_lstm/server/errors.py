"""Our errors become Flight statuses with one-line messages; anything else is logged here and
reaches the client only as an internal error with an id, never as a traceback.

pyarrow gives a Python server two ways to answer an error (pyarrow/_flight.pyx). A FlightError
subclass becomes its fixed status with a clean message, but there is none for INVALID_ARGUMENT,
NOT_FOUND or UNIMPLEMENTED. Any other exception becomes a status whose code follows its Python type
(ValueError: INVALID_ARGUMENT, KeyError: NOT_FOUND, NotImplementedError: UNIMPLEMENTED, else
UNKNOWN), with `. Detail: Python exception: ` and `traceback.format_exception(...)` of it appended.
A middleware cannot change either (it only sees the call end), and a google.rpc.Status with
another code in grpc-status-details-bin is refused by gRPC-Go clients (ADBC) as a mismatch.

So a bad query leaves as `InvalidArgument` (a ValueError: INVALID_ARGUMENT, which ADBC raises as
ProgrammingError), and the traceback module formats our own edge exceptions as their class name
alone, as later Arrow releases format every Python exception. Other kinds keep their FlightError.
GetSchema's callback lacks the FlightError branch, so there a FlightError's kind can only be told
in its message, under UNKNOWN. A limit reached is UNAVAILABLE (retryable): Arrow's transport has
no RESOURCE_EXHAUSTED, and Arrow clients read a RESOURCE_EXHAUSTED from elsewhere as UNAVAILABLE."""
from __future__ import annotations

import functools
import logging
import time
import traceback
import uuid

import pyarrow.flight as flight

from flight_lstm.errors import (DuckDBFailed, InvalidQuery, NotFound, QueryCancelled, QueryRefused, QueryTimedOut,
                                ResourceExhausted, SourceUnavailable, Unsupported)

log = logging.getLogger("flight_lstm.server")


class EdgeError(Exception):
    """A status pyarrow has no FlightError for; its Python type picks the gRPC code."""


class InvalidArgument(EdgeError, ValueError):
    """INVALID_ARGUMENT"""


class Unimplemented(EdgeError, NotImplementedError):
    """UNIMPLEMENTED"""


class Missing(EdgeError, KeyError):
    """NOT_FOUND"""

    def __str__(self):  # KeyError's own quotes its message
        return str(self.args[0]) if self.args else ""


class Failed(EdgeError):
    """UNKNOWN: what GetSchema answers for a FlightError, whose kind its message then names."""


_format_exception = traceback.format_exception


def _edge_format_exception(exc, /, *args, **kwargs):
    """The traceback module's `format_exception`, which pyarrow calls for a status's detail: our
    edge exceptions are their class name alone; every other exception is formatted as before."""
    value = args[0] if args else exc
    if isinstance(value, EdgeError):
        return [type(value).__name__]
    return _format_exception(exc, *args, **kwargs)


traceback.format_exception = _edge_format_exception

STATUS = {
    InvalidQuery: InvalidArgument,
    Unsupported: Unimplemented,
    NotFound: Missing,
    QueryRefused: flight.FlightUnauthorizedError,  # PERMISSION_DENIED
    SourceUnavailable: flight.FlightUnavailableError,  # UNAVAILABLE: retryable
    QueryCancelled: flight.FlightCancelledError,
    QueryTimedOut: flight.FlightTimedOutError,  # DEADLINE_EXCEEDED
    ResourceExhausted: flight.FlightUnavailableError,
    DuckDBFailed: flight.FlightInternalError,
}


TRACEBACK_EVERY = 60.0  # seconds between two tracebacks of the same failure in the log
_traced: dict[str, float] = {}  # failure (type and place) -> when its traceback was last logged


def to_flight_error(error: BaseException) -> BaseException:
    if isinstance(error, (flight.FlightError, EdgeError)):
        return error
    for ours, theirs in STATUS.items():
        if isinstance(error, ours):
            return theirs(_bounded(str(error)))
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


# gRPC clients take at most 16 kB of status headers, and the message goes as UTF-8 with every
# non-ASCII byte percent-encoded (an emoji: 12 bytes): bounded as it is sent, with room to spare.
MAX_MESSAGE_BYTES = 6000


def _bounded(message: str) -> str:
    """A message may quote the query's own data (a 5 MB key): past the limit, a client saw only
    RESOURCE_EXHAUSTED from its own gRPC library instead of the error."""
    sent = 0
    for i, ch in enumerate(message):  # stops within MAX_MESSAGE_BYTES characters
        sent += 1 if ch < "\x80" else 3 * len(ch.encode("utf-8", "surrogatepass"))
        if sent > MAX_MESSAGE_BYTES:
            return f"{message[:i]}... ({len(message):,} characters in all)"
    return message


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


def without_flight_errors(handler):
    """For GetSchema, whose pyarrow callback sends a FlightError with its traceback: the same
    statuses, a FlightError's kind named in the message (UNKNOWN) instead."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as e:
            error = to_flight_error(e)
            if isinstance(error, flight.FlightError):
                raise Failed(_bounded(f"{_KIND.get(type(error), 'failed')}: {error}")) from None
            raise error from None

    return wrapped


_KIND = {flight.FlightUnauthorizedError: "permission denied", flight.FlightUnauthenticatedError: "unauthenticated",
         flight.FlightUnavailableError: "unavailable", flight.FlightCancelledError: "cancelled",
         flight.FlightTimedOutError: "timed out", flight.FlightInternalError: "internal"}


def mapped(batches):
    """The same for errors raised while a result streams."""
    try:
        yield from batches
    except Exception as e:
        raise to_flight_error(e) from None
