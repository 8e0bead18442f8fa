"""The errors every layer raises; the server maps each to one Flight status."""


class FlightLSTMError(Exception):
    """Base: the message is safe to show a client (no secrets, no tracebacks)."""


class InvalidQuery(FlightLSTMError):
    """The SQL is wrong: syntax, unknown table or function, bad argument types or values."""


class QueryRefused(FlightLSTMError):
    """The SQL is valid but not allowed: writes, DDL, file access, settings, several statements."""


class SourceUnavailable(FlightLSTMError):
    """The source cannot answer now (locked by a writer, gone away); retrying later may work."""


class QueryCancelled(FlightLSTMError):
    """The client went away or cancelled; the work was stopped."""


class ResourceExhausted(FlightLSTMError):
    """A server limit was reached (queries running, rows, memory); the server itself goes on."""


class QueryTimedOut(FlightLSTMError):
    """The query ran past its time limit and was stopped."""
