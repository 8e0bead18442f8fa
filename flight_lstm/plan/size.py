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
allowed here, four `anomaly_events` over 64 columns each).

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

import json
import string
from itertools import zip_longest
from typing import Callable, NamedTuple

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import ParseError

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan import anomaly_table, forecast_backtest, forecast_table
from flight_lstm.plan.row_wise import INPUT

MAX_TABLE_FUNCTIONS = 8
MAX_PLAN_NODES = 20_000
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
# Struct types grow the same way: `SELECT {'a': s, 'b': s} AS s FROM (...)` doubles s's type at
# each level, 14 levels (542 bytes) bound for 3.65 s and 16 reached the process's memory cap. A
# column's type width is estimated as its leaves, and no column of any query may pass MAX_TYPE_WIDTH
# (2^12): a struct, row, map or zip of values holds the sum of theirs, a table's alias named as a
# column (its row as a struct) the sum of its columns', a written type its own (`NULL::STRUCT(...)`),
# a struct's field its own, a lambda's variable the elements of the lists it is given (each nested
# `list_transform(l, x -> {'a': x, 'b': x})` doubles it), and `x.f(a)` counts as f(x, a). Where
# values meet (a list's elements, CASE, COALESCE, UNION, VALUES, UNPIVOT, a USING join's column),
# DuckDB unifies structs field by field: `[{'a': s}, {'b': s}][1]` is STRUCT(a, b), 20 such levels
# (913 bytes) a million fields. So a struct built here keeps its fields by name (`Struct`) and values
# that meet count as their structs unified (`_Meetings`); a value whose fields are not known by name
# (`Opaque`: a call's result over structs, a part of a struct not known by name, a column DuckDB
# names by rules not followed here) counts beside them, so the names can only overcount. Rounds 20
# to 25 found thirty ways to have a value carry names it has not; each is a test.
MAX_TYPE_WIDTH = 4096
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
OTHER = object()  # the key of a struct's fields not known by name: no name is it
MAP_PARTS = (object(), object())  # a map's keys and values, as fields no name reads (m['key'] is a value)
# Unifying structs walks their fields: a thousand meetings of two 2,000-field structs (57 kB) took
# planning from 0.9 s to 6 s. A query's meetings may walk at most this many fields in all, about 0.3 s
# here and 300 times the largest legal plan's (four anomaly_table over 64 columns: 832).
MAX_MEETING_STEPS = 250_000
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
TableTypes = Callable[[tuple[str, ...]], "pa.Schema | None"]  # a table's types by its name's parts, or None
EXPANDED = {forecast_table.NAME, forecast_backtest.NAME, anomaly_table.TABLE, anomaly_table.EVENTS}


def check_table_functions(tree: exp.Expression) -> exp.Expression:
    calls = sum(1 for t in tree.find_all(exp.Table)
                if isinstance(t.this, exp.Anonymous) and t.this.name.lower() in EXPANDED)
    if calls > MAX_TABLE_FUNCTIONS:
        raise InvalidQuery(f"a query may call at most {MAX_TABLE_FUNCTIONS} table functions "
                           f"({', '.join(sorted(EXPANDED))}); this one calls {calls}")
    return tree


def check_plan_size(tree: exp.Expression, table_types: TableTypes | None = None) -> exp.Expression:
    """`table_types`: a source table's types by its name's parts, where the source can tell."""
    _check_size(tree, table_types or (lambda parts: None))
    return tree


def check_exchange_size(tree: exp.Expression, schema: pa.Schema) -> exp.Expression:
    """A DoExchange query, bounded as any other but knowing its input's types, which the client chose
    (4,096 columns copied by 64 stars had bound for 65 s), and making at most MAX_EXCHANGE_LEAVES:
    DuckDB binds an exchange's query a few times over (`SELECT *, *` of 4,096 columns: 1.6 s)."""
    if _check_size(tree, lambda parts: schema if [p.lower() for p in parts] == [INPUT] else None) > MAX_EXCHANGE_LEAVES:
        raise InvalidQuery(f"an exchange query may make at most {MAX_EXCHANGE_LEAVES:,} columns (each struct "
                           "field counted); name the columns you need")
    return tree


