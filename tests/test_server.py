"""The Flight server end to end on a loopback port: real DuckDB file, real client."""
import gc
import json
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import REVIEWS, run
from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.engine import Engine
from flight_lstm.plan import Catalog, Plan
from flight_lstm.server.cancels import Cancels, ending
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from udfs import OPERATORS, sentiment, sentiment_probs


def test_sentiment_query_matches_the_operator(client):
    table = run(client, "SELECT id, review, sentiment(review) AS s, sentiment_label(review) AS l, "
                        "sentiment_probs(review) AS p FROM reviews ORDER BY id")
    assert table.column("id").to_pylist() == list(range(len(REVIEWS)))
    expected = sentiment(pa.array(REVIEWS)).to_pylist()
    got = table.column("s").to_pylist()
    assert [g is None for g in got] == [e is None for e in expected]
    np.testing.assert_allclose([g for g in got if g is not None], [e for e in expected if e is not None], atol=1e-9)
    for got_p, want_p in zip(table.column("p").to_pylist(), sentiment_probs(pa.array(REVIEWS)).to_pylist()):
        assert got_p == want_p or got_p == pytest.approx(want_p, abs=1e-9)
    for s, label, p in zip(got, table.column("l").to_pylist(), table.column("p").to_pylist()):
        assert label == (None if s is None else max(p, key=p.get))


def test_sentiment_probs_take_a_model_and_compose_as_a_struct(client):
    table = run(client, "SELECT id, sentiment_probs(review, 'sst2-bilstm@4').neutral AS n, "
                        "sentiment_label(review, 'sst2-bilstm@4') AS l FROM reviews ORDER BY id")
    pairs = [(n, label) for n, label in zip(table.column("n").to_pylist(), table.column("l").to_pylist())]
    assert all((n is None) == (label is None) for n, label in pairs)
    assert {n for n, _ in pairs if n is not None} == {0.0} and "neutral" not in {label for _, label in pairs}
    counted = run(client, "SELECT count(*) AS c FROM reviews WHERE sentiment_probs(review).positive > 0.5")
    positive = [p for p in sentiment_probs(pa.array(REVIEWS)).to_pylist() if p is not None and p["positive"] > 0.5]
    assert counted.column("c").to_pylist() == [len(positive)]


def test_forecast_per_series_in_one_query(client):
    table = run(client, "SELECT store, forecast(list(amount ORDER BY ts), 24) AS f FROM sales GROUP BY store ORDER BY store")
    assert table.column("store").to_pylist() == ["a", "b", "c"]
    means = [np.mean(v) for v in table.column("f").to_pylist()]
    assert all(len(v) == 24 for v in table.column("f").to_pylist())
    assert means[0] < means[1] < means[2]  # store levels are 100, 200, 300


def test_forecast_interval_unnests_to_rows(client):
    table = run(client, """
        SELECT store, f.step, f.mean, f.lo, f.hi FROM (
            SELECT store, unnest(forecast_interval(list(amount ORDER BY ts), 5, 0.95)) AS f
            FROM sales GROUP BY store) ORDER BY store, f.step""")
    assert table.num_rows == 15
    rows = table.to_pylist()
    assert all(r["lo"] <= r["mean"] <= r["hi"] for r in rows)


@pytest.mark.parametrize("sql", [
    "WITH sales AS (SELECT * FROM sales WHERE store = 'a') SELECT count(*) AS n FROM sales",
    "WITH RECURSIVE reviews AS (SELECT * FROM reviews WHERE id < 3) SELECT count(*) AS n FROM reviews",
    "WITH a AS (SELECT * FROM sales), sales AS (SELECT 1 AS x) SELECT count(*) AS n FROM a",
    "SELECT count(*) AS n FROM reviews WHERE id IN (WITH reviews AS (SELECT 1 AS id) SELECT id FROM reviews)",
    # round 29: under RECURSIVE only a UNION's last part (not BY NAME) reads the CTE itself
    "WITH RECURSIVE sales AS (SELECT 1 AS n UNION ALL BY NAME SELECT count(*) AS n FROM sales) SELECT sum(n) AS n FROM sales",
    "WITH RECURSIVE sales AS (SELECT count(*) AS n FROM sales UNION ALL SELECT 2) SELECT sum(n) AS n FROM sales",
])
def test_a_cte_named_as_a_table_reads_the_table_where_duckdb_does(client, lake, sql):
    """Round 28: a name any CTE had anywhere in the query was taken for that CTE, so a query whose
    only table a CTE of its name filters (`WITH sales AS (SELECT * FROM sales ...)`) never attached
    the source and failed ("Circular reference to CTE"). Names resolve as DuckDB resolves them."""
    with duckdb.connect(lake, read_only=True) as con:
        expected = con.sql(sql).fetchall()[0][0]
    assert run(client, sql).column("n").to_pylist() == [expected] and expected > 0


