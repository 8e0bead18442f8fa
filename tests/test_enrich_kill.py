"""Exactly once under SIGKILL: real `flight-lstm enrich` processes killed at seeded random points
(after a random number of committed chunks, plus a random delay, so kills land mid-score and
mid-commit), then run again; every key ends in the target exactly once and no reader ever sees
part of a chunk."""
from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from enrichment import CHUNK, check_whole_chunks, kill_after_commits, make_reviews
from flight_lstm.sinks import open_sink

ROWS, KILLS = 320, 3  # enough chunks of CHUNK that a kill lands before the run can finish
SQL = "SELECT id, review, sentiment(review) AS sentiment FROM reviews"


def enrich(lake: str, into: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", lake, "--sql", SQL, "--key", "id",
         "--into", into, "--chunk-rows", str(CHUNK)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def test_killed_runs_resume_to_every_key_exactly_once(tmp_path):
    """The three targets' kill-and-rerun chains run side by side: most of each run is start-up."""
    targets = ["duckdb", "parquet", "iceberg"]
    with ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(lambda t: kill_and_resume(tmp_path / t, t), targets))


def kill_and_resume(tmp_path, target: str) -> None:
    tmp_path.mkdir()
    lake = make_reviews(tmp_path / "lake.db", ROWS)
    (tmp_path / "wh").mkdir()
    into = {"duckdb": "reviews_scored", "parquet": f"parquet://{tmp_path}/scored",
            "iceberg": f"iceberg://{tmp_path}/wh/lake.scored"}[target]
    rng = random.Random(f"kill-{target}")
    written, kills, unkilled = 0, 0, []
    for _ in range(KILLS):
        process = enrich(lake, into)
        killed = kill_after_commits(process, rng.randint(1, 2), rng.uniform(0.0, 0.05))
        kills += killed
        unkilled += [] if killed else [(process.returncode, process.last_lines)]
        now = check_whole_chunks(lake, into)
        assert now >= written  # committed progress is kept
        written = now
    assert kills >= 2 and written < ROWS, (target, kills, written, unkilled)
    final = enrich(lake, into)
    final.communicate(timeout=120)
    assert final.returncode == 0
    assert check_whole_chunks(lake, into) == ROWS
    ids = sorted(open_sink(into, source_uri=lake).read(["id"]).column("id").to_pylist())
    assert ids == list(range(ROWS))
    if target == "parquet":
        assert not list((tmp_path / "scored").glob(".pending-*"))
