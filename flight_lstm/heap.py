"""Keep freed large arrays in the process heap for the next batch (glibc only).

A batch allocates arrays of tens of MB (10,000 daily series are 58 MB of values, copied a few
times on the way to the network, plus torch's LSTM buffers). glibc maps each block above its mmap
threshold (128 KB at first, rising to at most 32 MB) afresh and unmaps it on free, so the next
batch faults every page in again, and torch's threads wait at their barrier on the one that
faults. Measured on 10,000 daily series, 14 operator calls: 1.2 million page faults and 3-4 s of
kernel time, with single calls at 2.5 times their usual time; with both thresholds at KEEP_BYTES,
55,000 faults and 0.1 s. The forecast operator ran 1.6-1.9 times as fast (bench runs with and without, alternating).

The thresholds hold in glibc's main heap only. A thread other than the main one, and every model
call in a server runs on one (gRPC's, DuckDB's), allocates from heaps of its own of at most 64 MB:
a larger block is mapped afresh and unmapped on free whatever the thresholds. The anomaly network
reads long runs in parts for that reason (models/anomaly.py: STEPS_PER_CALL). One heap for all
threads (`M_ARENA_MAX` 1) ended such faults too, but slowed sentiment by 7% (README).

The cost is memory: up to KEEP_BYTES of freed memory may stay mapped (the bench's peak RSS went
from 1.10-1.13 GB to 1.21 GB). Elsewhere than glibc (musl, macOS) this does nothing.

Kept for good, though, the freed memory of every heavy query stayed with the process: idle, it
held hundreds of MB more (three heavy legal queries in a 1 GB engine: 593-637 MB more resident
than before them), and under `--max-memory` less room for the next. So when a query ends, if an
operator ran since the last time and none is running now, `give_back` returns the free pages:
glibc's (`malloc_trim(0)`) and the unused memory of pyarrow's pool; the same queries then left
56-59 MB. The batches of one query still reuse their memory. glibc keeps the address space of its
per-thread heaps mapped (it only tells the kernel the pages are free), so the data segment, which
`--max-memory` counts, falls far less than resident memory. And once no query runs, DuckDB's own
allocator purges what it holds freed (`purge_duckdb`).
"""
from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager

import pyarrow as pa

log = logging.getLogger(__name__)

KEEP_BYTES = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_lock = threading.Lock()
_done = False


def keep_freed_blocks() -> None:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES, once per process."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return
        ok = all(mallopt(option, KEEP_BYTES) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
        log.debug("heap: freed blocks under %d MB kept for reuse: %s", KEEP_BYTES >> 20, ok)


_calls = 0  # operator calls running now
_ran = False  # an operator ran since memory was last given back
_queries = 0  # queries running now
_trim = None  # glibc's malloc_trim, once looked up (False: none here)
_mallctl = None  # DuckDB's jemalloc's mallctl, once looked up (False: none here)
PURGE_ALL = b"arena.4096.purge"  # jemalloc: purge every arena (MALLCTL_ARENAS_ALL)


@contextmanager
def model_call():
    """Around every operator call of a query (the engine's two call sites)."""
    global _calls, _ran
    with _lock:
        _calls += 1
        _ran = True
    try:
        yield
    finally:
        with _lock:
            _calls -= 1


def query_started() -> None:
    global _queries
    with _lock:
        _queries += 1


def query_ended() -> None:
    """A query ended: give memory back if an operator ran since the last time and none runs now
    (another query's batches keep reusing theirs); and once no query runs, DuckDB's."""
    global _ran, _queries
    with _lock:
        _queries -= 1
        idle = _queries == 0
        operated = _ran and not _calls
        _ran = _ran and not operated
    if operated:
        give_back()
    if idle:
        purge_duckdb()


def give_back() -> None:
    """Return the process's free heap pages to the system (glibc), and pyarrow's unused memory."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)
    pa.default_memory_pool().release_unused()


def purge_duckdb() -> None:
    """Unmap what DuckDB's allocator holds freed. It is a jemalloc of its own (`duckdb_je_*`, set to
    unmap what it purges: flight_lstm/__init__.py) that purges an arena only when that arena
    allocates again: after queries that bound a wide type, the data segment stayed at the cap that
    `--max-memory` sets (3.6 GB of address space, 0.2 GB resident) while DuckDB's threads idled,
    and every later call, health included, failed with MemoryError for good. jemalloc's background
    threads, which purge on a timer, slowed the forecast model alone by a third on two cores."""
    global _mallctl
    if _mallctl is None:
        try:
            import _duckdb

            _mallctl = ctypes.CDLL(_duckdb.__file__).duckdb_je_mallctl
            _mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        except (ImportError, OSError, AttributeError):
            _mallctl = False
    if _mallctl:
        _mallctl(PURGE_ALL, None, None, None, 0)
