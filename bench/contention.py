"""`make bench` contention row: the same `flight-lstm enrich` run on an idle machine and beside a
CPU hog holding one core, taking turns. With torch's default threads the busy run took 25 times
the idle one (issue #22: 40.2 s against 1.6 s on two cores); sized threads (flight_lstm/threads.py)
should keep it within TARGET.

    python bench/contention.py [--repeats 3] [--rows 7350]

Each run is a new process, timed from start to exit, as a user runs it: into a new Parquet
directory, so every row is scored each time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from flight_lstm import threads

TARGET = 2.5  # busy / idle, at most
SQL = "SELECT id, sentiment(review) AS sentiment FROM reviews"
WORDS = ("a moving , beautifully acted film , one of the best of the year dull lifeless and far too long "
         "terrible script awful acting it is not good at all a quiet charming story with a weak ending").split()


def run(repeats: int = 3, rows: int = 7_350, texts: Sequence[str] | None = None) -> dict:
    """Median seconds of the enrichment idle and busy (in turns), their ratio and the target.
    `texts` (the reviews to score, reused in turn) default to sentences drawn from a few words."""
    with tempfile.TemporaryDirectory() as tmp:
        lake = _lake(Path(tmp) / "lake.db", rows, texts)
        seconds: dict[str, list[float]] = {"idle": [], "busy": []}
        for i in range(repeats):
            for mode in seconds:
                hog = _hog() if mode == "busy" else None
                try:
                    seconds[mode].append(_enrich(lake, Path(tmp) / f"{mode}-{i}"))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
    idle, busy = statistics.median(seconds["idle"]), statistics.median(seconds["busy"])
    plan = threads.plan()
    return {"rows": rows, "repeats": repeats, "idle_seconds": round(idle, 2), "busy_seconds": round(busy, 2),
            "busy_over_idle": round(busy / idle, 2), "target": TARGET, "met": busy / idle <= TARGET,
            "cpus": plan.cpus, "torch_threads": plan.torch, "duckdb_threads": plan.duckdb}


def _lake(path: Path, rows: int, texts: Sequence[str] | None) -> Path:
    rng = np.random.default_rng(0)
    if texts is None:
        texts = [" ".join(rng.choice(WORDS, rng.integers(5, 30))) for _ in range(min(rows, 2_000))]
    reviews = pa.table({"id": np.arange(rows), "review": [texts[i % len(texts)] for i in range(rows)]})
    with duckdb.connect(str(path)) as con:
        con.register("given", reviews)
        con.execute("CREATE TABLE reviews AS SELECT * FROM given")
    return path


def _hog() -> subprocess.Popen:
    """A process that keeps one core busy until killed."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # running before the measured run starts
    return hog


def _enrich(lake: Path, into: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", f"duckdb://{lake}", "--sql", SQL,
                    "--key", "id", "--into", f"parquet://{into}", "--log-level", "WARNING"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=7_350)
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.rows), indent=2))
