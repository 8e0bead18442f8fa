"""Limits that keep one query, or a crowd of them, from taking the whole server: how many run at
once, how long one may run, how many rows one may return. Past a limit that query alone gets a
clear error, and the server goes on serving. A client that stops reading or sending loses its
slot too: it cannot hold one by keeping a stream open."""
from __future__ import annotations

import math
import os
import re
import resource
import sys
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

    def enter(self, wait: bool = True) -> Callable[[], None]:
        """Take a slot, waiting up to `queue_seconds` unless told not to wait (or raise
        ResourceExhausted); returns the call that gives it back."""
        if not (self._slots.acquire(timeout=self.limits.queue_seconds) if wait else self._slots.acquire(False)):
            raise ResourceExhausted(
                f"resource exhausted: {self.limits.max_queries} queries are running (the server's "
                f"--max-queries) and none ended within {self.limits.queue_seconds:g} s; retry shortly")
        return self._slots.release


class Budget:
    """One query's deadline, idle allowance and row allowance, checked as its batches pass.
    `cancelled` is true once the query should stop for its client, or says why as text."""

    def __init__(self, limits: Limits, cancelled: Callable[[], bool | str] = lambda: False):
        self.limits, self.cancelled = limits, cancelled
        seconds = limits.query_seconds
        self.deadline = time.monotonic() + seconds if seconds else math.inf
        self.active = time.monotonic()
        self.rows = 0
        self.abandoned: Exception | None = None  # why the engine ended it (its database was replaced)

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
        return self.abandoned is not None or self.cancelled() or self.expired()

    def stopped(self) -> Exception:
        """Why an interrupted query stopped: the engine, its deadline, its silent client, or its client."""
        if self.abandoned is not None:
            return self.abandoned
        if self.expired():
            return QueryTimedOut(f"the query ran past the server's time limit of "
                                 f"{self.limits.query_seconds:g} s (--query-seconds)")
        if self.idle():
            return QueryTimedOut(f"the client neither read nor sent for {self.limits.idle_seconds:g} s "
                                 "(the server's --idle-seconds); the query was ended")
        why = self.cancelled()
        return QueryCancelled(why if isinstance(why, str) and why else "the client cancelled the query")

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


# Process memory. DuckDB's --memory-limit covers what its buffer manager holds, not a single
# expression's value (`len(range(25000000))` built 2 GB under a 1 GB limit) nor the models'
# tensors or the batches in flight. A cap on the data segment is the last line behind it: past
# it an allocation fails, DuckDB and Python report out of memory for that query alone, and the
# server lives on. The data segment counts reserved address space (malloc's arenas, thread
# stacks), about 1.6 GB for an idle server holding 0.4 GB, so the cap starts from what the
# server has once its models are loaded.
HEADROOM = 1 << 30  # more threads and arenas under load, models' tensors, batches in flight
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(I?)B?\s*", re.I)


def parse_size(text: str) -> int:
    """Bytes in a size as DuckDB writes them: `4GB` (10^9), `4GiB` (2^30), `512MB`, `100000`."""
    found = _SIZE.fullmatch(text)
    if not found:
        raise ValueError(f"not a size: {text!r} (write e.g. 4GB or 512MiB)")
    number, unit, binary = found.groups()
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def usable_memory() -> int:
    """The memory this process may use: the machine's, or its container's (cgroup v2) if less."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cgroup = f.read().strip()
    except OSError:
        return total
    return min(total, int(cgroup)) if cgroup.isdigit() else total


def data_segment() -> int | None:
    """This process's data segment now (Linux), the measure RLIMIT_DATA holds to."""
    try:
        with open("/proc/self/status") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration):
        return None
    return int(kib) * 1024


EXIT_OUT_OF_MEMORY = 75  # EX_TEMPFAIL: the server ran out of memory outside a query; restart it
_OUT_OF_MEMORY = b"flight-lstm: out of memory outside any query; exiting for a restart (exit 75)\n"


def cap_memory(duckdb_limit: str | None, max_memory: str | None = None) -> int | None:
    """Cap the data segment (RLIMIT_DATA) at `max_memory`, or by default at what the process has
    now plus DuckDB's limit (else the usable memory) plus HEADROOM. Returns the cap, or None
    where the platform cannot say what the process holds.

    At the cap any allocation fails, not only the query's: a thread that cannot start, gRPC, the
    interpreter. A query's own failure is its error; one outside any query (an exception nobody
    can catch: in a thread, or "ignored") leaves the server in a state no code was written for,
    such as a thread start that waits for good holding a lock every query needs. The process
    then exits with EXIT_OUT_OF_MEMORY for its supervisor to restart, rather than serve on wedged."""
    now = data_segment()
    if max_memory is not None:
        cap = parse_size(max_memory)
    elif now is None:
        return None
    else:
        cap = now + (parse_size(duckdb_limit) if duckdb_limit else usable_memory()) + HEADROOM
    if now is not None and cap < now:
        raise ValueError(f"the memory cap {cap:,} bytes is below the {now:,} the server already holds")
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    _exit_on_uncaught_memory_errors()
    return cap


def _exit_on_uncaught_memory_errors() -> None:
    unraisable, in_thread = sys.unraisablehook, threading.excepthook

    def exit_if_out_of_memory(exc_type) -> None:
        if exc_type is not None and issubclass(exc_type, MemoryError):
            os.write(2, _OUT_OF_MEMORY)  # no logging: it allocates
            os._exit(EXIT_OUT_OF_MEMORY)

    def on_unraisable(failure) -> None:
        exit_if_out_of_memory(failure.exc_type)
        unraisable(failure)

    def on_thread(failure) -> None:
        exit_if_out_of_memory(failure.exc_type)
        in_thread(failure)

    sys.unraisablehook, threading.excepthook = on_unraisable, on_thread
