"""Scoring one chunk of pending keys: the part of a run the local and the Ray runners share."""
from __future__ import annotations

import pyarrow as pa

from flight_lstm.plan import Plan
from flight_lstm.plan.increment import CHUNK, key_column
from flight_lstm.service import Service


def chunk_keys(chunk: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """A chunk's keys as the chunk query reads them (`_chunk_keys`)."""
    return pa.table({key_column(i): chunk.column(k) for i, k in enumerate(keys)})


def score_chunk(service: Service, chunk_plan: Plan, keys: pa.Table) -> pa.Table:
    """The query's rows for one chunk's keys: the key filter sits below the operators, and the
    query runs to its end, so the source is let go before anything is written."""
    return service.collect(chunk_plan, {CHUNK: keys})
