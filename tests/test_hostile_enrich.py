"""Hostile enrichment jobs, each a real run: one target reached by two names (symlinks) takes one
lock, a target the file system refuses is one line of error (no traceback) and loses no row, and
keys whose equality differs between engines (floating point, intervals, collated text, a key
repeated by a changed row or by DISTINCT) are refused or compared byte for byte, so no row is ever
written twice."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from enrichment import SQL, job, make_reviews, sentiment_module, source_sql, target_rows
from flight_lstm.cli import main
from flight_lstm.enrich import Job, JobError, TargetBusy, run
from flight_lstm.errors import InvalidQuery
from flight_lstm.sinks import TargetError, open_sink
from flight_lstm.sinks.parquet import ParquetSink


@pytest.fixture
def paused(monkeypatch):
    """Model calls wait for `release`; `scoring` is set once a run is inside one (holding its lock)."""
    scoring, release = threading.Event(), threading.Event()
    real = sentiment_module.load_model

    class Paused:
        def __init__(self, model):
            self.model = model

        def probabilities(self, texts):
            scoring.set()
            release.wait(60)
            return self.model.probabilities(texts)

    monkeypatch.setattr(sentiment_module, "load_model", lambda kind, model: Paused(real(kind, model)))
    yield scoring, release
    release.set()


def two_names(tmp_path, kind: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(source, into) of one target twice: by its real path and through a symlink."""
    lake = make_reviews(tmp_path / "lake.db")
    (tmp_path / "other").symlink_to(tmp_path)
    if kind == "parquet dir":
        (tmp_path / "scored").mkdir()
        (tmp_path / "alias").symlink_to(tmp_path / "scored")
        return (lake, f"parquet://{tmp_path}/scored"), (lake, f"parquet://{tmp_path}/alias")
    if kind == "parquet parent":
        return (lake, f"parquet://{tmp_path}/scored"), (lake, f"parquet://{tmp_path}/other/scored")
    if kind == "duckdb file":
        (tmp_path / "alias.db").symlink_to(tmp_path / "lake.db")
        return (lake, "reviews_scored"), (f"duckdb://{tmp_path}/alias.db", "reviews_scored")
    (tmp_path / "wh").mkdir()
    return (lake, f"iceberg://{tmp_path}/wh/lake.scored"), (lake, f"iceberg://{tmp_path}/other/wh/lake.scored")


