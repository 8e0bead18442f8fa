"""A new user's first hour (issue #22): threads sized to the CPUs the process may use, `serve`
checking what it can at start, and every mistake answered in a line that says what to do, never
a traceback. Real processes, as a user runs them."""
import json
import os
import socket
import subprocess
import sys
import threading

import duckdb
import pyarrow.flight as flight
import pytest

from flight_lstm import threads
from flight_lstm.server import FlightLSTMServer
from flight_lstm.service import Service
from flight_lstm.sinks.iceberg import CATALOG_FILE, CATALOG_NAME
from flight_lstm.sources.duckdb import DuckDBSource


def cli(*args, stdin=None, env=None):
    """A `flight-lstm` run; its output must never hold a traceback, whatever the exit code."""
    result = subprocess.run([sys.executable, "-m", "flight_lstm.cli", *args], capture_output=True, text=True,
                            timeout=180, stdin=stdin, env={**os.environ, **(env or {})})
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    return result


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if " INFO " not in line and " WARNING " not in line]


# -- threads -----------------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: `cpus(n)` sets the affinity, `cgroup(line, files)` the cgroup and its files."""
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(threads, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    (tmp_path / "cgroup").mkdir()

    class Machine:
        def cpus(self, n):
            monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

        def cgroup(self, line, files):
            (tmp_path / "proc-self-cgroup").write_text(line + "\n")
            for name, text in files.items():
                path = tmp_path / "cgroup" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text + "\n")

    return Machine()


def test_cgroup_v2_quota_caps_the_affinity_and_torch_leaves_one_cpu(machine):
    machine.cpus(8)
    machine.cgroup("0::/app/worker", {"app/worker/cpu.max": "max 100000", "app/cpu.max": "400000 100000",
                                      "cpu.max": "max 100000"})
    assert threads.cgroup_cpus() == 4.0  # a parent's quota binds its children
    assert threads.plan() == threads.Threads(cpus=4, torch=3, duckdb=4,
                                             why="4 CPUs: affinity 8, cgroup CPU quota 4")


def test_a_fractional_quota_rounds_down_but_never_below_one(machine):
    machine.cpus(8)
    machine.cgroup("0::/", {"cpu.max": "150000 100000"})
    assert threads.plan().cpus == 1 and threads.plan().torch == 1
    machine.cgroup("0::/", {"cpu.max": "50000 100000"})
    assert threads.plan().cpus == 1


def test_the_affinity_caps_a_larger_quota_and_no_quota_means_the_affinity(machine):
    machine.cpus(2)
    machine.cgroup("0::/", {"cpu.max": "800000 100000"})
    assert threads.plan().cpus == 2
    machine.cgroup("0::/", {"cpu.max": "max 100000"})
    assert threads.cgroup_cpus() is None and threads.plan().cpus == 2