def test_a_view_is_inlined_where_no_cte_of_its_name_answers(lake):
    """Round 29: a CTE of a view's name anywhere in the query kept the view out everywhere (the outer
    `v` then named no table); and a quoted file-like name passed the file check where a CTE of that
    name existed anywhere."""
    service = Service(DuckDBSource(lake), views={"v": "SELECT id FROM reviews"})
    try:
        schema, batches = service.stream(service.plan(
            "SELECT count(*) AS n FROM v, (WITH v AS (SELECT 5 AS y) SELECT * FROM v) w"))
        assert [r["n"] for b in batches for r in b.to_pylist()] == [len(REVIEWS)]
        # round 30: a CTE of the query's own WITH named as the view, reading it
        for sql, n in [("WITH v AS (SELECT count(*) AS n FROM v) SELECT v.n FROM v", len(REVIEWS)),
                       ("WITH w AS (SELECT max(v.id) AS m FROM v), v AS (SELECT m + 1 AS n FROM w) SELECT n FROM v",
                        len(REVIEWS))]:
            schema, batches = service.stream(service.plan(sql))
            assert [r["n"] for b in batches for r in b.to_pylist()] == [n]
        with pytest.raises(QueryRefused, match="file by its path"):
            service.plan('SELECT * FROM "x.csv", (WITH "x.csv" AS (SELECT 1 AS a) SELECT a FROM "x.csv") w')
    finally:
        service.close()


def test_flight_info_schema_matches_stream(client):
    sql = "SELECT id, sentiment(review) AS s FROM reviews"
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
    assert info.schema.names == ["id", "s"] and info.schema.field("s").type == pa.float64()
    assert len(info.endpoints) == 1
    assert client.do_get(info.endpoints[0].ticket).read_all().schema.equals(info.schema)
    assert client.get_schema(flight.FlightDescriptor.for_command(sql)).schema.equals(info.schema)


def test_results_stream_in_bounded_batches(client):
    reader = client.do_get(flight.Ticket(b"SELECT range AS i, sentiment('good ' || range) AS s FROM range(5000)"))
    sizes = [chunk.data.num_rows for chunk in reader]
    assert sum(sizes) == 5000 and len(sizes) >= 5 and max(sizes) <= 1000


def test_list_flights_lists_tables_and_views(client):
    infos = {"/".join(p.decode() for p in i.descriptor.path): i for i in client.list_flights()}
    assert {"reviews", "sales", "scored"} <= set(infos)
    assert infos["scored"].schema.names == ["id", "review", "score"]


def test_view_by_path_and_by_name_in_sql(client):
    info = client.get_flight_info(flight.FlightDescriptor.for_path("scored"))
    by_path = client.do_get(info.endpoints[0].ticket).read_all()
    assert by_path.num_rows == len(REVIEWS)
    by_sql = run(client, "SELECT count(*) AS n FROM scored WHERE score > 0")
    assert by_sql.column("n")[0].as_py() == sum(1 for s in by_path.column("score").to_pylist() if s and s > 0)


