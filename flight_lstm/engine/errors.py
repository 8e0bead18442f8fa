"""DuckDB's errors as ours: one class per kind, a one-line message fit for a client."""
from __future__ import annotations

import re
import resource
from contextlib import contextmanager

import duckdb

from flight_lstm.errors import (DatabaseReplaced, DuckDBFailed, FlightLSTMError, InvalidQuery, QueryCancelled,
                                QueryRefused, ResourceExhausted, first_line)
from flight_lstm.plan.operators import CONNECTION_ID, operator_names
from flight_lstm.sources import Source
from udfs import OPERATORS

# DuckDB prefixes messages with their class ("Binder Error: ..."); UDF failures wrap the Python one.
_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: (?:\w+Error: )?(.*)", re.S)


class OperatorMemoryError(MemoryError):
    """An operator ran out of memory (`operator_error`), raised out of a DuckDB UDF with its fixed
    message: DuckDB wraps every UDF failure as its own Invalid Input error, naming the Python
    class, and that name tells this one from a query's mistake (a client writes messages, not
    classes)."""


_UDF_OUT_OF_MEMORY = re.compile(f"Python exception occurred while executing the UDF: {OperatorMemoryError.__name__}: ")
# torch's CPU allocator fails with a RuntimeError ("[enforce fail at alloc_cpu.cpp:127] ...
# DefaultCPUAllocator: can't allocate memory: you tried to allocate ... bytes"); numpy's
# "Unable to allocate" (_ArrayMemoryError) and pyarrow's ArrowMemoryError are MemoryErrors.
_TORCH_OUT_OF_MEMORY = "can't allocate memory"


def out_of_memory(error: BaseException) -> bool:
    """Whether an operator's exception is an allocation that failed (under the server's memory cap)."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and (
        _TORCH_OUT_OF_MEMORY in str(error) or any(c.__name__ == "OutOfMemoryError" for c in type(error).__mro__))


def out_of_memory_message(operator: str) -> str:
    """The one message for an operator out of memory: which operator and which limit, never the
    allocator's internals (its source line, the bytes it tried)."""
    cap, _ = resource.getrlimit(resource.RLIMIT_DATA)
    limit = ("the machine's memory" if cap == resource.RLIM_INFINITY
             else f"the server's memory cap of {cap / 1e9:.2f} GB (--max-memory)")
    return f"resource exhausted: {operator} ran out of memory within {limit}; retry later, or with less data"


def operator_error(operator: str, error: Exception) -> FlightLSTMError:
    """An operator's own failure as ours: out of memory is ResourceExhausted with a fixed message,
    anything else is the query's mistake (a bad argument), with the operator's first line."""
    if isinstance(error, FlightLSTMError):
        return error
    if out_of_memory(error):
        return ResourceExhausted(out_of_memory_message(operator))
    return InvalidQuery(first_line(error))


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


_REPLACED_ERRORS = (duckdb.FatalException, duckdb.ConnectionException)

# Mid-stream, DuckDB's errors arrive through the Arrow reader as OSError("<Kind> Error: ...").
_STREAM_KIND = re.compile(r"^([A-Za-z ]+?) Error: ")
_STREAM_ERRORS = {
    "INTERRUPT": QueryCancelled, "Permission": QueryRefused, "Out of Memory": ResourceExhausted,
    "INTERNAL": DuckDBFailed,
    **dict.fromkeys(("Invalid Input", "Conversion", "Out of Range", "Binder", "Catalog", "Parser",
                     "Not implemented", "Type Mismatch", "Invalid type"), InvalidQuery),
}

_DUCKDB_ERRORS = (
    (duckdb.InterruptException, QueryCancelled),
    (duckdb.PermissionException, QueryRefused),
    (duckdb.OutOfMemoryException, ResourceExhausted),
    (duckdb.InternalException, DuckDBFailed),
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
    if _UDF_OUT_OF_MEMORY.search(str(error)):  # an operator's, whether before or mid-stream
        return ResourceExhausted(_message(error))
    if isinstance(error, _REPLACED_ERRORS) or str(error).startswith(("FATAL Error: ", "Connection Error: ")):
        return DatabaseReplaced()
    kind = next((k for duck, k in _DUCKDB_ERRORS if isinstance(error, duck)), None)
    if kind is None and isinstance(error, OSError):
        found = _STREAM_KIND.match(str(error))
        kind = _STREAM_ERRORS.get(found.group(1)) if found else None
    return kind(_message(error)) if kind else None
