"""Hostile queries against the Dremio pushdown: what reaches Dremio is rebuilt from the approved tree
through an allow-list (plan/pushdown.py) and never reads Dremio's system tables unless the operator
allows it (sources/dremio.py). Each attack is sent as a client would send it, through the Service
or a real Flight client, to the stand-in of Dremio's Flight endpoint (tests/dremio_standin.py);
the answer is either a clear refusal or exactly the SQL asserted, and `standin.sql` shows all
that reached Dremio."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlglot

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run, start_server  # noqa: E402
from dremio_standin import DremioStandin  # noqa: E402

from flight_lstm.errors import InvalidQuery, QueryRefused  # noqa: E402
from flight_lstm.plan import Plan  # noqa: E402
from flight_lstm.plan.pushdown import unsendable  # noqa: E402
from flight_lstm.service import Service  # noqa: E402
from flight_lstm.sources import open_source  # noqa: E402

PASSWORD = "pw-hostile"
T = "space.folder.reviews"
READ_COLUMNS = f"SELECT * FROM {T}"  # the column look-up planning makes (GetFlightInfo only)
INJECTED = "FROM TABLE(space.external_query('SELECT 1')) --"
SYSTEM = "is a Dremio system table"


@pytest.fixture(scope="module")
def standin():
    con = duckdb.connect()
    con.execute("CREATE TABLE reviews AS SELECT range AS id, 'review ' || range AS review, range % 5 AS stars "
                "FROM range(100)")
    s = DremioStandin(con, {T: "reviews"}, users={"alice": PASSWORD}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def env():
    mp = pytest.MonkeyPatch()
    mp.setenv("DREMIO_PASSWORD", PASSWORD)
    mp.delenv("DREMIO_TOKEN", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def service(standin, env):
    return Service(open_source(f"dremio://alice@127.0.0.1:{standin.port}"))


@pytest.fixture(scope="module")
def client(service):
    srv, uri = start_server(service)
    with flight.connect(uri) as c:
        yield c
    srv.shutdown()


def answer(service: Service, sql: str) -> tuple[Plan, list[dict]]:
    plan = service.plan(sql)
    schema, batches = service.stream(plan)
    return plan, pa.Table.from_batches(list(batches), schema).to_pylist()


def sent_while(standin, fn) -> list[str]:
    before = len(standin.sql)
    fn()
    return standin.sql[before:]


def refused(standin, fn, error=QueryRefused, match=None) -> list[str]:
    """Run fn, which must fail with `error`; what reached Dremio meanwhile."""
    before = len(standin.sql)
    with pytest.raises(error, match=match):
        fn()
    return standin.sql[before:]


# ---------------------------------------------------------------- raw text sqlglot writes unquoted


@pytest.mark.parametrize("sql", [
    f'SELECT EXTRACT("year) {INJECTED}" FROM id) FROM {T}',  # the EXTRACT part
    f"SELECT date_trunc('day'') {INJECTED.replace(chr(39), chr(39) * 2)}', id) FROM {T}",  # a date unit
    f'SELECT CAST(id AS "my_type) {INJECTED}") FROM {T}',  # an unknown type
    f'SELECT "f(1) {INJECTED}"(id) FROM {T}',  # a function name that is not a plain word
])
def test_raw_text_is_never_sent_and_the_query_is_refused(service, standin, sql):
    sent = refused(standin, lambda: answer(service, sql), match="plain word")
    assert sent in ([], [READ_COLUMNS])  # at most the column look-up of the table itself


def test_a_type_name_sqlglot_reads_as_a_built_in_type_is_sent_as_that_type(service, standin):
    # sqlglot reads the quoted name below as INT: the approved tree, and so what is sent, is INT.
    sql = f'SELECT CAST(id AS "int) {INJECTED}") AS i FROM {T} WHERE id = 1'
    sent = sent_while(standin, lambda: answer(service, sql))
    assert sent == [f"SELECT CAST(id AS INT) AS i FROM {T} WHERE id = 1"]


def test_raw_text_through_a_flight_client(client, standin):
    before = len(standin.sql)
    with pytest.raises(flight.FlightUnauthorizedError, match="plain word"):
        run(client, f'SELECT EXTRACT("year) {INJECTED}" FROM id) FROM {T}')
    assert all("external_query" not in q for q in standin.sql[before:])


@pytest.mark.parametrize("sql", [
    f'SELECT $"x) {INJECTED}" FROM {T}',
    f"SELECT $1 FROM {T}",  # once sent to Dremio as :1
    f"SELECT id FROM {T} WHERE id = ?",
    f"SELECT id, sentiment(review) FROM {T} WHERE id = $name",
])
def test_placeholders_are_refused_before_anything_is_sent(service, standin, sql):
    assert refused(standin, lambda: service.plan(sql), match="bound parameters") == []


def test_escape_strings_stay_local_and_keep_their_meaning(service, standin):
    # E'...' once vanished from the pushed SQL ("WHERE review ="); now the conjunct runs here.
    plan, rows = answer(service, f"SELECT id FROM {T} WHERE id < 50 AND review = E'review\\x207'")
    assert plan.scans == (("_scan_0", f'SELECT "id", "review" FROM {T} WHERE id < 50'),)
    assert rows == [{"id": 7}]
    plan, rows = answer(service, f"SELECT E'it\\'s' AS q FROM {T} WHERE id = 3")
    assert plan.scans == (("_scan_0", f'SELECT "id" FROM {T} WHERE id = 3'),)
    assert rows == [{"q": "it's"}]


def test_a_call_on_a_path_is_not_sent(service, standin):
    sent = refused(standin, lambda: answer(service, f"SELECT space.external_query('SELECT 1') FROM {T}"),
                   error=InvalidQuery)
    assert sent and all("external_query" not in q.lower() for q in sent)


def test_table_functions_are_refused(service, standin):
    for sql in ("SELECT * FROM TABLE(space.external_query('SELECT 1'))",
                "SELECT * FROM space.external_query('SELECT 1')"):
        assert refused(standin, lambda: answer(service, sql), match="table function") == []


# ---------------------------------------------------------------- Dremio's system tables


SYSTEM_TABLES = ["sys.jobs", '"sys"."jobs"', "SYS.JOBS", 'Sys."Jobs"', '"sys.jobs"', '"ſys".jobs',
                 'sys."reflections"', 'information_schema."TABLES"', "INFORMATION_SCHEMA.columns",
                 '"INFORMATION_SCHEMA"."SCHEMATA"', '"ınformation_schema"."TABLES"']


@pytest.mark.parametrize("table", SYSTEM_TABLES)
def test_system_tables_are_refused(service, standin, table):
    for sql in (f"SELECT * FROM {table}",  # pushed whole
                f"SELECT id FROM {T} WHERE id IN (SELECT 1 FROM {table})",  # inside a pushed query
                f"SELECT sentiment(review) AS s FROM {T} JOIN {table} AS j ON true"):  # a per-table scan
        assert refused(standin, lambda: answer(service, sql), match=SYSTEM) in ([], [READ_COLUMNS])


def test_a_hand_built_plan_cannot_send_what_the_planner_would_not(service, standin):
    src, db = service.source, duckdb.connect()
    for scans, match in (((("_scan_0", "SELECT * FROM sys.jobs"),), SYSTEM),
                         ((("_scan_0", "SELECT 1 FROM space.folder.reviews; SELECT 2"),), "one query"),
                         ((("_scan_0", "SELECT * FROM TABLE(space.external_query('x'))"),), "table function"),
                         ((("_scan_0", "SELECT 1 FROM space.folder.reviews"), ("_scan_1", 'SELECT * FROM "SYS".jobs')),
                          SYSTEM)):
        plan = Plan(sql="SELECT * FROM _scan_0", tables=(), operators=frozenset(), scans=scans)
        assert refused(standin, lambda: src.attach(db, db, plan, schema_only=True), match=match) == []
    assert refused(standin, lambda: src.columns("sys.jobs"), match=SYSTEM) == []


def test_listings_hide_system_tables(client, service):
    assert service.source.tables() == [T]
    names = {"/".join(p.decode() for p in i.descriptor.path) for i in client.list_flights()}
    assert names == {T}


def test_system_tables_only_with_the_uri_option(standin, env):
    src = open_source(f"dremio://alice@127.0.0.1:{standin.port}?system_tables=true")
    assert {'INFORMATION_SCHEMA."TABLES"', "sys.jobs", T} <= set(src.tables())
    service = Service(src)
    plan, rows = answer(service, 'SELECT count(*) AS n FROM INFORMATION_SCHEMA."TABLES"')
    assert plan.scans == (("_scan_0", 'SELECT COUNT(*) AS n FROM INFORMATION_SCHEMA."TABLES"'),)
    assert rows[0]["n"] > 1
    with pytest.raises(ValueError, match="true or false"):
        open_source(f"dremio://alice@127.0.0.1:{standin.port}?system_tables=yes")
    with pytest.raises(ValueError, match="system schema"):  # unqualified names would read sys
        open_source(f"dremio://alice@127.0.0.1:{standin.port}?schema=SYS")
    open_source(f"dremio://alice@127.0.0.1:{standin.port}?schema=sys&system_tables=true")


# ---------------------------------------------------------------- normal pushdown still works


def test_normal_pushdown_is_unchanged(service, standin):
    plan, rows = answer(service, f"SELECT id, sentiment(review) AS s FROM {T} "
                                 "WHERE id < 3 AND review LIKE 'review%' ORDER BY id")
    assert plan.scans == (("_scan_0", f"SELECT \"id\", \"review\" FROM {T} WHERE id < 3 AND review LIKE 'review%'"),)
    assert [r["id"] for r in rows] == [0, 1, 2]
    sql = (f"SELECT stars, count(*) AS n, max(CAST(id AS INT)) AS m FROM {T} WHERE id BETWEEN 1 AND 10 "
           "AND review IS NOT NULL GROUP BY stars ORDER BY stars")
    sent = sent_while(standin, lambda: answer(service, sql))
    assert sent == [f"SELECT stars, COUNT(*) AS n, MAX(CAST(id AS INT)) AS m FROM {T} WHERE id BETWEEN 1 AND 10 "
                    "AND NOT review IS NULL GROUP BY stars ORDER BY stars"]
    plan, rows = answer(service, f"SELECT stars, count(*) FILTER (WHERE id > 5) AS n, forecast(list(id ORDER BY id), 2) AS f "
                                 f"FROM {T} GROUP BY stars ORDER BY stars")
    assert plan.scans == (("_scan_0", "SELECT stars AS _k0, COUNT(*) FILTER(WHERE id > 5) AS _a0, ARRAY_AGG(id ORDER BY id) AS _a1 "
                                      f"FROM {T} GROUP BY stars"),)
    assert [r["n"] for r in rows] == [18, 19, 19, 19, 19] and all(len(r["f"]) == 2 for r in rows)


def test_what_dremio_cannot_take_runs_here(service):
    # A conjunct that cannot be sent stays local while the rest is pushed; a sample is taken here.
    plan, rows = answer(service, f"SELECT * EXCLUDE (review) FROM {T} WHERE id < 2 AND review <> E'x\\ty'")
    assert plan.scans == (("_scan_0", f'SELECT "id", "review", "stars" FROM {T} WHERE id < 2'),)
    assert rows == [{"id": 0, "stars": 0}, {"id": 1, "stars": 1}]
    plan, rows = answer(service, f"SELECT count(*) AS n FROM {T} TABLESAMPLE 5 ROWS")
    assert plan.scans == (("_scan_0", f'SELECT "id" FROM {T}'),) and rows == [{"n": 5}]


# ---------------------------------------------------------------- the allow-list itself


@pytest.mark.parametrize("expr", [
    "$1", "?", "E'a\\nb'", "CAST(a AS \"my type\")", "a[1]", "a->>'$.x'", "x.external_query('q')",
    "external_query('q')", "\"f g\"(a)", "{'x': 1}",
])
def test_not_on_the_allow_list(expr):
    node = sqlglot.parse_one(f"SELECT {expr} FROM t", read="duckdb").expressions[0]
    assert unsendable(node, "dremio") is not None


@pytest.mark.parametrize("expr", [
    "a + 1 * b", "a BETWEEN 1 AND 2", "a IN (1, 2)", "a LIKE 'x%'", "a IS NULL", "NOT a", "'it''s'",
    "CASE WHEN a > 1 THEN 'x' ELSE NULL END", "CAST(a AS DECIMAL(10, 2))", "coalesce(a, b)",
    "sum(a) OVER (PARTITION BY b ORDER BY c ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)",
    "count(DISTINCT a)", "extract(year FROM ts)", "some_dremio_function(a, 1)",
])
def test_on_the_allow_list(expr):
    node = sqlglot.parse_one(f"SELECT {expr} FROM t", read="duckdb").expressions[0]
    assert unsendable(node, "dremio") is None


def test_a_dremio_tables_struct_column_counts_as_wide_as_dremio_announces(env):
    """Planning sizes a query by its tables' types (plan/size.py); a Dremio table's are the schema
    Dremio announces for `SELECT *`, the look-up pushdown makes anyway (one GetFlightInfo, no job).
    A 1,001-leaf struct column doubled twice plans; three times (8,008 fields) is refused."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE events (id INT, payload STRUCT({', '.join(f'f{i} INT' for i in range(1000))}, "
                "g STRUCT(a INT)))")
    events = "space.folder.events"

    def chain(levels: int) -> str:
        return f"WITH c0 AS (SELECT payload AS s FROM {events}), " + ", ".join(
            f"c{i + 1} AS (SELECT {{'a': s, 'b': s}} AS s FROM c{i})" for i in range(levels)) + \
            f" SELECT s IS NULL AS n FROM c{levels}"

    s = DremioStandin(con, {events: "events"}, users={"alice": PASSWORD}).start()
    try:
        service = Service(open_source(f"dremio://alice@127.0.0.1:{s.port}"))
        assert service.plan(chain(2))
        with pytest.raises(InvalidQuery, match="type would hold more than 4,096 fields"):
            service.plan(chain(3))
        assert s.sql.count(f"SELECT * FROM {events}") == 1
    finally:
        s.stop()


def test_a_name_is_looked_up_once_while_planning(service, standin):
    """Round 26: each table node was a GetFlightInfo of its own, and a name Dremio refused was asked
    again every time (3,000 of one missing name: 3,000 calls). Each name is asked once a plan, and a
    refusal is kept as long as an answer."""
    missing = "space.folder.nosuch"
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {missing})" for _ in range(50)) + " AS n"
    lookups = []
    for _ in range(2):
        sent = sent_while(standin, lambda: pytest.raises(InvalidQuery, answer, service, sql))
        lookups.append(sent.count(f"SELECT * FROM {missing}"))
    assert lookups == [1, 0]
