"""`make demo`: build a demo lakehouse, serve it, run the example SQL over Flight, plot a forecast.

    python examples/demo.py --workdir demo-out
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.flight as flight

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import datasets, health, run  # noqa: E402
from make_lakehouse import make_lakehouse  # noqa: E402

from flight_lstm import plot  # noqa: E402
from flight_lstm.models import default_registry  # noqa: E402

VIEW = "review_scores=SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label FROM reviews"
LEVEL = 0.95  # forecast_table's default


def start_server(lake: Path) -> tuple[subprocess.Popen, str]:
    """Start `flight-lstm serve` on a free port and wait until its health action answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}", "--port", "0",
         "--view", VIEW, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if " on grpc://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    server = line.strip().rsplit(" on ", 1)[1]
    for _ in range(100):
        try:
            if health(server)["status"] == "ok":
                return proc, server
        except flight.FlightError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become healthy")


def example_queries(path: Path) -> list[tuple[str, str]]:
    """(title, sql) pairs: blocks separated by blank lines, each led by a `-- title` line."""
    blocks = [b.strip() for b in path.read_text().split("\n\n") if b.strip()]
    return [(b.splitlines()[0].lstrip("- "), "\n".join(b.splitlines()[1:]).rstrip(";")) for b in blocks]


def plot_forecast(server: str, png: Path) -> Path:
    """The last three days of each store and the next 48 hours, at forecast_table's default level."""
    history = run(server, plot.history_sql("sales", "store", "ts", "amount", 72))
    forecast = run(server, plot.forecast_sql("sales", "store", "ts", "amount", 48, LEVEL))
    model = default_registry().resolve("forecast", "hourly").ref  # what forecast_table picks for hourly sales
    return plot.draw_forecast(history, forecast, png, title=f"sales: {model}, 48 hours ahead, {LEVEL:.0%} interval",
                              ts="ts", value="amount", level=LEVEL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("demo-out"))
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    lake = make_lakehouse(workdir / "lake.db")
    print(f"demo lakehouse: {lake}")
    proc, server = start_server(lake)
    try:
        print(f"server: {server}; datasets: {', '.join(datasets(server))}\n")
        for title, sql in example_queries(HERE / "queries.sql"):
            print(f"-- {title}\n{sql}")
            duckdb.from_arrow(run(server, sql)).show(max_rows=40, max_width=150)
            print()
        print(f"forecast plot: {plot_forecast(server, workdir / 'forecast.png')}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
