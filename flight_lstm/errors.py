"""The errors every layer raises; the server maps each to one Flight status."""


class FlightLSTMError(Exception):
    """Base: the message is safe to show a client (no secrets, no tracebacks)."""


class InvalidQuery(FlightLSTMError):
    """The SQL is wrong: syntax, unknown table or function, bad argument types or values."""


class QueryRefused(FlightLSTMError):
    """The SQL is valid but not allowed: writes, DDL, file access, settings, several statements."""


class Unsupported(FlightLSTMError):
    """The request is well formed but names something the server does not do (an action, a command)."""


class NotFound(FlightLSTMError):
    """The request names something that does not exist (now): a query to cancel that is not running."""


class SourceUnavailable(FlightLSTMError):
    """The source cannot answer now (locked by a writer, gone away); retrying later may work."""


class DuckDBFailed(FlightLSTMError):
    """DuckDB failed on the query with an internal error of its own (a DuckDB bug a crafted query
    can reach). It may invalidate the database for every client (engine/database.py), so a caller
    meeting several in a short time is refused for a while (server/calls.py)."""

    def __init__(self, message: str):
        super().__init__(f"DuckDB failed on this query with an internal error of its own (a DuckDB bug): {message}")


class DatabaseReplaced(SourceUnavailable):
    """The query's database was replaced (engine/engine.py: _renew, after an internal DuckDB error
    of another query's) while it ran: it met it invalidated, closed, or no longer given the source."""

    def __init__(self):
        super().__init__("the server's database was replaced after an internal DuckDB error while this query "
                         "ran (another query's); run it again")


class QueryCancelled(FlightLSTMError):
    """The client went away or cancelled; the work was stopped."""


class ResourceExhausted(FlightLSTMError):
    """A server limit was reached (queries running, rows, memory); the server itself goes on."""


class QueryTimedOut(FlightLSTMError):
    """The query ran past its time limit and was stopped."""


def first_line(error: BaseException) -> str:
    """An error's message fit for one line of an answer: its first line, else its class name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def text_of(data: bytes, what: str) -> str:
    """Client bytes that must be UTF-8 text (SQL, a statement handle)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQuery(f"{what} must be UTF-8 SQL text") from None
