"""An append-only Parquet dataset directory: one file per committed chunk, written under a
hidden name beside the others and renamed into place, so readers never see a partial file.

Readers that follow the usual convention (pyarrow.dataset, Spark, DuckDB's `dir/*.parquet`)
skip names starting with '.'; a killed run's leftovers are removed by the next run."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from flight_lstm.sinks.base import Sink, TargetError, os_errors

PENDING = ".pending-"


class ParquetSink(Sink):
    scheme = "parquet"
    replaces = False  # append-only: re-scoring would need rewriting files readers may hold

    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()

    @classmethod
    def from_uri(cls, uri: str, *, source_uri: str) -> "ParquetSink":
        parsed = urlparse(uri)
        path = unquote(parsed.netloc + parsed.path)
        if not path.startswith("/"):
            raise TargetError(f"a Parquet target is parquet:///abs/dir, got {uri!r}")
        return cls(Path(path))

    @property
    def lock_path(self) -> Path:
        return self.directory.with_name(f".{self.directory.name}.enrich.lock")

    def describe(self) -> str:
        return f"parquet:{self.directory}"

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.parquet") if not p.name.startswith((".", "_")))

    @os_errors
    def schema(self) -> pa.Schema | None:
        self.directory.mkdir(exist_ok=True)  # not its parents: a typo in the path is refused
        files = self._files()
        return pq.read_schema(files[0]) if files else None

    @os_errors
    def read(self, columns: list[str]) -> pa.Table:
        return ds.dataset(self._files(), format="parquet").to_table(columns=columns)

    @os_errors
    def commit(self, rows: pa.Table, keys: list[str], *, replace: bool) -> None:
        if replace:
            raise TargetError("a Parquet target is append-only; it cannot re-score rows")
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        pending = self.directory / f"{PENDING}{name}"
        with open(pending, "wb") as f:
            pq.write_table(rows, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(pending, self.directory / name)
        _fsync_dir(self.directory)

    @os_errors
    def recover(self) -> None:
        for leftover in self.directory.glob(f"{PENDING}*"):
            leftover.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
