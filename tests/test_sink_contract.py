"""The Sink contract (flight_lstm/sinks/base.py), the same checks over every target, each real: a
DuckDB table in a file made by the test, a Parquet directory, an Iceberg table in a warehouse of
pyiceberg's SQL catalog, and a Dremio table through the stand-in of Dremio's Flight endpoint.

What a target may differ in is declared once, in its `Target`: whether it `replaces` (re-scoring;
else it refuses and stays append-only), and whether a commit killed part way leaves nothing of it
(every target but Dremio, where a commit is several statements and a kill leaves whole ones), and
for a target in local `files`, that a commit the file system refuses is one line of TargetError."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa
import pytest
from pyiceberg.table import Transaction

import flight_lstm.sinks.dremio as dremio_sink
import flight_lstm.sinks.parquet as parquet_sink
from dremio_fixtures import PASSWORD, env  # noqa: F401  (env is a fixture)
from dremio_standin import DremioStandin
from flight_lstm.sinks import SINKS, Sink, TargetError, open_sink
from flight_lstm.sinks.duckdb import DuckDBTableSink

KINDS = ["duckdb", "parquet", "iceberg", "dremio"]
COLUMNS = ["id", "review", "score", "_model", "_scored_at"]
KEYS = ["id"]
# To the millisecond: Dremio keeps no more (flight_lstm/sinks/dremio.py).
SCORED_AT = datetime(2026, 3, 1, 12, 30, 45, 123000, tzinfo=timezone.utc)
STATEMENT = 10  # the rows of one Dremio statement here, so that a commit is several


class Killed(BaseException):
    """The process dies here: no handler of the sink's sees it."""


def rows(ids, *, model: str = "m@1", score: float = 0.5) -> pa.Table:
    ids = list(ids)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "review": [f"review {i} it's" for i in ids],
        "score": pa.array([score + i for i in ids], pa.float64()),
        "_model": [model] * len(ids),
        "_scored_at": pa.array([SCORED_AT] * len(ids), pa.timestamp("us", tz="UTC")),
    })


@dataclass
class Target:
    """One target under test: its names, and what its contract says of it."""

    source: str  # the job's source URI
    into: str  # the `--into` value
    alias: tuple[str, str]  # (source, into) naming the same target otherwise
    dies_in_commit: Callable[[pytest.MonkeyPatch], int]  # the next commit is killed part way; rows it leaves
    left_behind: Callable[[], list[Path]] = list  # what a killed commit leaves for recover() to clear
    files: Path | None = None  # the local directory a commit writes its files in, if any

    def open(self) -> Sink:
        return open_sink(self.into, source_uri=self.source)

    def open_alias(self) -> Sink:
        source, into = self.alias
        return open_sink(into, source_uri=source)


def created(target: Target, first: pa.Table) -> Sink:
    """The target as a run makes it: schema() first (None: not there yet), then the first commit."""
    sink = target.open()
    assert sink.schema() is None
    sink.commit(first, KEYS, replace=False)
    return sink


def ids_in(sink: Sink) -> list[int]:
    return sorted(sink.read(["id"]).column("id").to_pylist())


# ---------------------------------------------------------------- the targets, and how a kill lands in a commit