@pytest.mark.parametrize("kind", ["parquet dir", "parquet parent", "duckdb file", "iceberg warehouse"])
def test_a_target_named_through_a_symlink_takes_the_same_lock(tmp_path, paused, kind):
    (lake, into), (other_lake, other_into) = two_names(tmp_path, kind)
    assert open_sink(into, source_uri=lake).lock_path == open_sink(other_into, source_uri=other_lake).lock_path
    scoring, release = paused
    first = []
    holder = threading.Thread(target=lambda: first.append(run(job(lake, into))))
    holder.start()
    try:
        assert scoring.wait(60), "the first run never started scoring"
        with pytest.raises(TargetBusy, match="another enrichment run"):
            run(job(other_lake, other_into))
    finally:
        release.set()
        holder.join(60)
    assert first[0].written == 60
    assert run(job(other_lake, other_into)).written == 0  # one after the other: each row once
    ids = target_rows(lake, into).column("id").to_pylist()
    assert ids == list(range(60))


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_file_left_alone(reviews_lake, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    sink = open_sink(f"parquet://{tmp_path}/scored", source_uri=reviews_lake)
    sink.lock_path.symlink_to(victim)
    with pytest.raises(TargetError, match="is a symlink"):
        run(job(reviews_lake, f"parquet://{tmp_path}/scored"))
    assert victim.read_text() == "keep me"


def enrich(lake: str, into: str) -> subprocess.CompletedProcess:
    """The real `flight-lstm enrich`, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", lake, "--sql", SQL,
                           "--key", "id", "--into", into], capture_output=True, text=True, timeout=300)


def one_error(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("refusal", ["an existing file", "under a file"])
def test_a_target_the_file_system_refuses_is_one_line_of_error_and_no_row_is_lost(reviews_lake, tmp_path, refusal):
    target = tmp_path / "scored"
    if refusal == "an existing file":
        target.write_text("not a directory")
        reason, undo = "File exists", target.unlink
    else:  # (a read-only directory is the same OSError path, and root, as CI runs, writes into one)
        parent = tmp_path / "parent"
        parent.write_text("not a directory")
        target, reason = parent / "scored", "Not a directory"

        def undo():
            parent.unlink()
            parent.mkdir()
    into = f"parquet://{target}"
    done = enrich(reviews_lake, into)
    assert done.returncode != 0
    line = one_error(done.stdout + done.stderr)
    assert f"parquet:{target}" in line and reason in line, line

    undo()
    assert run(job(reviews_lake, into)).written == 60
    assert run(job(reviews_lake, into)).written == 0
    assert target_rows(reviews_lake, into).column("id").to_pylist() == list(range(60))


def test_an_iceberg_catalog_that_is_not_one_is_one_line_of_error(reviews_lake, tmp_path):
    (tmp_path / "wh" / "catalog.db").mkdir(parents=True)  # a directory where the SQLite catalog goes
    done = enrich(reviews_lake, f"iceberg://{tmp_path}/wh/lake.scored")
    assert done.returncode != 0
    line = one_error(done.stdout + done.stderr)
    assert "iceberg:lake.scored" in line and "catalog.db" in line, line


def test_a_target_made_a_file_mid_run_ends_the_run_with_one_line_and_a_rerun_writes_the_rest(
        reviews_lake, tmp_path, monkeypatch, capsys):
    target, aside = tmp_path / "scored", tmp_path / "aside"
    into = f"parquet://{target}"
    real = ParquetSink.commit

    def then_a_file(sink, *args, **kwargs):  # after the first chunk, the directory becomes a file
        real(sink, *args, **kwargs)
        if not aside.exists():
            target.rename(aside)
            target.write_text("not a directory")

    monkeypatch.setattr(ParquetSink, "commit", then_a_file)
    assert main(["enrich", "--source", reviews_lake, "--sql", SQL, "--key", "id", "--into", into,
                 "--chunk-rows", "25"]) != 0
    line = one_error(capsys.readouterr().err)
    assert f"parquet:{target}" in line and "Not a directory" in line, line

    monkeypatch.setattr(ParquetSink, "commit", real)
    target.unlink()
    aside.rename(target)
    assert run(job(reviews_lake, into)).written == 35  # the first chunk was committed, the second not
    assert target_rows(reviews_lake, into).column("id").to_pylist() == list(range(60))


def keyed(lake, into, key_sql: str = "k", **options) -> Job:
    return Job.from_options("k", {"source": lake, "sql": f"SELECT {key_sql} AS k, sentiment(review) AS s FROM keyed",
                                  "key": "k", "into": into, "chunk_rows": 1, **options})


@pytest.mark.parametrize("values", [
    "(0.0::DOUBLE, 'good'), (-0.0::DOUBLE, 'bad')",  # the finding: 2 rows became 4
    "('nan'::DOUBLE, 'good')",
    "('nan'::DOUBLE, 'good'), (-'nan'::DOUBLE, 'bad')",
    "(1.5::REAL, 'good')",
    "([0.0::DOUBLE], 'good'), ([-0.0::DOUBLE], 'bad')",
    "({'x': 0.0::DOUBLE}, 'good'), ({'x': -0.0::DOUBLE}, 'bad')",
    "(INTERVAL 1 MONTH, 'good'), (INTERVAL 30 DAYS, 'bad')",
])
@pytest.mark.parametrize("into", ["keyed_scored", "parquet"])
def test_keys_without_exact_equality_are_refused_before_any_model_runs(reviews_lake, tmp_path, calls, values, into):
    into = f"parquet://{tmp_path}/scored" if into == "parquet" else into
    source_sql(reviews_lake, f"CREATE TABLE keyed AS SELECT * FROM (VALUES {values}) t(k, review)")
    with pytest.raises(InvalidQuery, match=r"key column 'k' is .*cannot identify rows.*DECIMAL"):
        run(keyed(reviews_lake, into))
    assert calls == []
    assert open_sink(into, source_uri=reviews_lake).schema() is None


def test_float_keys_cast_to_decimal_are_one_key_everywhere(reviews_lake, calls):
    source_sql(reviews_lake, "CREATE TABLE keyed AS SELECT * FROM "
                             "(VALUES (0.0::DOUBLE, 'good'), (-0.0::DOUBLE, 'bad')) t(k, review)")
    with pytest.raises(JobError, match="not unique"):  # as decimals 0.0 and -0.0 are the same key
        run(keyed(reviews_lake, "keyed_scored", "CAST(k AS DECIMAL(18, 6))"))
    assert calls == []
    source_sql(reviews_lake, "INSERT INTO keyed VALUES (0.25, 'fine')")
    source_sql(reviews_lake, "DELETE FROM keyed WHERE k = 0 AND review = 'bad'")
    assert run(keyed(reviews_lake, "keyed_scored", "CAST(k AS DECIMAL(18, 6))")).written == 2
    assert run(keyed(reviews_lake, "keyed_scored", "CAST(k AS DECIMAL(18, 6))")).written == 0


@pytest.mark.parametrize("into", ["keyed_scored", "parquet"])
def test_collated_text_keys_compare_byte_for_byte(reviews_lake, tmp_path, into):
    into = f"parquet://{tmp_path}/scored" if into == "parquet" else into
    source_sql(reviews_lake, "CREATE TABLE keyed (k VARCHAR COLLATE NOCASE, review VARCHAR)")
    source_sql(reviews_lake, "INSERT INTO keyed VALUES ('A', 'good'), ('a', 'bad'), ('b', 'fine')")
    assert run(keyed(reviews_lake, into)).written == 3  # was 5: 'A' and 'a' matched each other's chunk
    assert run(keyed(reviews_lake, into)).written == 0
    keys = open_sink(into, source_uri=reviews_lake).read(["k"]).column("k").to_pylist()
    assert sorted(keys) == ["A", "a", "b"]


def test_rescoring_a_collated_key_replaces_only_that_key(reviews_lake):
    source_sql(reviews_lake, "CREATE TABLE keyed AS SELECT * FROM (VALUES ('A', 'good', TIMESTAMP '2026-01-01'), "
                             "('a', 'bad', TIMESTAMP '2026-01-01')) t(k, review, updated_at)")
    source_sql(reviews_lake, "CREATE TABLE keyed_scored (k VARCHAR COLLATE NOCASE, updated_at TIMESTAMP, s DOUBLE, "
                             "_model VARCHAR, _scored_at TIMESTAMPTZ)")
    make = lambda: Job.from_options("k", {"source": reviews_lake, "key": "k", "into": "keyed_scored",
                                          "chunk_rows": 1, "watermark": "updated_at",
                                          "sql": "SELECT k, updated_at, sentiment(review) AS s FROM keyed"})
    assert run(make()).written == 2
    source_sql(reviews_lake, "UPDATE keyed SET updated_at = TIMESTAMP '2026-02-01' WHERE k = 'a'")
    assert run(make()).written == 1
    rows = open_sink("keyed_scored", source_uri=reviews_lake).read(["k", "updated_at"]).to_pylist()
    assert sorted((r["k"], r["updated_at"].month) for r in rows) == [("A", 1), ("a", 2)]


def test_a_key_repeated_by_a_changed_row_is_refused(reviews_lake):
    run(job(reviews_lake, watermark="updated_at"))
    # A second row for key 7, newer than the scored one: only it is pending, yet both match key 7.
    source_sql(reviews_lake, "INSERT INTO reviews VALUES (7, 0, 'a new review', TIMESTAMP '2026-02-01')")
    before = target_rows(reviews_lake)
    with pytest.raises(JobError, match=r"not unique.*\{'id': 7\}"):
        run(job(reviews_lake, watermark="updated_at"))
    assert target_rows(reviews_lake).equals(before)


def test_a_key_repeated_by_distinct_is_refused_before_it_is_written(reviews_lake):
    # The keys query (SELECT DISTINCT id % 7) has each key once; the chunk query, several reviews per key.
    sql = "SELECT DISTINCT id % 7 AS id, review, sentiment(review) AS s FROM reviews"
    with pytest.raises(JobError, match="not unique"):
        run(Job.from_options("d", {"source": reviews_lake, "sql": sql, "key": "id", "into": "distinct_scored"}))
    assert open_sink("distinct_scored", source_uri=reviews_lake).schema() is None
