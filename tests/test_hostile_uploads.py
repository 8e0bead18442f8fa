"""Arrow batches a client uploads are untrusted bytes (server/uploads.py): a batch whose views,
offsets or dictionary indices point outside its buffers is refused before DuckDB or pyarrow read
through them, on every path that takes uploads (DoExchange, DoPut parameters), and the server goes
on serving. Before the check, a string view claiming 4,000 bytes of a 16-byte buffer echoed the
server's heap back, another user's bearer token among it."""
import struct
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_lstm.engine import Limits
from flight_lstm.engine.engine import Engine
from flight_lstm.errors import InvalidQuery, SourceUnavailable
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server.uploads import MAX_UPLOAD_DEPTH, MAX_UPLOAD_LEAVES, received, received_schema
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from conftest import run, start_server


def view(claimed: int, data: bytes = b"x" * 16, kind=pa.binary_view()) -> pa.Array:
    """One view value of `claimed` bytes at offset 0 of `data` (values over 12 bytes live there)."""
    return pa.Array.from_buffers(kind, 1, [None, pa.py_buffer(struct.pack("<i4sii", claimed, data[:4], 0, 0)),
                                           pa.py_buffer(data)])


def shared(rows: int, data: bytes) -> pa.Array:
    """`rows` valid views, all of the same bytes: small to send, `rows` times larger to copy."""
    one = struct.pack("<i4sii", len(data), data[:4], 0, 0)
    return pa.Array.from_buffers(pa.string_view(), rows, [None, pa.py_buffer(one * rows), pa.py_buffer(data)])


def exchange(client, sql: str, batch: pa.RecordBatch) -> pa.Table:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(sql))
    writer.begin(batch.schema)
    writer.write_batch(batch)
    writer.done_writing()
    return reader.read_all()


def bind(client, batch: pa.RecordBatch, sql: str = "SELECT ? AS x") -> pa.Table:
    """Prepare `sql`, bind `batch` by DoPut, run it."""
    request = messages.ActionCreatePreparedStatementRequest(query=sql)
    body = list(client.do_action(flight.Action("CreatePreparedStatement", messages.pack(request))))[0].body
    handle = messages.unpack("ActionCreatePreparedStatementResult",
                             messages.flight_sql_type(body.to_pybytes())[1]).prepared_statement_handle
    command = messages.pack(messages.CommandPreparedStatementQuery(prepared_statement_handle=handle))
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(command), batch.schema)
    writer.write_batch(batch)
    writer.done_writing()
    reader.read()
    writer.close()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
    return client.do_get(info.endpoints[0].ticket).read_all()


BAD = {
    "a view past its buffer": pa.record_batch([view(4000)], names=["p"]),
    "a view into a buffer that is not there": pa.record_batch([pa.Array.from_buffers(
        pa.string_view(), 1, [None, pa.py_buffer(struct.pack("<i4sii", 100, b"xxxx", 7, 0)),
                              pa.py_buffer(b"x" * 16)])], names=["p"]),
    "dictionary indices past the dictionary": pa.record_batch([pa.DictionaryArray.from_arrays(
        pa.array([0, 100_000], pa.int32()), pa.array(["a"]), safe=False)], names=["p"]),
    "string offsets that run backwards": pa.record_batch([pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(struct.pack("<iii", 2, 0, 3)), pa.py_buffer(b"abc")])], names=["p"]),
}


@pytest.mark.parametrize("what", BAD)
def test_a_batch_pointing_outside_its_buffers_is_refused_on_every_upload_path(client, what):
    batch = BAD[what]
    with pytest.raises(pa.ArrowInvalid, match="not valid Arrow"):
        exchange(client, "SELECT p AS b FROM input", batch)
    with pytest.raises(pa.ArrowInvalid, match="not valid Arrow"):
        bind(client, batch)
    assert run(client, "SELECT 41 + 1 AS x").column("x").to_pylist() == [42]


