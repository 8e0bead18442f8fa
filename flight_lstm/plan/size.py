"""Bound the work of planning one query, which no time limit or cancel reaches.

Planning holds a query slot and Python's lock while sqlglot parses, writes and parses again, and
DuckDB parses once more; its cost grows with the planned tree, about 0.1 ms a node here. A few
bytes of text can grow that tree a thousandfold: each table function call (`forecast_table(...)`
is 135 bytes) expands into about 2,000 nodes of SQL, and a published view is inlined wherever
it is named. Forty calls in 5 kB planned for 12 s, and a handful of such requests held every
slot for a minute. So a query may expand at most MAX_TABLE_FUNCTIONS table functions (counted
before any is expanded; none can hide in another's arguments, which are literals and plain table
names: arguments.py), and its planned tree may hold at most MAX_PLAN_NODES nodes (counted
before it is written as SQL): planning stays within a few seconds (2.6 s for the largest
allowed here, four `anomaly_events` over 64 columns each). DuckDB's own planning is out of reach
too where it orders joins and builds grouping sets: a query reads at most MAX_RELATIONS relations,
and a GROUP BY makes at most MAX_GROUPING_SETS sets (a simple CASE's copies: copies.py).

DuckDB's binding, which no time limit reaches either, grows with the columns it binds, and few
bytes make many: star projections, PIVOTs and structs multiply them down nested queries. So one
walk estimates every query's output columns, each as its type's leaves, from those of what it
reads, and bounds them (the constants below). A source table's columns count as the types its
source gives (a DoExchange's input as the Arrow types sent); where a source cannot tell (a
pushdown source's), and for a table function's (but unnest's and VALUES'), they count as none, one
of them named as the widest known in scope, and only star copies of them are bounded. A function's
result counts as its arguments met (to_json(t) as t's row), but json_transform's and its kin's as
the type their structure text describes (TYPED_BY_TEXT).
"""
from __future__ import annotations

from itertools import zip_longest
from typing import Callable, NamedTuple

import pyarrow as pa
from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan import anomaly_table, forecast_backtest, forecast_table
from flight_lstm.plan.ctes import cte_scopes, defining_cte, source_names
from flight_lstm.plan.row_wise import INPUT
from flight_lstm.plan.widths import (MAP_PARTS, MAX_TYPE_WIDTH, Meetings, Opaque, Struct, arrow_width, described_width,
                                     field_of, fold, named, opaque, type_width)

MAX_TABLE_FUNCTIONS = 8
MAX_PLAN_NODES = 20_000
# DuckDB builds each grouping set's plan without looking at the time limit: CUBE of 13 columns
# (8,192 sets, 200 bytes) ran 37 s past a 3 s limit; 1,024 sets take about 2 s in all.
MAX_GROUPING_SETS = 1_024
# DuckDB orders the joins of all of a query's relations at once, subqueries pulled up, and without
# looking at the time limit: 150 joined table calls planned in 4.6 s, 300 in 89 s (3 s limit).
MAX_RELATIONS = 128
# DuckDB binds a CTE anew wherever it is named, so a chain of CTEs that each name the one before
# twice doubles DuckDB's work per link: 30 links (506 tokens) took a server to 24 GB before the
# kernel killed it, binding outside any memory limit. The tree counted with each CTE as large as
# its body, wherever it is named, may hold at most MAX_BOUND_NODES: about a second of DuckDB's
# binding, and twice the largest legal plan's (eight forecast_backtests: 234,000).
MAX_BOUND_NODES = 500_000
# Columns: `SELECT *×8 FROM (SELECT *×8 FROM (SELECT 1, 1, ... ×9,000))` (27 kB) made 576,000
# columns and bound for 18.6 s past a 5 s limit. A query's columns are its sources' (a `*`, `t.*`
# or COLUMNS(...) in its select list copies all of them, or t's; an expression over COLUMNS(...)
# makes one per column), each as wide as its type's leaves (MAX_TYPE_WIDTH). One query makes at
# most MAX_OUTPUT_LEAVES: 64,000 literal columns bound in 0.7 s here (0.4 s copied by stars, 0.2 s
# as struct fields; 128,000 copied: 1.1 s, 256,000: 3.0 s). Every query DuckDB binds (a CTE
# wherever named, a PIVOT's columns too) makes at most MAX_BOUND_LEAVES together, since 64,000
# columns bound through 20 nested `SELECT *` took 9.8 s (through 3: 288,000 leaves, 2.0 s): about
# 1.4 s, and 1.6 times the largest legal plan's estimate (four anomaly_table over 64 columns:
# 125,000, its structs' fields overcounted).
MAX_OUTPUT_LEAVES = 65_536
MAX_BOUND_LEAVES = 200_000
MAX_EXCHANGE_LEAVES = 8_192  # an exchange's result, twice what its input may hold (server/uploads.py)
# Star expansion of a source table, whose columns are not counted: `SELECT *, *, * FROM (...)` ten
# deep made 59,049 columns of one and bound for 8.8 s; eleven deep ran 31 s past a 3 s limit at
# 1.3 GB. Down any chain of nested queries, starting from any query in the tree (CTEs followed where
# named), the product of each select list's star projections (`*`, `t.*`, `COLUMNS(...)`), and of a
# PIVOT's values for an aggregate over a star of columns not known, is at most this.
MAX_STAR_COPIES = 64
# An expression over star columns (`sum(COLUMNS(*))`) is worked out once per width among them, at most
# this many nodes in all: 400 widths of a 9,000-node expression had planned for 12 s.
MAX_STAR_WORK = 100_000
# PIVOT makes a column per value of its ON lists' product and aggregate: 4 lists of 17 values and 3
# aggregates (337 bytes) made 250,563 columns and bound for 33 s past a 5 s limit, and an aggregate
# over COLUMNS(*) makes one per column it reads: five PIVOTs of 10 values nested (618 bytes) made
# 110,000 and bound for 149 s. PIVOT columns bind dearer than others (10,000: 0.9 s; 16,000: 2.0 s;
# 32,000: 4.6 s), so all a query's PIVOTs together make at most MAX_PIVOT_COLUMNS; an ON list
# without IN (...) (DuckDB reads its values from the data) counts as PIVOT_LIMIT values, the most
# DuckDB then accepts (engine/database.py sets it).
MAX_PIVOT_COLUMNS = 10_000
PIVOT_LIMIT = 10_000
# A column's type is estimated in leaves and bounded by MAX_TYPE_WIDTH (plan/widths.py): a table's
# alias named as a column holds its row's (the sum of its columns'), a lambda's variable the elements
# of the lists it is given (each nested `list_transform(l, lambda x: {'a': x, 'b': x})` doubles it),
# and `x.f(a)` counts as f(x, a).
COMBINING = {"row", "struct_pack", "struct_insert", "struct_update", "struct_concat", "list_zip", "array_zip",
             "map", "map_from_entries", "union_value"}  # DuckDB's functions typed as a STRUCT, MAP or UNION of their arguments
