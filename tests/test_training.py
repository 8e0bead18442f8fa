"""Training and evaluation from the command line, on small data the test makes."""
import json
import os
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow.flight as flight

from conftest import make_lake
from flight_lstm.training import train_from_source
from udfs.base import registry


def cli(*args, env=None):
    result = subprocess.run([sys.executable, "-m", "flight_lstm.cli", *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_on_lakehouse_data_then_query_the_new_model_by_name(tmp_path):
    lake = make_lake(tmp_path / "lake.db", hours=24 * 20)
    with duckdb.connect(lake) as con:
        con.execute("""CREATE TABLE labelled AS SELECT CASE WHEN i % 2 = 0 THEN 'good great fine ' || i ELSE 'bad awful poor ' || i END AS text,
                       (i % 2 = 0) AS label FROM range(300) t(i)""")
    models = tmp_path / "models"
    env = {"FLIGHT_LSTM_MODELS": str(models)}
    out = json.loads(cli("train", "sentiment", "--source", f"duckdb://{lake}", "--sql", "SELECT text, label FROM labelled",
                         "--name", "mine", "--epochs", "2", "--json", env=env))
    assert (out["name"], out["version"], out["kind"]) == ("mine", "1", "sentiment")
    assert "lake.db" in out["training"]["command"] and str(tmp_path) not in out["training"]["command"]
    # The forecaster in-process, with few steps per epoch so the test stays short.
    sql = "SELECT store, ts, amount FROM sales"
    first = train_from_source("forecast", f"duckdb://{lake}", sql, "shop", out_dir=models, epochs=1, steps_per_epoch=4)
    again = train_from_source("forecast", f"duckdb://{lake}", sql, "shop", out_dir=models, epochs=1, steps_per_epoch=4, seed=1)
    assert (first.version, again.version) == ("1", "2")
    listed = cli("models", env=env)
    assert "shop@1" in listed and "shop@2" in listed and "mine@1" in listed

    server = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}", "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        uri = server.stdout.readline().strip().rsplit(" on ", 1)[1]
        client = flight.connect(uri)
        sql = """SELECT store, forecast(list(amount ORDER BY ts), 6, 'shop@1') AS f, forecast(list(amount ORDER BY ts), 6, 'shop') AS g,
                        max(sentiment('good great', 'mine')) AS s FROM sales GROUP BY store"""
        info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
        rows = client.do_get(info.endpoints[0].ticket).read_all().to_pylist()
        assert len(rows) == 3 and all(len(r["f"]) == 6 and np.all(np.isfinite(r["f"])) for r in rows)
        assert any(r["f"] != r["g"] for r in rows)  # 'shop' is the latest version, 2
        assert rows[0]["s"] > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def _sst_folder(path):
    path.mkdir()
    pos = ["a great , moving film", "wonderful and warm", "it is n't bad at all", "-lrb- truly -rrb- fine work"]
    neg = ["a dull , lifeless mess", "awful and boring", "it is n't good", "bad \\/ worse"]
    lines = "sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in pos) + "".join(f"{t}\t0\n" for t in neg)
    for name in ("train.tsv", "dev.tsv", "train_phrases.tsv"):
        (path / name).write_text(lines)
    return path


def _m4_folder(path, n=6, length=400):
    path.mkdir()
    t = np.arange(length)
    rows = ['"V1",' + ",".join(f'"V{i + 2}"' for i in range(length))]
    for k in range(n):
        values = 50 + 10 * k + 20 * np.sin(2 * np.pi * t / 24)
        rows.append(f'"H{k + 1}",' + ",".join(f'"{v:.3f}"' for v in values))
    (path / "Hourly-train.csv").write_text("\n".join(rows) + "\n")
    return path


def test_evaluate_prints_metrics_beside_baselines(tmp_path):
    out = cli("evaluate", "sentiment", "--data", str(_sst_folder(tmp_path / "sst2")))
    assert "sentiment-bilstm@" in out and "VADER" in out and "majority class" in out
    assert "SST-5" not in out  # only the folder given is read


def test_sentiment_is_reported_beyond_movie_reviews_and_in_three_classes(tmp_path):
    from flight_lstm.evaluate import macro_f1, sentiment_report

    _sst_folder(tmp_path / "sst2")
    (tmp_path / "sst5").mkdir()
    (tmp_path / "sst5" / "dev.tsv").write_text("sentence\tlabel\na wonderful , moving film\t4\nthe film opens on a tuesday\t2\n"
                                               "a dull , lifeless mess\t0\nquite good\t3\n")
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "custrev.tsv").write_text("sentence\tlabel\nthe battery life is great\t1\nthe screen broke in a week\t0\n")
    rows = sentiment_report(tmp_path, "sst2-bilstm@4").to_pylist()
    assert {r["set"] for r in rows} == {"SST-2 dev", "SST-2 dev, raw text", "SST-5 dev, 3 classes", "customer reviews"}
    three = {r["method"]: r for r in rows if r["set"] == "SST-5 dev, 3 classes"}
    assert set(three) == {"sst2-bilstm@4", "VADER (lexicon)", "majority class"}
    assert three["sst2-bilstm@4"]["n"] == 4 and three["sst2-bilstm@4"]["macro_f1"] is not None
    # A model without a neutral class never says neutral: the factual sentence is always wrong for it.
    assert three["sst2-bilstm@4"]["accuracy"] <= 0.75
    assert all(r["macro_f1"] is None for r in rows if r["set"] != "SST-5 dev, 3 classes")
    # Macro-F1: each class's F1, averaged; a class never predicted scores 0.
    labels, predicted = np.array([0, 0, 1, 2]), np.array([0, 2, 2, 2])
    assert np.isclose(macro_f1(predicted, labels, 3), (2 / 3 + 0 + 2 * 1 / 4) / 3)
    # The default model trained on the reviews: its row says so, and the card's cross-validation joins it.
    reviews = {r["method"]: r for r in sentiment_report(tmp_path).to_pylist() if r["set"] == "customer reviews"}
    ref = registry().resolve("sentiment").ref
    assert set(reviews) == {f"{ref} (trained on this set)", f"{ref}, 5-fold cross-validation", "VADER (lexicon)",
                            "majority class"}
    assert reviews[f"{ref}, 5-fold cross-validation"]["n"] == 3775  # the card's figure, not these 2 sentences
    three = {r["method"]: r for r in sentiment_report(tmp_path).to_pylist() if r["set"] == "SST-5 dev, 3 classes"}
    assert three[ref]["accuracy"] == 1.0  # it says neutral for the factual sentence


