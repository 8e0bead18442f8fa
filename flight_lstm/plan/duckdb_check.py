"""DuckDB's own parse of the exact SQL the engine will run: one SELECT, calling nothing that
reaches past the source.

sqlglot and DuckDB are two parsers; text one reads as a harmless expression the other may read as
a second statement or a hidden call. So the read-only rule is applied once more, to DuckDB's parse
tree (`json_serialize_sql`) of the final text: exactly one SELECT statement; table functions only
from the allow-list; no function, built-in macro or catalog view that reads settings, variables,
files or DuckDB's own catalog (which names the source's path and every setting).

Names are judged as DuckDB binds them: `system.x` is the system catalog (a two-part name's first
part is a catalog when one has that name), and a built-in view's name is that view except where a
CTE of that name is in scope. Limits: a name resolved at bind time (a source table shadowing a
built-in view's name) is judged by its name here, so such a table is refused unless qualified
(`lake.main.name`)."""
from __future__ import annotations

import json
import re
import string
import threading
from functools import cache

import duckdb

from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.plan.read_only import ALLOWED_TABLE_FUNCTIONS, DENIED_FUNCTION_PREFIXES, DENIED_FUNCTIONS

# Scalar functions that read the engine's state or stall a query slot without checking for interrupts.
DENIED_SCALARS = {"getvariable", "current_setting", "current_query", "json_serialize_plan",
                  "json_execute_serialized_sql", "sleep_ms", "pg_sleep"}
# A built-in macro whose body reads DuckDB's catalog, settings or variables is refused like them.
STATEFUL_MACRO = re.compile(r"duckdb_|pg_catalog|information_schema|current_setting|getvariable|sleep", re.I)
SYSTEM_CATALOGS = {"system", "temp", "memory"}
SYSTEM_SCHEMAS = {"information_schema", "pg_catalog"}

_parser = duckdb.connect(":memory:")
_parser_lock = threading.Lock()  # for the shared connection's catalog look-ups at first use
_cursors = threading.local()  # each thread parses on its own cursor: no query waits for another


def parser_cursor() -> duckdb.DuckDBPyConnection:
    """This thread's cursor of the DuckDB that only parses (no catalog of ours, no file)."""
    cursor = getattr(_cursors, "cursor", None)
    if cursor is None:
        with _parser_lock:
            cursor = _cursors.cursor = _parser.cursor()
    return cursor


@cache
def _denied_functions() -> frozenset[str]:
    with _parser_lock:
        macros = _parser.execute(
            "SELECT function_name, macro_definition FROM duckdb_functions() WHERE function_type = 'macro'"
        ).fetchall()
    return frozenset({*DENIED_FUNCTIONS, *DENIED_SCALARS,
                      *(name for name, body in macros if body and STATEFUL_MACRO.search(body))})


@cache
def _builtin_views() -> frozenset[str]:
    with _parser_lock:
        rows = _parser.execute("SELECT view_name FROM duckdb_views() WHERE internal").fetchall()
    return frozenset(_fold(name) for (name,) in rows)


def _fold(name: str) -> str:
    """A name as DuckDB compares it: ASCII letters folded, nothing else (Python's lower() folds the
    Kelvin sign to k, so a CTE named with it once excused the real `duckdb_databases`)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def placeholder_names(sql: str) -> list[str]:
    """The placeholders DuckDB's parser reads in `sql` ("1" for `$1` or the first `?`, "name" for
    `$name`): the values it will bind."""
    return [name for statement in parser_cursor().extract_statements(sql) for name in statement.named_parameters]


def syntax_error(sql: str) -> str | None:
    """DuckDB's own words for a syntax error in `sql` (`at or near "SELEC"`), if it finds one."""
    (text,), = parser_cursor().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    parsed = json.loads(text)
    if parsed.get("error") and parsed.get("error_type") == "parser":
        return (parsed.get("error_message") or "").splitlines()[0] or None
    return None


def column_name(expression: str) -> str:
    """The name DuckDB gives a column computed by `expression` (SQL text) that has no alias: the
    expression as DuckDB writes it back from its parse (`(sentiment(review) + 1)`), or as given
    where DuckDB's parser does not take it alone."""
    try:
        (text,), = parser_cursor().execute("SELECT json_deserialize_sql(json_serialize_sql(?))",
                                     ["SELECT " + expression]).fetchall()
    except duckdb.Error:
        return expression
    return text.removeprefix("SELECT ")


def check_with_duckdb(sql: str) -> None:
    """Refuse `sql` unless DuckDB reads it as one SELECT within the read-only rule."""
    (text,), = parser_cursor().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise InvalidQuery("the query nests expressions too deeply") from None
    if parsed.get("error"):
        if parsed.get("error_type") == "parser":
            raise InvalidQuery(f"syntax error: {parsed.get('error_message', '').splitlines()[0]}")
        raise QueryRefused("queries are read-only: only one SELECT statement is allowed")
    if len(parsed["statements"]) != 1:
        raise QueryRefused("queries are read-only: only one SELECT statement is allowed")
    try:
        _check_tree(parsed["statements"], frozenset())
    except RecursionError:
        raise InvalidQuery("the query nests expressions too deeply") from None


def _check_tree(value, ctes: frozenset[str]) -> None:
    """Check every node, each against the CTEs in its scope: a query's CTEs are seen by its body,
    not by their own definitions (which are checked in the scope around the query)."""
    if isinstance(value, list):
        for child in value:
            _check_tree(child, ctes)
    elif isinstance(value, dict):
        names = _cte_names(value)
        if names:
            _check_tree(value["cte_map"], ctes)
            ctes = ctes | {_fold(name) for name in names}
        _check_node(value, ctes)
        for key, child in value.items():
            if not (names and key == "cte_map"):
                _check_tree(child, ctes)


def _check_node(node: dict, ctes: frozenset[str]) -> None:
    name = node.get("function_name")
    if isinstance(name, str) and "class" in node:  # a scalar, aggregate or window function call
        lowered = _fold(name)
        if lowered in _denied_functions() or lowered.startswith(DENIED_FUNCTION_PREFIXES):
            raise QueryRefused(f"function {lowered}() is not allowed: it reaches outside the source")
    kind = node.get("type")
    if kind == "TABLE_FUNCTION":
        called = _fold((node.get("function") or {}).get("function_name", ""))
        if called not in ALLOWED_TABLE_FUNCTIONS:
            raise QueryRefused(f"table function {called}() is not allowed in FROM")
    elif kind == "BASE_TABLE":
        catalog, schema, table = (_fold(node.get(part, "")) for part in ("catalog_name", "schema_name", "table_name"))
        # A CTE stands for a name only where the name is written alone (`main.x` is never a CTE).
        builtin = (not catalog and schema in ("", "main") and table in _builtin_views()
                   and not (not schema and table in ctes))
        # `a.b` parses as schema a, table b, but DuckDB binds it as catalog a when a catalog has that name.
        if (catalog or schema) in SYSTEM_CATALOGS or schema in SYSTEM_SCHEMAS or builtin:
            raise QueryRefused(f"{table} is DuckDB's own catalog, not a table of the source")
    elif kind == "SHOW_REF":
        raise QueryRefused("DESCRIBE, SHOW and SUMMARIZE are not allowed in a query")


def _cte_names(node: dict) -> list[str]:
    cte_map = node.get("cte_map")
    if not isinstance(cte_map, dict):
        return []
    return [entry.get("key", "") for entry in cte_map.get("map", []) if isinstance(entry, dict)]
