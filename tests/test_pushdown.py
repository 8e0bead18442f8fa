"""The Flight server over Dremio (the stand-in): what is pushed down, and the answers it gives."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REVIEWS, make_lake, run, start_server  # noqa: E402
from dremio_standin import DremioStandin  # noqa: E402

from flight_lstm.service import Service  # noqa: E402
from flight_lstm.sources import open_source  # noqa: E402
from flight_lstm.sources.duckdb import DuckDBSource  # noqa: E402

PASSWORD = "pw-for-pushdown"
DEEP = '"my space"."folder.with.dots".sub.reviews'
DEEP_SALES = '"my space"."folder.with.dots".sub.sales'
OPERATORS = ("sentiment", "forecast", "forecast_interval")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return make_lake(tmp_path_factory.mktemp("dremio") / "lake.db")


@pytest.fixture(scope="module")
def standin(lake):
    con = duckdb.connect()
    con.execute(f"ATTACH '{lake}' AS lake (READ_ONLY)")
    con.execute("CREATE TABLE reviews AS SELECT id, review, id % 5 AS stars FROM lake.reviews")
    con.execute("CREATE TABLE sales AS SELECT * FROM lake.sales")
    s = DremioStandin(con, {DEEP: "reviews", "shop.sales": "sales", "sales": "sales", DEEP_SALES: "sales"}, users={"alice": PASSWORD}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(standin):
    mp = pytest.MonkeyPatch()
    mp.setenv("DREMIO_PASSWORD", PASSWORD)
    mp.delenv("DREMIO_TOKEN", raising=False)
    service = Service(open_source(f"dremio://alice@127.0.0.1:{standin.port}"),
                      views={"scored": f"SELECT id, sentiment(review) AS s FROM {DEEP}"})
    srv, uri = start_server(service)
    yield uri
    srv.shutdown()
    mp.undo()


@pytest.fixture
def client(server):
    with flight.connect(server) as c:
        yield c


def reached(standin, since: int) -> list[str]:
    return standin.sql[since:]


def test_operators_run_here_and_only_used_columns_and_filters_reach_dremio(client, standin):
    before = len(standin.sql)
    t = run(client, f"SELECT id, sentiment(review) AS s FROM {DEEP} WHERE stars >= 2 AND sentiment(review) > -2 ORDER BY id")
    expected = [i for i, text in enumerate(REVIEWS) if i % 5 >= 2 and text]  # NULL score fails the filter
    assert t.column("id").to_pylist() == expected
    sent = reached(standin, before)
    assert sent and all(op not in q.lower() for q in sent for op in OPERATORS)
    scan = [q for q in sent if "reviews" in q][-1]
    assert "stars >= 2" in scan.lower() and '"id"' in scan and '"review"' in scan


def test_results_equal_the_duckdb_source(client, lake):
    local = Service(DuckDBSource(lake))
    sql_here = "SELECT id, sentiment(review) AS s FROM reviews ORDER BY id"
    schema, batches = local.stream(local.plan(sql_here))
    want = [b for batch in batches for b in batch.column(1).to_pylist()]
    got = run(client, f"SELECT id, sentiment(review) AS s FROM {DEEP} ORDER BY id").column("s").to_pylist()
    assert [g is None for g in got] == [w is None for w in want]
    np.testing.assert_allclose([g for g in got if g is not None], [w for w in want if w is not None], atol=1e-9)


def test_forecast_input_is_aggregated_in_dremio(client, standin):
    before = len(standin.sql)
    t = run(client, "SELECT store, forecast(list(amount ORDER BY ts), 12) FROM shop.sales GROUP BY store ORDER BY store")
    assert t.schema.names == ["store", "forecast(list(amount ORDER BY ts), 12)"]  # as DuckDB names the text
    assert t.column("store").to_pylist() == ["a", "b", "c"] and all(len(f) == 12 for f in t.column(1).to_pylist())
    scan = reached(standin, before)[-1].upper()
    assert "ARRAY_AGG" in scan and "GROUP BY" in scan and "FORECAST" not in scan


def test_an_operator_free_query_runs_wholly_in_dremio(client, standin):
    before = len(standin.sql)
    t = run(client, "SELECT store, count(*) AS n FROM shop.sales GROUP BY store ORDER BY store")
    assert t.column("n").to_pylist() == [240, 240, 240]
    assert any("COUNT(*)" in q.upper() and "GROUP BY" in q.upper() for q in reached(standin, before))


def test_joins_and_views_over_dremio(client):
    t = run(client, f"SELECT a.id, b.s FROM {DEEP} AS a JOIN scored AS b ON a.id = b.id WHERE a.id < 3 ORDER BY a.id")
    assert t.column("id").to_pylist() == [0, 1, 2]
    self_join = run(client, "WITH x AS (SELECT id, sentiment(review) AS s FROM " + DEEP + ") SELECT count(*) AS n FROM x a JOIN x b ON a.id = b.id")
    assert self_join.column("n")[0].as_py() == len(REVIEWS)


def test_explain_shows_the_split(client):
    body = json.loads(next(iter(client.do_action(flight.Action("explain", f"SELECT id, sentiment(review) FROM {DEEP} WHERE id > 3".encode())))).body.to_pybytes())
    assert [s["name"] for s in body["scans"]] == ["_scan_0"]
    assert "sub" in body["scans"][0]["sql"] and "id > 3" in body["scans"][0]["sql"].lower()
    assert "sentiment" in body["local_sql"].lower() and "_scan_0" in body["local_sql"]
    # The operator runs on the scan's batches outside DuckDB: its DuckDB query only reads.
    assert body["lifted"]["calls"] == ["sentiment"] and "_scan_0" in body["lifted"]["duckdb_sql"]
    assert "sentiment(" not in body["lifted"]["duckdb_sql"].lower()


def test_bad_sql_in_dremio_is_a_clear_error_and_the_server_keeps_serving(client):
    with pytest.raises(pa.ArrowInvalid, match="Dremio"):
        run(client, "SELECT nope FROM shop.sales")
    assert run(client, "SELECT count(*) AS n FROM shop.sales").column("n")[0].as_py() == 720


def test_list_flights_shows_dremio_tables(client):
    names = {"/".join(p.decode() for p in i.descriptor.path) for i in client.list_flights()}
    assert {DEEP, "shop.sales", "scored"} <= names


def test_a_subquery_inside_one_pushed_whole_is_not_scanned_again(server):
    service_plan = json.loads(next(iter(flight.connect(server).do_action(flight.Action(
        "explain", f"SELECT sentiment(r) FROM (SELECT * FROM (SELECT review AS r FROM {DEEP}) x) y".encode())))).body.to_pybytes())
    assert [s["name"] for s in service_plan["scans"]] == ["_scan_0"]


@pytest.mark.parametrize("call", [
    "forecast_table('shop.sales', key => 'store', ts => 'ts', value => 'amount', horizon => 3)",
    "anomaly_table('shop.sales', key => 'store', ts => 'ts', value => 'amount')",
])
def test_a_table_function_sends_dremio_only_the_columns_it_reads(client, standin, call):
    """Its expansion is DuckDB's SQL (epoch_us, list_resize, error, typeof): none of it reaches Dremio."""
    before = len(standin.sql)
    t = run(client, f"SELECT store, count(*) AS n FROM {call} GROUP BY store ORDER BY store")
    assert t.column("store").to_pylist() == ["a", "b", "c"]
    scans = [q for q in reached(standin, before) if q != "SELECT * FROM shop.sales"]  # that one learns the columns
    assert scans and all(q in ('SELECT "store", "ts", "amount" FROM shop.sales',
                               'SELECT "store", "ts", "amount" FROM shop.sales WHERE NOT "ts" IS NULL') for q in scans), scans


