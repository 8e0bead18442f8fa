"""A query in flight, between the engine that starts it and the watchdog that may stop it."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import duckdb
import pyarrow as pa

from flight_lstm import heap
from flight_lstm.engine.errors import translated_errors
from flight_lstm.engine.limits import Budget
from flight_lstm.errors import DuckDBFailed, FlightLSTMError, QueryCancelled
from flight_lstm.sources import Source


class Running:
    """A query in flight: its cursor, its result reader, its budget and its slot, given back once
    by `end`, whichever comes first: the stream's end, its collection, or the watchdog.

    Work on the cursor happens inside `step()`. The watchdog's `stop` interrupts a step mid-way;
    a query between steps is waiting on its client (not reading, or not sending), and is ended
    at once: result and cursor closed, source let go, slot freed. The client's next move gets
    the reason."""

    def __init__(self, con: duckdb.DuckDBPyConnection, budget: Budget, release: Callable[[], None],
                 db: duckdb.DuckDBPyConnection | None = None):
        self.con, self.budget, self._release = con, budget, release
        self.db = db  # the database its cursor belongs to
        self.result = None  # a reader over the cursor's result: it outlives a closed cursor
        self.unwatch: Callable[[], None] = lambda: None
        self._busy = threading.Lock()
        self._ended = False
        self._stopped: Exception | None = None  # why the watchdog ended it, kept for the client
        heap.query_started()

    @contextmanager
    def step(self):
        with self._busy:
            if self._ended or self.budget.abandoned is not None:
                self.end()
                raise self._stopped or self.budget.stopped()
            try:
                yield
            except Exception:
                if self.budget.abandoned is not None:  # abandoned mid-step: whatever its interrupt raised
                    raise self.budget.abandoned from None
                raise
            finally:
                self.budget.touch()  # idle time is the client's, counted from the end of our work

    def due(self) -> bool:
        """Whether the watchdog should stop it: cancelled or out of time, or idle between steps
        (a long blocking step is the server's work, not a silent client)."""
        budget = self.budget
        return budget.should_stop() or (not self._busy.locked() and budget.idle())

    def stop(self) -> None:
        self.con.interrupt()
        if self._busy.acquire(blocking=False):  # between steps: nothing runs on the cursor
            try:
                self._stopped = self._stopped or self.budget.stopped()
                self.end()
            finally:
                self._busy.release()

    def abandon(self, reason: Exception) -> None:
        """End it with `reason` for its client: now if between steps, else by interrupting the step
        that runs (which then raises `reason`, as does a model's next budget check, and no later
        step starts). A query left on a database the engine replaced would hold that database's
        memory, spill files and threads, beside the new one's, until its client read again or its
        step ran to its end."""
        self.budget.abandoned = self.budget.abandoned or reason
        if self._busy.acquire(blocking=False):
            try:
                self._stopped = self._stopped or reason
                self.end()
            finally:
                self._busy.release()
        else:
            self.con.interrupt()

    def end(self) -> None:
        with _ending:
            if self._ended:
                return
            self._ended = True
        try:
            try:
                self.unwatch()
            finally:  # even if it raised: a result kept alive keeps its whole database alive
                if self.result is not None:
                    self.result.close()  # DuckDB's result goes now, not when a collector finds it
        finally:
            self._release()
            heap.query_ended()  # the memory it freed goes back, once none runs (heap.py)


_ending = threading.Lock()


def batches(running: Running, source: Source, names: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The running query's batches, its columns renamed to `names` if given."""
    try:
        with stopped_by(running.budget), translated_errors(source):
            while True:
                running.budget.touch()
                with running.step():
                    try:
                        batch = running.result.read_next_batch()
                    except StopIteration:
                        return
                running.budget.spend(batch.num_rows)
                yield batch if names is None else batch.rename_columns(names)
    finally:
        running.end()


@contextmanager
def stopped_by(budget: Budget):
    """An interrupted query says why it stopped: its client, or its time limit. So does a model
    that a budget check stopped on one of DuckDB's threads, whose error DuckDB wraps as its own.
    One of DuckDB's internal errors stays itself even then: it invalidated the database whatever
    stopped the query, and its caller answers for it (a client that cancelled its own breaking
    query just before the break went uncounted: 11 renewals in 40 s, 1 counted)."""
    try:
        yield
    except QueryCancelled:
        raise budget.stopped() from None
    except DuckDBFailed:
        raise
    except (FlightLSTMError, duckdb.Error, OSError):
        if budget.should_stop():
            raise budget.stopped() from None
        raise