def test_actions_health_and_models(client):
    health = json.loads(next(iter(client.do_action(flight.Action("health", b"")))).body.to_pybytes())
    assert health["status"] == "ok" and health["views"] == ["scored"]
    models = json.loads(next(iter(client.do_action(flight.Action("models", b"")))).body.to_pybytes())
    assert {m["kind"] for m in models} == {"sentiment", "forecast", "anomaly"}
    assert {t for t, _ in client.list_actions()} >= {"health", "models"}


@pytest.mark.parametrize("sql, error, words", [
    ("SELEC 1", pa.ArrowInvalid, "syntax error"),
    ("SELECT * FROM nowhere", pa.ArrowInvalid, "nowhere"),
    ("SELECT no_such_fn(review) FROM reviews", pa.ArrowInvalid, "no_such_fn"),
    ("SELECT sentiment(42) FROM reviews", pa.ArrowInvalid, "sentiment"),
    ("SELECT forecast(list(amount ORDER BY ts), 0) FROM sales", pa.ArrowInvalid, "horizon"),
    ("SELECT forecast(list(amount ORDER BY ts), 100000000) FROM sales", pa.ArrowInvalid, "horizon"),
    ("SELECT sentiment(review, 'no-such-model') FROM reviews", pa.ArrowInvalid, "no-such-model"),
    ("DROP TABLE reviews", flight.FlightUnauthorizedError, "read-only"),
    ("SELECT * FROM read_csv('/etc/passwd')", flight.FlightUnauthorizedError, "read_csv"),
    ("SELECT 1; SELECT 2", flight.FlightUnauthorizedError, "one statement"),
])
def test_bad_queries_get_clear_errors_and_the_server_keeps_serving(client, sql, error, words):
    with pytest.raises(error, match=words) as caught:
        run(client, sql)
    assert "Traceback" not in str(caught.value) and "File " not in str(caught.value)
    assert run(client, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == len(REVIEWS)


def test_bad_ticket_bytes_are_an_error(client):
    with pytest.raises(pa.ArrowInvalid, match="UTF-8"):
        client.do_get(flight.Ticket(b"\xff\xfe")).read_all()


def test_edge_inputs_have_defined_answers(client):
    table = run(client, """SELECT sentiment(NULL::VARCHAR) AS a, sentiment('') AS b, sentiment(repeat('bad ', 250000)) AS c,
                                  forecast([]::DOUBLE[], 3) AS d, forecast([1.0], 3) AS e, forecast([1.0, 'nan'::DOUBLE, 3.0], 2) AS f,
                                  forecast(NULL::DOUBLE[], 3) AS g, forecast([1, 2, 3], 2) AS h""")
    row = table.to_pylist()[0]
    assert row["a"] is None and row["b"] is None and -1 <= row["c"] < 0
    assert row["d"] is None and row["g"] is None
    assert len(row["e"]) == 3 and len(row["f"]) == 2 and len(row["h"]) == 2
    assert all(np.isfinite(row["e"] + row["f"] + row["h"]))


def test_engine_refuses_file_access_even_if_the_planner_missed_it(lake):
    engine = Engine(DuckDBSource(lake), OPERATORS)
    for sql in ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('/etc/*')"]:
        with pytest.raises(QueryRefused):
            engine.schema(Plan(sql, (), frozenset()))
    schema, batches = engine.stream(Plan("SELECT count(*) FROM reviews", ("reviews",), frozenset()))
    assert sum(b.num_rows for b in batches) == 1


def test_engine_cannot_write_the_source(lake):
    engine = Engine(DuckDBSource(lake), OPERATORS)
    plan = Plan("", ("reviews",), frozenset())
    con = engine.connect(plan)
    try:
        with pytest.raises(Exception, match="read-only"):
            con.execute("CREATE TABLE lake.main.x (a INT)")
        with pytest.raises(Exception, match="locked"):
            con.execute("SET enable_external_access = true")
    finally:
        engine.release(con, plan)


def test_locked_file_is_unavailable_then_serves_again(tmp_path):
    from conftest import make_lake, start_server
    from flight_lstm.service import Service

    path = make_lake(tmp_path / "busy.db")
    srv, uri = start_server(Service(DuckDBSource(path)))
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb,sys; c=duckdb.connect({path!r}); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "held"
        with flight.connect(uri) as c:
            with pytest.raises(flight.FlightUnavailableError, match="locked"):
                run(c, "SELECT count(*) FROM reviews")
            writer.stdin.close()
            writer.wait(timeout=30)
            assert run(c, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == len(REVIEWS)
    finally:
        writer.kill()
        srv.shutdown()


def _drain(engine: Engine, sql: str = "SELECT count(*) AS n FROM reviews") -> int:
    schema, batches = engine.stream(Plan(sql, ("reviews",), frozenset()))
    return pa.Table.from_batches(list(batches), schema).column(0)[0].as_py()


def _counting_attaches(source: DuckDBSource, monkeypatch) -> list:
    opened = []
    real_attach = source._attach
    monkeypatch.setattr(source, "_attach", lambda con: (opened.append(1), real_attach(con)))
    return opened


def _writer_process(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({path!r}).close()"],
                          capture_output=True, text=True)


def _can_write(path) -> bool:
    """A read-write open from this process: refused at once while an engine here has the file."""
    import duckdb

    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error as e:
        assert "already attached" in str(e)
        return False
    return True


def test_back_to_back_queries_share_one_attachment_and_writers_wait(tmp_path, monkeypatch):
    import time

    from conftest import make_lake

    source = DuckDBSource(make_lake(tmp_path / "kept.db"), keep_attached=2.0)
    opened = _counting_attaches(source, monkeypatch)
    engine = Engine(source, OPERATORS)
    try:
        for _ in range(3):  # each pause is shorter than keep_attached, together they are longer
            assert _drain(engine) == len(REVIEWS)
            time.sleep(0.8)
        assert len(opened) == 1  # each query put off the letting go: no cold attach after the first
        writer = _writer_process(str(source.path))  # kept: a writer in another process is locked out
        assert writer.returncode != 0 and "lock" in writer.stderr.lower()
    finally:
        engine.close()


def test_ending_queries_starts_no_thread_per_query(tmp_path):
    """A thread started per query end is a thread that may fail to start (out of memory) while the
    source's lock is held, and every later query would wait on that lock for good."""
    import threading

    from conftest import make_lake

    source = DuckDBSource(make_lake(tmp_path / "threads.db"), keep_attached=600)
    engine = Engine(source, OPERATORS)
    try:
        _drain(engine)
        before = {t.ident for t in threading.enumerate()}
        started = []
        real_start = threading.Thread.start

        def counting_start(thread):
            started.append(thread.name)
            real_start(thread)

        threading.Thread.start = counting_start
        try:
            for _ in range(5):
                _drain(engine)
        finally:
            threading.Thread.start = real_start
        assert not [name for name in started if "detach" in name or "Thread-" in name]
        assert len({t.ident for t in threading.enumerate()} - before) <= 1
    finally:
        engine.close()


def test_closing_the_engine_lets_go_of_a_kept_file_at_once(tmp_path):
    from conftest import make_lake

    source = DuckDBSource(make_lake(tmp_path / "closed.db"), keep_attached=600)
    engine = Engine(source, OPERATORS)
    _drain(engine)
    engine.close()
    assert _can_write(source.path)
    assert _drain(engine) == len(REVIEWS) and _can_write(source.path)  # closed: lets go at once now


def test_the_file_is_let_go_soon_after_the_last_query(tmp_path):
    import time

    from conftest import make_lake

    source = DuckDBSource(make_lake(tmp_path / "let-go.db"), keep_attached=3.0)
    engine = Engine(source, OPERATORS)
    _drain(engine)
    ended = time.monotonic()
    assert not _can_write(source.path)  # still attached right after
    while not _can_write(source.path):
        assert time.monotonic() - ended < 30, "the file was never let go"
        time.sleep(0.1)
    assert time.monotonic() - ended >= 3.0
    assert _drain(engine) == len(REVIEWS)  # and attached again for the next query
    engine.close()


def test_a_file_replaced_while_kept_is_read_as_it_is_now(tmp_path, monkeypatch):
    import os

    import duckdb
    from conftest import make_lake

    source = DuckDBSource(make_lake(tmp_path / "replaced.db"), keep_attached=30)
    opened = _counting_attaches(source, monkeypatch)
    engine = Engine(source, OPERATORS)
    try:
        assert _drain(engine) == len(REVIEWS)
        with duckdb.connect(str(tmp_path / "new.db")) as con:
            con.execute("CREATE TABLE reviews AS SELECT range AS id, 'x' AS review FROM range(5)")
        os.replace(tmp_path / "new.db", source.path)  # as a loader publishing a new file would
        assert _drain(engine) == 5
        assert len(opened) == 2
    finally:
        engine.close()


def test_a_query_that_fails_to_start_gives_its_attachment_back(lake, monkeypatch):
    source = DuckDBSource(lake)
    engine = Engine(source, OPERATORS)
    plan = Plan("SELECT count(*) FROM reviews", ("reviews",), frozenset())
    with pytest.raises(Exception):  # DuckDB cannot register a string as a table
        engine.connect(plan, extra_tables={"t": "not a table"})
    import duckdb

    with duckdb.connect(lake) as writer:  # a read-write open succeeds: the file was let go
        assert writer.execute("SELECT count(*) FROM reviews").fetchone()[0] == len(REVIEWS)
    _, batches = engine.stream(plan)  # and attaches again for the next query
    assert next(batches).num_rows == 1


def test_server_holds_no_lock_between_queries_by_default(lake, client):
    import duckdb

    run(client, "SELECT sentiment(review) FROM reviews")
    with duckdb.connect(lake) as writer:  # a read-write open succeeds: nothing is held
        assert writer.execute("SELECT count(*) FROM reviews").fetchone()[0] == len(REVIEWS)


def test_a_stream_dropped_unread_still_lets_go_of_the_file(lake):
    import duckdb

    engine = Engine(DuckDBSource(lake), OPERATORS)
    for _ in range(3):
        schema, batches = engine.stream(Plan("SELECT * FROM reviews", ("reviews",), frozenset()))
        del batches
    gc.collect()
    with duckdb.connect(lake) as writer:
        assert writer.execute("SELECT count(*) FROM reviews").fetchone()[0] == len(REVIEWS)


def test_concurrent_queries_share_one_attachment(lake):
    from concurrent.futures import ThreadPoolExecutor

    engine = Engine(DuckDBSource(lake), OPERATORS)
    plan = Catalog(OPERATORS).plan("SELECT count(*) AS n, max(sentiment(review)) AS s FROM reviews")

    def one(_):
        schema, batches = engine.stream(plan)
        return [b.column(0)[0].as_py() for b in batches]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(12))) == [[len(REVIEWS)]] * 12
    import duckdb

    with duckdb.connect(lake) as writer:  # and lets go of the file when the last one ends
        writer.execute("SELECT 1")


