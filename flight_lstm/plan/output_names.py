"""Columns without an alias keep the names DuckDB gives the text the user wrote.

DuckDB names such a column by its expression, written back from its own parse (`list(x)`,
`CAST(x AS VARCHAR)`, `(x ** 2)`). The planner runs the text sqlglot writes, which spells many
expressions its own way (`array_agg(x)`, `CAST(x AS TEXT)`, `power(x, 2)`): a client saw other
names than DuckDB gives, and an outer query naming an inner column by DuckDB's name
(`SELECT "list(x)" FROM (SELECT list(x) FROM t)`) failed. So each such projection notes, when
the text is parsed, the name DuckDB gives the user's text (DuckDB's parse of the whole query,
`json_serialize_sql`, the projections written back in one call: 0.5-1.5 ms a query that has
any, and plans are cached per text), and takes it as its alias when the SQL is written.

The two parses are matched by structure: the branches of set operations, CTE bodies (by name)
and derived tables in FROM and JOIN, each where both parses hold as many items. Where they do not
(or DuckDB's parser refuses the text), and in expression subqueries, whose inner names no result
shows, a column keeps the name of the text sqlglot writes. Projections that make several columns
(`*`, `COLUMNS(...)`, `unnest` of a struct) are left as they are: one alias would name them all."""
from __future__ import annotations

import json
import secrets

import duckdb
from sqlglot import exp

from flight_lstm.plan.duckdb_check import parser_cursor
from flight_lstm.plan.widths import fold

_NAMED_BY_DUCKDB = ("COLUMN_REF", "POSITIONAL_REFERENCE", "STAR")  # named by the column, or many columns
_MANY_COLUMNS = (exp.Star, exp.Columns, exp.Unnest, exp.Explode)
_EMPTY_FROM = {"type": "EMPTY", "alias": "", "sample": None, "query_location": 2 ** 64 - 1,
               "query_location_length": 0}

NAME = "duckdb_name"  # a projection's meta: the name DuckDB gives the user's text for it
Slot = tuple[exp.Expression, dict]  # a projection, and DuckDB's parse of it


def note_names(tree: exp.Expression, sql: str) -> exp.Expression:
    """Note on each unaliased computed projection of `tree` (parsed from `sql`) DuckDB's name for
    it. The note goes with the tree's copies; `name_columns` makes it the alias when the query is
    written, after the planner's bounds have counted only what the user wrote."""
    if "\x00" in sql or not any(_computed(item) for select in tree.find_all(exp.Select) for item in select.expressions):
        return tree  # nothing to name (or a NUL, at which DuckDB's names end): DuckDB's parse is not needed
    try:
        (text,), = parser_cursor().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    except duckdb.Error:  # text DuckDB cannot take (a lone surrogate): planning says why, later
        return tree
    slots: list[Slot] = []
    try:  # DuckDB's parse of `1 + 1 + ... + 1` nests as deep as it is long: past Python's recursion, no names
        parsed = json.loads(text)
        if parsed.get("error") or len(parsed.get("statements") or []) != 1:
            return tree
        _pair_query(tree, parsed["statements"][0]["node"], slots)
        names = _written_back([entry for _, entry in slots], sql)
    except (RecursionError, KeyError, TypeError, IndexError):  # a parse too deep, or shaped unlike this DuckDB's
        return tree
    for (item, _), name in zip(slots, names or []):
        item.meta[NAME] = name
    return tree


def name_columns(tree: exp.Expression) -> exp.Expression:
    """Alias each projection that has no alias but a noted name with it, in each SELECT where no
    name written in it is one of those: DuckDB binds ORDER BY (and WHERE, GROUP BY, ...) to a
    select list's aliases, not to the names it gives columns, so `ORDER BY "(i + 1)"` had sorted
    by the alias where DuckDB sorts by the table's column of that name. Such a SELECT keeps the
    names of the text sqlglot writes."""
    for select in tree.find_all(exp.Select):
        items = select.expressions
        noted = {fold(item.meta[NAME]) for item in items if not isinstance(item, exp.Alias) and NAME in item.meta}
        if noted and not any(fold(i.name) in noted for i in select.find_all(exp.Identifier)):
            # the list set once: each set re-parents all of it
            select.set("expressions", [exp.Alias(this=item, alias=exp.to_identifier(item.meta[NAME], quoted=True))
                                       if not isinstance(item, exp.Alias) and NAME in item.meta else item
                                       for item in items])
    return tree


def _computed(item: exp.Expression) -> bool:
    """A projection DuckDB names by its text: no alias, no column, not several columns (a star in
    `count(*)` or in a subquery makes one)."""
    if isinstance(item, (exp.Alias, exp.Column)):
        return False
    for node in item.find_all(*_MANY_COLUMNS):
        while node is not item and not isinstance(node.parent, (exp.Query, exp.Count)):
            node = node.parent
        if node is item:
            return False
    return True