def test_cgroup_v1_quota_found_at_the_mount_when_the_host_path_is_not_there(machine):
    machine.cpus(16)
    machine.cgroup("4:cpu,cpuacct:/docker/0123abc", {"cpu,cpuacct/cpu.cfs_quota_us": "300000",
                                                     "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert threads.cgroup_cpus() == 3.0 and threads.plan().torch == 2
    machine.cgroup("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert threads.cgroup_cpus() is None and threads.plan().cpus == 16


def test_threads_given_override_what_is_found_and_must_be_positive(machine):
    machine.cpus(8)
    machine.cgroup("0::/", {"cpu.max": "100000 100000"})
    assert threads.plan(3) == threads.Threads(cpus=3, torch=2, duckdb=3, why="--threads 3")
    with pytest.raises(ValueError, match="1 or more"):
        threads.plan(0)


@pytest.fixture
def fresh_plan(monkeypatch):
    """This test's own plan; torch's threads and the process's plan are put back after it."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_planned", None)
    monkeypatch.setattr(threads, "_torch_sized", False)
    yield
    torch.set_num_threads(before)


def test_size_gives_torch_and_a_new_engine_their_share(fresh_plan, lake):
    import torch

    threads.size(3)
    assert torch.get_num_threads() == 2
    service = Service(DuckDBSource(lake))
    assert service.engine.db.execute("SELECT current_setting('threads')").fetchall() == [(3,)]


def test_the_operators_alone_size_torch_at_their_first_model_load():
    """No entry point ran: the first model load sizes torch (here for 5 CPUs: 4, not torch's 2)."""
    code = ("import os, torch; os.sched_getaffinity = lambda pid: set(range(5)); "
            "import flight_lstm.threads as t; t.cgroup_cpus = lambda: None; "
            "import pyarrow as pa; from udfs import sentiment; sentiment(pa.array(['a fine film'])); "
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=120)
    assert out.stdout.strip() == "4"


def test_entry_points_log_their_threads(reviews_lake, tmp_path):
    run = cli("enrich", "--source", reviews_lake, "--sql", "SELECT id, sentiment(review) AS s FROM reviews",
              "--key", "id", "--into", f"parquet://{tmp_path}/out", "--dry-run", "--threads", "3")
    assert run.returncode == 0, run.stderr
    assert "threads: torch 2, DuckDB 3 (--threads 3)" in run.stderr
    train = cli("train", "sentiment", "--data", str(tmp_path / "none"), "--threads", "1")
    assert "threads: torch 1, DuckDB 1 (--threads 1)" in train.stderr


# -- serve checks at start ---------------------------------------------------------------------------


def test_serve_refuses_a_missing_duckdb_file_unless_told_it_will_appear(tmp_path):
    missing = tmp_path / "nope.db"
    result = cli("serve", "--source", f"duckdb://{missing}", "--port", "0")
    assert result.returncode == 1 and "serving" not in result.stdout
    assert error_lines(result) == ["error: the source cannot be opened: DuckDB file nope.db does not exist. "
                                   "Check --source, or pass --allow-missing if it will appear later"]
    server = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{missing}",
                               "--port", "0", "--allow-missing"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("flight-lstm serving duckdb:nope.db on grpc://")
        client = flight.connect(line.strip().rsplit(" on ", 1)[1])

        def health() -> dict:
            return json.loads(next(client.do_action(flight.Action("health", b""))).body.to_pybytes())

        assert health()["status"] == "unavailable"  # ready only once the source opens
        duckdb.connect(str(missing)).close()
        assert health()["status"] == "ok"
    finally:
        server.terminate()
        server.wait(60)
    assert "cannot be opened yet" in server.stderr.read()


def test_serve_plans_every_view_at_start(lake):
    result = cli("serve", "--source", f"duckdb://{lake}", "--port", "0",
                 "--view", "ok=SELECT id FROM reviews", "--view", "bad=SELECT idd FROM reviews")
    assert result.returncode == 1 and "serving" not in result.stdout
    [line] = error_lines(result)
    assert line.startswith("error: --view bad: ") and 'Candidate bindings: "id"' in line


def test_serve_on_a_port_in_use_says_so_in_one_line(lake):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("serve", "--source", f"duckdb://{lake}", "--port", str(port))
    assert result.returncode == 1
    assert error_lines(result) == [f"error: port {port} on 127.0.0.1 is in use by another program: stop it or "
                                   "choose another --port"]


# -- mistakes in train and query ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("training") / "lake.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE reviews AS SELECT 'a good film number ' || i AS text, i % 3 AS stars, "
                    "i % 2 = 0 AS liked FROM range(80) t(i)")
        con.execute("CREATE TABLE sales AS SELECT 'a' AS store, TIMESTAMP '2026-01-01' + INTERVAL (i) HOUR AS ts, "
                    "i::DOUBLE AS amount FROM range(30) t(i)")
    return f"duckdb://{path}"


@pytest.mark.parametrize("kind, sql, expected", [
    ("sentiment", "SELECT text, stars FROM reviews", "error: sentiment labels must be 0/1 or boolean"),
    ("sentiment", "SELECT txt, liked FROM reviews", 'Candidate bindings: "text"'),
    ("forecast", "SELECT store, ts, amount FROM sales", "error: every series is too short to train on: the longest, "
                                                        "'a', has 30 points, and a series needs at least 193"),
])
def test_train_mistakes_are_one_line_that_says_what_to_fix(training_lake, tmp_path, kind, sql, expected):
    result = cli("train", kind, "--source", training_lake, "--sql", sql, "--name", "mine", "--out", str(tmp_path))
    assert result.returncode == 1
    assert expected in error_lines(result)[0]
    assert not list(tmp_path.iterdir())  # nothing registered


def test_train_prints_a_short_summary_and_keeps_the_card_on_disk(training_lake, tmp_path):
    result = cli("train", "sentiment", "--source", training_lake, "--sql", "SELECT text, liked FROM reviews",
                 "--name", "mine", "--out", str(tmp_path), "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("registered mine@1 (sentiment) in ") and len(lines) <= 3 and "{" not in result.stdout
    card = tmp_path / "mine" / "1" / "card.json"
    assert lines[-1].startswith(f"card: {card}") and json.loads(card.read_text())["training"]["epochs_run"] == 1
    progress = [line for line in result.stderr.splitlines() if "epoch 1/1" in line]
    assert progress and "(dev error, lower is better)" in progress[0] and " left " in progress[0]


def test_query_user_without_a_terminal_or_password_says_how_to_give_one():
    env = {k: v for k, v in os.environ.items() if k != "FLIGHT_LSTM_PASSWORD"}
    result = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "query", "--server", "grpc://127.0.0.1:1",
                             "--user", "ann", "SELECT 1"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: --user ann needs a password: set FLIGHT_LSTM_PASSWORD, or run in a "
                                     "terminal to be asked")


# -- TLS mistakes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(lake, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "server.key", folder / "server.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = FlightLSTMServer(Service(DuckDBSource(lake)), "grpc+tls://127.0.0.1:0",
                              tls_certificates=[flight.CertKeyPair(cert.read_bytes(), key.read_bytes())])
    threading.Thread(target=server.serve, daemon=True).start()
    yield f"127.0.0.1:{server.port}", cert
    server.shutdown()


def test_plain_grpc_against_a_tls_server_suggests_grpc_tls(tls_server):
    address, _ = tls_server
    result = cli("query", "--server", f"grpc://{address}", "SELECT 1")
    assert result.returncode == 1
    assert f"connect with grpc+tls://{address}" in result.stderr
    assert "absl" not in result.stderr and "ssl_transport_security" not in result.stderr


def test_tls_without_the_ca_suggests_tls_ca_and_with_it_works(tls_server):
    address, cert = tls_server
    result = cli("query", "--server", f"grpc+tls://{address}", "SELECT 1")
    assert result.returncode == 1
    assert "could not verify the server's certificate" in result.stderr and "--tls-ca" in result.stderr
    assert "absl" not in result.stderr
    assert cli("query", "--server", f"grpc+tls://{address}", "--tls-ca", str(cert), "SELECT 41 + 1 AS n").returncode == 0
    key_instead = cli("query", "--server", f"grpc+tls://{address}", "--tls-ca", str(cert.with_suffix(".key")), "SELECT 1")
    assert key_instead.returncode == 1 and "holds no PEM certificate" in key_instead.stderr


def test_tls_against_a_plain_server_suggests_grpc(server):
    address = server.split("://", 1)[1]
    result = cli("query", "--server", f"grpc+tls://{address}", "SELECT 1")
    assert result.returncode == 1 and f"does not speak TLS: connect with grpc://{address}" in result.stderr


# -- Iceberg -----------------------------------------------------------------------------------------


def test_enrich_into_iceberg_creates_the_warehouse_and_pyiceberg_reads_it_back(reviews_lake, tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog

    warehouse = tmp_path / "not" / "yet" / "warehouse"
    result = cli("enrich", "--source", reviews_lake, "--sql", "SELECT id, sentiment(review) AS s FROM reviews",
                 "--key", "id", "--into", f"iceberg://{warehouse}/lake.scored")
    assert result.returncode == 0, result.stderr[-2000:]
    catalog = SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{warehouse / CATALOG_FILE}", warehouse=warehouse.as_uri())
    table = catalog.load_table("lake.scored").scan().to_arrow()
    assert table.num_rows == 60 and {"id", "s", "_model"} <= set(table.column_names)


# -- rough edges -------------------------------------------------------------------------------------


def test_version():
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"flight-lstm {version('flight-lstm')}"


def test_models_prints_a_table_not_dicts():
    result = cli("models")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "kind", "frequencies", "created", "scores"]
    assert any(line.startswith("sentiment-bilstm@") and " * " in line and "accuracy" in line for line in lines)
    assert "{" not in result.stdout


def test_query_output_follows_the_extension(server, tmp_path):
    sql = "SELECT id, sentiment_label(review) AS label FROM reviews WHERE review IS NOT NULL ORDER BY id LIMIT 3"
    result = cli("query", "--server", server, sql, "--output", str(tmp_path / "scores.json"))
    assert result.returncode == 0
    rows = json.loads((tmp_path / "scores.json").read_text())
    assert [r["id"] for r in rows] == [0, 1, 2] and {r["label"] for r in rows} <= {"positive", "neutral", "negative"}
    refused = cli("query", "--server", server, sql, "--output", str(tmp_path / "scores.txt"))
    assert refused.returncode == 1 and ".parquet, .csv, .json" in refused.stderr
    assert not (tmp_path / "scores.txt").exists()


def test_enrich_without_a_jobs_file_names_the_missing_options(reviews_lake):
    result = cli("enrich", "--source", reviews_lake, "--sql", "SELECT id FROM reviews", "--into", "x4")
    assert result.returncode == 2
    assert error_lines(result) == ["error: enrich needs --source, --sql, --key and --into (or --jobs FILE); "
                                   "missing --key"]