STRUCT_EDITS = {"struct_insert", "struct_update", "struct_concat"}  # a struct argument's fields are the result's
# Calls whose result is one of their arguments' values, or a list of them (lists count as their
# elements), so its fields are among theirs: their arguments met keep their fields' names. Any
# other call may answer a part of a struct (map_values) or a new one, so its result over structs
# is Opaque.
WHOLE = (exp.Coalesce, exp.Case, exp.If, exp.Array, exp.Paren, exp.Nullif, exp.Greatest, exp.Least, exp.ArrayConcat,
         exp.DPipe, exp.Add, exp.ArrayAppend, exp.ArrayPrepend, exp.ArrayFilter, exp.ArraySort, exp.ArrayDistinct,
         exp.Flatten, exp.Transform, exp.Explode, exp.Unnest, exp.First, exp.Last, exp.Min, exp.Max, exp.ArgMax,
         exp.ArgMin, exp.ArrayAgg, exp.Mode, exp.Distinct)
SCALAR = (exp.Predicate, exp.Connector, exp.Not, exp.Count, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod,
          exp.Neg, exp.BitwiseAnd, exp.BitwiseOr, exp.BitwiseXor, exp.BitwiseNot)  # booleans, arithmetic, counts
# their `this`'s value
PASSING = (exp.Window, exp.Filter, exp.Order, exp.IgnoreNulls, exp.RespectNulls, exp.Lambda)
WHOLE_FUNCTIONS = {  # by name too: DuckDB's aliases, and `x.f(...)` written as f(x, ...)
    "list_value", "list_pack", "ifnull", "any_value", "arbitrary", "list_reverse", "array_reverse", "list_slice",
    "array_slice", "list_resize", "array_resize", "lag", "lead", "first_value", "last_value", "nth_value",
    "list_reduce", "array_reduce", "reduce", "list_transform", "array_transform", "list_apply", "array_apply", "apply",
    "transform", "list_filter", "array_filter", "filter", "list_sort", "array_sort", "list_reverse_sort",
    "array_reverse_sort", "list_distinct", "array_distinct", "flatten", "list_append", "array_append",
    "array_push_back", "list_prepend", "array_prepend", "array_push_front", "list_concat", "list_cat", "array_concat",
    "array_cat", "unnest", "explode", "first", "last", "min", "max", "arg_min", "arg_max", "argmin", "argmax",
    "min_by", "max_by", "list", "array_agg", "mode", "coalesce", "nullif", "greatest", "least"}
EXTRACTING = {"struct_extract", "struct_extract_at", "array_extract", "list_extract", "list_element", "array_element"}
# DuckDB types these by their structure argument, JSON text it reads while binding
# (`json_transform(j, '{"a": "INTEGER"}')` is a STRUCT(a INTEGER)): 138 bytes that built that text from
# range(1000000) bound a million-field struct for 14 s past a 3 s limit, and three at once crashed a
# server (std::bad_alloc). So the structure must be a string literal, counted as the type it describes,
# its text values as the DuckDB types they name ('"STRUCT(f0 INT, ...)"' is one), and text Python's
# JSON reader refuses is refused (DuckDB's accepts trailing commas: each hid a 2,000-field struct).
TYPED_BY_TEXT = {"json_transform", "from_json", "json_transform_strict", "from_json_strict"}
# replace_type(x, from, to) is x's type with each `from` in it made `to`: as wide as x's times to's
# (nested 10 deep, 723 bytes made a million leaves, counted as its widest argument's 4).
MULTIPLYING = {"replace_type"}
TableTypes = Callable[[list[tuple[str, ...]]], "dict[tuple[str, ...], pa.Schema]"]  # names' parts -> types
# The names a query reads are looked up in its source while planning (table_types: one attachment,
# a LIMIT 0 bind each), and 1,500 had planned for 9.5 s, an attachment each; so a query may name at
# most this many tables (256 names not in the file: 0.15-0.24 s to plan, 0.13-0.20 s for one name).
MAX_SOURCE_TABLES = 256
EXPANDED = {forecast_table.NAME, forecast_backtest.NAME, anomaly_table.TABLE, anomaly_table.EVENTS}


