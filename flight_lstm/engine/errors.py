"""DuckDB's errors as ours: one class per kind, a one-line message fit for a client."""
from __future__ import annotations

import re
from contextlib import contextmanager

import duckdb

from flight_lstm.errors import FlightLSTMError, InvalidQuery, QueryCancelled, QueryRefused, ResourceExhausted
from flight_lstm.plan.operators import CONNECTION_ID, operator_names
from flight_lstm.sources import Source
from udfs import OPERATORS

# DuckDB prefixes messages with their class ("Binder Error: ..."); UDF failures wrap the Python one.
_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: (?:\w+Error: )?(.*)", re.S)


# DuckDB's help for a typo, on the lines after its message: kept, unless it offers one of the
# engine's own names (an operator's internal form, a lifted column: they hold `__`).
_HINT = re.compile(r'^(?:Did you mean "[^"\n]*"\?|Candidate bindings: [^\n]*)$', re.M)
# An operator called with a model name is registered as `<name>__with_model`: say `<name>`.
_WITH_MODEL = re.compile(r"(?<=\w)__with_model\b")
# Every operator call takes its caller's connection id last (plan/operators.py: tag_connection),
# which the user never wrote: `'sentiment(BLOB, UBIGINT)'` says `'sentiment(BLOB)'`.
_CONNECTION_ARGUMENT = re.compile(r"(\b(?:%s)\([^']*?)(?:, )?UBIGINT\)(?=')|, %s\(\)"
                                  % ("|".join(sorted(operator_names(OPERATORS))), CONNECTION_ID))


def _message(error: duckdb.Error) -> str:
    """One line: DuckDB's message (or a failing UDF's own), then DuckDB's hints if it gave any."""
    text = str(error).strip()
    found = _UDF_ERROR.search(text)
    if found:
        text = found.group(1).strip()
    if not text:
        return type(error).__name__
    hints = [h for h in _HINT.findall(text) if "__" not in h]
    first = _CONNECTION_ARGUMENT.sub(lambda m: f"{m.group(1)})" if m.group(1) else "", text.splitlines()[0])
    return " ".join([_WITH_MODEL.sub("", first), *hints])


# Mid-stream, DuckDB's errors arrive through the Arrow reader as OSError("<Kind> Error: ...").
_STREAM_KIND = re.compile(r"^([A-Za-z ]+?) Error: ")
_STREAM_ERRORS = {
    "INTERRUPT": QueryCancelled, "Permission": QueryRefused, "Out of Memory": ResourceExhausted,
    **dict.fromkeys(("Invalid Input", "Conversion", "Out of Range", "Binder", "Catalog", "Parser",
                     "Not implemented", "Type Mismatch", "Invalid type"), InvalidQuery),
}

_DUCKDB_ERRORS = (
    (duckdb.InterruptException, QueryCancelled),
    (duckdb.PermissionException, QueryRefused),
    (duckdb.OutOfMemoryException, ResourceExhausted),
    ((duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException, duckdb.InvalidInputException,
      duckdb.ConversionException, duckdb.OutOfRangeException, duckdb.TypeMismatchException,
      duckdb.NotImplementedException), InvalidQuery),
)


@contextmanager
def translated_errors(source: Source):
    """DuckDB's exceptions become ours, with a one-line message fit for a client; a failure of the
    source's own stream keeps the source's error. Anything else passes unchanged."""
    try:
        yield
    except FlightLSTMError:
        raise
    except (duckdb.Error, OSError) as e:
        ours = source.translate_error(e) or _ours(e)
        if ours is None:
            raise
        raise ours from None


def _ours(error: duckdb.Error | OSError) -> FlightLSTMError | None:
    kind = next((k for duck, k in _DUCKDB_ERRORS if isinstance(error, duck)), None)
    if kind is None and isinstance(error, OSError):
        found = _STREAM_KIND.match(str(error))
        kind = _STREAM_ERRORS.get(found.group(1)) if found else None
    return kind(_message(error)) if kind else None
