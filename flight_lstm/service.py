"""The product's core, with no wire protocol: plan SQL, find schemas, stream results, run
exchanges, plan and score enrichment runs, describe. The one door: the Flight server, DoExchange
and enrichment (local and Ray) use nothing below it.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from flight_lstm.engine import Engine, Limits
from flight_lstm.errors import InvalidQuery, QueryRefused, ResourceExhausted, SourceUnavailable
from flight_lstm.identifiers import quote
from flight_lstm.models import ModelNotFound
from flight_lstm.plan import Catalog, Plan
from flight_lstm.plan.increment import CHUNK, DONE, Increment, build
from flight_lstm.plan.parse import parse_one_query
from flight_lstm.sinks.keys import key_types
from flight_lstm.sources import Source, open_source
from udfs import OPERATORS
from udfs.base import registry

CACHE_BYTES = 16 * 2**20  # per cache: plans, or schemas, by the query texts and SQL they hold
# Health lists the source (a new DuckDB and an ATTACH: ~20 ms of CPU), for anyone who asks, even
# anonymous and outside the call limits: 8 threads asking took a logged-in user's median query
# from 28 to 379 ms. One listing serves every ask for this long while the source's version holds.
HEALTH_SECONDS = 1.0

# A batch job reads every key of a table and may score a big chunk for long: the caps a server
# puts on one query's rows and time are not for it.
JOB_LIMITS = Limits(query_seconds=None, max_rows=None)


@dataclasses.dataclass(frozen=True)
class Enrichment:
    """An enrichment run's queries, from its SQL parsed once (plan/increment.py)."""

    output: pa.Schema  # the query's result (found without running an operator)
    model: str | None  # the `_model` lineage value: 'name@version' of each model, comma-separated
    increment: Increment
    keys: Plan  # every candidate key and whether it is done; reads DONE
    chunk: Plan  # the query's rows for one chunk of keys; reads CHUNK