def check_table_functions(tree: exp.Expression) -> exp.Expression:
    calls = sum(1 for t in tree.find_all(exp.Table)
                if isinstance(t.this, exp.Anonymous) and t.this.name.lower() in EXPANDED)
    if calls > MAX_TABLE_FUNCTIONS:
        raise InvalidQuery(f"a query may call at most {MAX_TABLE_FUNCTIONS} table functions "
                           f"({', '.join(sorted(EXPANDED))}); this one calls {calls}")
    return tree


def check_relations(tree: exp.Expression) -> exp.Expression:
    """Bound the joins DuckDB orders: each SELECT with all it holds (subqueries and CTEs, which it
    may pull into its own joins) is one ordering, of the tables, subqueries and table calls read in
    their FROM and JOIN clauses as written (a table function or a view counts once: their own are
    bounded with them); each branch of a set operation is one of its own. The work grows faster
    than the count, so the squares of the counts of all orderings together make at most
    MAX_RELATIONS squared: one of 128 relations, or four of 64, or 300 branches of one."""
    counts: dict[int, int] = {}
    work = 0
    for node in reversed(list(tree.walk())):  # breadth first: reversed, each child comes before its parent
        parts = [counts.pop(id(c)) for c in node.iter_expressions()]
        count = sum(parts) + isinstance(node, (exp.From, exp.Join))
        if isinstance(node, exp.SetOperation):
            work, count = work + sum(p * p for p in parts), 0
        counts[id(node)] = count
    work += counts[id(tree)] ** 2
    if work > MAX_RELATIONS ** 2:
        raise InvalidQuery(f"a query may join at most {MAX_RELATIONS} tables, subqueries and table functions (in "
                           "the FROM and JOIN clauses of one SELECT and its subqueries; fewer in each where "
                           "several are joined apart, as the branches of a UNION): split it")
    return tree


def check_plan_size(tree: exp.Expression, table_types: TableTypes | None = None) -> exp.Expression:
    """`table_types`: the types of the source tables these names name, where the source can tell
    (asked once, for every name the tree reads but a table function's)."""
    _check_nodes(tree)  # first: finding the names walks up from each
    names = source_names(tree)
    if len(names) > MAX_SOURCE_TABLES:
        raise InvalidQuery(f"the query names more than {MAX_SOURCE_TABLES} tables; split it")
    known = table_types(names) if table_types and names else {}
    _check_size(tree, known.get)
    return tree


def check_exchange_size(tree: exp.Expression, schema: pa.Schema) -> exp.Expression:
    """A DoExchange query, bounded as any other but knowing its input's types, which the client chose
    (4,096 columns copied by 64 stars had bound for 65 s), and making at most MAX_EXCHANGE_LEAVES:
    DuckDB binds an exchange's query a few times over (`SELECT *, *` of 4,096 columns: 1.6 s)."""
    _check_nodes(tree)
    if _check_size(tree, lambda parts: schema if [p.lower() for p in parts] == [INPUT] else None) > MAX_EXCHANGE_LEAVES:
        raise InvalidQuery(f"an exchange query may make at most {MAX_EXCHANGE_LEAVES:,} columns (each struct "
                           "field counted); name the columns you need")
    return tree


def _check_nodes(tree: exp.Expression) -> None:
    for count, _ in enumerate(tree.walk(), start=1):
        if count > MAX_PLAN_NODES:
            raise InvalidQuery(f"the query plans to more than {MAX_PLAN_NODES:,} SQL nodes (its views and "
                               "table functions expanded); split it into smaller queries")
    for group in tree.find_all(exp.Group):
        sets = 1
        for item in group.expressions:
            sets *= _grouping_sets(item)
        if sets > MAX_GROUPING_SETS:
            raise InvalidQuery(f"a GROUP BY may make at most {MAX_GROUPING_SETS:,} grouping sets (CUBE of n "
                               "columns makes 2^n, ROLLUP n + 1, and they multiply); group by fewer")


def _grouping_sets(item: exp.Expression) -> int:
    if isinstance(item, exp.Cube):
        return 2 ** min(len(item.expressions), 64)
    if isinstance(item, exp.Rollup):
        return len(item.expressions) + 1
    if isinstance(item, exp.GroupingSets):
        return sum(_grouping_sets(e) for e in item.expressions)
    return 1


def _check_size(tree: exp.Expression, table_types: Callable[[tuple[str, ...]], pa.Schema | None]) -> int:
    """Refuse a tree (its nodes counted already) past any bound above; the leaves of its root query."""
    try:  # both walk down nested queries and CTEs one Python frame per level
        if _bound_nodes(tree) > MAX_BOUND_NODES:
            raise InvalidQuery(f"the query's CTEs, each counted wherever it is named, make more than "
                               f"{MAX_BOUND_NODES:,} SQL nodes; name each CTE fewer times, or split the query")
        return _check_columns(tree, table_types)
    except RecursionError:
        raise InvalidQuery("the query nests queries, CTEs or expressions too deeply (a chain of a few "
                           "hundred `+`, AND or OR nests as deep as it is long: write IN (...) for a long OR); "
                           "split it") from None


def _chain(scope: _Scope | None):
    """A scope, then those of the queries it is correlated with."""
    while scope is not None:
        yield scope
        scope = scope.outer


def _unnamed(node: exp.Expression, i: int) -> str:
    """The name of a column that DuckDB names by rules not followed here (a PIVOT's, an aliased
    COLUMNS(...)'s): one no other column is given, so its fields never unify with another's."""
    return f"\0{id(node)}:{i}"