def test_evaluate_forecast_on_a_small_m4_file(tmp_path):
    _m4_folder(tmp_path / "m4_hourly")
    out = cli("evaluate", "forecast", "--data", str(tmp_path), "--sets", "M4 Hourly", "--no-theta")
    lines = [line for line in out.splitlines() if "│" in line]
    assert any("m4-hourly-lstm@" in line for line in lines)
    assert any("seasonal naive" in line for line in lines) and any("Naive2" in line for line in lines)
    assert not any("tourism" in line for line in lines)  # no files: no row


def _tourism_folder(path, n=12, length=20):
    """Yearly series in the tourism competition's layout: ids, lengths, start years, values."""
    path.mkdir()
    rng = np.random.default_rng(0)
    history = [100 * (1 + 0.05 * np.arange(length + 4)) * rng.lognormal(0, 0.02, length + 4) for _ in range(n)]
    for name, part, first in (("yearly_in.csv", slice(0, length), 1990), ("yearly_oos.csv", slice(length, None), 1990 + length)):
        columns = [h[part] for h in history]
        rows = [[f"Y{k + 1}" for k in range(n)], [str(len(c)) for c in columns], [str(first)] * n]
        rows += [[f"{c[i]:.2f}" for c in columns] for i in range(len(columns[0]))]
        (path / name).write_text("\n".join(",".join(r) for r in rows) + "\n")
    return path


