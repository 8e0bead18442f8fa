"""The source and sink contracts as a whole: options through open_source, one quoting rule, the
layers (sinks and the Dremio client below enrichment)."""
from __future__ import annotations

import inspect
import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest

from flight_lstm.dremio import parse_uri
from flight_lstm.identifiers import quote
from flight_lstm.sources import SOURCES, open_source
from flight_lstm.sources.base import Source


def test_every_source_takes_every_option_of_the_contract():
    options = [name for name, p in inspect.signature(Source.from_uri).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert options == ["keep_attached"]
    for kind in SOURCES.values():
        assert set(options) <= set(inspect.signature(kind.from_uri).parameters), kind.__name__


def test_open_source_passes_options(tmp_path, monkeypatch):
    lake = tmp_path / "lake.db"
    duckdb.connect(str(lake)).close()
    assert open_source(f"duckdb://{lake}").keep_attached == 0
    assert open_source(f"duckdb://{lake}", keep_attached=2.5).keep_attached == 2.5
    with pytest.raises(ValueError, match="keep_attached"):
        open_source(str(lake), keep_attached=-1)
    with pytest.raises(TypeError):
        open_source(str(lake), colour="blue")
    monkeypatch.setenv("DREMIO_PASSWORD", "pw")
    monkeypatch.delenv("DREMIO_TOKEN", raising=False)
    dremio = open_source("dremio://alice@127.0.0.1:1", keep_attached=0.5)  # nothing to keep: taken, unused
    assert dremio.describe() == "dremio:alice@127.0.0.1:1"


def test_parsed_dremio_settings_never_show_the_secret(monkeypatch):
    monkeypatch.delenv("DREMIO_PASSWORD", raising=False)
    monkeypatch.setenv("DREMIO_TOKEN", "pat-secret")
    settings = parse_uri("dremio+tls://h:1?routing_tag=x&system_tables=true")
    assert settings.token == "pat-secret" and settings.system_tables and settings.headers == {"routing_tag": "x"}
    assert "pat-secret" not in repr(settings)
    assert "s3cret" not in repr(parse_uri("dremio://bob:s3cret@h"))


def test_one_identifier_quoting_rule():
    assert quote("a") == '"a"' and quote('we"ird') == '"we""ird"' and quote("") == '""'
    name = 'we"ird name'
    assert duckdb.sql(f"SELECT 1 AS {quote(name)}").columns == [name]


def test_sinks_and_the_dremio_client_load_without_enrichment():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, flight_lstm.sinks, flight_lstm.dremio, flight_lstm.sources; "
                               "print(sorted(m for m in sys.modules if m.startswith('flight_lstm.enrich')))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_duckdb_source_lists_with_one_kept_duckdb_and_leaves_the_file_free(tmp_path):
    """Round 15: each listing opened a DuckDB, which trims glibc's heap and so waited 5-7 s (health
    10 s) while a query filled it. Listings now share one DuckDB that attaches the file only while
    listing: a writer takes the file between listings, and a file gone or broken is told as such."""
    from flight_lstm.errors import SourceUnavailable
    from flight_lstm.sources.duckdb import DuckDBSource

    path = tmp_path / "lake.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE a AS SELECT 1 AS x")
    source = DuckDBSource(path)
    assert source.tables() == ["a"]
    kept = source._lister
    with duckdb.connect(str(path)) as writer:  # the file is free: a writer opens it
        writer.execute("CREATE SCHEMA s; CREATE TABLE s.b AS SELECT 2 AS y")
    assert source.tables() == ["a", "s.b"] and source._lister is kept
    path.unlink()
    with pytest.raises(SourceUnavailable, match="does not exist"):
        source.tables()
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(SourceUnavailable):
        source.tables()
    path.unlink()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE c AS SELECT 3 AS z")
    assert source.tables() == ["c"]


def test_a_corrupt_duckdb_file_is_an_unavailable_source_not_an_internal_error(tmp_path):
    """Round 16: one flipped byte (a bad disk, a torn copy) made DuckDB raise a plain error that
    health and queries passed on as INTERNAL; health now says "unavailable", naming the corruption,
    and a query gets the source's error."""
    from flight_lstm.errors import SourceUnavailable
    from flight_lstm.service import Service
    from flight_lstm.sources.duckdb import DuckDBSource

    path = tmp_path / "lake.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE big AS SELECT i, i % 97 AS g, 'text ' || i AS s FROM range(200000) t(i)")
    service = Service(DuckDBSource(path))
    assert service.health()["status"] == "ok"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    health = service.health()
    assert health["status"] == "unavailable" and "corrupt" in health["reason"]
    with pytest.raises(SourceUnavailable, match="corrupt"):
        _, batches = service.stream(service.plan("SELECT count(*) AS n FROM big"))
        list(batches)
    service.close()


def _writer(path) -> list[str]:
    """A process that writes the file (a table more)."""
    return [sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).execute('CREATE TABLE w (x INT)')"]


def _assert_locked_out(path) -> None:
    locked = subprocess.run(_writer(path), capture_output=True, text=True)
    assert locked.returncode != 0 and "lock" in locked.stderr.lower()