class _CommitDies:
    """A DuckDB connection that dies instead of committing: the chunk's statements ran, unseen."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def commit(self):
        raise Killed()


def _duckdb_dies(mp: pytest.MonkeyPatch) -> int:
    real = DuckDBTableSink._connect
    mp.setattr(DuckDBTableSink, "_connect", lambda self, *, read_only: _CommitDies(real(self, read_only=read_only)))
    return 0


def _parquet_dies(mp: pytest.MonkeyPatch) -> int:
    def dying(src, dst):  # the file is written and synced under its hidden name; the rename never comes
        raise Killed()

    mp.setattr(parquet_sink.os, "rename", dying)
    return 0


def _iceberg_dies(mp: pytest.MonkeyPatch) -> int:
    def dying(tx):  # data files and manifests are written; the catalog commit never comes
        raise Killed()

    mp.setattr(Transaction, "commit_transaction", dying)
    return 0


def _dremio_dies(mp: pytest.MonkeyPatch) -> int:
    real, sent = dremio_sink.DremioSink._write, []

    def dying(self, sql):
        sent.append(sql)
        if len(sent) == 2:  # the commit's second statement never reaches Dremio
            raise Killed()
        return real(self, sql)

    mp.setattr(dremio_sink, "STATEMENT_ROWS", STATEMENT)
    mp.setattr(dremio_sink.DremioSink, "_write", dying)
    return STATEMENT  # the first statement landed, whole


@pytest.fixture(params=KINDS)
def target(request, tmp_path) -> Target:
    (tmp_path / "sub").mkdir()
    duckdb.connect(str(tmp_path / "lake.db")).close()
    lake = f"duckdb://{tmp_path}/lake.db"
    if request.param == "duckdb":
        return Target(lake, "scored", (f"duckdb://{tmp_path}/sub/../lake.db", "main.scored"), _duckdb_dies)
    if request.param == "parquet":
        return Target(lake, f"parquet://{tmp_path}/scored", (lake, f"parquet://{tmp_path}/sub/../scored"),
                      _parquet_dies, lambda: sorted((tmp_path / "scored").glob(f"{parquet_sink.PENDING}*")),
                      files=tmp_path / "scored")
    if request.param == "iceberg":
        (tmp_path / "wh").mkdir()
        return Target(lake, f"iceberg://{tmp_path}/wh/lake.scored",
                      (lake, f"iceberg://{tmp_path}/sub/../wh/lake.scored"), _iceberg_dies,
                      files=tmp_path / "wh" / "lake" / "scored" / "data")
    request.getfixturevalue("env")  # the password the stand-in takes, as DREMIO_PASSWORD
    con = duckdb.connect()
    standin = DremioStandin(con, {}, users={"alice": PASSWORD}).start()
    request.addfinalizer(con.close)
    request.addfinalizer(standin.stop)
    # The alias carries the password in the URI: describe() must not show it.
    return Target(f"dremio://alice@127.0.0.1:{standin.port}", "dremio:space.folder.scored",
                  (f"dremio://alice:{PASSWORD}@127.0.0.1:{standin.port}", 'dremio:SPACE.Folder."SCORED"'),
                  _dremio_dies)


# ---------------------------------------------------------------- the contract


def test_every_sink_is_under_contract():
    assert sorted(SINKS) == sorted(KINDS)


def test_schema_is_none_until_the_first_commit_creates_the_target(target):
    created(target, rows(range(3)))
    schema = target.open().schema()
    assert schema.names == COLUMNS
    assert pa.types.is_integer(schema.field("id").type) and pa.types.is_floating(schema.field("score").type)
    scored_at = schema.field("_scored_at").type  # lineage comes back as base.LINEAGE has it
    assert pa.types.is_timestamp(scored_at) and scored_at.unit == "us" and scored_at.tz in ("UTC", "Etc/UTC")


def test_commits_read_back_as_written(target):
    created(target, rows(range(10))).commit(rows(range(10, 25)), KEYS, replace=False)
    back = target.open().read(COLUMNS).sort_by("id")
    assert back.column_names == COLUMNS
    assert back.to_pylist() == rows(range(25)).to_pylist()
    assert target.open().read(["id"]).column_names == ["id"]


def test_a_recommit_replaces_where_the_target_replaces_and_is_refused_where_not(target):
    sink = created(target, rows(range(10)))
    again = rows(range(5, 15), model="m@2", score=-1.0)  # five keys there, five new
    if type(sink).replaces:
        sink.commit(again, KEYS, replace=True)
        expected = pa.concat_tables([rows(range(5)), again])
    else:
        with pytest.raises(TargetError, match="append-only"):
            sink.commit(again, KEYS, replace=True)
        assert target.open().read(COLUMNS).sort_by("id").to_pylist() == rows(range(10)).to_pylist()
        sink.commit(rows(range(10, 15)), KEYS, replace=False)  # new keys still append
        expected = rows(range(15))
    assert target.open().read(COLUMNS).sort_by("id").to_pylist() == expected.to_pylist()


def test_a_commit_killed_part_way_leaves_whole_commits_and_a_rerun_writes_each_key_once(target):
    sink = created(target, rows(range(10)))
    with pytest.MonkeyPatch.context() as mp:
        left = target.dies_in_commit(mp)
        with pytest.raises(Killed):
            sink.commit(rows(range(10, 40)), KEYS, replace=False)
    assert ids_in(target.open()) == list(range(10 + left))  # readers see nothing of it (Dremio: whole statements)

    rerun = target.open()  # the next run: recover() under the lock, before anything is read
    rerun.recover()
    assert target.left_behind() == []
    assert rerun.schema().names == COLUMNS
    done = ids_in(rerun)
    assert done == list(range(10 + left))
    rerun.commit(rows(i for i in range(10, 40) if i not in done), KEYS, replace=False)
    assert ids_in(target.open()) == list(range(40))


@pytest.mark.parametrize("target", ["parquet", "iceberg"], indirect=True)
def test_a_commit_the_file_system_refuses_is_a_one_line_target_error_and_a_rerun_writes_each_key_once(target):
    sink = created(target, rows(range(10)))
    aside = target.files.with_name("aside")
    target.files.rename(aside)
    target.files.write_text("a file where the target's directory was")
    with pytest.raises(TargetError) as refused:
        sink.commit(rows(range(10, 20)), KEYS, replace=False)
    message = str(refused.value)
    assert re.match(rf"cannot write {re.escape(sink.describe())}: .*{re.escape(str(target.files))}", message)
    assert "\n" not in message

    target.files.unlink()
    aside.rename(target.files)
    rerun = target.open()
    rerun.recover()
    assert target.left_behind() == []
    assert ids_in(rerun) == list(range(10))  # nothing of the refused commit
    rerun.commit(rows(range(10, 20)), KEYS, replace=False)
    assert ids_in(target.open()) == list(range(20))


def test_describe_names_the_target_without_secrets(target):
    for sink in (target.open(), target.open_alias()):
        text = sink.describe()
        assert sink.scheme in text and "scored" in text.lower()
        assert PASSWORD not in text


def test_lock_path_is_one_per_target_whatever_its_name_and_state(target):
    before = target.open().lock_path
    assert before.is_absolute() and before.parent.is_dir()  # a run can take it before the target exists
    created(target, rows(range(3)))
    alias = target.open_alias()
    assert target.open().lock_path == before == alias.lock_path
    assert ids_in(alias) == [0, 1, 2]  # the alias is the same target
