"""The one small interface every source engine implements (the ibis backend pattern)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Hashable

import duckdb
import pyarrow as pa

from flight_lstm.errors import FlightLSTMError
from flight_lstm.plan import Plan


class Source(ABC):
    """Where tables come from. A query runs in its own cursor of the engine's DuckDB; a source makes
    the tables a plan reads visible there while the query runs (and may keep them a moment after,
    as the DuckDB source does), and holds nothing for long between queries."""

    scheme: str
    # A source that runs SQL itself names its sqlglot dialect; the planner then pushes work to it.
    pushdown_dialect: str | None = None

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, *, keep_attached: float = 0.0) -> "Source":
        """Build from `scheme://...`; the URI may hold credentials, so never log it. The keywords
        are the options a URI does not carry (`open_source(uri, **options)`); every source takes
        each, one that has no use for it ignores it:

        keep_attached  seconds (0 or more) to keep what the last query attached, so the next one
                       skips a cold attach; 0 lets go as soon as a query ends
        """

    @abstractmethod
    def tables(self) -> list[str]:
        """The tables and views a query may read, as SQL references (quoted where needed)."""

    @abstractmethod
    def attach(self, db: duckdb.DuckDBPyConnection, con: duckdb.DuckDBPyConnection, plan: Plan, *,
               schema_only: bool = False) -> None:
        """Make what `plan` reads queryable in `con`, a cursor of `db` (the engine's database),
        read-only: its `tables` by name, or for a pushdown source each of its `scans` under its
        local name. With `schema_only`, only the schemas are needed (no remote query may run).
        Raise SourceUnavailable when the source cannot answer now."""

    @abstractmethod
    def describe(self) -> str:
        """A short, secret-free description for logs and the health action."""

    def detach(self, db: duckdb.DuckDBPyConnection, plan: Plan) -> None:
        """The query that `attach` served is over (its cursor closed): let go of what it held, now
        or later, through a cursor of `db`, the engine's database."""

    def close(self, db: duckdb.DuckDBPyConnection) -> None:
        """The engine is stopping: let go now of anything `detach` left for later."""

    def forget(self, db: duckdb.DuckDBPyConnection) -> None:
        """The engine replaced `db` (DuckDB invalidated it): what was attached in it goes with it.
        Queries still on it may yet `detach` from it, and none may `attach` to it again."""

    def version(self) -> Hashable | None:
        """A token that changes whenever the source's tables may have changed, so result schemas
        can be cached until it does; None (the default) caches nothing."""
        return None

    def allowed_paths(self) -> list[str]:
        """Files the engine's database may still open once file access is off (the source's own)."""
        return []

    def table_types(self, tables: list[tuple[str, ...]]) -> dict[tuple[str, ...], pa.Schema]:
        """The types of the tables these names name (each as its parts, as a query writes them),
        where the source can tell; none by default. The planner bounds the types a query builds
        from their columns (plan/size.py): a wide struct column, doubled level by level, is
        otherwise unseen. Called once per plan with all its names (at most MAX_SOURCE_TABLES)."""
        return {}

    def columns(self, table: str) -> list[str]:
        """Column names of a table (a SQL reference in the source's dialect). Pushdown sources
        implement it so the planner sends only the columns a query uses."""
        raise NotImplementedError

    def translate_error(self, error: BaseException) -> FlightLSTMError | None:
        """The source's own error behind a failure DuckDB reports while reading its stream."""
        return None