def test_result_schemas_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    import duckdb
    from conftest import make_lake
    from flight_lstm.service import Service

    source = DuckDBSource(make_lake(tmp_path / "cached.db"))
    opened = _counting_attaches(source, monkeypatch)
    service = Service(source)
    plan = service.plan("SELECT * FROM reviews")  # planning reads the table's types (plan/size.py)
    assert service.schema(plan).names == ["id", "review"]
    first = len(opened)
    assert service.schema(service.plan("SELECT * FROM reviews")).names == ["id", "review"]
    assert len(opened) == first  # the second GetFlightInfo did not open the file
    with duckdb.connect(str(source.path)) as writer:
        writer.execute("ALTER TABLE reviews ADD COLUMN stars INTEGER")
    assert service.schema(plan).names == ["id", "review", "stars"]
    assert len(opened) == first + 1


def test_plans_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    import duckdb
    from conftest import make_lake
    from flight_lstm.service import Service

    service = Service(DuckDBSource(make_lake(tmp_path / "plans.db")))
    planned = []
    real_plan = service.catalog.plan
    monkeypatch.setattr(service.catalog, "plan", lambda sql, local_tables=(): (planned.append(sql), real_plan(sql, local_tables))[1])
    sql = "SELECT id, sentiment(review) AS s FROM reviews"
    assert service.plan(sql) is service.plan(sql)  # GetFlightInfo, then DoGet: planned once
    assert planned == [sql]
    with pytest.raises(InvalidQuery):
        service.plan("SELECT nope(")
    with pytest.raises(InvalidQuery):
        service.plan("SELECT nope(")  # errors are not cached: each call answers again
    with duckdb.connect(str(service.source.path)) as writer:
        writer.execute("CREATE TABLE extra AS SELECT 1 AS x")
    service.plan(sql)
    assert planned.count(sql) == 2