def test_views_that_share_their_bytes_are_refused_before_anything_copies_them(client):
    batch = pa.record_batch([shared(10_000, b"y" * 100_000)], names=["p"])  # 1.1 MB sent, 1 GB to copy
    with pytest.raises(pa.ArrowInvalid, match="refer to more bytes than it sends"):
        exchange(client, "SELECT length(p) AS n FROM input", batch)
    with pytest.raises(pa.ArrowInvalid, match="refer to more bytes than it sends"):
        bind(client, batch)


def test_views_nested_in_lists_are_refused_by_name(client):
    nested = pa.array([["a", "b"], None], pa.list_(pa.string_view()))
    with pytest.raises(pa.ArrowInvalid, match="'p' nests string, binary or list views"):
        exchange(client, "SELECT p AS b FROM input", pa.record_batch([nested], names=["p"]))
    wrapped = pa.ExtensionArray.from_storage(pa.opaque(nested.type, "t", "v"), nested)  # its storage is read
    with pytest.raises(pa.ArrowInvalid, match="'p' nests string, binary or list views"):
        exchange(client, "SELECT p AS b FROM input", pa.record_batch([wrapped], names=["p"]))


def test_an_upload_wider_than_the_limit_is_refused_before_duckdb_reads_it(client):
    """Round 18: DuckDB registers and plans an upload's columns before any time limit applies; an
    exchange of 150,000 one-byte columns ran 22.7 s past a 3 s limit."""
    wide = pa.record_batch([pa.array([1], pa.int8())] * (MAX_UPLOAD_LEAVES + 1),
                           names=[f"c{i}" for i in range(MAX_UPLOAD_LEAVES + 1)])
    started = time.monotonic()
    with pytest.raises(pa.ArrowInvalid, match="more than 4,096 columns"):
        exchange(client, "SELECT c0 AS x FROM input", wide)
    assert time.monotonic() - started < 2
    with pytest.raises(pa.ArrowInvalid, match="more than 4,096 columns"):
        bind(client, pa.record_batch([pa.array([{f"f{i}": 1 for i in range(MAX_UPLOAD_LEAVES + 1)}])], names=["p"]))
    at_most = pa.record_batch([pa.array([1], pa.int8())] * MAX_UPLOAD_LEAVES,
                              names=[f"c{i}" for i in range(MAX_UPLOAD_LEAVES)])
    assert exchange(client, "SELECT c0 + c4095 AS x FROM input", at_most).column("x").to_pylist() == [2]


def test_a_type_nested_deeper_than_the_limit_is_refused_without_recursing():
    """Arrow's IPC reader stops at 64 levels; the check does not rely on it (a 2,000-level type
    overflowed Python's stack in the checks that read types recursively)."""
    deep = pa.int8()
    for _ in range(2000):
        deep = pa.list_(deep)
    with pytest.raises(InvalidQuery, match=f"nests types more than {MAX_UPLOAD_DEPTH} levels"):
        received_schema(pa.schema([pa.field("p", deep)]))


def test_honest_views_are_read_as_plain_strings(client):
    texts = ["a wonderful , moving film", None, "short", "🎬" * 20]
    batch = pa.record_batch([pa.array(texts, pa.string_view())], names=["review"])
    out = exchange(client, "SELECT review, sentiment(review) AS s FROM input", batch)
    assert out.column("review").to_pylist() == texts
    assert out.column("s")[0].as_py() > 0 and out.column("s")[1].as_py() is None
    assert bind(client, pa.record_batch([pa.array(["a long bound value, past twelve bytes"], pa.string_view())],
                                        names=["p"])).column("x").to_pylist() == ["a long bound value, past twelve bytes"]


def test_views_inside_an_extension_type_are_checked_as_views(client):
    """arrow.json over string_view: 1,500 views of the same 400 kB had bound 600 MB."""
    views = shared(1_500, b"{" + b" " * 400_000 + b"}")
    wrapped = pa.ExtensionArray.from_storage(pa.json_(pa.string_view()), views)
    with pytest.raises(pa.ArrowInvalid, match="refer to more bytes than it sends"):
        bind(client, pa.record_batch([wrapped], names=["p"]))