class Service:
    def __init__(self, source: Source, *, views: dict[str, str] | None = None, **engine_options):
        self.source = source
        self.engine = Engine(source, OPERATORS, **engine_options)
        self.catalog = Catalog(operators=OPERATORS, resolve_model=resolve_model,
                               pushdown_dialect=source.pushdown_dialect, columns_of=source.columns,
                               table_types=source.table_types)
        self.view_sql = dict(views or {})
        self._plans = SourceCache(source, plan_bytes)
        self._schemas = SourceCache(source, schema_bytes)
        self._listed: tuple[float, object, SourceUnavailable | None] | None = None  # (when, version, failure)
        self._listing = threading.Lock()
        for name, sql in self.view_sql.items():
            self.catalog.add_view(name, sql)

    def close(self) -> None:
        """The server is stopping: the source lets go of what it kept between queries."""
        self.engine.close()

    @classmethod
    def for_jobs(cls, source_uri: str) -> "Service":
        """A service for batch jobs (enrichment, here or in a Ray worker): no time or row cap."""
        return cls(open_source(source_uri), limits=JOB_LIMITS)

    def plan(self, sql: str, local_tables: tuple[str, ...] = (), user: str | None = None) -> Plan:
        """Cached per user and query text while the source stays the same: GetFlightInfo and DoGet
        each plan the query, and planning costs 1-2 ms. Per user, because a cached plan answers
        sooner: a shared cache would tell one user which exact texts (ids and all) another ran.
        `local_tables` are tables the caller passes to `collect` (not cached: a job plans each of
        its queries once)."""
        if local_tables:
            return self._plan_in_slot(sql, local_tables)
        return self._plans.get(user, sql, lambda: self._plan_in_slot(sql))

    def _plan_in_slot(self, query, local_tables: tuple[str, ...] = ()) -> Plan:
        """Planning a large text costs CPU (sqlglot, then DuckDB's parse): it waits for a slot."""
        with self.engine.admitted():
            return self.catalog.plan(query, local_tables)

    def plan_enrichment(self, sql: str, keys: tuple[str, ...], *, watermark: str | None = None,
                        rescore_on_model_change: bool = False) -> Enrichment:
        """Check a run's query and plan its keys and chunk queries; the SQL is parsed once."""
        query = parse_one_query(sql)
        plan = self._plan_in_slot(query)
        output = self.schema(plan)
        model = ",".join(sorted(plan.models)) or None
        increment = build(query, keys, OPERATORS, key_types=key_types(output, keys), watermark=watermark,
                          model=model, rescore_on_model_change=rescore_on_model_change)
        return Enrichment(output, model, increment, self._plan_in_slot(increment.keys_query, (DONE,)),
                          self._plan_in_slot(increment.chunk_query, (CHUNK,)))

    def collect(self, plan: Plan, tables: dict[str, pa.Table]) -> pa.Table:
        """The whole result, with `tables` readable by the names the plan was given as local."""
        return self.engine.collect(plan, tables)

    def dataset_sql(self, name: str, kind: str | None = None) -> str:
        """The query behind a dataset: a published view (by name) or a source table (as listed).
        A caller that already knows the kind (from `relations`) saves listing the source again."""
        if kind is None:
            kind = "VIEW" if name.lower() in self.catalog.views else "TABLE" if name in self._tables() else None
        if kind is None:
            raise InvalidQuery(f"unknown dataset {name!r}; ListFlights lists them")
        return f"SELECT * FROM {quote(name) if kind == 'VIEW' else name}"

    def explain(self, sql: str, user: str | None = None) -> dict:
        """How a query splits: what each source scan runs there, what runs here in DuckDB, and which
        operator calls the engine applies to its batches itself."""
        plan = self.plan(sql, user=user)
        return {"local_sql": plan.sql, "scans": [{"name": n, "sql": q} for n, q in plan.scans],
                "tables": list(plan.tables), "operators": sorted(plan.operators),
                "lifted": plan.lift and {"duckdb_sql": plan.lift.sql,
                                         "calls": [c.operator for c in plan.lift.calls]}}

    def datasets(self) -> Iterator[tuple[str, str, pa.Schema]]:
        """(name, the query behind it, its schema) for each table and view, listing the source once."""
        for name, kind in self.relations():
            yield name, self.dataset_sql(name, kind), self.listed_schema(name, kind)

    def relations(self) -> list[tuple[str, str]]:
        """(name, "TABLE" or "VIEW"): the source's tables, then the published views."""
        return [*((t, "TABLE") for t in self._tables()), *((v, "VIEW") for v in self.view_sql)]

    def _tables(self, wait: bool = True) -> list[str]:
        """Listing the source is work a client asks for: it takes a query slot like a query."""
        with self.engine.admitted(wait):
            return self.source.tables()

    def dataset_schema(self, name: str, kind: str | None = None) -> pa.Schema:
        return self.schema(self.plan(self.dataset_sql(name, kind)))

    def listed_schema(self, name: str, kind: str) -> pa.Schema:
        """A dataset's schema as a listing shows it (ListFlights, GetTables): one that its own query
        cannot read (a lake view over a dropped table, a table past the limits) has no columns, and
        its error is told to whoever reads it. One such relation had failed every listing."""
        try:
            return self.dataset_schema(name, kind)
        except (InvalidQuery, QueryRefused):
            return pa.schema([])

    def schema(self, plan: Plan, params: list | None = None, user: str | None = None) -> pa.Schema:
        """The result schema. Cached per user and query (as `plan`) while the source stays the
        same, so GetFlightInfo before each DoGet (and ListFlights) does not open the source every time."""
        _check_params(plan, params)
        if params:
            return self.engine.schema(plan, self._by_position(plan, [params])[0])
        return self._schemas.get(user, plan.sql, lambda: self.engine.schema(plan))

    def parameters(self, plan: Plan) -> list[str]:
        """The query's placeholders, in binding order."""
        return self.engine.parameters(plan) if plan.parameters else []

    def _by_position(self, plan: Plan, rows: list) -> list:
        """Rows of values bound by position, as a Flight SQL client binds the parameter schema it
        was given: to named placeholders (`$a`) by the order `parameters` gives (read once for all
        rows), since DuckDB binds a list to numbers only."""
        if not any(isinstance(row, list) for row in rows):
            return rows
        names = self.parameters(plan)
        if all(n.isdigit() for n in names):
            return rows  # DuckDB counts them itself
        for row in rows:
            if isinstance(row, list) and len(row) != len(names):
                raise InvalidQuery(f"the query has {len(names)} placeholders ({', '.join('$' + n for n in names)}); "
                                   f"{len(row)} values were bound")
        return [dict(zip(names, row)) if isinstance(row, list) else row for row in rows]

    def stream(self, plan: Plan, cancelled: Callable[[], bool | str] = lambda: False, params: list | None = None):
        _check_params(plan, params)
        return self.engine.stream(plan, cancelled, params=params)

    def stream_each(self, plan: Plan, rows: list[list], cancelled: Callable[[], bool | str] = lambda: False,
                    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The query run once per row of bound parameters, one after another, as one result under
        one time and row allowance: binding 10,000 rows buys one time limit, not 10,000. A row's
        values go to the placeholders in the order `parameters` gives (named ones too, as a
        Flight SQL client binds the parameter schema it was given)."""
        _check_params(plan, rows[0])
        rows = self._by_position(plan, rows)
        budget = self.engine.budget(cancelled)
        schema, first = self.engine.stream(plan, cancelled, params=rows[0], budget=budget)
        return schema, self._concatenated(plan, schema, first, rows[1:], cancelled, budget)

    def _concatenated(self, plan: Plan, schema: pa.Schema, current: Iterator, rest: list,
                      cancelled: Callable[[], bool | str], budget) -> Iterator[pa.RecordBatch]:
        try:
            for row in [None, *rest]:
                if row is not None:
                    _, current = self.engine.stream(plan, cancelled, params=row, budget=budget)
                for batch in current:
                    yield batch if batch.schema == schema else _as(batch, schema)
        finally:
            close = getattr(current, "close", None)
            if close is not None:
                close()  # a client gone mid-way ends the running row's query now

    def exchange(self, sql: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                 cancelled: Callable[[], bool | str] = lambda: False) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run row-wise SQL over a table named `input` holding the caller's batches, one at a time:
        (output schema, one output batch per input batch, in order)."""
        with self.engine.admitted():  # planning costs CPU like any query's
            plan = self.catalog.plan_exchange(sql, schema)
        return self.engine.exchange(plan, schema, batches, cancelled)

    def warm_up(self) -> None:
        """Load the default models and run each once, so the first query pays nothing and a
        broken install fails at start."""
        from udfs import forecast, sentiment

        sentiment(pa.array(["warm up"]))
        forecast(pa.array([[1.0, 2.0, 3.0]]), 1)

    def health(self) -> dict:
        """Readiness: "ok", or "unavailable" with the reason while the source cannot be opened (a
        DuckDB file not written yet, Dremio down): it lists the source's tables, as `serve` does at
        start (one attach, a few ms, or one Dremio call), in a query slot taken without waiting: a
        server whose every slot runs a query is serving, and says so at once ("busy"). A database
        DuckDB invalidated is replaced here (engine/database.py). One listing answers every ask for
        HEALTH_SECONDS while the source's version stays the same."""
        self.engine.check_alive()
        try:
            failure = self._source_failure()
        except ResourceExhausted:
            return {"status": "ok", "busy": True, "source": self.source.describe(), "views": sorted(self.view_sql)}
        if failure is not None:
            return {"status": "unavailable", "source": self.source.describe(), "reason": str(failure),
                    "views": sorted(self.view_sql)}
        return {"status": "ok", "source": self.source.describe(), "views": sorted(self.view_sql)}

    def _source_failure(self) -> SourceUnavailable | None:
        """Why the source cannot be listed now (None: it can), from a listing at most HEALTH_SECONDS
        old and of the same version. One caller lists; while it does, the others take the last
        listing's answer rather than wait (a listing can take seconds: opening DuckDB trims glibc's
        heap, which waits while a query allocates), and only the first ever waits for it."""
        if not self._listing.acquire(blocking=self._listed is None):
            return self._listed[2]
        try:
            version = self.source.version()
            if self._listed and self._listed[1] == version and time.monotonic() - self._listed[0] < HEALTH_SECONDS:
                return self._listed[2]
            try:
                self._tables(wait=False)
                failure = None
            except SourceUnavailable as e:
                failure = e
            self._listed = time.monotonic(), version, failure
            return failure
        finally:
            self._listing.release()

    def models(self) -> list[dict]:
        return [card_summary(card) for card in registry().cards()]


class SourceCache:
    """Values computed from a user's query text, kept while the source's `version` stays the same;
    a source with no version (Dremio) caches nothing. Per user: a cached value answers sooner, and
    must not tell one user what another asked. Bounded by bytes, not entries, the texts counted:
    a query text may be a megabyte, so the least recently used entries go once `max_bytes` is passed."""

    def __init__(self, source: Source, weigh: Callable[[object], int], max_bytes: int = CACHE_BYTES):
        self.source, self.weigh, self.max_bytes = source, weigh, max_bytes
        self._values: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, user: str | None, text: str, compute: Callable):
        version = self.source.version()
        if version is None:
            return compute()
        key = (user, text)
        with self._lock:
            found = self._values.get((key, version))
            if found is not None:
                self._values.move_to_end((key, version))
                return found[0]
        value = compute()
        size = sys.getsizeof(text) + sys.getsizeof(user) + self.weigh(value)  # as Python holds them
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


def _as(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A later row's batch in the first row's types (a NULL parameter may type a column NULL)."""
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InvalidQuery("the rows of parameters give results of different types; bind them in separate "
                           "executions") from None


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


def resolve_model(kind: str, ref: str | None) -> str:
    try:
        return registry().resolve(kind, ref).ref
    except ModelNotFound as e:
        raise InvalidQuery(str(e)) from None
