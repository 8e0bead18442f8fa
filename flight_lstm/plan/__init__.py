"""SQL in, a safe DuckDB query out: the steps and their order are in catalog.py, each step in its
own module over the shared sqlglot tree."""
from flight_lstm.plan.catalog import Catalog, Plan

__all__ = ["Catalog", "Plan"]