def _output_name(projection: exp.Expression) -> str:
    """The name DuckDB gives a select list's expression: an alias's, a column's own; any other (a
    call, a cast, a bracket) it names by the expression's text, which is not followed here: a name
    no other column is given (two calls of one function had met as one name, their fields unified)."""
    if isinstance(projection, (exp.Alias, exp.Column)) and projection.alias_or_name:
        return fold(projection.alias_or_name)
    return _unnamed(projection, 0)


def _renamed(out: _Out, node: exp.Expression) -> _Out:
    """A query's columns as `AS t(a, b)` or `WITH t(a, b) AS (...)` names the first of them."""
    names = [fold(c.name) for c in getattr(node.args.get("alias"), "columns", None) or []]
    if not names:
        return out
    return out._replace(columns=[(names[i] if i < len(names) else n, w) for i, (n, w) in enumerate(out.columns)])


def _extraction(node: exp.Expression, function: str) -> tuple[exp.Expression, exp.Expression | None] | None:
    """What `x[k]`, `struct_extract(x, k)` and their kin read from, and the key when it is one literal."""
    if isinstance(node, exp.Bracket):
        within, keys = node.this, node.expressions
    elif isinstance(node, exp.StructExtract):
        within, keys = node.this, [node.expression]
    elif function in EXTRACTING and node.expressions:
        within, keys = node.expressions[0], node.expressions[1:]
    else:
        return None
    return within, keys[0] if len(keys) == 1 and isinstance(keys[0], exp.Literal) else None


class _Out(NamedTuple):
    """What a query makes: its columns (name, leaves), whether it has columns not known too (a
    source table's), the most copies star expansion makes of a column down to it, and the leaves and
    PIVOT columns DuckDB binds for it and for everything it reads (a CTE wherever named)."""
    columns: list[tuple[str, int]]
    unknown: bool = False
    stars: int = 1
    leaves: int = 0
    pivoted: int = 0


class _Scope(NamedTuple):
    """The columns a select list (or a PIVOT's aggregates) may name."""
    columns: list[tuple[str, int]]  # all its sources', in order
    names: dict[str, int]  # column name -> its width (one name in two sources: both met)
    rows: dict[str, list[tuple[str, int]]]  # source alias -> its columns, when known
    widest: int  # of the scope and of any query it is correlated with
    inside: frozenset  # the CTEs being read, by id (a recursive CTE's own name is a source table there)
    outer: _Scope | None = None  # what a correlated (or lateral) reference may name


