"""The command line as a user runs it: real processes against a real server."""
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "flight_lstm.cli", *args], capture_output=True, text=True,
                          check=check, timeout=120)


def test_query_prints_a_table(server):
    out = cli("query", "--server", server, "SELECT id, sentiment_label(review) AS label FROM reviews ORDER BY id").stdout
    assert "label" in out and "positive" in out and "negative" in out


def test_query_writes_parquet_and_csv(server, tmp_path):
    sql = "SELECT store, forecast(list(amount ORDER BY ts), 4) AS f FROM sales GROUP BY store"
    cli("query", "--server", server, sql, "--output", str(tmp_path / "f.parquet"))
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.num_rows == 3 and all(len(v) == 4 for v in table.column("f").to_pylist())
    cli("query", "--server", server, "SELECT id, sentiment(review) AS s FROM reviews", "--output", str(tmp_path / "s.csv"))
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == '"id","s"'


def test_query_error_is_one_clean_line(server):
    result = cli("query", "--server", server, "DROP TABLE reviews", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "read-only" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_lists_both_shipped_models():
    out = cli("models").stdout
    assert "sentiment" in out and "forecast" in out


def test_demo_runs_end_to_end(tmp_path):
    """The main job, exactly as `make demo` runs it: lakehouse, server, queries, plot, stop."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "positive" in out and "negative" in out and "next_24h" in out
    assert "server stopped" in out
    png = tmp_path / "forecast.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_lets_a_running_query_finish_then_exits_zero(tmp_path):
    import os
    import threading
    import time

    import pyarrow.flight as flight

    from conftest import make_lake

    lake = make_lake(tmp_path / "lake.db")
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                               "--port", "0", "--grace-seconds", "60"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(temp)})
    uri = server.stdout.readline().strip().rsplit(" on ", 1)[1]
    client = flight.connect(uri)
    result = {}
    slow = "SELECT count(*) AS n, sum(length(sentiment(repeat('good ', 50) || range)::VARCHAR)) AS s FROM range(20000)"

    def query():
        result["n"] = client.do_get(flight.Ticket(slow.encode())).read_all().column("n")[0].as_py()

    worker = threading.Thread(target=query)
    worker.start()
    time.sleep(1.0)  # the query is running
    os.kill(server.pid, 15)
    worker.join(timeout=120)
    assert result.get("n") == 20000
    assert server.wait(timeout=60) == 0
    assert not list(temp.iterdir())  # its spill directory went with it


def test_serve_keeps_the_file_attached_for_keep_attached_seconds(tmp_path):
    import pyarrow.flight as flight

    from conftest import make_lake

    lake = make_lake(tmp_path / "lake.db")
    writer = [sys.executable, "-c", f"import duckdb; duckdb.connect({lake!r}).close()"]
    server = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                               "--port", "0", "--keep-attached", "600"], stdout=subprocess.PIPE, text=True)
    try:
        uri = server.stdout.readline().strip().rsplit(" on ", 1)[1]
        with flight.connect(uri) as client:
            assert client.do_get(flight.Ticket(b"SELECT count(*) AS n FROM reviews")).read_all().num_rows == 1
        held = subprocess.run(writer, capture_output=True, text=True)
        assert held.returncode != 0 and "lock" in held.stderr.lower()
        server.terminate()
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
    subprocess.run(writer, check=True)  # the server let go as it stopped
    bad = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                          "--keep-attached", "-1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--keep-attached" in bad.stderr


def test_models_that_fail_to_load_stop_the_server_at_start(tmp_path):
    from conftest import make_lake

    lake = make_lake(tmp_path / "lake.db")
    from udfs.base import registry

    default = registry().resolve("sentiment")  # shadowed by a broken copy, searched first
    broken = tmp_path / "models" / default.name / default.version
    broken.mkdir(parents=True)
    (broken / "card.json").write_text(
        f'{{"name": "{default.name}", "version": "{default.version}", "kind": "sentiment", "created": "x"}}')
    (broken / "model.pt").write_bytes(b"not a model")
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}", "--port", "0"],
                            capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "FLIGHT_LSTM_MODELS": str(tmp_path / "models"),
                                 "TMPDIR": str(temp)})
    assert result.returncode != 0 and "models failed to load" in result.stderr
    assert not list(temp.iterdir())  # a server that never started leaves no spill directory behind


def test_backtest_prints_a_row_per_series_and_a_verdict(lake):
    out = cli("backtest", "--source", f"duckdb://{lake}", "--sql", "SELECT store, ts, amount FROM sales",
              "--horizon", "12", "--origins", "2").stdout
    assert "seasonal_naive_mase" in out and "│ a " in out.replace("│ a  ", "│ a ")
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("beats seasonal naive on ") and " of 3 series; median MASE " in verdict


def test_sentiment_backtest_reports_accuracy_confusion_and_calibration(tmp_path):
    import duckdb
    import json

    lake = tmp_path / "labelled.db"
    with duckdb.connect(str(lake)) as con:
        con.execute("CREATE TABLE r AS SELECT * FROM (VALUES ('a wonderful , moving film', 'positive'), "
                    "('dull and lifeless', 'negative'), ('one of the best films of the year', 'positive'), "
                    "('awful script , terrible acting', 'negative')) t(text, label)")
    report = json.loads(cli("backtest", "sentiment", "--source", f"duckdb://{lake}", "--sql", "SELECT text, label FROM r").stdout)
    assert report["texts"] == 4 and report["model"]["accuracy"] == 1.0 and "vader" in report
    assert sum(report["model"]["confusion"].values()) == 4 and len(report["calibration"]) == 5


def test_plot_draws_a_forecast_and_anomalies_and_refuses_an_unknown_picture_type(lake, tmp_path):
    out = cli("plot", "forecast", "--source", f"duckdb://{lake}", "--table", "sales", "--key", "store", "--ts", "ts",
              "--value", "amount", "--horizon", "12", "--out", str(tmp_path / "f.png")).stdout.strip()
    assert out == str(tmp_path / "f.png") and (tmp_path / "f.png").stat().st_size > 10_000
    svg = cli("plot", "anomalies", "--source", f"duckdb://{lake}", "--table", "sales", "--key", "store", "--ts", "ts",
              "--value", "amount", "--panels", "2", "--out", str(tmp_path / "a.svg")).stdout.strip()
    text = Path(svg).read_text()
    assert text.count('<g id="axes_') == 2 and "anomaly-lstm@" in text
    bad = cli("plot", "forecast", "--source", f"duckdb://{lake}", "--table", "sales", "--ts", "ts", "--value",
              "amount", "--out", str(tmp_path / "f.jpg"), check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == "error: a picture is written as .png or .svg, not .jpg"
    assert "Traceback" not in bad.stderr