def _check_size(tree: exp.Expression, table_types: TableTypes) -> int:
    """Refuse a tree past any bound above; the leaves of the query at its root."""
    for count, _ in enumerate(tree.walk(), start=1):
        if count > MAX_PLAN_NODES:
            raise InvalidQuery(f"the query plans to more than {MAX_PLAN_NODES:,} SQL nodes (its views and "
                               "table functions expanded); split it into smaller queries")
    try:  # both walk down nested queries and CTEs one Python frame per level
        if _bound_nodes(tree) > MAX_BOUND_NODES:
            raise InvalidQuery(f"the query's CTEs, each counted wherever it is named, make more than "
                               f"{MAX_BOUND_NODES:,} SQL nodes; name each CTE fewer times, or split the query")
        return _check_columns(tree, table_types)
    except RecursionError:
        raise InvalidQuery("the query nests queries or CTEs too deeply; split it") from None


class Struct(int):
    """A width in leaves that keeps its struct's fields by name (folded, as DuckDB matches them; an
    unnamed field by its position, an int), so that structs which meet count unified (`_Meetings`).
    One stands only for its own value, never for another's (a column not known, a part of a struct):
    those are plain or Opaque widths. A sum of widths is a plain width."""

    fields: dict

    def __new__(cls, fields: dict) -> Struct:
        built = super().__new__(cls, max(1, sum(fields.values())))
        built.fields = fields
        return built


class Opaque(int):
    """A width whose type may hold structs whose fields are not known by name (a call's result over
    structs, a part of one not known by name, a column DuckDB names by rules not followed here):
    values that meet count it beside theirs, whatever its width. A plain int is a value of no struct
    built here: a scalar, a written type, a table's column."""


def _opaque(width: int) -> int:
    """As wide, its names forgotten: a plain width stays plain."""
    return Opaque(width) if isinstance(width, (Struct, Opaque)) else width


class _Meetings:
    """Values that meet in one query, counted as their structs unified (`met`), within MAX_MEETING_STEPS."""

    def __init__(self):
        self.steps = 0

    def met(self, widths: list[int]) -> int:
        """Their structs unified field by field (a field in several is their values met); beside
        them every opaque width, and the widest plain one unless it is a scalar (one leaf, which
        meets no struct), since their fields may be none of theirs nor each other's. Plain widths
        alone meet as the widest. A struct meets itself as itself, and one past MAX_TYPE_WIDTH is
        refused anyway and not walked."""
        if max(widths) > MAX_TYPE_WIDTH:
            return max(widths)
        structs = list({id(w): w for w in widths if isinstance(w, Struct)}.values())
        opaque = [w for w in widths if isinstance(w, Opaque)]
        plain = max([1, *(w for w in widths if not isinstance(w, (Struct, Opaque)))])
        if not structs and not opaque:
            return plain
        others = sum(opaque) + (plain if plain > 1 else 0)
        if not structs:
            return Opaque(others)
        met = structs[0]
        if len(structs) > 1:
            self.steps += sum(len(struct.fields) for struct in structs)
            if self.steps > MAX_MEETING_STEPS:
                raise InvalidQuery(f"the query's structs meet (in lists, CASE, COALESCE, UNION, ...) over more than "
                                   f"{MAX_MEETING_STEPS:,} fields in all; build fewer of them, or split the query")
            by_name: dict = {}
            for struct in structs:
                for name, w in struct.fields.items():
                    by_name.setdefault(name, []).append(w)
            met = Struct({name: self.met(values) for name, values in by_name.items()})
        if others == 0:
            return met
        return Struct({**met.fields, OTHER: self.met([met.fields.get(OTHER, Opaque(0)), Opaque(others)])})


def _named(pairs: list[tuple[str | None, int]]) -> dict:
    """Fields by name, folded as DuckDB matches them; an unnamed one by its position (an int, never
    a name), and a name given twice twice (DuckDB renames the second `a_1`)."""
    fields: dict = {}
    for i, (name, w) in enumerate(pairs):
        key = i if name is None else _fold(name)
        fields[(key, i) if key in fields else key] = w
    return fields


def _chain(scope: _Scope | None):
    """A scope, then those of the queries it is correlated with."""
    while scope is not None:
        yield scope
        scope = scope.outer