def _check_columns(tree: exp.Expression, table_types: Callable[[tuple[str, ...]], pa.Schema | None]) -> int:
    """Estimate the columns of every query in the tree from those of what it reads (subqueries in
    FROM and joins, set operations, CTEs where named, PIVOTs), and refuse past any bound above; the
    leaves of the root's own columns."""
    meetings = Meetings()
    withs = cte_scopes(tree)
    as_rows: dict[int, tuple[list, Struct]] = {}  # a source's row as a struct, built once
    defined_in: dict[int, _Scope | None] = {}  # a CTE body -> the scope around its WITH (kept by `seen`)
    seen: dict[tuple[int, int], tuple[_Scope | None, _Out]] = {}  # each node once per scope around it (kept)
    read_once: set[int] = set()

    def query(node: exp.Expression, inside: frozenset, outer: _Scope | None = None) -> _Out:
        """`outer`: what a correlated (or lateral) reference in it may name."""
        key = (id(node), id(outer))
        if key not in seen:
            seen[key] = (outer, read(node, inside, outer))
            read_once.add(id(node))
        return seen[key][1]

    def joined(scope: _Scope, source: exp.Expression, out: _Out) -> _Scope:
        """The scope with one more source: its columns added to the same lists (a source read before
        was read with what came before it), so n sources cost n, not n^2."""
        scope.columns.extend(out.columns)
        for name, w in out.columns:  # one name in two sources: a USING join's column is both met
            scope.names[name] = meetings.met([scope.names[name], w]) if name in scope.names else w
        if out.columns and source.alias_or_name:
            scope.rows[fold(source.alias_or_name)] = out.columns
        return scope._replace(widest=int(max([scope.widest, *(w for _, w in out.columns)])))

    def read(node: exp.Expression, inside: frozenset, outer: _Scope | None) -> _Out:
        with_ = node.args.get("with_") or node.args.get("with")
        for cte in with_.expressions if with_ else []:  # a CTE's body may name what its WITH's query may
            defined_in[id(cte.this)] = outer
        if isinstance(node, (exp.Subquery, exp.Lateral)):
            out = query(node.this, inside, outer)
        elif isinstance(node, exp.Pivot):  # DuckDB's PIVOT statement, as a subquery
            return pivot(node, query(node.this, inside, outer), inside, outer)
        elif isinstance(node, exp.SetOperation):
            queries, chain = _set_parts(node)
            parts = [query(part, inside, outer) for part in queries]
            links = {bool(n.args.get("by_name")) for n in chain}
            by_name = links.pop() if len(links) == 1 else None  # None: both kinds in one chain
            out = made(_side_by_side(parts, meetings, by_name), any(p.unknown for p in parts),
                       max(p.stars for p in parts), sum(p.leaves for p in parts), sum(p.pivoted for p in parts))
            ordered = _Scope(out.columns, dict(out.columns), {}, int(max([1, *(w for _, w in out.columns)])), inside,
                             outer)
            for clause in _clauses(node):
                _bounded(width(clause, ordered))
        elif isinstance(node, exp.Table):
            cte = None if node.args.get("db") else defining_cte(node, withs)
            types = table_types(tuple(p.name for p in node.parts)) \
                if cte is None and isinstance(node.this, exp.Identifier) else None
            if types is not None:  # a table whose types are known
                out = made([(fold(f.name), arrow_width(f.type)) for f in types])
            elif cte is None:  # a table's
                out = _Out([], unknown=True)
            elif id(cte) in inside:  # a recursive CTE's own name: DuckDB reads it as its first part's type
                first = _set_parts(cte.this)[0][0] if isinstance(cte.this, exp.SetOperation) else None
                out = _Out([], unknown=True) if first is None else \
                    _renamed(query(first, inside, defined_in.get(id(cte.this))), cte)
            else:
                out = _renamed(query(cte.this, inside | {id(cte)}, defined_in.get(id(cte.this))), cte)
        elif isinstance(node, (exp.Values, exp.Unnest)):  # a column per value of a row, or per list unnested
            scope = _Scope([], {}, {}, outer.widest if outer else 1, inside, outer)
            rows = node.expressions if isinstance(node, exp.Values) else [node]
            values = [[width(v, scope) for v in row.expressions] for row in rows]
            met = [meetings.met(list(w)) for w in zip_longest(*values, fillvalue=1)]
            names = [f"col{i}" for i in range(len(met))] if isinstance(node, exp.Values) else \
                ["unnest"] if len(met) == 1 else [_unnamed(node, i) for i in range(len(met))]  # as DuckDB names them
            out = made(list(zip(names, met)))
        elif isinstance(node, exp.Select):
            out = select(node, inside, outer)
        else:
            out = _Out([], unknown=True)
        for p in node.args.get("pivots") or []:  # `FROM t PIVOT (...)`
            out = pivot(p, out, inside, outer)
        return out

    def select(node: exp.Select, inside: frozenset, outer: _Scope | None) -> _Out:
        sources = [s.this for s in [node.args.get("from_") or node.args.get("from"), *(node.args.get("joins") or [])]
                   if s is not None]
        outs: list[_Out] = []
        scope = _Scope([], {}, {}, outer.widest if outer else 1, inside, outer)
        for source in sources:  # a lateral reference names a source before it
            outs.append(_renamed(query(source, inside, scope if outs else outer), source))
            scope = joined(scope, source, outs[-1])
        skip = {id(s) for s in sources}  # then the queries in its expressions (scalar, IN, EXISTS)
        below = outs + [query(n, inside, scope) for n in node.walk(prune=lambda n: n is not node and (
            isinstance(n, (exp.Query, exp.Pivot, exp.With)) or id(n) in skip))
            if n is not node and isinstance(n, (exp.Query, exp.Pivot)) and id(n) not in skip]
        leaves, pivoted = sum(o.leaves for o in below), sum(o.pivoted for o in below)
        _check(0, leaves, pivoted)
        columns: list[tuple[str, int]] = []
        stars, made_leaves = 0, 0
        for projection in node.expressions:
            star = projection.this if isinstance(projection, exp.Columns) else projection
            chosen = scope.columns
            if isinstance(star, exp.Column) and isinstance(star.this, exp.Star):  # t.*, COLUMNS(t.*)
                star, chosen = star.this, source_row(fold(star.table), scope)
            if isinstance(star, exp.Star):  # *, t.*, COLUMNS(*), COLUMNS(t.*), with EXCLUDE, REPLACE, RENAME
                replaced = {fold(r.alias): width(r.this, scope) for r in star.args.get("replace") or []}
                renamed = {fold(r.this.name): fold(r.alias) for r in star.args.get("rename") or []}
                more = [(renamed.get(n, n), replaced.get(n, w)) for n, w in chosen]
            elif _starred(projection) and not all(c.args.get("unpack") for c in projection.find_all(exp.Columns)):
                # sum(COLUMNS(*)), COLUMNS('regex'): one each, worked out once per width, each column's names
                # forgotten; or, for many widths and a large expression, once at the widest
                widths = {int(w) for _, w in scope.columns}
                if len(widths) * sum(1 for _ in projection.walk()) > MAX_STAR_WORK:
                    each = dict.fromkeys(widths, width(projection, scope, Opaque(max(widths))))
                else:
                    each = {w: width(projection, scope, Opaque(w)) for w in widths}
                more = [(_unnamed(projection, i) if isinstance(projection, exp.Alias) else n, each[int(w)])
                        for i, (n, w) in enumerate(scope.columns)]  # `COLUMNS(...) AS '\1_x'` renames them
            else:  # f(*COLUMNS(*)) is one column of them all
                more = [(_output_name(projection), width(projection, scope))]
            stars += _starred(projection)
            for name, w in more:  # DuckDB lets a later expression name an earlier one's alias
                scope.names.setdefault(name, w)
            columns += more
            made_leaves += sum(w for _, w in more)
            _check(made_leaves, leaves + made_leaves, pivoted)
        for clause in _clauses(node):  # WHERE, ON, GROUP BY, HAVING, QUALIFY, ORDER BY...: bound as well
            _bounded(width(clause, scope))
        return made(columns, stars > 0 and any(o.unknown for o in outs),
                    max(1, stars) * max([1, *(o.stars for o in outs)]), leaves, pivoted)

    def pivot(node: exp.Pivot, source: _Out, inside: frozenset, outer: _Scope | None) -> _Out:
        """A PIVOT makes a column per value of its ON lists' product, per aggregate (or per input
        column for one over a star), after the input's columns it does not name; an UNPIVOT makes
        a name and a value column beside its input's columns (an upper bound)."""
        names: dict[str, int] = {}
        for name, w in source.columns:
            names[name] = max(names.get(name, 1), w)
        scope = _Scope(source.columns, names, {}, int(max([outer.widest if outer else 1, *names.values()])), inside,
                       outer)
        if node.args.get("unpivot"):  # its value column is the unpivoted columns met
            named = {fold(c.name) for c in node.find_all(exp.Column)}
            value = meetings.met([w for n, w in source.columns if n in named or _starred(node)] or [scope.widest])
            return made([*source.columns, (_unnamed(node, 0), 1), (_unnamed(node, 1), value)], *source[1:])
        simple = "using" in node.args  # DuckDB's `PIVOT t ON a IN (...) USING sum(x)`
        on = node.expressions if simple else node.args.get("fields") or []
        aggregates = (node.args.get("using") or []) if simple else node.expressions
        values = 1
        for field in on:
            listed = isinstance(field, exp.In) and not field.args.get("query") \
                and not any(isinstance(v, (exp.Subquery, exp.Select)) for v in field.expressions)
            values *= len(field.expressions) if listed else PIVOT_LIMIT
        each = [(max(1, len(source.columns)) if _starred(a) else 1, width(a, scope, Opaque(scope.widest)))
                for a in aggregates] or [(1, 1)]
        count = values * sum(n for n, _ in each)
        _check(0, source.leaves, source.pivoted + count)
        starred = sum(1 for a in aggregates if _starred(a)) if source.unknown else 0  # copies of columns not known
        used = {fold(c.name) for part in [*on, *aggregates] for c in part.find_all(exp.Column)}
        columns = [(n, w) for n, w in source.columns if n not in used]
        made_here = [w for _ in range(values) for n, w in each for _ in range(n)]
        columns += [(_unnamed(node, i), w) for i, w in enumerate(made_here)]
        return made(columns, source.unknown, source.stars * max(1, values * starred), source.leaves,
                    source.pivoted + count)

    def width(node: exp.Expression, scope: _Scope, star: int | None = None) -> int:
        """A value's type width in leaves (MAX_TYPE_WIDTH's comment); `star`: that of the column a
        star or COLUMNS(...) in it stands for, one at a time (its own width: a struct keeps its names)."""
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            return column(node, scope)
        if isinstance(node, exp.PositionalColumn):  # #n: the n-th column of the sources
            n = int(node.name) if node.name.isdigit() else 0
            return scope.columns[n - 1][1] if 0 < n <= len(scope.columns) else Opaque(scope.widest)
        if isinstance(node, (exp.Star, exp.Columns)):
            return int(scope.widest) if star is None else star
        if isinstance(node, exp.Identifier):  # a lambda's variable: what it is bound to, else as a column not known
            return scope.names.get(fold(node.name), int(scope.widest))
        if isinstance(node, exp.Query):  # a scalar subquery: its column
            return max([1, *(w for _, w in query(node, scope.inside, scope).columns)])
        if isinstance(node, (exp.Alias, exp.PropertyEQ)):
            return width(node.this if isinstance(node, exp.Alias) else node.expression, scope, star)
        if isinstance(node, PASSING) and node.this is not None:  # a window's, filter's or lambda's: its expression's
            value = width(node.this, scope, star)
            bound = max([1, *(width(c, scope, star) for c in node.iter_expressions() if c is not node.this)])
            return bound if bound > MAX_TYPE_WIDTH else value  # its PARTITION BY, ORDER BY, FILTER are bound too
        if isinstance(node, exp.DataType):
            return type_width(node)
        if isinstance(node, exp.Literal):
            return 1
        if isinstance(node, SCALAR):  # one leaf, of values DuckDB binds all the same
            inner = max([1, *(width(child, scope, star) for child in node.iter_expressions())])
            return inner if inner > MAX_TYPE_WIDTH else 1
        if isinstance(node, (exp.Cast, exp.TryCast)):  # the type written
            inner = width(node.this, scope, star)
            return inner if inner > MAX_TYPE_WIDTH else type_width(node.args["to"])
        if isinstance(node, exp.FromJson) or isinstance(node, exp.Anonymous) and node.name.lower() in TYPED_BY_TEXT:
            return described_width(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() in MULTIPLYING and len(node.expressions) == 3:
            replaced, by = width(node.expressions[0], scope, star), width(node.expressions[2], scope, star)
            return Opaque(replaced * by) if isinstance(replaced, (Struct, Opaque)) or isinstance(by, (Struct, Opaque)) \
                else replaced * by
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):  # x.f(a) is DuckDB's f(x, a)
            call = node.expression
            name = call.name if isinstance(call, exp.Anonymous) else call.sql_name()
            return width(exp.Anonymous(this=name, expressions=[node.this, *call.iter_expressions()]), scope, star)
        if isinstance(node, exp.Dot):  # (x).a
            return field_of(width(node.this, scope, star), [fold(node.name)])
        function = node.name.lower() if isinstance(node, exp.Anonymous) else \
            node.sql_name().lower() if isinstance(node, exp.Func) else ""
        extraction = _extraction(node, function)
        if extraction is not None:  # x['a'], x[1], struct_extract(x, 'a'): a field, or a list's element
            within, key = width(extraction[0], scope, star), extraction[1]
            if key is not None and key.is_string:
                return field_of(within, [fold(key.name)])
            # An index reads an unnamed struct's field, or a list's element (the list's own width).
            named = isinstance(within, Struct) and all(isinstance(k, str) for k in within.fields)
            return within if key is not None and named and function != "struct_extract_at" else opaque(within)
        children = list(node.iter_expressions())
        args = [arg for child in children if not isinstance(child, exp.Lambda)
                for arg in arguments(child, node, scope, star)]
        lambdas = [child for child in children if isinstance(child, exp.Lambda)]
        if lambdas:  # its variables stand for the elements of the lists it is given, all of them met
            element = meetings.met([w for _, w in args] or [1])
            for child in lambdas:
                bound = scope._replace(names={**scope.names, **{fold(v.name): element for v in child.expressions}})
                args.append((None, width(child, bound, star)))
        args = args or [(None, 1)]
        if isinstance(node, (exp.Struct, exp.Tuple, exp.Map, exp.VarMap, exp.ArraysZip)) or function in COMBINING:
            return Struct(_fields(node, function, args))
        met = meetings.met([w for _, w in args])
        return met if isinstance(node, WHOLE) or function in WHOLE_FUNCTIONS else opaque(met)

    def rows(columns: list[tuple[str, int]]) -> Struct:
        """A source's row, as the struct DuckDB makes of it (once per source: a query may name it
        thousands of times)."""
        if id(columns) not in as_rows:
            as_rows[id(columns)] = (columns, Struct(named(columns)))
        return as_rows[id(columns)][1]

    def source_row(alias: str, scope: _Scope) -> list[tuple[str, int]]:
        """`t.*`'s columns: source t's, here or in a query this one is correlated with; or struct
        column t's fields (a field not named by a name, or t's fields not known: one column of all)."""
        for around in _chain(scope):
            if alias in around.rows:
                return around.rows[alias]
            if alias in around.names:
                value = around.names[alias]
                if isinstance(value, Struct) and all(isinstance(k, str) for k in value.fields):
                    return list(value.fields.items())
                return [(f"{alias}.*", opaque(value) if value > 1 else Opaque(1))]
        return scope.columns

    def column(node: exp.Column, scope: _Scope) -> int:
        """`c`, `t.c`, `s.a.b`: a source's column, a source's row as a struct (`t` alone), then
        fields by name; looked up here, then in the queries this one is correlated with. A name not
        found counts as the widest known: a table's column where only tables are read, else its
        names are not known (a column DuckDB names by rules not followed here: Opaque)."""
        path = [fold(part.name) for part in node.parts]
        for around in _chain(scope):
            if len(path) > 1 and path[0] in around.rows:  # t.c: t's c, not another source's c
                found = next((w for n, w in around.rows[path[0]] if n == path[1]), None)
                return Opaque(scope.widest) if found is None else field_of(found, path[2:])
            if path[0] in around.names:
                return field_of(around.names[path[0]], path[1:])
            if len(path) == 1 and path[0] in around.rows:
                return rows(around.rows[path[0]])
        return Opaque(scope.widest) if any(chain.columns for chain in _chain(scope)) else int(scope.widest)

    def arguments(child: exp.Expression, call: exp.Expression, scope: _Scope,
                  star: int | None) -> list[tuple[str | None, int]]:
        """A call's argument, with the field name DuckDB gives it in a struct: `name := value`'s, a struct
        literal's column's own; *COLUMNS(...) is each column it unpacks, named after it."""
        value = child.expression if isinstance(child, exp.PropertyEQ) else child
        if isinstance(value, exp.Columns) and value.args.get("unpack"):
            named = isinstance(child, exp.PropertyEQ) or isinstance(call, exp.Struct)
            return [(n if named else None, w) for n, w in scope.columns] or [(None, scope.widest)]
        if isinstance(child, exp.PropertyEQ):
            return [(child.this.name, width(value, scope, star))]
        named = isinstance(child, exp.Column) and isinstance(call, exp.Struct)  # struct_pack(x) names x
        return [(child.name if named else None, width(child, scope, star))]

    def made(columns: list[tuple[str, int]], unknown: bool = False, stars: int = 1, leaves: int = 0,
             pivoted: int = 0) -> _Out:
        _bounded(max([1, *(w for _, w in columns)]))
        if stars > MAX_STAR_COPIES:
            raise InvalidQuery(f"star projections (*, t.*, COLUMNS(...)) would copy a column more than "
                               f"{MAX_STAR_COPIES} times through the nested queries; name the columns")
        own = sum(w for _, w in columns)
        _check(own, leaves + own, pivoted)
        return _Out(columns, unknown, stars, leaves + own, pivoted)

    # Every query in the tree heads a chain, once: read from the top, or else alone (a CTE not named).
    for q in tree.find_all(exp.Query, exp.Pivot):  # a `FROM t PIVOT (...)` clause is read with its t
        if id(q) not in read_once and not (isinstance(q, exp.Pivot) and q.this is None):
            query(q, frozenset())
    root = seen.get((id(tree), id(None)))
    return sum(w for _, w in root[1].columns) if root else 0


