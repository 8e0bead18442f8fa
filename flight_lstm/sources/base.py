"""The one small interface every source engine implements (the ibis backend pattern)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import duckdb


class Source(ABC):
    """Where tables come from. A query runs in a fresh local DuckDB connection; a source makes the
    tables a plan reads visible there, for the life of that one query, and holds nothing between."""

    scheme: str

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str) -> "Source":
        """Build from `scheme://...`; the URI may hold credentials, so never log it."""

    @abstractmethod
    def tables(self) -> list[str]:
        """Names of the tables and views a query may read."""

    @abstractmethod
    def attach(self, con: duckdb.DuckDBPyConnection, tables: tuple[str, ...]) -> None:
        """Make `tables` queryable by name in `con` (read-only). Raise SourceUnavailable when the
        source cannot answer now."""

    @abstractmethod
    def describe(self) -> str:
        """A short, secret-free description for logs and the health action."""