def test_listing_the_source_keeps_a_running_querys_lock_on_the_file(tmp_path):
    """Round 16: DuckDB's file locks are the process's (POSIX): a listing that attached the file in
    a DuckDB of its own and let go of it dropped the lock of the query reading it, and a writer then
    rewrote the table under the query, which returned the writer's rows. The engine's database now
    lists it, attached as for a query: the writer stays locked out until the query ends."""
    from flight_lstm.errors import SourceUnavailable
    from flight_lstm.service import Service
    from flight_lstm.sources.duckdb import DuckDBSource

    path = tmp_path / "lake.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE big AS SELECT i FROM range(3000000) t(i)")
    service = Service(DuckDBSource(path))
    _, batches = service.stream(service.plan("SELECT i FROM big"))
    next(batches)  # the query is reading the file
    assert service.source.tables() == ["big"]
    _assert_locked_out(path)
    assert sum(len(b) for b in batches) > 0  # the query reads on to its end
    service.close()
    assert subprocess.run(_writer(path), capture_output=True, text=True).returncode == 0  # let go once it ended
    path.unlink()  # listed in the engine's database now: a file gone is said so there too
    with pytest.raises(SourceUnavailable, match="does not exist"):
        service.source.tables()


def test_a_duckdb_source_gives_its_tables_types_as_duckdb_resolves_their_names(tmp_path):
    """The planner sizes a query by its tables' types (plan/size.py). DuckDB resolves each name as
    the query's own connection does (round 26: `lake.t` had been looked up as schema `lake`, so its
    wide column went unseen), in a DuckDB that opens no file but the source's: a path is no table."""
    from flight_lstm.sources.duckdb import DuckDBSource

    path, csv = tmp_path / "lake.db", tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE T (x INT, s STRUCT(a INT, b VARCHAR)); CREATE SCHEMA s; CREATE TABLE s.b (y INT)")
    source = DuckDBSource(path)
    names = [("t",), ("T",), ("main", "t"), ("lake", "t"), ("LAKE", "main", "t"), ("s", "b"), ("b",), ("nope",),
             (str(csv),), ('t" LIMIT 0; DROP TABLE t; --',), ("memory", "main", "t"), ("a", "b", "c", "d")]
    types = source.table_types(names)
    assert sorted(types) == sorted(names[:6])
    assert all(types[n].names == ["x", "s"] and types[n].field("s").type.num_fields == 2 for n in names[:5])
    assert types[("s", "b")].names == ["y"]
    with duckdb.connect(str(path)) as writer:  # the file changed: its types are read again
        writer.execute("ALTER TABLE t ADD COLUMN z INT")
    assert source.table_types([("t",)])[("t",)].names == ["x", "s", "z"]


def test_types_are_those_of_the_file_queries_read_and_kept_only_while_it_is_the_files(tmp_path):
    """Round 27: a query kept the replaced file attached, the types were read there and kept under
    the new file's version, so the new file's wide column went unseen until it changed again. While
    a query holds a file that has changed since, queries started meanwhile read the held one: its
    types answer, and nothing is kept (the source's version is None, so no plan is cached)."""
    import os

    from flight_lstm.service import Service
    from flight_lstm.sources.duckdb import DuckDBSource

    path, new = tmp_path / "lake.db", tmp_path / "new.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE events AS SELECT range AS id, 1 AS payload FROM range(100)")
    with duckdb.connect(str(new)) as con:
        con.execute("CREATE TABLE events (id INT, payload STRUCT(a INT, b INT, c INT))")
    service = Service(DuckDBSource(path), batch_rows=10)
    try:
        _, batches = service.stream(service.plan("SELECT id FROM events"))
        next(batches)  # the query holds the file
        os.utime(path)  # touched: the same file, another version
        # round 28: the types were then read by attaching the file alone, whose letting go dropped
        # the query's lock (POSIX), and a writer took the file under the query
        assert service.source.table_types([("EVENTS",)])[("EVENTS",)].field("payload").type == pa.int32()
        _assert_locked_out(path)
        os.replace(new, path)
        # queries started now read the file held, as the types say; none of it is kept meanwhile
        assert service.source.version() is None
        assert service.source.table_types([("events",)])[("events",)].field("payload").type == pa.int32()
        batches.close()
        assert service.source.version() is not None
        assert service.source.table_types([("events",)])[("events",)].field("payload").type.num_fields == 3
    finally:
        service.close()


def test_nothing_attaches_the_file_alone_while_a_forgotten_database_still_reads_it(tmp_path):
    """Round 29: a renewal forgets the broken database before its queries end; a listing or a types
    lookup meanwhile attached the file alone, and letting go dropped their lock (a writer took the
    file under a query). It is now refused (retry) until they end."""
    from flight_lstm.errors import SourceUnavailable
    from flight_lstm.service import Service
    from flight_lstm.sources.duckdb import DuckDBSource

    path = tmp_path / "lake.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE big AS SELECT range AS i FROM range(5000)")
    service = Service(DuckDBSource(path), batch_rows=10)
    try:
        _, batches = service.stream(service.plan("SELECT i FROM big"))
        next(batches)
        service.source.forget(service.engine.db)  # as a renewal does first
        for call in (service.source.tables, lambda: service.source.table_types([("BIG",)])):
            with pytest.raises(SourceUnavailable, match="retry"):
                call()
        _assert_locked_out(path)
        batches.close()  # its query ends: the file is free to read again
        assert service.source.tables() == ["big"]
    finally:
        service.close()