def test_received_keeps_an_honest_batch_and_makes_its_views_plain():
    batch = pa.record_batch([pa.array([1, 2]), pa.array([b"ab", b"a value past twelve bytes"], pa.binary_view())],
                            names=["i", "b"])
    got = received(batch)
    assert got.schema.types == [pa.int64(), pa.large_binary()]
    assert got.to_pylist() == batch.to_pylist()


def test_rows_of_parameters_share_one_time_and_row_allowance(lake):
    """Each row of bound values runs the query once; 20 rows of 999 must not buy 20 row limits."""
    srv, uri = start_server(Service(DuckDBSource(lake), limits=Limits(max_rows=1000)))
    try:
        with flight.connect(uri) as client:
            rows = pa.record_batch([pa.array([999] * 20, pa.int64())], names=["p"])
            with pytest.raises(flight.FlightUnavailableError, match="limit of 1,000 rows"):
                bind(client, rows, "SELECT * FROM range(?)")
            one = pa.record_batch([pa.array([999], pa.int64())], names=["p"])
            assert bind(client, one, "SELECT * FROM range(?)").num_rows == 999
    finally:
        srv.shutdown()


def test_bound_values_are_counted_as_values_not_as_their_arrow_bytes(client):
    """A dictionary holds a value once for any number of rows, and a column of NULLs is 0 bytes of
    Arrow: 110 kB sent grew the server by 1 GB when bound, until the statement expired."""
    one_value_many_rows = pa.DictionaryArray.from_arrays(pa.array([0] * 10_000, pa.int8()), pa.array(["x" * 100_000]))
    with pytest.raises(pa.ArrowInvalid, match="bind flat values"):
        bind(client, pa.record_batch([one_value_many_rows], names=["p"]))
    # Nested values cost nothing in Arrow bytes: 10 million NULLs in one 300-byte list.
    with pytest.raises(pa.ArrowInvalid, match="bind flat values"):
        bind(client, pa.record_batch([pa.array([[None] * 10_000_000], pa.list_(pa.null()))], names=["p"]))
    # An extension type is read as its storage: here, the dictionary the rule refuses.
    wrapped = pa.ExtensionArray.from_storage(pa.opaque(one_value_many_rows.type, "t", "v"), one_value_many_rows)
    with pytest.raises(pa.ArrowInvalid, match="bind flat values"):
        bind(client, pa.record_batch([wrapped], names=["p"]))
    nulls = pa.record_batch([pa.nulls(10_000)] * 1_000, names=[f"p{i}" for i in range(1_000)])
    assert nulls.nbytes == 0
    with pytest.raises(pa.ArrowInvalid, match="at most 2,097,152 bytes, counting each value as the Python object"):
        bind(client, nulls)
    assert bind(client, pa.record_batch([pa.array(["fine"] * 1_000)], names=["p"])).num_rows == 1_000


FAR = {  # timestamps DuckDB cannot widen to microseconds, at every depth an upload can hide one
    "seconds": pa.array([10**13], pa.timestamp("s")),
    "milliseconds with a zone": pa.array([-(2**62)], pa.timestamp("ms", "UTC")),
    "in a list": pa.array([[1, 2**62]], pa.list_(pa.timestamp("ms"))),
    "in a struct": pa.array([{"a": 10**13}], pa.struct([("a", pa.timestamp("s"))])),
    "a dictionary's value": pa.array([10**13], pa.timestamp("s")).dictionary_encode(),
    "a map's key": pa.array([[(10**13, 1)]], pa.map_(pa.timestamp("s"), pa.int32())),
    "run-end encoded": pa.RunEndEncodedArray.from_arrays([2], pa.array([10**13], pa.timestamp("s"))),
}