@pytest.mark.parametrize("sql", [
    f"WITH reviews AS (SELECT * FROM {DEEP} WHERE id < 5) SELECT id, sentiment(review) AS s FROM reviews ORDER BY id",
    f"WITH x AS (SELECT 1 AS one), reviews AS (SELECT id, review FROM {DEEP} WHERE id < 5) "
    "SELECT r.id, sentiment(r.review) AS s FROM reviews r, x ORDER BY r.id",
    f"SELECT id, s FROM (WITH reviews AS (SELECT * FROM {DEEP}) SELECT id, sentiment(review) AS s FROM reviews) "
    "WHERE id < 5 ORDER BY id",
])
def test_a_cte_named_as_the_last_part_of_the_table_it_reads_reads_that_table(client, standin, sql):
    """Only a name written alone can name a CTE: `WITH reviews AS (SELECT * FROM space.folder.reviews)`
    sends the body's table to Dremio (it had been taken for the CTE, and failed with a catalog error)."""
    before = len(standin.sql)
    assert run(client, sql).column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert any('"folder.with.dots"' in q for q in reached(standin, before))


def test_a_query_of_names_like_the_scans_reads_the_source_not_its_own_cte(client):
    """A CTE named `_scan_0` had stood for the source's scan: the query read its own rows instead."""
    sql = (f"WITH _scan_0 AS (SELECT -1 AS id) SELECT x.id FROM (SELECT id FROM {DEEP} WHERE id < 3) x, _scan_0 "
           "ORDER BY x.id")
    assert run(client, sql).column("id").to_pylist() == [0, 1, 2]