def _bounded(width: int) -> None:
    """Refuse a value DuckDB would bind wider than MAX_TYPE_WIDTH: a column's, or any clause's."""
    if width > MAX_TYPE_WIDTH:
        raise InvalidQuery(f"a column's type would hold more than {MAX_TYPE_WIDTH:,} fields (structs, rows or "
                           "maps built of the same columns through nested queries); name the fields you need")


def _clauses(node: exp.Query) -> list[exp.Expression]:
    """The expressions of a query's clauses other than its select list, each alone: WHERE, a join's
    ON, GROUP BY, HAVING, QUALIFY, WINDOW, ORDER BY and DISTINCT ON. DuckDB binds them all."""
    found = [node.args[key].this for key in ("where", "having", "qualify") if node.args.get(key)]
    found += [join.args["on"] for join in node.args.get("joins") or [] if join.args.get("on")]
    found += list(node.args["group"].iter_expressions()) if node.args.get("group") else []
    found += [o.this if isinstance(o, exp.Ordered) else o for o in node.args["order"].expressions] \
        if node.args.get("order") else []
    found += list(node.args.get("windows") or [])
    distinct = node.args.get("distinct")
    found += [distinct.args["on"]] if isinstance(distinct, exp.Distinct) and distinct.args.get("on") else []
    return found


