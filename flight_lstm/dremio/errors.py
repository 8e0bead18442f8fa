"""Dremio's failures as our errors (flight_lstm.errors), Dremio named as the origin, in Dremio's
own words cut to one line: no gRPC debug context, no server-side traceback, no secret."""
from __future__ import annotations

import re
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.flight as flight

from flight_lstm.errors import FlightLSTMError, InvalidQuery, QueryCancelled, QueryRefused, SourceUnavailable

class Peer(Protocol):
    """What the messages name of a client (DremioClient): where Dremio is and who it refused."""

    address: str
    user: str | None
    uses_token: bool


def refused(client: Peer) -> str:
    if client.uses_token:
        return f"Dremio refused the personal access token{' of user ' + client.user if client.user else ''}"
    return f"Dremio refused the credentials of user {client.user}"


def dremio_message(error: BaseException) -> str:
    """Dremio's own words: one line, without gRPC's debug context or a server-side traceback."""
    text = str(error)
    for cut in (". Detail:", ". gRPC client debug context", "\nDetail:", "\nTraceback", "Traceback (most"):
        text = text.split(cut)[0]
    text = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return re.sub(r"^Flight returned \w+ error, with message: ", "", text)


def translate(error: BaseException, client: Peer, *, mid_stream: bool = False) -> FlightLSTMError:
    """A pyarrow/gRPC failure as one of our errors, Dremio named as the origin."""
    where = " while streaming the result" if mid_stream else ""
    msg = dremio_message(error)
    if isinstance(error, flight.FlightUnauthenticatedError):
        return SourceUnavailable(refused(client))
    if isinstance(error, flight.FlightUnauthorizedError):
        return QueryRefused(f"Dremio: {msg}")
    if isinstance(error, flight.FlightCancelledError):
        return QueryCancelled(f"Dremio cancelled the query{where}: {msg}")
    if isinstance(error, flight.FlightTimedOutError):
        return SourceUnavailable(f"Dremio at {client.address} timed out{where}: {msg}")
    if isinstance(error, (flight.FlightUnavailableError, OSError)):
        return SourceUnavailable(f"Dremio at {client.address} is unavailable{where}: {msg}")
    if isinstance(error, pa.ArrowInvalid):  # INVALID_ARGUMENT: Dremio's PARSE or VALIDATION errors
        return InvalidQuery(f"Dremio: {msg}")
    if isinstance(error, pa.ArrowNotImplementedError):
        return InvalidQuery(f"Dremio does not support this: {msg}")
    if mid_stream:
        return SourceUnavailable(f"Dremio failed{where}: {msg}")
    # INTERNAL and the rest: Dremio ran into something running this query; retrying will not help.
    return InvalidQuery(f"Dremio failed the query: {msg}")


# DuckDB reports a failure inside a registered reader as InvalidInputException("reading the stream
# registered as '_scan_0' failed: … Python exception: Traceback … SourceUnavailable: message").
_OURS = {c.__name__: c for c in (InvalidQuery, QueryRefused, SourceUnavailable, QueryCancelled)}
_STREAM_FAILURE = re.compile(
    r"^(?:[\w.]*\.)?(" + "|".join(_OURS) + r"): (.*)$", re.M
)


def stream_error(error: BaseException) -> FlightLSTMError | None:
    """Our error behind a failure raised while DuckDB read a source's stream, else None.

    DuckDB keeps only the text of an exception raised inside a scanned RecordBatchReader. It
    raises duckdb.InvalidInputException, which the engine would take for bad SQL, when the failure
    comes while the query starts. It raises OSError when the failure comes while the engine
    iterates `to_arrow_reader()`. This recovers the original from either.
    """
    if not isinstance(error, (duckdb.Error, pa.ArrowException, OSError)):
        return None
    if "reading the stream registered as" not in str(error):
        return None
    found = _STREAM_FAILURE.findall(str(error))
    if not found:
        return None
    kind, message = found[-1]
    return _OURS[kind](message.strip())
