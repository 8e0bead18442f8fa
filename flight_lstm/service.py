"""The product's core, with no wire protocol: plan SQL, find schemas, stream results, describe.

The Flight server (and later the enrichment job) are thin faces over this.
"""
from __future__ import annotations

import dataclasses
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

CACHE_SIZE = 1024  # plans or schemas kept; a cache starts over when full


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
        self._plans = SourceCache(source)
        self._schemas = SourceCache(source)
        for name, sql in self.view_sql.items():
            self.catalog.add_view(name, sql)

    def close(self) -> None:
        """The server is stopping: the source lets go of what it kept between queries."""
        self.engine.close()

    def plan(self, sql: str) -> Plan:
        """Cached per query text while the source stays the same: GetFlightInfo and DoGet each
        plan the query, and planning costs 1-2 ms."""
        return self._plans.get(sql, lambda: self.catalog.plan(sql))

    def dataset_sql(self, name: str, kind: str | None = None) -> str:
        """The query behind a dataset: a published view (by name) or a source table (as listed).
        A caller that already knows the kind (from `relations`) saves listing the source again."""
        if kind is None:
            kind = "VIEW" if name.lower() in self.catalog.views else "TABLE" if name in self.source.tables() else None
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
        return [*((t, "TABLE") for t in self.source.tables()), *((v, "VIEW") for v in self.view_sql)]

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
        return exchange(self.engine, plan_row_wise(sql, self.catalog), schema, batches, cancelled)

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
    source with no version (Dremio) caches nothing."""

    def __init__(self, source: Source, size: int = CACHE_SIZE):
        self.source, self.size, self._values = source, size, {}

    def get(self, key: str, compute: Callable):
        version = self.source.version()
        if version is None:
            return compute()
        value = self._values.get((key, version))
        if value is None:
            value = compute()
            if len(self._values) >= self.size:
                self._values.clear()
            self._values[key, version] = value
        return value


def _check_params(plan: Plan, params: list | None) -> None:
    if params and plan.scans:
        raise InvalidQuery("bound parameters work only with a DuckDB source: a pushdown source runs "
                           "part of the query elsewhere")


def card_summary(card) -> dict:
    """A model card for clients: what it is and how it scores, not where it lies on disk."""
    return {k: v for k, v in dataclasses.asdict(card).items() if k != "path"}


def check_model(kind: str, ref: str) -> None:
    from flight_lstm.models import ModelNotFound

    try:
        registry().resolve(kind, ref)
    except ModelNotFound as e:
        raise InvalidQuery(str(e)) from None
