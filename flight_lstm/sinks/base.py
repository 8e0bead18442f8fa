"""The one small interface every enrichment target implements: atomic, idempotent commits of
batches of rows, and a way to read back what is already there (so a rerun skips it)."""
from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path

import pyarrow as pa

from flight_lstm.errors import FlightLSTMError, first_line


# The lineage columns every enrichment run adds to the rows it commits (enrich/lineage.py): a
# target that stores them otherwise gives them back as these (e.g. Dremio's zone-less TIMESTAMP).
MODEL, SCORED_AT = "_model", "_scored_at"
LINEAGE = (pa.field(MODEL, pa.string()), pa.field(SCORED_AT, pa.timestamp("us", tz="UTC")))


class TargetError(FlightLSTMError):
    """The target cannot take the rows: missing schema, different columns, unwritable."""


class TargetUnavailable(TargetError):
    """The file system refused the target (a file where a directory goes, permission, read-only,
    full): fixable outside the job, so a scheduled job tries again at its next time."""


def refused(target: str, error: OSError, path: Path | None = None) -> TargetUnavailable:
    """The OS's reason and the path it refused (`path` when the error names none), on one line
    naming the target."""
    where = error.filename or path
    return TargetUnavailable(f"cannot write {target}: {error.strerror or first_line(error)}"
                             + (f": {where}" if where else ""))


def os_errors(method):
    """A sink method whose OSError reaches every caller (CLI, scheduler, Ray engine) as
    TargetUnavailable, one line and no traceback."""

    @functools.wraps(method)
    def guarded(self: "Sink", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            raise refused(self.describe(), e) from None

    return guarded


class Sink(ABC):
    """Where an enrichment run writes. Each `commit` is all-or-nothing for readers and for a run
    killed at any moment, so a rerun that skips the keys already written ends with each key once.
    A sink on a file system reports its refusals as TargetUnavailable (`os_errors`); a commit that
    fails so is whole or absent, as a killed one is."""

    scheme: str
    # Whether `commit(..., replace=True)` can swap rows of keys already written (re-scoring).
    replaces: bool = True

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, *, source_uri: str) -> "Sink":
        """Build from the `--into` value; `source_uri` is the job's source (a table target lives there)."""

    @property
    @abstractmethod
    def lock_path(self) -> Path:
        """The file whose flock keeps two runs from writing this target at once: one per target,
        whatever name a run gives it, so a local target is known by its resolved path (a symlink
        to it or to a parent, or a `..`, would otherwise give it two lock files)."""

    @abstractmethod
    def describe(self) -> str:
        """A short, secret-free name for logs."""

    @abstractmethod
    def schema(self) -> pa.Schema | None:
        """The target's columns, or None when it does not exist yet (the first commit creates it).
        Raise TargetError when it cannot exist (e.g. its schema or namespace is missing)."""

    @abstractmethod
    def read(self, columns: list[str]) -> pa.Table:
        """These columns of every row written so far (the target exists)."""

    @abstractmethod
    def commit(self, rows: pa.Table, keys: list[str], *, replace: bool) -> None:
        """Make `rows` visible at once, creating the target if needed; with `replace`, rows already
        written under the same keys go in the same commit. A run calls `schema()` first, under
        the lock: a sink may prepare the target's place there (Parquet makes its directory)."""

    def recover(self) -> None:
        """Clear what a killed run left behind (called under the lock, before anything is read)."""

