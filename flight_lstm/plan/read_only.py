"""Refuse anything but a read-only query that touches only the source's tables.

The first of two locks: the execution engine also runs read-only with file access off and its
configuration locked, so a gap here still cannot write or read files.
"""
from __future__ import annotations

import re

from sqlglot import exp

from flight_lstm.errors import QueryRefused
from flight_lstm.plan.ctes import cte_scopes, defining_cte

# Table-valued functions a query may call in FROM; everything else there must be a table name.
ALLOWED_TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}

# Functions that reach files, the network, the environment or the engine's state.
DENIED_FUNCTION_PREFIXES = ("read_", "parquet_", "iceberg_", "delta_", "pragma_", "sniff_", "load_")
DENIED_FUNCTIONS = {
    "glob", "query", "query_table", "getenv", "current_setting", "set_variable", "install",
    "sqlite_scan", "postgres_scan", "mysql_scan", "csv_scan", "json_scan", "parquet_scan", "checkpoint",
    "force_checkpoint", "duckdb_secrets", "which_secret", "enable_profiling", "export_database",
}

# DuckDB reads a quoted table name that looks like a file as that file (`FROM 'data.csv'`, which
# sqlglot parses into the same quoted name as `FROM "data.csv"`).
FILE_LIKE = re.compile(
    r"[/\\]|://|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|arrow|feather|ipc|avro|xlsx|db|duckdb|sqlite|gz|zst|bz2|xz|lz4)$",
    re.IGNORECASE,
)

DENIED_NODES = tuple(
    getattr(exp, name)
    for name in (
        "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Copy", "Set",
        "Pragma", "Use", "Transaction", "Commit", "Rollback", "Attach", "Detach", "Install",
        "LoadData", "Into", "Describe", "Summarize", "Export", "Refresh", "Cache", "Uncache",
        "TruncateTable", "Analyze",
    )
    if hasattr(exp, name)
)


def function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def check_read_only(tree: exp.Expression) -> exp.Expression:
    if not isinstance(tree, exp.Query):
        raise QueryRefused(f"queries are read-only: only SELECT is allowed, got {tree.key.upper()}")
    scopes = cte_scopes(tree)
    for node in tree.walk():
        if isinstance(node, DENIED_NODES):
            raise QueryRefused(f"{node.key.upper()} is not allowed: queries are read-only")
        if isinstance(node, exp.Func):
            name = function_name(node)
            if name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES):
                raise QueryRefused(f"function {name}() is not allowed: it reaches outside the source")
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Func):
            name = function_name(node.this)
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefused(f"table function {name}() is not allowed in FROM")
        if isinstance(node, exp.Table) and (isinstance(node.this, exp.Literal) or _file_like(node, scopes)):
            raise QueryRefused("reading a file by its path is not allowed")
    return tree


def _file_like(table: exp.Table, scopes: dict) -> bool:
    """A quoted name that reads like a file and that no CTE answers where it stands."""
    name = table.this
    return (isinstance(name, exp.Identifier) and name.quoted and not table.db and not table.catalog
            and bool(FILE_LIKE.search(name.name)) and defining_cte(table, scopes) is None)