def _fold(name: str) -> str:
    """A name as DuckDB matches it: ASCII letters folded to lower case, any other as written."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _unnamed(node: exp.Expression, i: int) -> str:
    """The name of a column that DuckDB names by rules not followed here (a PIVOT's, an aliased
    COLUMNS(...)'s): one no other column is given, so its fields never unify with another's."""
    return f"\0{id(node)}:{i}"


def _output_name(projection: exp.Expression) -> str:
    """The name DuckDB gives a select list's expression: an alias's, a column's own; any other (a
    call, a cast, a bracket) it names by the expression's text, which is not followed here: a name
    no other column is given (two calls of one function had met as one name, their fields unified)."""
    if isinstance(projection, (exp.Alias, exp.Column)) and projection.alias_or_name:
        return _fold(projection.alias_or_name)
    return _unnamed(projection, 0)


def _renamed(out: _Out, node: exp.Expression) -> _Out:
    """A query's columns as `AS t(a, b)` or `WITH t(a, b) AS (...)` names the first of them."""
    names = [_fold(c.name) for c in getattr(node.args.get("alias"), "columns", None) or []]
    if not names:
        return out
    return out._replace(columns=[(names[i] if i < len(names) else n, w) for i, (n, w) in enumerate(out.columns)])


def _field(value: int, path: list[str]) -> int:
    """A field of a struct (its fields' fields down `path`), if known by name; else as wide as the
    value, its names forgotten (`_opaque`)."""
    for name in path:
        if value > MAX_TYPE_WIDTH:  # DuckDB binds the whole: refused as that
            return value
        if not (isinstance(value, Struct) and name in value.fields):
            return _opaque(value)
        value = value.fields[name]
    return value


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