@pytest.mark.parametrize("sql, hint", [
    ("SELECT id FROM reveiws", 'Did you mean "reviews"?'),
    ("SELECT idd FROM reviews", 'Candidate bindings: "id"'),
    ("SELECT sentimnt(review) FROM reviews", 'Did you mean "sentiment"?'),
])
def test_duckdbs_hints_reach_the_client_in_one_line(client, sql, hint):
    with pytest.raises(pa.ArrowInvalid) as raised:
        run(client, sql)
    message = str(raised.value).split(". Detail:")[0]
    assert hint in message and "\n" not in message


def test_a_hint_naming_an_engine_internal_is_dropped(client):
    with pytest.raises(pa.ArrowInvalid) as raised:
        run(client, "SELECT sentiment__with_modl(review, 'x') FROM reviews")
    assert "__with_model" not in str(raised.value)


def test_an_operator_called_with_wrong_types_is_named_as_the_user_wrote_it(client):
    with pytest.raises(pa.ArrowInvalid) as raised:
        run(client, "SELECT forecast(list(amount ORDER BY ts), [1], 'daily') FROM sales")
    assert "'forecast(DOUBLE[], INTEGER[]" in str(raised.value) and "__" not in str(raised.value)


def test_a_syntax_error_says_where_in_duckdbs_words(client):
    with pytest.raises(pa.ArrowInvalid) as raised:
        run(client, "SELEC id FROM reviews")
    message = str(raised.value).split(". Detail:")[0]
    assert 'syntax error at or near "SELEC" (line 1, column' in message and "sqlglot" not in message


