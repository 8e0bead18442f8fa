"""Limits that keep one query, or a crowd of them, from taking the whole server: how many run at
once, how long one may run, how many rows one may return. Past a limit that query alone gets a
clear error, and the server goes on serving. A client that stops reading or sending loses its
slot too: it cannot hold one by keeping a stream open."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from flight_lstm.errors import QueryCancelled, QueryTimedOut, ResourceExhausted


@dataclass(frozen=True)
class Limits:
    max_queries: int = 16  # running at once; scoring is CPU-bound, so more only queue inside torch
    queue_seconds: float = 10.0  # how long a query past max_queries waits for a slot
    query_seconds: float | None = 600.0  # wall time from start to the last batch
    max_rows: int | None = 50_000_000  # rows in one result: a guard against runaway joins
    # A stream whose client neither reads nor sends for this long is ended and its slot freed,
    # whether or not a time limit is set.
    idle_seconds: float = 300.0

    def __post_init__(self):
        if self.max_queries < 1:
            raise ValueError("max_queries must be at least 1")
        if self.idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")


class Admission:
    """Slots for running queries: a query past `max_queries` waits up to `queue_seconds`."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_queries)

    def enter(self) -> Callable[[], None]:
        """Take a slot (or raise ResourceExhausted); returns the call that gives it back."""
        if not self._slots.acquire(timeout=self.limits.queue_seconds):
            raise ResourceExhausted(
                f"resource exhausted: {self.limits.max_queries} queries are running (the server's "
                f"--max-queries) and none ended within {self.limits.queue_seconds:g} s; retry shortly")
        return self._slots.release


class Budget:
    """One query's deadline, idle allowance and row allowance, checked as its batches pass."""

    def __init__(self, limits: Limits, cancelled: Callable[[], bool] = lambda: False):
        self.limits, self.cancelled = limits, cancelled
        seconds = limits.query_seconds
        self.deadline = time.monotonic() + seconds if seconds else math.inf
        self.active = time.monotonic()
        self.rows = 0

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def touch(self) -> None:
        """The client asked for a batch or sent one: it is still there."""
        self.active = time.monotonic()

    def idle(self) -> bool:
        return time.monotonic() - self.active > self.limits.idle_seconds

    def should_stop(self) -> bool:
        """Checked during the server's own work, which is never the client's silence (the
        watchdog judges that between steps: `Running.due`)."""
        return self.cancelled() or self.expired()

    def stopped(self) -> QueryCancelled | QueryTimedOut:
        """Why an interrupted query stopped: its deadline, its silent client, or its client."""
        if self.expired():
            return QueryTimedOut(f"the query ran past the server's time limit of "
                                 f"{self.limits.query_seconds:g} s (--query-seconds)")
        if self.idle():
            return QueryTimedOut(f"the client neither read nor sent for {self.limits.idle_seconds:g} s "
                                 "(the server's --idle-seconds); the query was ended")
        return QueryCancelled("the client cancelled the query")

    def check(self) -> None:
        """Stop the query, with its reason, if its client went away or its time ran out. Called
        during the server's own work (between a model's batches too), so it also marks the
        client as present: silence counts from the end of our work."""
        if self.should_stop():
            raise self.stopped()
        self.touch()

    def spend(self, rows: int) -> None:
        """Count a batch about to leave; past a limit, stop the query with its reason."""
        self.check()
        self.rows += rows
        if self.limits.max_rows is not None and self.rows > self.limits.max_rows:
            raise ResourceExhausted(
                f"resource exhausted: the result passed the server's limit of {self.limits.max_rows:,} "
                "rows (--max-rows); add a LIMIT or a filter")