def _check_columns(tree: exp.Expression, table_types: TableTypes) -> int:
    """Estimate the columns of every query in the tree from those of what it reads (subqueries in
    FROM and joins, set operations, CTEs where named, PIVOTs), and refuse past any bound above; the
    leaves of the root's own columns."""
    meetings = _Meetings()
    withs = {id(w): {_fold(c.alias_or_name): i for i, c in reversed(list(enumerate(w.expressions)))}
             for w in tree.find_all(exp.With)}
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
            scope.rows[_fold(source.alias_or_name)] = out.columns
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
            cte = None if node.args.get("db") else _defining_cte(node, withs)
            types = table_types(tuple(p.name for p in node.parts)) \
                if cte is None and isinstance(node.this, exp.Identifier) else None
            if types is not None:  # a table whose types are known
                out = made([(_fold(f.name), _arrow_width(f.type)) for f in types])
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
                star, chosen = star.this, source_row(_fold(star.table), scope)
            if isinstance(star, exp.Star):  # *, t.*, COLUMNS(*), COLUMNS(t.*), with EXCLUDE, REPLACE, RENAME
                replaced = {_fold(r.alias): width(r.this, scope) for r in star.args.get("replace") or []}
                renamed = {_fold(r.this.name): _fold(r.alias) for r in star.args.get("rename") or []}
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
            named = {_fold(c.name) for c in node.find_all(exp.Column)}
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
        used = {_fold(c.name) for part in [*on, *aggregates] for c in part.find_all(exp.Column)}
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
            return scope.names.get(_fold(node.name), int(scope.widest))
        if isinstance(node, exp.Query):  # a scalar subquery: its column
            return max([1, *(w for _, w in query(node, scope.inside, scope).columns)])
        if isinstance(node, (exp.Alias, exp.PropertyEQ)):
            return width(node.this if isinstance(node, exp.Alias) else node.expression, scope, star)
        if isinstance(node, PASSING) and node.this is not None:  # a window's, filter's or lambda's: its expression's
            value = width(node.this, scope, star)
            bound = max([1, *(width(c, scope, star) for c in node.iter_expressions() if c is not node.this)])
            return bound if bound > MAX_TYPE_WIDTH else value  # its PARTITION BY, ORDER BY, FILTER are bound too
        if isinstance(node, exp.DataType):
            return _type_width(node)
        if isinstance(node, exp.Literal):
            return 1
        if isinstance(node, SCALAR):  # one leaf, of values DuckDB binds all the same
            inner = max([1, *(width(child, scope, star) for child in node.iter_expressions())])
            return inner if inner > MAX_TYPE_WIDTH else 1
        if isinstance(node, (exp.Cast, exp.TryCast)):  # the type written
            inner = width(node.this, scope, star)
            return inner if inner > MAX_TYPE_WIDTH else _type_width(node.args["to"])
        if isinstance(node, exp.FromJson) or isinstance(node, exp.Anonymous) and node.name.lower() in TYPED_BY_TEXT:
            return _described_width(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() in MULTIPLYING and len(node.expressions) == 3:
            replaced, by = width(node.expressions[0], scope, star), width(node.expressions[2], scope, star)
            return Opaque(replaced * by) if isinstance(replaced, (Struct, Opaque)) or isinstance(by, (Struct, Opaque)) \
                else replaced * by
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):  # x.f(a) is DuckDB's f(x, a)
            call = node.expression
            name = call.name if isinstance(call, exp.Anonymous) else call.sql_name()
            return width(exp.Anonymous(this=name, expressions=[node.this, *call.iter_expressions()]), scope, star)
        if isinstance(node, exp.Dot):  # (x).a
            return _field(width(node.this, scope, star), [_fold(node.name)])
        function = node.name.lower() if isinstance(node, exp.Anonymous) else \
            node.sql_name().lower() if isinstance(node, exp.Func) else ""
        extraction = _extraction(node, function)
        if extraction is not None:  # x['a'], x[1], struct_extract(x, 'a'): a field, or a list's element
            within, key = width(extraction[0], scope, star), extraction[1]
            if key is not None and key.is_string:
                return _field(within, [_fold(key.name)])
            # An index reads an unnamed struct's field, or a list's element (the list's own width).
            named = isinstance(within, Struct) and all(isinstance(k, str) for k in within.fields)
            return within if key is not None and named and function != "struct_extract_at" else _opaque(within)
        children = list(node.iter_expressions())
        args = [arg for child in children if not isinstance(child, exp.Lambda)
                for arg in arguments(child, node, scope, star)]
        lambdas = [child for child in children if isinstance(child, exp.Lambda)]
        if lambdas:  # its variables stand for the elements of the lists it is given, all of them met
            element = meetings.met([w for _, w in args] or [1])
            for child in lambdas:
                bound = scope._replace(names={**scope.names, **{_fold(v.name): element for v in child.expressions}})
                args.append((None, width(child, bound, star)))
        args = args or [(None, 1)]
        if isinstance(node, (exp.Struct, exp.Tuple, exp.Map, exp.VarMap, exp.ArraysZip)) or function in COMBINING:
            return Struct(_fields(node, function, args))
        met = meetings.met([w for _, w in args])
        return met if isinstance(node, WHOLE) or function in WHOLE_FUNCTIONS else _opaque(met)

    def rows(columns: list[tuple[str, int]]) -> Struct:
        """A source's row, as the struct DuckDB makes of it (once per source: a query may name it
        thousands of times)."""
        if id(columns) not in as_rows:
            as_rows[id(columns)] = (columns, Struct(_named(columns)))
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
                return [(f"{alias}.*", _opaque(value) if value > 1 else Opaque(1))]
        return scope.columns

    def column(node: exp.Column, scope: _Scope) -> int:
        """`c`, `t.c`, `s.a.b`: a source's column, a source's row as a struct (`t` alone), then
        fields by name; looked up here, then in the queries this one is correlated with. A name not
        found counts as the widest known: a table's column where only tables are read, else its
        names are not known (a column DuckDB names by rules not followed here: Opaque)."""
        path = [_fold(part.name) for part in node.parts]
        for around in _chain(scope):
            if len(path) > 1 and path[0] in around.rows:  # t.c: t's c, not another source's c
                found = next((w for n, w in around.rows[path[0]] if n == path[1]), None)
                return Opaque(scope.widest) if found is None else _field(found, path[2:])
            if path[0] in around.names:
                return _field(around.names[path[0]], path[1:])
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
    for q in tree.find_all(exp.Query, exp.Pivot):
        if id(q) not in read_once:
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
                fields[i if name is None else _fold(name)] = w
        return fields
    if isinstance(node, (exp.Map, exp.VarMap)) or function == "map":
        return {MAP_PARTS[i] if i < 2 else i: w for i, (_, w) in enumerate(args)}
    return _named(args)


def _starred(node: exp.Expression) -> bool:
    """Whether a projection or aggregate holds a star or COLUMNS(...) (count(*) and subqueries aside)."""
    return any(isinstance(n, exp.Columns) or isinstance(n, exp.Star) and not isinstance(n.parent, exp.Count)
               for n in node.walk(prune=lambda n: isinstance(n, exp.Query)))


def _side_by_side(outs: list[_Out], meetings: _Meetings, by_name: bool | None = False) -> list[tuple[str, int]]:
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


