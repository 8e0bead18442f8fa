"""Throughput against the number of clients: the same mixed queries (sentiment over id ranges,
forecasts over 40 series, forecast_table, plain SQL) split across 1, 2, 4, 8 and 16 concurrent
clients of one `flight-lstm serve` process. Every answer is checked against the answer the query
gives alone. Writes bench/load.json and prints a table.

    python bench/load.py [--clients 1,2,4,8,16] [--queries 48] [--torch-threads default,1]

--torch-threads sets OMP_NUM_THREADS for the server (torch's threads per model call).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from run import Server  # noqa: E402  (bench/run.py: `flight-lstm serve` in its own process)
from test_load import QUERIES, assert_same, make_busy_lake, run_clients, work  # noqa: E402

from conftest import run  # noqa: E402


def measure(uri: str, clients: int, total: int, expected: dict) -> dict:
    answers, seconds = run_clients(uri, work(clients, total // clients))
    wrong = errors = 0
    for sql, answer, _ in answers:
        if isinstance(answer, Exception):
            errors += 1
            continue
        try:
            assert_same(answer, expected[sql])
        except AssertionError:
            wrong += 1
    latencies = sorted(s for _, _, s in answers)
    return {"clients": clients, "queries": len(answers), "errors": errors, "wrong": wrong,
            "seconds": round(seconds, 2), "queries_per_s": round(len(answers) / seconds, 2),
            "p50_ms": round(1000 * statistics.median(latencies)),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--queries", type=int, default=48, help="in all, split evenly across the clients")
    parser.add_argument("--torch-threads", default="default,1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "load.json")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        lake = make_busy_lake(Path(tmp) / "lake.db")
        for threads in args.torch_threads.split(","):
            if threads == "default":
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = threads
            server = Server(Path(lake))
            try:
                expected = {sql: run(server.client, sql) for sql in QUERIES}  # each alone, first
                for clients in counts:
                    result = {"torch_threads": threads, **measure(server.uri, clients, args.queries, expected)}
                    runs.append(result)
                    print(json.dumps(result), flush=True)
            finally:
                server.close()
    os.environ.pop("OMP_NUM_THREADS", None)
    report = {"machine": {"cores": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
                          "python": platform.python_version()},
              "queries": QUERIES, "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| torch threads | clients | queries | errors | wrong | seconds | queries/s | vs 1 client | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        one = next(x for x in runs if x["torch_threads"] == r["torch_threads"] and x["clients"] == counts[0])
        print(f"| {r['torch_threads']} | {r['clients']} | {r['queries']} | {r['errors']} | {r['wrong']} | "
              f"{r['seconds']} | {r['queries_per_s']} | {r['queries_per_s'] / one['queries_per_s']:.2f} | "
              f"{r['p50_ms']} | {r['p95_ms']} |")
    print(f"\nwrote {args.out}")
    return 0 if all(r["errors"] == 0 and r["wrong"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