@pytest.mark.parametrize("what", FAR)
def test_a_timestamp_duckdb_cannot_hold_is_refused_at_any_depth_and_the_database_stays_valid(client, what):
    """One such value cast to text had DuckDB raise an INTERNAL error, which invalidates the
    server's one database: every later query of every client failed."""
    batch = pa.record_batch([FAR[what]], names=["t"])
    with pytest.raises(pa.ArrowInvalid, match=r"column 't' holds a timestamp \(timestamp\[m?s.*beyond DuckDB's range"):
        exchange(client, "SELECT CAST(t AS VARCHAR) AS s FROM input", batch)
    with pytest.raises(pa.ArrowInvalid, match="timestamps from year 1 to 9999|bind flat values"):
        bind(client, batch)  # a bound value's own rule is narrower
    assert run(client, "SELECT 41 + 1 AS x").column("x").to_pylist() == [42]


@pytest.mark.parametrize("kind", [pa.decimal128(5, -3), pa.list_(pa.decimal128(5, -3)),
                                  pa.struct([("d", pa.decimal128(4, 6))])])
def test_a_decimal_duckdb_cannot_read_is_refused_by_name(client, kind):
    """Round 12: a decimal128(5, -3) column failed DuckDB's reading with an INTERNAL error."""
    batch = pa.record_batch([pa.nulls(1, kind)], names=["d"])
    with pytest.raises(pa.ArrowInvalid, match="column 'd' holds decimals DuckDB cannot read .* at most 38 digits"):
        exchange(client, "SELECT * FROM input", batch)
    assert run(client, "SELECT 41 + 1 AS x").column("x").to_pylist() == [42]


def test_the_widest_timestamps_duckdb_holds_are_read(client):
    last = (2**63 - 2) // 10**6
    batch = pa.record_batch([pa.array([last, -last, None], pa.timestamp("s"))], names=["t"])
    out = exchange(client, "SELECT CAST(t AS VARCHAR) AS s FROM input", batch).column("s").to_pylist()
    assert out == ["294247-01-10 04:00:54", "290309-12-21 (BC) 19:59:06", None]


def _invalidate(service: Service) -> None:
    """What DuckDB does after an INTERNAL error of its own, reached behind the server's checks."""
    con = service.engine.db.cursor()
    con.register("far", pa.table({"t": pa.array([10**13], pa.timestamp("s"))}))
    with pytest.raises(Exception, match="INTERNAL"):
        con.sql("SELECT CAST(t AS VARCHAR) FROM far").fetchall()


def _rows(service: Service, sql: str) -> list[dict]:
    schema, batches = service.stream(service.plan(sql))
    return pa.Table.from_batches(list(batches), schema).to_pylist()


def test_a_database_duckdb_invalidated_is_replaced_and_queries_go_on(lake):
    """After an INTERNAL error DuckDB invalidates the whole database: every later statement of
    every client failed, while health said "ok". The next query, or health, opens a new one; a
    query still on the old one fails as it would have, and gives nothing of the new one back."""
    service = Service(DuckDBSource(lake))
    old = service.engine.db
    _, running = service.stream(service.plan("SELECT id FROM reviews"))  # open on the old database
    _invalidate(service)
    assert _rows(service, "SELECT 41 + 1 AS x") == [{"x": 42}]
    assert service.engine.db is not old
    with pytest.raises(Exception):
        list(running)  # its database is gone
    assert _rows(service, "SELECT count(*) AS n FROM reviews")[0]["n"] > 0  # the source attaches anew
    assert _rows(service, "SELECT count(*) AS n FROM reviews")[0]["n"] > 0  # and was let go as it should
    _invalidate(service)
    renewed = service.engine.db
    assert service.health()["status"] == "ok" and service.engine.db is not renewed