def _arrow_width(t: pa.DataType) -> int:
    """An Arrow type's leaves, a struct's fields by name (as DuckDB unifies them), a map's as its keys
    and values, a list's its element's; a union's members summed, their names not followed."""
    if pa.types.is_struct(t):
        return Struct(_named([(f.name, _arrow_width(f.type)) for f in t]))
    if pa.types.is_map(t):
        return Struct({MAP_PARTS[0]: _arrow_width(t.key_type), MAP_PARTS[1]: _arrow_width(t.item_type)})
    if pa.types.is_union(t):
        return Opaque(max(1, sum(_arrow_width(f.type) for f in t)))
    if pa.types.is_dictionary(t):
        return _arrow_width(t.value_type)
    value_type = getattr(t, "value_type", None)  # lists of every kind
    return _arrow_width(value_type) if value_type is not None else 1


def _type_width(node: exp.DataType) -> int:
    """A written type's width: a struct's fields by name (as DuckDB unifies them), a map's as its keys
    and values, a union's members summed (their names not followed), a list's its element's."""
    parts = [(p.name, p.args.get("kind")) if isinstance(p, exp.ColumnDef) else (None, p) for p in node.expressions]
    widths = [(name, _type_width(t)) for name, t in parts if isinstance(t, exp.DataType)]
    if not widths:
        return 1
    if node.this == exp.DataType.Type.STRUCT:
        return Struct(_named(widths))
    if node.this == exp.DataType.Type.MAP:
        return Struct({MAP_PARTS[i] if i < 2 else i: w for i, (_, w) in enumerate(widths)})
    if node.this == exp.DataType.Type.UNION:
        return Opaque(sum(w for _, w in widths))
    return max((w for _, w in widths), key=int)


def _described_width(call: exp.Expression) -> int:
    """The width of the type a TYPED_BY_TEXT call's structure describes: an object's its values' by
    their keys, a list's its element's, a text's that of the type it names, anything else one. JSON
    that Python's reader refuses, and type names sqlglot cannot read, are refused."""
    name = "from_json" if isinstance(call, exp.FromJson) else call.name.lower()
    args = [call.this, call.expression] if isinstance(call, exp.FromJson) else call.expressions
    structure = args[1] if len(args) > 1 else None
    if not (isinstance(structure, exp.Literal) and structure.is_string):
        raise InvalidQuery(f"{name}'s structure must be a string literal (DuckDB reads the result's type from it)")

    def leaves(described) -> int:
        if isinstance(described, dict):
            return Struct(_named([(k, leaves(v)) for k, v in described.items()])) if described else 1
        if isinstance(described, list):
            return leaves(described[0]) if described else 1
        if isinstance(described, str):  # a DuckDB type's name
            try:
                return _type_width(exp.DataType.build(described, dialect="duckdb"))
            except (ValueError, ParseError):
                raise InvalidQuery(f"{name}'s structure names a type not known here: {described[:80]!r}") from None
        return 1

    try:
        described = json.loads(structure.this)
    except ValueError:
        raise InvalidQuery(f"{name}'s structure must be JSON (keys and types quoted, no trailing commas)") from None
    except RecursionError:
        raise InvalidQuery(f"{name}'s structure nests too deeply") from None
    return leaves(described)


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


def _defining_cte(table: exp.Table, withs: dict[int, dict[str, int]]) -> exp.CTE | None:
    """The CTE a table name names, as DuckDB finds it: in the nearest WITH around the name that
    defines one the name may see (a CTE's body sees the CTEs before it in its WITH, and under WITH
    RECURSIVE all of them, itself too), else none (a table). `withs`: each WITH's first position
    of each name."""
    name, node, within = _fold(table.name), table, None
    while node.parent is not None:
        node = node.parent
        if isinstance(node, exp.CTE):
            within = node
            continue
        with_ = node.args.get("with_") or node.args.get("with")
        at = withs[id(with_)].get(name) if isinstance(with_, exp.With) else None
        if at is None:
            continue
        inside_one = within is not None and within.parent is with_  # the name is in one of these CTEs' bodies
        if with_.args.get("recursive") or not inside_one or at < within.index:
            return with_.expressions[at]
    return None


def _cte_bodies(tree: exp.Expression) -> dict[str, list[exp.Expression]]:
    """Each CTE name (folded, as DuckDB folds it) with the bodies it is given anywhere in the query."""
    bodies: dict[str, list[exp.Expression]] = {}
    for cte in tree.find_all(exp.CTE):
        bodies.setdefault(cte.alias_or_name.lower(), []).append(cte.this)
    return bodies
