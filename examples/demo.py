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

VIEW = "review_scores=SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label FROM reviews"

PLOT_SQL = """
SELECT store, ts, amount AS value, NULL::DOUBLE AS lo, NULL::DOUBLE AS hi, 'history' AS kind
FROM sales WHERE ts > (SELECT max(ts) FROM sales) - INTERVAL 72 HOUR
UNION ALL
SELECT store, ts, mean, lo, hi, 'forecast'
FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 48, level => 0.9)
ORDER BY store, ts
"""


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run(server, PLOT_SQL).to_pylist()
    stores = sorted({r["store"] for r in rows})
    fig, axes = plt.subplots(len(stores), 1, figsize=(10, 2.6 * len(stores)), sharex=True)
    for ax, store in zip(axes, stores):
        mine = [r for r in rows if r["store"] == store]
        past = [r for r in mine if r["kind"] == "history"]
        future = [r for r in mine if r["kind"] == "forecast"]
        ax.plot([r["ts"] for r in past], [r["value"] for r in past], color="black", lw=1, label="history")
        ax.plot([r["ts"] for r in future], [r["value"] for r in future], color="tab:blue", lw=1.5, label="forecast")
        ax.fill_between([r["ts"] for r in future], [r["lo"] for r in future], [r["hi"] for r in future],
                        color="tab:blue", alpha=0.25, label="90% interval")
        ax.set_title(f"sales, store {store}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


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
