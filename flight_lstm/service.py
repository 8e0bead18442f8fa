"""The product's core, with no wire protocol: plan SQL, find schemas, stream results, describe.

The Flight server (and later the enrichment job) are thin faces over this.
"""
from __future__ import annotations

import dataclasses
import re
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from flight_lstm.errors import InvalidQuery
from flight_lstm.exchange import exchange
from flight_lstm.execute import Engine
from flight_lstm.plan import Catalog, Plan
from flight_lstm.plan.row_wise import plan_row_wise
from flight_lstm.sources import Source
from udfs import OPERATORS
from udfs.base import registry

CACHE_BYTES = 16 * 2**20  # per cache: plans, or schemas, by the query texts and SQL they hold


def quote(name: str) -> str:
    """A name as one double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class Service:
    def __init__(self, source: Source, *, views: dict[str, str] | None = None, **engine_options):
        self.source = source
        self.engine = Engine(source, OPERATORS, **engine_options)
        self.catalog = Catalog(operators=OPERATORS, check_model=check_model,
                               pushdown_dialect=source.pushdown_dialect, columns_of=source.columns)
        self.view_sql = dict(views or {})
        self._plans = SourceCache(source, plan_bytes)
        self._schemas = SourceCache(source, schema_bytes)
        for name, sql in self.view_sql.items():
            self.catalog.add_view(name, sql)

    def close(self) -> None:
        """The server is stopping: the source lets go of what it kept between queries."""
        self.engine.close()

    def plan(self, sql: str) -> Plan:
        """Cached per query text while the source stays the same: GetFlightInfo and DoGet each
        plan the query, and planning costs 1-2 ms."""
        return self._plans.get(sql, lambda: self._plan_in_slot(sql))

    def _plan_in_slot(self, sql: str) -> Plan:
        """Planning a large text costs CPU (sqlglot, then DuckDB's parse): it waits for a slot."""
        with self.engine.admitted():
            return self.catalog.plan(sql)

    def dataset_sql(self, name: str, kind: str | None = None) -> str:
        """The query behind a dataset: a published view (by name) or a source table (as listed).
        A caller that already knows the kind (from `relations`) saves listing the source again."""
        if kind is None:
            kind = "VIEW" if name.lower() in self.catalog.views else "TABLE" if name in self._tables() else None
        if kind is None:
            raise InvalidQuery(f"unknown dataset {name!r}; ListFlights lists them")
        return f"SELECT * FROM {quote(name) if kind == 'VIEW' else name}"

    def explain(self, sql: str) -> dict:
        """How a query splits: what each source scan runs there, what runs here in DuckDB, and which
        operator calls the engine applies to its batches itself."""
        plan = self.plan(sql)
        return {"local_sql": plan.sql, "scans": [{"name": n, "sql": q} for n, q in plan.scans],
                "tables": list(plan.tables), "operators": sorted(plan.operators),
                "lifted": plan.lift and {"duckdb_sql": plan.lift.sql,
                                         "calls": [c.operator for c in plan.lift.calls]}}

    def datasets(self) -> Iterator[tuple[str, str, pa.Schema]]:
        """(name, the query behind it, its schema) for each table and view, listing the source once."""
        for name, kind in self.relations():
            sql = self.dataset_sql(name, kind)
            yield name, sql, self.schema(self.plan(sql))

    def relations(self) -> list[tuple[str, str]]:
        """(name, "TABLE" or "VIEW"): the source's tables, then the published views."""
        return [*((t, "TABLE") for t in self._tables()), *((v, "VIEW") for v in self.view_sql)]

    def _tables(self) -> list[str]:
        """Listing the source is work a client asks for: it takes a query slot like a query."""
        with self.engine.admitted():
            return self.source.tables()

    def dataset_schema(self, name: str, kind: str | None = None) -> pa.Schema:
        return self.schema(self.plan(self.dataset_sql(name, kind)))

    def schema(self, plan: Plan, params: list | None = None) -> pa.Schema:
        """The result schema. Cached per query while the source stays the same, so GetFlightInfo
        before each DoGet (and ListFlights) does not open the source every time."""
        _check_params(plan, params)
        if params:
            return self.engine.schema(plan, params)
        return self._schemas.get(plan.sql, lambda: self.engine.schema(plan))

    def stream(self, plan: Plan, cancelled: Callable[[], bool] = lambda: False, params: list | None = None):
        _check_params(plan, params)
        return self.engine.stream(plan, cancelled, params=params)

    def exchange(self, sql: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                 cancelled: Callable[[], bool] = lambda: False) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run row-wise SQL over a table named `input` holding the caller's batches, one at a time:
        (output schema, one output batch per input batch, in order)."""
        with self.engine.admitted():  # planning costs CPU like any query's
            plan = plan_row_wise(sql, self.catalog)
        return exchange(self.engine, plan, schema, batches, cancelled)

    def warm_up(self) -> None:
        """Load the default models and run each once, so the first query pays nothing and a
        broken install fails at start."""
        from udfs import forecast, sentiment

        sentiment(pa.array(["warm up"]))
        forecast(pa.array([[1.0, 2.0, 3.0]]), 1)

    def health(self) -> dict:
        return {"status": "ok", "source": self.source.describe(), "views": sorted(self.view_sql)}

    def models(self) -> list[dict]:
        return [card_summary(card) for card in registry().cards()]


class SourceCache:
    """Values computed from a query's text, kept while the source's `version` stays the same; a
    source with no version (Dremio) caches nothing. Bounded by bytes, not entries: a query text
    may be a megabyte, so the least recently used entries go once `max_bytes` is passed."""

    def __init__(self, source: Source, weigh: Callable[[object], int], max_bytes: int = CACHE_BYTES):
        self.source, self.weigh, self.max_bytes = source, weigh, max_bytes
        self._values: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable):
        version = self.source.version()
        if version is None:
            return compute()
        with self._lock:
            found = self._values.get((key, version))
            if found is not None:
                self._values.move_to_end((key, version))
                return found[0]
        value = compute()
        size = len(key) + self.weigh(value)
        with self._lock:
            if (key, version) not in self._values and size <= self.max_bytes:
                self._values[key, version] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._values.popitem(last=False)
                    self._bytes -= dropped
        return value

    @property
    def bytes(self) -> int:
        return self._bytes


def plan_bytes(plan: Plan) -> int:
    """About what a cached plan holds: its SQL texts (the rest is small and fixed)."""
    return len(plan.sql) + (len(plan.lift.sql) if plan.lift else 0) + sum(len(q) for _, q in plan.scans) + 512


def schema_bytes(schema: pa.Schema) -> int:
    return schema.serialize().size


def _check_params(plan: Plan, params: list | None) -> None:
    if params and plan.scans:
        raise InvalidQuery("bound parameters work only with a DuckDB source: a pushdown source runs "
                           "part of the query elsewhere")


def card_summary(card) -> dict:
    """A model card for clients: what it is and how it scores, not where it lies on disk nor the
    training machine's folders (a file keeps its name)."""
    return _without_folders({k: v for k, v in dataclasses.asdict(card).items() if k != "path"})


_FOLDERS = re.compile(r"[^\s'\",()]*[\\/]")  # a token's folders: all up to its last slash


def _without_folders(value):
    if isinstance(value, dict):
        return {k: _without_folders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_folders(v) for v in value]
    return _FOLDERS.sub("", value) if isinstance(value, str) else value


def check_model(kind: str, ref: str) -> None:
    from flight_lstm.models import ModelNotFound

    try:
        registry().resolve(kind, ref)
    except ModelNotFound as e:
        raise InvalidQuery(str(e)) from None
