"""The product's core, with no wire protocol: plan SQL, find schemas, stream results, describe.

The Flight server (and later the enrichment job) are thin faces over this.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import pyarrow as pa

from flight_lstm.errors import InvalidQuery
from flight_lstm.execute import Engine
from flight_lstm.plan import Catalog, Plan
from flight_lstm.sources import Source
from udfs import OPERATORS
from udfs.base import registry


def quote(name: str) -> str:
    """A dataset name as a SQL reference: each dotted part double-quoted."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class Service:
    def __init__(self, source: Source, *, views: dict[str, str] | None = None, **engine_options):
        self.source = source
        self.engine = Engine(source, OPERATORS, **engine_options)
        self.catalog = Catalog(operators=OPERATORS, check_model=check_model)
        self.view_sql = dict(views or {})
        for name, sql in self.view_sql.items():
            self.catalog.add_view(name, sql)

    def plan(self, sql: str) -> Plan:
        return self.catalog.plan(sql)

    def plan_dataset(self, name: str) -> Plan:
        """A published view or a source table, by name."""
        if name.lower() not in self.catalog.views and name not in self.source.tables():
            raise InvalidQuery(f"unknown dataset {name!r}; ListFlights lists them")
        return self.plan(f"SELECT * FROM {quote(name)}")

    def datasets(self) -> Iterator[tuple[str, pa.Schema]]:
        for name in [*self.source.tables(), *self.view_sql]:
            yield name, self.schema(self.plan_dataset(name))

    def schema(self, plan: Plan) -> pa.Schema:
        return self.engine.schema(plan)

    def stream(self, plan: Plan, cancelled: Callable[[], bool] = lambda: False):
        return self.engine.stream(plan, cancelled)

    def health(self) -> dict:
        return {"status": "ok", "source": self.source.describe(), "views": sorted(self.view_sql)}

    def models(self) -> list[dict]:
        return [card_summary(card) for card in registry().cards()]


def card_summary(card) -> dict:
    """A model card for clients: what it is and how it scores, not where it lies on disk."""
    return {k: v for k, v in dataclasses.asdict(card).items() if k != "path"}


def check_model(kind: str, ref: str) -> None:
    from flight_lstm.models import ModelNotFound

    try:
        registry().resolve(kind, ref)
    except ModelNotFound as e:
        raise InvalidQuery(str(e)) from None