def test_a_doget_dropped_before_its_first_batch_is_forgotten_by_cancels():
    """gRPC drops a stream unstarted when its client left before the schema was sent: no
    `finally` runs, and each such DoGet stayed registered for cancels, its ticket with it."""
    cancels = Cancels()
    cancelled, end = cancels.start("ana", b"SELECT 1")
    stream = ending(iter([pa.record_batch([pa.array([1])], names=["x"])]), end)
    assert cancels.cancel("ana", [b"SELECT 1"]) == 1 and cancelled()
    del stream
    gc.collect()
    assert cancels.cancel("ana", [b"SELECT 1"]) == 0


@pytest.mark.parametrize("sql", ["PIVOT sales ON store IN ('a', 'b') USING sum(amount) GROUP BY ts",
                                 "UNPIVOT (SELECT 1 AS a, 2 AS b) ON COLUMNS(*) INTO NAME k VALUE v"])
def test_duckdbs_pivot_and_unpivot_statements_answer_as_duckdb_does(client, lake, sql):
    """They are queries (they had been refused: "only SELECT is allowed, got PIVOT")."""
    with duckdb.connect(lake, read_only=True) as con:
        expected = con.sql(sql).to_arrow_table()
    got = run(client, sql)
    assert got.schema.names == expected.schema.names
    assert sorted(map(str, got.to_pylist())) == sorted(map(str, expected.to_pylist()))


@pytest.mark.parametrize("sql", ["PIVOT sales ON store USING sum(amount)",
                                 "SELECT * FROM (PIVOT sales ON store USING sum(amount))"])
def test_a_pivot_that_reads_its_columns_from_the_data_asks_for_them(client, sql):
    """DuckDB runs it as several statements: the answer says what to write instead."""
    with pytest.raises(pa.ArrowInvalid, match=r"lists the values it makes columns of \(`ON store IN"):
        run(client, sql)