def test_train_a_shipped_forecaster_then_find_it_by_frequency(tmp_path):
    _tourism_folder(tmp_path / "tourism")
    models = tmp_path / "models"
    out = json.loads(cli("train", "forecast", "--freq", "yearly", "--data", str(tmp_path), "--out", str(models),
                         "--epochs", "1", "--json"))
    assert (out["name"], out["frequencies"]) == ("tourism-yearly-lstm", ["yearly"])
    assert out["training"]["command"].startswith("flight-lstm train forecast --freq yearly --data")
    sets = out["metrics"]["sets"]
    assert set(sets) == {"tourism yearly", "tourism yearly, out of sample"}
    assert {"model", "seasonal_naive", "naive2"} <= set(sets["tourism yearly"])
    found = cli("evaluate", "forecast", "--data", str(tmp_path), "--sets", "tourism yearly", "--no-theta",
                env={"FLIGHT_LSTM_MODELS": str(models)})
    assert "tourism-yearly-lstm@3" in found and "out of sample" in found
    assert out["training"]["interval_choice"]["sets"] == ["tourism yearly"]


def test_fine_tuning_from_a_shipped_model_beats_its_parent_on_the_data_it_was_tuned_for(tmp_path, caplog):
    """A shop open 9 to 5 (zero at night): the hourly model, fine-tuned briefly, learns it."""
    import logging

    rng = np.random.default_rng(0)
    t = np.arange(600)
    lake = tmp_path / "shop.db"
    with duckdb.connect(str(lake)) as con:
        con.execute("CREATE TABLE sales (store VARCHAR, ts BIGINT, amount DOUBLE)")
        for i in range(8):
            amount = np.where((t % 24 >= 9) & (t % 24 < 17), 100.0 + 10 * i, 0.0) + rng.normal(0, 2, len(t))
            con.executemany("INSERT INTO sales VALUES (?, ?, ?)", [(f"s{i}", int(k), float(v)) for k, v in zip(t, amount)])
    caplog.set_level(logging.WARNING, logger="flight_lstm.training")
    tuned = train_from_source("forecast", f"duckdb://{lake}", "SELECT store, ts, amount FROM sales", "shop",
                              out_dir=tmp_path / "models", parent="m4-hourly-lstm", epochs=3, steps_per_epoch=20)
    m = tuned.metrics
    assert m["parent"] == registry().resolve("forecast", "m4-hourly-lstm").ref and "--from m4-hourly-lstm" in tuned.training["command"]
    assert m["holdout_mase_model"] < m["holdout_mase_parent"] and m["holdout_mase_model"] < 1.1 * m["holdout_mase_seasonal_naive"]
    assert not caplog.records  # fine-tuning gets no advice
    scratch = train_from_source("forecast", f"duckdb://{lake}", "SELECT store, ts, amount FROM sales", "shop",
                                out_dir=tmp_path / "models", epochs=1, steps_per_epoch=4)
    assert "parent" not in scratch.metrics and "holdout_mase_model" in scratch.metrics
    assert "fine-tuning a shipped model (--from m4-hourly-lstm" in caplog.text  # 8 series: the notice
    refused = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "train", "forecast", "--data", str(tmp_path),
                              "--from", "m4-hourly-lstm"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "use it with --source and --sql" in refused.stderr


