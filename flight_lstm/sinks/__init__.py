"""Enrichment targets by the form of `--into`. A new target is one module here plus one line in
SINKS; a value with no scheme is a table in the source's DuckDB file."""
from __future__ import annotations

import re

from flight_lstm.sinks.base import Sink, TargetError
from flight_lstm.sinks.dremio import DremioSink
from flight_lstm.sinks.duckdb import DuckDBTableSink
from flight_lstm.sinks.iceberg import IcebergSink
from flight_lstm.sinks.parquet import ParquetSink

SINKS: dict[str, type[Sink]] = {s.scheme: s for s in (DuckDBTableSink, ParquetSink, IcebergSink, DremioSink)}


def open_sink(into: str, *, source_uri: str) -> Sink:
    found = re.match(r"([a-z][a-z0-9+]*):", into)
    kind = SINKS.get(found.group(1)) if found else DuckDBTableSink
    if kind is None:
        raise TargetError(f"unknown target {found.group(1)}:; known: TABLE, "
                          + ", ".join(f"{s}:" for s in sorted(SINKS) if s != "duckdb"))
    return kind.from_uri(into, source_uri=source_uri)


__all__ = ["SINKS", "Sink", "TargetError", "open_sink"]