@pytest.mark.parametrize("sql, column, expected", [
    (f"SELECT a.id, sentiment(a.review) AS s FROM {DEEP} a JOIN {DEEP} b USING (id) WHERE b.stars >= 4 ORDER BY a.id",
     "id", [i for i in range(len(REVIEWS)) if i % 5 >= 4]),
    (f"SELECT COLUMNS('sta.*'), sentiment(review) AS s FROM {DEEP} ORDER BY id", "stars",
     [i % 5 for i in range(len(REVIEWS))]),
    (f"SELECT r AS row, sentiment(r.review) AS s FROM {DEEP} r ORDER BY r.id", "row",
     [{"id": i, "review": text, "stars": i % 5} for i, text in enumerate(REVIEWS)]),
    (f"SELECT A.stars, sentiment(A.review) AS s FROM {DEEP} a ORDER BY a.ID", "stars",
     [i % 5 for i in range(len(REVIEWS))]),
    (f"SELECT #1 AS first, sentiment(review) AS s FROM {DEEP} ORDER BY 1", "first", list(range(len(REVIEWS)))),
    (f"SELECT stars AS first, sentiment(id) AS s FROM {DEEP} AS r(stars, id, orig) WHERE stars >= 4 ORDER BY stars",
     "first", list(range(4, len(REVIEWS)))),
])
def test_a_scan_keeps_every_column_the_query_reads_however_it_names_them(client, sql, column, expected):
    """A scan sends only the columns a query uses; a USING column, a COLUMNS(...) pattern and a
    table read as a whole row name theirs without a column reference, and had been left out, as
    had columns qualified by their table's alias in another case. A position (`#1`) read another
    column, and a column list on the alias (`r(stars, id, orig)`) had its filter sent under the source's
    names (wrong rows)."""
    assert run(client, sql).column(column).to_pylist() == expected


@pytest.mark.parametrize("sql", [
    f"WITH RECURSIVE t AS (SELECT 0 AS id UNION ALL SELECT t.id + 1 FROM t JOIN {DEEP} r ON r.id = t.id + 1 "
    "WHERE t.id < 4) SELECT id FROM t ORDER BY id",
    f"WITH RECURSIVE c AS (SELECT id FROM {DEEP}), t AS (SELECT 0 AS id UNION ALL SELECT t.id + 1 FROM t JOIN c "
    "ON c.id = t.id + 1 WHERE t.id < 4) SELECT id FROM t ORDER BY id",
    f"SELECT id FROM (WITH RECURSIVE t AS (SELECT 0 AS id UNION ALL SELECT t.id + 1 FROM t "
    f"WHERE t.id + 1 IN (SELECT id FROM {DEEP} WHERE id < 5)) SELECT id FROM t) ORDER BY id",
])
def test_a_recursive_cte_reads_a_scan_at_every_step(client, sql):
    """A recursive part is read again at every step, and a scan streams once: it had failed with
    "already been consumed"."""
    assert run(client, sql).column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_a_recursive_cte_that_reads_no_source_runs_here(client):
    """Nested in a query that reads no source: no scan to read once, and nothing added to its SQL."""
    sql = ("SELECT id, sentiment('good') > 0 AS s FROM (WITH RECURSIVE t AS (SELECT 0 AS id UNION ALL "
           "SELECT id + 1 FROM t WHERE id < 4) SELECT id FROM t) ORDER BY id")
    assert run(client, sql).column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_the_first_part_of_a_recursive_cte_reads_the_table_of_its_name(client, standin):
    """DuckDB reads a recursive CTE's own name in its first part as the table: that part had been
    kept out of the scans, and the local query answered "Circular reference"."""
    sql = ("WITH RECURSIVE sales AS (SELECT 1 AS n, count(*) AS c FROM sales UNION ALL "
           "SELECT n + 1, c FROM sales WHERE n < 3) SELECT n, c FROM sales ORDER BY n")
    t = run(client, sql)
    assert t.column("n").to_pylist() == [1, 2, 3] and t.column("c").to_pylist() == [720] * 3


@pytest.mark.parametrize("function", ["forecast_table", "anomaly_table"])
def test_a_table_function_reads_a_source_path_of_any_length(client, function):
    """A Dremio path has as many parts as its folders: names of more than three had been refused."""
    horizon = ", horizon => 2" if function == "forecast_table" else ""
    quoted = DEEP_SALES.replace("'", "''")
    sql = f"SELECT count(*) AS n FROM {function}('{quoted}', key => 'store', ts => 'ts', value => 'amount'{horizon})"
    assert run(client, sql).column("n").to_pylist() == [6 if horizon else 720]
