"""An Apache Iceberg table through pyiceberg. Each chunk is one transaction, so one catalog
commit: readers see the whole chunk (and, when re-scoring, the rows it replaces gone) or none of
it. Embedded default: pyiceberg's SQL catalog named `flight_lstm` on SQLite, `catalog.db` in the
warehouse directory, which a run creates if it is missing.

    iceberg:///abs/warehouse/namespace.table

Read it back with the same catalog (README, Enrichment):
    SqlCatalog("flight_lstm", uri="sqlite:////abs/warehouse/catalog.db", warehouse="file:///abs/warehouse")
"""
from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa

from flight_lstm.errors import first_line
from flight_lstm.sinks.base import Sink, TargetError, os_errors, refused

CATALOG_NAME, CATALOG_FILE = "flight_lstm", "catalog.db"


class IcebergSink(Sink):
    scheme = "iceberg"

    def __init__(self, warehouse: Path, namespace: str, table: str):
        self.warehouse, self.namespace, self.table = Path(warehouse).resolve(), namespace, table
        self.identifier = f"{namespace}.{table}"

    @classmethod
    def from_uri(cls, uri: str, *, source_uri: str) -> "IcebergSink":
        parsed = urlparse(uri)
        path = Path(unquote(parsed.netloc + parsed.path))
        namespace, _, table = path.name.rpartition(".")
        if not path.is_absolute() or not namespace or not table:
            raise TargetError(f"an Iceberg target is iceberg:///abs/warehouse/namespace.table, got {uri!r}")
        return cls(path.parent, namespace, table)

    @functools.cached_property
    def catalog(self):
        from pyiceberg.catalog.sql import SqlCatalog

        if not self.warehouse.is_dir():  # a run made it (lock_path); a reader finds nothing to read
            raise TargetError(f"Iceberg warehouse directory {self.warehouse} does not exist")
        from sqlalchemy.exc import SQLAlchemyError

        try:
            catalog = SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{self.warehouse / CATALOG_FILE}",
                                 warehouse=self.warehouse.as_uri())
            catalog.create_namespace_if_not_exists(self.namespace)
        except SQLAlchemyError as e:  # not a catalog: a directory, a corrupt or foreign file in its place
            raise TargetError(f"cannot open {self.describe()}'s catalog {self.warehouse / CATALOG_FILE}: "
                              f"{first_line(e.orig or e)}") from None
        return catalog

    @property
    def lock_path(self) -> Path:
        """The lock lives in the warehouse, so a run creates a missing warehouse (and its parents) here,
        before anything else touches it."""
        try:
            self.warehouse.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise refused(self.describe(), e) from None
        return self.warehouse / f".{self.identifier}.enrich.lock"

    def describe(self) -> str:
        return f"iceberg:{self.identifier}"

    def _load(self):
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            return None

    @os_errors
    def schema(self) -> pa.Schema | None:
        table = self._load()
        return None if table is None else table.schema().as_arrow()

    @os_errors
    def read(self, columns: list[str]) -> pa.Table:
        return self._load().scan(selected_fields=tuple(columns)).to_arrow()

    @os_errors
    def commit(self, rows: pa.Table, keys: list[str], *, replace: bool) -> None:
        table = self._load() or self.catalog.create_table_if_not_exists(self.identifier, schema=rows.schema)
        with table.transaction() as tx:
            if replace:
                tx.delete(delete_filter=_same_keys(rows, keys))
            tx.append(rows)


def _same_keys(rows: pa.Table, keys: list[str]):
    """An Iceberg filter matching exactly the key values in `rows`."""
    from pyiceberg.expressions import And, EqualTo, In, IsNull, Or

    if len(keys) == 1 and rows.column(keys[0]).null_count == 0:
        return In(keys[0], set(rows.column(keys[0]).to_pylist()))
    terms = []
    for row in rows.select(keys).to_pylist():
        parts = [IsNull(k) if v is None else EqualTo(k, v) for k, v in row.items()]
        terms.append(functools.reduce(And, parts))
    return functools.reduce(Or, terms)