def test_a_stream_left_on_a_replaced_database_ends_at_once_with_a_clear_error(lake):
    """Round 12: a client that stopped reading kept the old database alive through a renewal, its
    memory limit, spill allowance and threads beside the new one's, and (a failing cleanup leaving
    its result in a reference cycle) even after the client left. Renewal now ends such a query,
    giving back its slot: with one slot, health finds it free rather than busy."""
    service = Service(DuckDBSource(lake), limits=Limits(max_queries=1))
    _, silent = service.stream(service.plan("SELECT id FROM reviews"))  # holds the one slot, unread
    _invalidate(service)
    assert service.health() == {"status": "ok", "source": service.source.describe(), "views": []}
    with pytest.raises(SourceUnavailable, match="database was replaced after an internal DuckDB error"):
        list(silent)
    assert _rows(service, "SELECT count(*) AS n FROM reviews")[0]["n"] > 0


def test_a_query_ending_on_the_old_database_during_a_renewal_leaves_the_new_one_alone(lake, monkeypatch):
    """Round 13: the source counted its queries for whichever database was newest. A query on the
    old one that ended while the new one opened took the reset count to -1, and from then on no
    query attached the source again ('No catalog + schema named "lake"'), while health said ok."""
    service = Service(DuckDBSource(lake, keep_attached=0.5))
    _, old = service.stream(service.plan("SELECT id FROM reviews"))
    next(old)
    _invalidate(service)
    opening = threading.Event()
    open_database = Engine._open

    def slow_open(engine):  # opening takes ~35 ms, longer on a loaded server: room for the old query to end
        opening.set()
        time.sleep(0.5)
        open_database(engine)

    monkeypatch.setattr(Engine, "_open", slow_open)
    renewal = threading.Thread(target=service.health)
    renewal.start()
    opening.wait()
    old.close()  # the old query ends while the new database opens
    renewal.join()
    for _ in range(3):  # and each query attaches and lets go in the new one
        assert _rows(service, "SELECT count(*) AS n FROM reviews")[0]["n"] > 0


def test_a_query_whose_database_is_replaced_while_it_waits_starts_on_the_new_one(lake, monkeypatch):
    """Round 13: a query that took the database, then waited for a slot while a renewal closed it,
    got INTERNAL ("Connection already closed"); it now starts again on the new one."""
    service = Service(DuckDBSource(lake), limits=Limits(max_queries=1, queue_seconds=10))
    plan, answers = service.plan("SELECT count(*) AS n FROM reviews"), []
    with service.engine.admitted():  # the one slot, taken by work that is not a query (a renewal keeps it)
        entering, enter = threading.Event(), service.engine.admission.enter
        monkeypatch.setattr(service.engine.admission, "enter", lambda wait=True: entering.set() or enter(wait))
        waiting = threading.Thread(target=lambda: answers.append(list(service.stream(plan)[1])))
        waiting.start()
        entering.wait()  # it holds the old database and waits for the slot
        time.sleep(0.2)
        _invalidate(service)
        old = service.engine.db
        assert service.health()["busy"] and service.engine.db is not old  # renewed: the old one is closed
    waiting.join(10)
    assert answers and answers[0][0].column("n")[0].as_py() > 0


def test_a_query_mid_step_when_its_database_is_replaced_is_interrupted(lake):
    """Round 14: a query busy in a step at a renewal ran to its end on the old database, under that
    database's own memory limit, spill allowance and threads (DuckDB cannot close a busy
    connection): a client starting heavy queries and renewing in between held several times the
    server's limits. Now the step is interrupted and its client told to run it again."""
    service = Service(DuckDBSource(lake))
    plan = service.plan("SELECT sum(i) AS s FROM range(100000000000) t(i)")  # about 90 s of work
    outcome = []

    def run_it():
        try:
            outcome.append(list(service.stream(plan)[1]))
        except Exception as e:
            outcome.append(e)

    busy = threading.Thread(target=run_it)
    busy.start()
    time.sleep(0.5)  # mid-step: DuckDB runs the aggregate in the stream's first step
    _invalidate(service)
    service.health()  # renews
    busy.join(30)
    assert not busy.is_alive() and isinstance(outcome[0], SourceUnavailable)
    assert "run it again" in str(outcome[0])

