"""One enrichment run: find the pending keys, score them chunk by chunk, commit each chunk.

Exactly once, whatever kills the run: each chunk's commit is atomic in the target, and the next
run's keys query skips every key a commit made visible. Between chunks the source is closed, so
a DuckDB file alternates between this run's commits and the server's read-only queries.

Scoring is the engine's part: here, chunk after chunk in this process; with `engine = "ray"`,
on a Ray cluster (ray_engine.py). Either way this process alone commits.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from flight_lstm.enrich import lineage, ray_engine
from flight_lstm.enrich.job import Job, JobError
from flight_lstm.enrich.lock import target_lock
from flight_lstm.enrich.progress import Progress, Summary
from flight_lstm.enrich.scoring import chunk_keys, score_chunk
from flight_lstm.plan.increment import DONE, DONE_MODEL, DONE_WATERMARK, EXISTING, TODO, key_column
from flight_lstm.service import Enrichment, Service
from flight_lstm.sinks import TargetError, open_sink


def run(job: Job, *, dry_run: bool = False, wait: bool = False, stop: threading.Event | None = None,
        out: Callable[[str], None] = print) -> Summary:
    """Run `job` once. `stop` ends the run after the chunk being committed; `out` prints the dry run."""
    started = time.monotonic()
    service = Service.for_jobs(job.source)
    sink = open_sink(job.into, source_uri=job.source)
    summary = Summary(job.name, sink.describe())
    if (job.watermark or job.rescore_on_model_change) and not sink.replaces:
        raise JobError(f"{sink.describe()} is append-only: --watermark and --rescore-on-model-change "
                       "need a target that can replace rows (a DuckDB table or Iceberg)")
    planned = service.plan_enrichment(job.sql, job.keys, watermark=job.watermark,
                                      rescore_on_model_change=job.rescore_on_model_change)
    output, model = planned.output, planned.model
    expected = lineage.with_lineage(output)
    if job.engine == "ray":
        ray_engine.check(sink)
    with target_lock(sink.lock_path, sink.describe(), wait=wait):
        sink.recover()
        existing = sink.schema()
        if existing is not None and set(existing.names) != set(expected.names):
            raise TargetError(f"{sink.describe()} has columns {existing.names}, the job writes {expected.names}")
        target = existing or expected
        done = _done_keys(sink, existing, job, output)
        candidates = service.collect(planned.keys, {DONE: done})
        _check_unique(candidates, job.keys)  # all: a changed row (pending) may share a key with a done one
        pending = candidates.filter(candidates.column(TODO))
        summary.read, summary.skipped = candidates.num_rows, candidates.num_rows - pending.num_rows
        if dry_run:
            out(_describe(job, sink.describe(), planned, summary, pending))
            summary.seconds = time.monotonic() - started
            return summary
        chunks = [pending.slice(offset, job.chunk_rows) for offset in range(0, pending.num_rows, job.chunk_rows)]
        if job.engine == "ray":
            scored = ray_engine.score(job, planned.increment, chunks)
        else:
            scored = _score(service, planned.chunk, chunks, job.keys)
        with Progress(job.name, pending.num_rows) as progress:
            for i, rows in scored:
                _check_unique(rows, job.keys)  # a shape the keys query does not see (DISTINCT, GROUP BY ALL)
                summary.scored += rows.num_rows
                rows = _conform(lineage.stamp(rows, model), target)
                sink.commit(rows, list(job.keys), replace=bool(pc.any(chunks[i].column(EXISTING)).as_py()))
                summary.written += rows.num_rows
                summary.chunks += 1
                progress.update(rows.num_rows)
                if stop is not None and stop.is_set():
                    break
    summary.seconds = time.monotonic() - started
    return summary


def _score(service: Service, chunk_plan, chunks: list[pa.Table],
           keys: tuple[str, ...]) -> Iterator[tuple[int, pa.Table]]:
    """(chunk index, the query's rows for that chunk), in this process, one chunk at a time."""
    for i, chunk in enumerate(chunks):
        yield i, score_chunk(service, chunk_plan, chunk_keys(chunk, keys))


def _done_keys(sink, existing: pa.Schema | None, job: Job, output: pa.Schema) -> pa.Table:
    """What the target already holds, by key: with the model and watermark that scored it."""
    columns = {key_column(i): k for i, k in enumerate(job.keys)}
    columns[DONE_MODEL] = lineage.MODEL
    if job.watermark:
        columns[DONE_WATERMARK] = job.watermark
    if existing is None:
        types = {k: output.field(k).type for k in output.names} | {lineage.MODEL: pa.string()}
        return pa.table({ours: pa.array([], types[theirs]) for ours, theirs in columns.items()})
    table = sink.read(list(dict.fromkeys(columns.values())))
    return pa.table({ours: table.column(theirs) for ours, theirs in columns.items()})


def _check_unique(rows: pa.Table, keys: tuple[str, ...]) -> None:
    """Each key once in `rows`, by Arrow's equality: for the key types sinks/keys.py allows, the
    identity that the chunk filter and the targets compare by too."""
    counts = rows.group_by(list(keys)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows:
        example = {k: repeated.column(k)[0].as_py() for k in keys}
        raise JobError(f"the key ({', '.join(keys)}) is not unique in the query's result: "
                       f"{repeated.num_rows} key(s) repeat, e.g. {example}")


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """The target's column order and types (an existing target may store e.g. large strings)."""
    try:
        return rows.select(schema.names).cast(pa.schema([pa.field(f.name, f.type) for f in schema]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
        raise TargetError(f"the rows do not fit the target's columns: {e}") from None


def _describe(job: Job, target: str, planned: Enrichment, summary: Summary, pending: pa.Table) -> str:
    chunks = -(-pending.num_rows // job.chunk_rows)
    keys_plan, chunk_plan = planned.keys, planned.chunk
    scans = "".join(f"\n  source scan {name}: {sql}" for name, sql in (*keys_plan.scans, *chunk_plan.scans))
    return (f"dry run of job {job.name} -> {target} (nothing written)\n"
            f"model: {planned.model}\n"
            f"keys query (no operators):\n  {keys_plan.sql}\n"
            f"incremental filter: a row is done when {DONE} AS d holds {planned.increment.done_condition}\n"
            f"chunk query (operators run only on the chunk's keys):\n  {chunk_plan.sql}{scans}\n"
            f"rows: {summary.read} in the query, {summary.skipped} done, {pending.num_rows} to score "
            f"in {chunks} chunk(s) of up to {job.chunk_rows}")