def _check(own: int, leaves: int, pivoted: int) -> None:
    """Refuse a query making `own` leaves, binding `leaves` and `pivoted` PIVOT columns with all it reads."""
    if pivoted > MAX_PIVOT_COLUMNS:
        raise InvalidQuery(f"a PIVOT would make more than {MAX_PIVOT_COLUMNS:,} columns (its ON values, listed with "
                           f"IN (...) or else up to {PIVOT_LIMIT:,}, times its aggregates, each over * or COLUMNS(...) "
                           "once per column it reads; all the query's PIVOTs together)")
    if own > MAX_OUTPUT_LEAVES:
        raise InvalidQuery(f"a query would make more than {MAX_OUTPUT_LEAVES:,} columns (star projections expanded, "
                           "each struct field counted); name the columns you need")
    if leaves > MAX_BOUND_LEAVES:
        raise InvalidQuery(f"the query's nested queries would make more than {MAX_BOUND_LEAVES:,} columns in all (each "
                           "struct field counted, a CTE wherever it is named); name the columns you need, or split it")


def _fields(node: exp.Expression, function: str, args: list[tuple[str | None, int]]) -> dict:
    """The fields a COMBINING call builds of its arguments: by the names DuckDB gives them (`arguments`),
    a map's as its keys and values, a struct edited (STRUCT_EDITS) by its own, and by position
    otherwise (row(), zips: DuckDB unifies unnamed structs by position)."""
    if function in STRUCT_EDITS:
        fields: dict = {}
        for i, (name, w) in enumerate(args):
            if name is None and isinstance(w, Struct):
                fields.update(w.fields)
            else:
                fields[i if name is None else fold(name)] = w
        return fields
    if isinstance(node, (exp.Map, exp.VarMap)) or function == "map":
        return {MAP_PARTS[i] if i < 2 else i: w for i, (_, w) in enumerate(args)}
    return named(args)


