"""Sources by URI scheme. A new engine is one module here plus one line in SOURCES."""
from __future__ import annotations

from urllib.parse import urlparse

from flight_lstm.sources.base import Source
from flight_lstm.sources.dremio import DremioSource
from flight_lstm.sources.duckdb import DuckDBSource

SOURCES: dict[str, type[Source]] = {DuckDBSource.scheme: DuckDBSource, DremioSource.scheme: DremioSource}


def open_source(uri: str, **options) -> Source:
    """The source `uri` names, with `options` (the keywords of `Source.from_uri`) the URI does not carry."""
    scheme = urlparse(uri).scheme or "duckdb"
    kind = SOURCES.get(scheme.split("+")[0])
    if kind is None:
        raise ValueError(f"unknown source scheme {scheme!r}; known: {', '.join(sorted(SOURCES))}")
    return kind.from_uri(uri, **options)


__all__ = ["SOURCES", "Source", "open_source"]
