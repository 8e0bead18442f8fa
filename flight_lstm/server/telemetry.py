"""What the server tells the people who run it: one log line per query and, when asked for,
Prometheus metrics (queries by outcome, rows, latency, queries running). Neither holds SQL text,
parameters or data: only counts, durations, operator names and outcomes."""
from __future__ import annotations

import logging
import re
import socket
import threading
import time
import weakref
from http.server import ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from flight_lstm.errors import FlightLSTMError, QueryCancelled

log = logging.getLogger("flight_lstm.server")

QUERIES = Counter("flight_lstm_queries", "Queries, by how they ended", ["outcome"])
ROWS = Counter("flight_lstm_rows", "Rows returned to clients")
SECONDS = Histogram("flight_lstm_query_seconds", "Query wall time, from the call to the last batch",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600))
RUNNING = Gauge("flight_lstm_queries_running", "Queries started and not yet ended")


# The metrics port needs no login, so it is bounded like the Flight port: prometheus_client's own
# server gave every connection a thread with no read timeout, and 300 connections that never
# finished a request took every thread the process could start (the queries' watchdog among them).
# A connection lives at most METRICS_SECONDS, however slowly its client sends.
METRICS_CONNECTIONS = 8  # served at once (a thread each, and one for its deadline); more are closed at once
METRICS_SECONDS = 5.0  # a connection's whole life: one byte every 4 s must not keep it


class _MetricsHandler(MetricsHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name) - no line per scrape
        pass


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address):
        super().__init__(address, _MetricsHandler)
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        deadline = threading.Timer(METRICS_SECONDS, _cut, (request,))
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()


def _cut(connection: socket.socket) -> None:
    """End a connection past its time: its handler's next read or write fails, and it returns."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def serve_metrics(host: str, port: int) -> int:
    """Expose /metrics over HTTP; returns the port (useful when asked for port 0)."""
    server = _MetricsServer((host, port))
    threading.Thread(target=server.serve_forever, name="flight-lstm-metrics", daemon=True).start()
    return server.server_port


def outcome(error: BaseException | None) -> str:
    """A short, bounded label: "ok", one of our error classes, or "InternalError"."""
    if error is None:
        return "ok"
    return type(error).__name__ if isinstance(error, FlightLSTMError) else "InternalError"


_KIND = re.compile(r"(?:[A-Z][A-Za-z]* ){0,3}Error(?=:)")


def error_kind(error: BaseException | None) -> str:
    """What kind of mistake, for the log: DuckDB's class ("Binder Error", "Parser Error") when
    the message starts with one, else the outcome. Never the message itself, which may quote
    the query's text or values."""
    found = _KIND.match(str(error)) if isinstance(error, FlightLSTMError) else None
    return found.group(0).replace(" ", "_") if found else outcome(error)


class Query:
    """One query from its call to its end: counts its rows and reports once, however it ends."""

    def __init__(self, kind: str, user: str | None = None, started: float | None = None,
                 failed: Callable[[BaseException], None] = lambda error: None):
        """`started`: when its call began (time.perf_counter), if before now; `failed` is told the
        error it ends with, if any (calls.failed: its caller's count of DuckDB's internal errors)."""
        self.kind, self.user, self.operators, self.rows, self.failed = kind, user, (), 0, failed
        self.started = time.perf_counter() if started is None else started
        self._ended = threading.Event()
        RUNNING.inc()

    def end(self, error: BaseException | None = None) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        seconds, label = time.perf_counter() - self.started, outcome(error)
        if error is not None:
            self.failed(error)
        RUNNING.dec()
        QUERIES.labels(label).inc()
        ROWS.inc(self.rows)
        SECONDS.observe(seconds)
        log.info("query kind=%s user=%.80r outcome=%s error=%s rows=%d seconds=%.3f operators=%s", self.kind,
                 self.user or "-", label, error_kind(error) if error is not None else "-", self.rows, seconds,
                 ",".join(sorted(self.operators)) or "-")

    def watch(self, batches: Iterable) -> Iterator:
        """Pass the batches through, counting rows; the query ends with the stream."""
        stream = self._watched(batches)
        weakref.finalize(stream, self.end)  # a stream dropped unstarted never runs its finally
        return stream

    def _watched(self, batches: Iterable) -> Iterator:
        error = None
        try:
            for batch in batches:
                self.rows += batch.num_rows
                yield batch
        except GeneratorExit:  # the server stopped pulling: the client went away
            error = QueryCancelled("the client went away")
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # free the query now; a dropped generator waits for the collector
            self.end(error)
            error = None  # the error's traceback holds this frame: don't keep both alive