def test_fine_tuning_sentiment_grows_the_vocabulary_and_beats_its_parent_on_the_users_texts(tmp_path, caplog):
    """Support tickets, whose telling words (pending, escalated, lost) the movie-review model never saw."""
    import itertools
    import logging

    good = ["refund arrived", "ticket resolved", "replacement shipped", "issue fixed", "package delivered", "account restored"]
    bad = ["refund pending", "ticket escalated", "replacement backordered", "issue reopened", "package lost", "account locked"]
    tails = ["today", "this week", "again", "for order 42", "per the agent", "as promised"]
    rows = [(f"{p} {t}", 1) for p, t in itertools.product(good, tails)] + [(f"{p} {t}", 0) for p, t in itertools.product(bad, tails)]
    lake = tmp_path / "tickets.db"
    with duckdb.connect(str(lake)) as con:
        con.execute("CREATE TABLE t (text VARCHAR, label INTEGER)")
        con.executemany("INSERT INTO t VALUES (?, ?)", rows * 4)
    caplog.set_level(logging.WARNING, logger="flight_lstm.training")
    card = train_from_source("sentiment", f"duckdb://{lake}", "SELECT text, label FROM t", "tickets",
                             out_dir=tmp_path / "models", parent="sentiment-bilstm")
    parent = registry().load("sentiment", "sentiment-bilstm")
    assert card.metrics["parent"] == parent.card.ref
    assert card.metrics["selection_accuracy"] > card.metrics["selection_accuracy_parent"] + 0.1
    assert 0 <= card.metrics["selection_accuracy_vader"] <= 1  # the baselines beside it, on the same texts
    assert 0.5 <= card.metrics["selection_accuracy_majority_class"] < card.metrics["selection_accuracy"]
    assert card.training["vocab_size"] > card.training["parent_vocab_size"] == len(parent.vocab)  # its words added
    assert not caplog.records  # fine-tuning gets no advice; the same texts from scratch do
    train_from_source("sentiment", f"duckdb://{lake}", "SELECT text, label FROM t", "tickets",
                      out_dir=tmp_path / "models", epochs=1)
    assert "288 labelled texts is little" in caplog.text and "--from sentiment-bilstm" in caplog.text


def test_the_interval_scale_is_chosen_on_even_series_and_reported_on_odd_ones(tmp_path):
    """A shipped model's alpha_scale is chosen where its coverage is then not reported."""
    from dataclasses import replace

    from flight_lstm.evaluate import ValidationSet, score_set
    from flight_lstm.models import default_registry
    from flight_lstm.training import ALPHA_GRID, choose_alpha_scale

    model = default_registry().load("forecast", "m4-hourly-lstm")
    rng = np.random.default_rng(0)
    t = np.arange(400)
    series = [100 + 30 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 2 + k % 5, len(t)) for k in range(30)]
    history, actual = [s[:-48] for s in series], [s[-48:] for s in series]
    wild = [a if i % 2 == 0 else a * 100 for i, a in enumerate(actual)]  # odd series: way off
    made = ValidationSet("made", "hourly", 48, 24, 24, lambda data: (history, actual), interval_choice=True)

    choice = choose_alpha_scale(model, tmp_path, [made])
    coverage = choice["coverage"]
    assert choice["alpha_scale"] in ALPHA_GRID and model.config["alpha_scale"] == model.alpha_scale == choice["alpha_scale"]
    assert abs(coverage[str(choice["alpha_scale"])] - 0.95) == min(abs(c - 0.95) for c in coverage.values())
    assert list(coverage.values()) == sorted(coverage.values(), reverse=True)  # a larger scale, narrower bounds
    assert coverage[str(ALPHA_GRID[0])] > coverage[str(ALPHA_GRID[-1])]
    # The odd-numbered series neither choose nor escape the report.
    assert choose_alpha_scale(model, tmp_path, [replace(made, load=lambda data: (history, wild))]) == choice
    assert score_set(model, history, wild, made)["model"]["coverage_95"] < 0.05
    assert score_set(model, history, wild, replace(made, interval_choice=False))["model"]["coverage_95"] > 0.4
    # No files for its sets: the scale stays.
    assert choose_alpha_scale(model, tmp_path, [replace(made, load=lambda data: None)]) == {
        "alpha_scale": choice["alpha_scale"], "sets": []}
