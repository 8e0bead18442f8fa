"""Build the small demo lakehouse: a DuckDB file with `reviews` (texts) and `sales` (hourly series).

    python examples/make_lakehouse.py demo-out/lake.db
"""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

REVIEWS = [
    "A warm, funny and beautifully acted film. I loved every minute of it.",
    "The plot is a mess and the dialogue is painfully bad.",
    "One of the best thrillers of the year, tense and smart.",
    "I wanted to like it, but it's dull, slow and far too long.",
    "Gorgeous photography and a moving score make this a joy to watch.",
    "A lazy, predictable sequel that nobody asked for.",
    "The cast is terrific and the script is sharp and witty.",
    "Boring. I fell asleep halfway through.",
    "It isn't perfect, but it's charming and heartfelt.",
    "An ugly, cynical movie with nothing to say.",
    "A triumph: clever, generous and genuinely surprising.",
    "The jokes fall flat and the characters are paper-thin.",
    "Great fun for the whole family (the kids adored it!)",
    "Worst film I've seen in years; avoid it.",
    "Quietly devastating and superbly directed.",
    "Too many clichés and not a single memorable scene.",
    "What a delight 😍 — smart, fresh and very funny",
    "",
    None,
]

STORES = {"north": 120.0, "south": 80.0, "east": 45.0, "west": 200.0}
DAYS = 28
OUTAGE = ("south", 20 * 24 + 11, 3)  # a store, the hour its tills went down, for how many hours


def sales_table(seed: int = 7) -> pa.Table:
    """Hourly sales per store: a daily cycle, a weekend lift, a slight trend and noise, and one
    incident for anomaly_table to find (OUTAGE: sales near zero for a few hours)."""
    rng = np.random.default_rng(seed)
    hours = np.arange(DAYS * 24)
    ts = (np.datetime64("2026-10-01T00:00") + hours.astype("timedelta64[h]")).astype("datetime64[us]")
    daily = 1 + 0.6 * np.sin(2 * np.pi * (hours % 24 - 9) / 24)
    weekend = 1 + 0.25 * (((hours // 24) + 3) % 7 >= 5)
    columns = {"store": [], "ts": [], "amount": []}
    for store, level in STORES.items():
        trend = 1 + 0.004 * hours / 24
        amount = level * daily * weekend * trend * rng.lognormal(0, 0.06, len(hours))
        if store == OUTAGE[0]:
            amount[OUTAGE[1]:OUTAGE[1] + OUTAGE[2]] *= 0.1
        columns["store"] += [store] * len(hours)
        columns["ts"].append(ts)
        columns["amount"].append(np.round(amount, 2))
    return pa.table({
        "store": columns["store"],
        "ts": pa.array(np.concatenate(columns["ts"]), pa.timestamp("us")),
        "amount": np.concatenate(columns["amount"]),
    })


def make_lakehouse(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    reviews = pa.table({"id": pa.array(range(1, len(REVIEWS) + 1), pa.int64()), "review": REVIEWS})
    sales = sales_table()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE reviews AS SELECT * FROM reviews")
        con.execute("CREATE TABLE sales AS SELECT * FROM sales ORDER BY store, ts")
    return path


if __name__ == "__main__":
    print(make_lakehouse(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/lake.db")))