def _pair_query(query: exp.Expression, node: dict, slots: list[Slot]) -> None:
    query = _unparenthesized(query)
    with_ = query.args.get("with_")
    if isinstance(with_, exp.With):
        bodies = {fold(entry["key"]): entry["value"].get("query_node") for entry in node["cte_map"]["map"]}
        for cte in with_.expressions:
            body = bodies.get(fold(cte.alias_or_name))
            if body:
                _pair_query(cte.this, body, slots)
    kind = node["type"]
    if kind == "SELECT_NODE" and isinstance(query, exp.Select):
        _pair_select(query, node, slots)
    elif kind == "SET_OPERATION_NODE" and isinstance(query, exp.SetOperation):
        branches, children = _branches(query, type(query)), node["children"]
        if len(branches) == len(children):
            for branch, child in zip(branches, children):
                _pair_query(branch, child, slots)
        else:  # chained apart (UNION ALL after UNION): the first SELECTs, which name the columns
            first, child = _unparenthesized(query.this), children[0]
            while isinstance(first, exp.SetOperation) and not first.args.get("with_"):
                first = _unparenthesized(first.this)
            while child["type"] == "SET_OPERATION_NODE" and not child["cte_map"]["map"]:
                child = child["children"][0]
            _pair_query(first, child, slots)
    elif kind == "RECURSIVE_CTE_NODE" and isinstance(query, exp.Union):
        _pair_query(query.this, node["left"], slots)
        _pair_query(query.expression, node["right"], slots)


def _pair_select(select: exp.Select, node: dict, slots: list[Slot]) -> None:
    entries = node["select_list"]
    if len(entries) == len(select.expressions):
        for item, entry in zip(select.expressions, entries):
            if _computed(item) and not entry.get("alias") and entry.get("class") not in _NAMED_BY_DUCKDB:
                slots.append((item, entry))
    from_ = select.args.get("from_")
    sources = [from_.this, *(j.this for j in select.args.get("joins") or [])] if from_ else []
    items = _from_items(node.get("from_table") or {})
    if len(sources) == len(items):
        for source, item in zip(sources, items):
            if item["type"] == "SUBQUERY" and isinstance(source, exp.Subquery):
                _pair_query(source.this, item["subquery"]["node"], slots)


def _branches(query: exp.Expression, kind: type) -> list[exp.Expression]:
    """A chain of one set operation, left to right (DuckDB keeps `a UNION b UNION c` as one node
    of three children; sqlglot nests it, as deep as the chain is long)."""
    rights = []
    while isinstance(query, kind):
        rights.append(query.expression)
        query = _unparenthesized(query.this)
        if query.args.get("with_"):  # a WITH of its own: a query DuckDB keeps apart
            break
    return [query, *reversed(rights)]


def _from_items(table: dict) -> list[dict]:
    if table.get("type") == "JOIN":
        return [*_from_items(table["left"]), *_from_items(table["right"])]
    return [table] if table.get("type") not in (None, "EMPTY") else []


def _unparenthesized(query: exp.Expression) -> exp.Expression:
    while isinstance(query, exp.Subquery) and not query.alias and isinstance(query.this, exp.Query):
        query = query.this
    return query


def _written_back(entries: list[dict], sql: str) -> list[str] | None:
    """DuckDB's text for each parsed expression, as it names a column of it; None if it cannot.
    Written back as one SELECT whose items carry marker aliases that the query's text lacks, and
    cut at them (one call: one SELECT per expression took 0.13 ms each)."""
    if not entries:
        return None
    marker = f"__name_{secrets.token_hex(8)}_"  # unguessable: no query can hold it (or make us search long)
    if marker in sql:
        return None
    items = [dict(entry, alias=f"{marker}{i}") for i, entry in enumerate(entries)]
    document = json.dumps({"error": False, "statements": [{"named_param_map": [], "node": {
        "type": "SELECT_NODE", "modifiers": [], "cte_map": {"map": []}, "select_list": items,
        "from_table": _EMPTY_FROM, "where_clause": None, "group_expressions": [], "group_sets": [],
        "aggregate_handling": "STANDARD_HANDLING", "having": None, "sample": None, "qualify": None}}]})
    try:
        (text,), = parser_cursor().execute("SELECT json_deserialize_sql(?::JSON)", [document]).fetchall()
    except duckdb.Error:
        return None
    names, at = [], len("SELECT ")
    for i in range(len(entries)):
        end = text.find(f" AS {marker}{i}", at)
        after = end + len(f" AS {marker}{i}")
        if end < 0 or text[after:after + 2] not in (", ", ""):
            return None
        names.append(text[at:end])
        at = after + 2
    return names
