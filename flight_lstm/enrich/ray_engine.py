"""`engine = "ray"`: the same enrichment run, with each chunk scored on a Ray cluster.

    this process (runner.run): lock, keys query, chunks of pending keys, commits
    Ray Data: one row per chunk -> map_batches(_Scorer, an actor pool) -> one row per scored chunk

Each actor holds a `Service` on the job's source, the same engine the local run and the server
use, so the chunk query (the source read and the operators of udfs/) runs there exactly as it
would here, and udfs' registry loads each model once per actor process.

Reading is partitioned with the chunks: pending keys are sorted, so each chunk covers a key
range, and its query carries that range as a plain WHERE condition. A DuckDB scan can skip row
groups outside it; the Dremio pushdown sends it to Dremio, so each actor's Flight query reads
its own part of the table. The exact filter, the chunk's own keys, still runs in the actor.

Exactly once: actors write nothing. A scored chunk travels whole (one Arrow IPC stream in one
row), and only this process commits, each chunk with the sink's atomic commit. Ray restarts a
killed actor and runs its chunks again; a chunk that arrives twice is committed once. A killed
driver leaves whole chunks, and the next run's keys query skips them, as with the local engine.
"""
from __future__ import annotations

import pickle
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from flight_lstm.enrich.job import Job, JobError
from flight_lstm.enrich.scoring import chunk_keys, score_chunk
from flight_lstm.errors import FlightLSTMError
from flight_lstm.plan.increment import CHUNK, Increment
from flight_lstm.service import Service
from flight_lstm.sinks import Sink
from flight_lstm.sinks.duckdb import DuckDBTableSink


def check(sink: Sink) -> None:
    """Before the run takes the target: Ray is installed and the target can take the commits."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise JobError("the Ray engine needs Ray: pip install 'flight-lstm[ray]'") from None
    if isinstance(sink, DuckDBTableSink):
        raise JobError("the Ray engine cannot write a table inside the source's DuckDB file: the commits "
                       "would lock out the workers reading it; use parquet:// or iceberg://")


def score(job: Job, increment: Increment, chunks: list[pa.Table]) -> Iterator[tuple[int, pa.Table]]:
    """(chunk index, the query's rows for that chunk), each chunk once, as the workers finish them."""
    if not chunks:
        return
    import ray.data

    if not ray.is_initialized():
        ray.init(address=job.ray_address, **({} if job.ray_address else {"include_dashboard": False}))
    ray.data.DataContext.get_current().enable_progress_bars = False  # runner's Progress reports
    workers = job.ray_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    requests = [pa.table({"chunk": [i], "sql": [chunk_sql(increment, chunk, job.keys)],
                          "keys": pa.array([_pack(chunk_keys(chunk, job.keys))], pa.large_binary())})
                for i, chunk in enumerate(chunks)]
    scored = ray.data.from_arrow(requests).map_batches(
        _Scorer, fn_constructor_args=(job.source,), batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(chunks))), num_cpus=1)
    seen: set[int] = set()
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
        for i, rows, error in zip(batch.column("chunk").to_pylist(), batch.column("rows"), batch.column("error")):
            if error.is_valid:
                raise pickle.loads(error.as_py())
            if i not in seen:  # else a chunk run again after its worker died
                seen.add(i)
                yield i, _unpack(rows.as_buffer())


def chunk_sql(increment: Increment, chunk: pa.Table, keys: tuple[str, ...]) -> str:
    """The chunk query, narrowed to the chunk's key range by a condition the source can use."""
    ranges = [r for r in map(_range, increment.key_sql, (chunk.column(k) for k in keys)) if r]
    query = increment.chunk_query.copy()
    return (query.where(*ranges, dialect="duckdb") if ranges else query).sql(dialect="duckdb")


def _range(expression: str, values: pa.ChunkedArray) -> str | None:
    """`expression` between the least and greatest of `values` (or NULL, if one is NULL). None for
    types whose literals or order could differ between engines (floats, time zones, nanoseconds)."""
    t = values.type
    if not (pa.types.is_integer(t) or pa.types.is_date(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or (pa.types.is_timestamp(t) and t.tz is None and t.unit != "ns")):
        return None
    bounds = pc.min_max(values)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    inside = None if low is None else (f"({expression}) BETWEEN {exp.convert(low).sql(dialect='duckdb')} "
                                       f"AND {exp.convert(high).sql(dialect='duckdb')}")
    if values.null_count:
        null = f"({expression}) IS NULL"
        inside = null if inside is None else f"({inside} OR {null})"
    return inside


class _Scorer:
    """One Ray Data actor: the job's source and the engine with udfs' operators, set up once."""

    def __init__(self, source: str):
        self.service = Service.for_jobs(source)

    def __call__(self, request: pa.Table) -> pa.Table:
        """One chunk (batch_size=1): its rows, or the error a local run would raise for them
        (Ray would hand the driver only its own wrapper)."""
        try:
            plan = self.service.plan(request.column("sql")[0].as_py(), local_tables=(CHUNK,))
            keys = _unpack(request.column("keys")[0].as_buffer())
            rows, error = _pack(score_chunk(self.service, plan, keys)), None
        except FlightLSTMError as e:
            rows, error = None, pickle.dumps(e)
        return pa.table({"chunk": request.column("chunk"), "rows": pa.array([rows], pa.large_binary()),
                         "error": pa.array([error], pa.large_binary())})


def _pack(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _unpack(buffer: pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(buffer).read_all()