def _starred(node: exp.Expression) -> bool:
    """Whether a projection or aggregate holds a star or COLUMNS(...) (count(*) and subqueries aside)."""
    return any(isinstance(n, exp.Columns) or isinstance(n, exp.Star) and not isinstance(n.parent, exp.Count)
               for n in node.walk(prune=lambda n: isinstance(n, exp.Query)))


def _side_by_side(outs: list[_Out], meetings: Meetings, by_name: bool | None = False) -> list[tuple[str, int]]:
    """Columns of a set operation's queries: the first's names, each position's values met; or, BY
    NAME, each name's; or, both kinds of link in one chain, every name's values all met."""
    if by_name is not False:
        named: dict[str, list[int]] = {}
        for out in outs:
            for n, w in out.columns:
                named.setdefault(n, []).append(w)
        if by_name is None:
            everything = meetings.met([w for out in outs for _, w in out.columns] or [1])
            return [(n, everything) for n in named]
        return [(n, meetings.met(ws)) for n, ws in named.items()]
    longest = max(outs, key=lambda o: len(o.columns)).columns
    names = [n for n, _ in outs[0].columns] + [n for n, _ in longest[len(outs[0].columns):]]
    positions = zip_longest(*([w for _, w in o.columns] for o in outs), fillvalue=1)
    return [(n, meetings.met(list(w))) for n, w in zip(names, positions)]


def _set_parts(node: exp.SetOperation) -> tuple[list[exp.Expression], list[exp.SetOperation]]:
    """The queries a chain of UNION/INTERSECT/EXCEPT joins, left to right, and the chain's own links
    (not those in its parts' subqueries), walked without recursing: a chain of a thousand is one
    level, not a thousand."""
    parts, links, chain = [], [], [node]
    while chain:
        n = chain.pop()
        if isinstance(n, exp.SetOperation):
            links.append(n)
            chain += [n.left, n.right]
        else:
            parts.append(n)
    return parts[::-1], links


def _bound_nodes(tree: exp.Expression) -> int:
    """The tree's nodes with every bare table name that names a CTE counted as that CTE's body,
    itself counted the same way (once per body: memoized); a CTE naming itself (recursive) counts
    once. Names are matched case-blind across the whole query: never fewer than DuckDB binds."""
    bodies = _cte_bodies(tree)
    sizes: dict[str, int] = {}

    def size(node: exp.Expression, inside: frozenset) -> int:
        total = 0
        for n in node.walk():
            total += 1
            name = n.name.lower() if isinstance(n, exp.Table) and not n.args.get("db") else None
            if name in bodies and name not in inside:
                if name not in sizes:
                    sizes[name] = max(size(body, inside | {name}) for body in bodies[name])
                total += sizes[name]
            if total > MAX_BOUND_NODES:
                return total
        return total

    return size(tree, frozenset())


def _cte_bodies(tree: exp.Expression) -> dict[str, list[exp.Expression]]:
    """Each CTE name (folded, as DuckDB folds it) with the bodies it is given anywhere in the query."""
    bodies: dict[str, list[exp.Expression]] = {}
    for cte in tree.find_all(exp.CTE):
        bodies.setdefault(cte.alias_or_name.lower(), []).append(cte.this)
    return bodies
