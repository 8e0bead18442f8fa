"""A flight-lstm server in a process of its own, for tests that must see whether it survives what
clients do to it. It serves a DuckDB file as `flight-lstm serve` does, prints `port N` once it
listens, logs its one line per query to stderr, and answers one more action, `test-stats`: the texts
the sentiment model has scored so far, DuckDB's memory in use, and the process's resident memory.

    python tests/instrumented_server.py /abs/lake.db [--batch-rows N]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

import pyarrow.flight as flight

from flight_lstm.server import FlightLSTMServer
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from udfs.base import load_model


class Scored:
    """Counts the texts the sentiment model is handed, by wrapping the loaded model's `score`."""

    def __init__(self):
        self.texts, self.lock = 0, threading.Lock()
        model = load_model("sentiment", None)
        score = model.score

        def counted(texts):
            with self.lock:
                self.texts += len(texts)
            return score(texts)

        model.score = counted


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class InstrumentedServer(FlightLSTMServer):
    def __init__(self, service: Service, location: str):
        super().__init__(service, location)
        self.scored = Scored()

    def do_action(self, context, action):
        if action.type != "test-stats":
            return super().do_action(context, action)
        cursor = self.service.engine.db.cursor()
        try:
            duckdb_bytes = cursor.sql("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()
        finally:
            cursor.close()
        stats = {"scored": self.scored.texts, "duckdb_bytes": int(duckdb_bytes[0][0]), "rss_bytes": rss_bytes()}
        return [flight.Result(json.dumps(stats).encode())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("lake")
    parser.add_argument("--batch-rows", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    service = Service(DuckDBSource(args.lake), batch_rows=args.batch_rows)
    service.warm_up()
    server = InstrumentedServer(service, "grpc://127.0.0.1:0")
    print(f"port {server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
