"""Split a query between a source that runs SQL (Dremio) and the local DuckDB with the operators.

What reaches the source, in its own dialect:
- a whole derived table or CTE body that calls no operator and reads only source tables
  (joins, aggregations such as `list(x ORDER BY ts)` for forecast input), or else
- per source table, only the columns the query uses and the WHERE conjuncts that touch that
  table alone (not on the null-supplying side of an outer join, no operator, no subquery).

Each piece becomes a scan `_scan_N` (a name the query has nowhere) that the source streams into
the local query, which keeps the operators and everything above them. A registered stream can be
read once, so a CTE that is referenced more than once is materialized locally, and under WITH
RECURSIVE (which reads its recursive part again at every step) so is every scan.

What may be sent is decided on the approved tree, node by node, by an allow-list (`unsendable`);
the text sent is then written from that tree by emit.to_sql. Every node of a piece must be one of
- structure, each with only the arguments listed in SENDABLE: SELECT (DISTINCT, FROM, joins with
  ON/USING, WHERE, GROUP BY, HAVING, QUALIFY, ORDER BY, LIMIT, OFFSET), UNION/INTERSECT/EXCEPT,
  subqueries, non-recursive CTEs, aliases, columns, `*` (no EXCLUDE/REPLACE), window specs,
  FILTER and WITHIN GROUP; a table only as a path of identifiers (no sample, time travel, hints,
  pivots); an identifier quoted, or bare only when a plain word;
- literals: a plain string (not E'..', hex, bit, byte, raw or national strings), a number, NULL,
  TRUE/FALSE;
- operators: comparisons, AND/OR/NOT, + - * / % unary minus and ||, IN, BETWEEN, LIKE/ILIKE
  (ESCAPE), IS, = ANY/ALL (subquery), CASE;
- a typed sqlglot function node (aggregates, window functions, CAST, EXTRACT, ...) except table
  functions (UDTF), file readers and the calls a table function's expansion wrote in DuckDB's SQL
  (LOCAL_ONLY: the source gets the columns they read); CAST only to a built-in type; a function
  sqlglot does not know (Anonymous) only under a plain-word name that is not one of Dremio's
  table functions; a unit or EXTRACT part only as a Var that is a plain word;
and any other text sqlglot would write unquoted must be keyword words (`CURRENT ROW`). The piece
must also be writable in the source's dialect without sqlglot dropping anything (UnsupportedError).

Anything else (a placeholder, E'..', an unknown type, a JSON path, a[1], a.f(), ...) is not sent:
the query or WHERE conjunct holding it stays in the local DuckDB, which runs it there, or refuses
it when emit.py writes the local SQL. A table reference that cannot be sent is refused
(QueryRefused naming it); a table's sample is taken locally, of what the source streams. A bound
parameter is refused: the source would run the query without it. Each piece's text comes from
emit.to_sql (in `scan`), so what reaches the source parses back as exactly one statement. Which
tables may be read at all is the source's decision (Dremio refuses its system tables:
sources/dremio.py).
"""
from __future__ import annotations

import re
from typing import Callable

from sqlglot import exp
from sqlglot.errors import ErrorLevel, UnsupportedError
from sqlglot.optimizer.scope import Scope, traverse_scope

from flight_lstm.errors import QueryRefused, first_line
from flight_lstm.plan.arguments import LOCAL_ONLY
from flight_lstm.plan.ctes import cte_scopes, defining_cte
from flight_lstm.plan.emit import PLAIN_WORD, to_sql
from flight_lstm.plan.fresh_names import unused_prefix
from flight_lstm.plan.output_names import NAME
from flight_lstm.plan.widths import fold

Scans = list[tuple[str, str]]
_LOCAL = "flight_lstm.local"  # a table name's meta: it reads no source table (`_mark_local`)


def push_down(tree: exp.Query, dialect: str, operators: set[str],
              columns_of: Callable[[str], list[str]], local_tables: set[str] = frozenset()) -> tuple[exp.Query, Scans]:
    """Returns the local query and its scans; `columns_of` names a source table's columns, given
    the table as SQL in the source's dialect; `local_tables` live in the local connection."""
    scans: Scans = []
    _mark_local(tree, local_tables)
    prefix = unused_prefix(tree, "_scan_")
    if tree.find(exp.Placeholder) is not None:
        raise QueryRefused("bound parameters ($1, ?, $name) cannot be used with a source that runs part "
                           "of the query itself; write the values into the query")

    def scan(query: exp.Query) -> exp.Table:
        problem = unsendable(query, dialect)
        if problem:  # every caller checked already: fail closed
            raise QueryRefused(f"cannot send this part of the query to the source: {problem}")
        name = f"{prefix}{len(scans)}"
        scans.append((name, to_sql(query, dialect)))
        scanned = exp.to_table(name)
        scanned.meta[_LOCAL] = True
        return scanned

    if _pushable(tree, operators, dialect):
        return exp.select("*").from_(scan(tree)), scans
    for select in list(tree.find_all(exp.Select)):
        _split_aggregation(select, operators, dialect)
    for query in _whole_candidates(tree):
        if _pushable(query, operators, dialect):
            query.replace(exp.select("*").from_(scan(query)))
    for scope in reversed(list(traverse_scope(tree))):
        _push_tables(scope, operators, lambda t: columns_of(t.sql(dialect=dialect)), scan, dialect)
    _materialize_shared_ctes(tree)
    _read_scans_once(tree, {name for name, _ in scans})
    return tree, scans


def _mark_local(tree: exp.Query, local_tables: set[str]) -> None:
    """Tag each table name that reads no source table: one that names a CTE where it stands, as
    DuckDB finds it (plan/ctes.py: only a name written alone can), or a table of the local
    connection. Tagged once, on the whole query: the tag goes with the copies made while splitting
    it (a name had been taken for a CTE whenever any CTE had its last part, so
    `WITH reviews AS (SELECT * FROM space.folder.reviews)` read no table)."""
    scopes = cte_scopes(tree)
    for table in tree.find_all(exp.Table):
        if not table.args.get("db") and (fold(table.name) in local_tables or defining_cte(table, scopes)):
            table.meta[_LOCAL] = True


def _reads_source(table: exp.Table) -> bool:
    return isinstance(table.this, (exp.Identifier, exp.Dot)) and not table.meta.get(_LOCAL)


def _split_aggregation(select: exp.Select, operators: set[str], dialect: str) -> None:
    """`SELECT k, op(agg(x)) FROM t WHERE w GROUP BY k HAVING h` becomes
    `SELECT _k0 AS k, op(_a0) FROM (SELECT k AS _k0, agg(x) AS _a0 FROM t WHERE w GROUP BY k) WHERE h'`
    so the grouping and aggregation run in the source, when the operators sit only above them."""
    group = select.args.get("group")
    if not group or not group.expressions or not select.args.get("from_") or not _calls_operator(select, operators):
        return
    inner_parts = [select.args.get(k) for k in ("from_", "where")] + list(select.args.get("joins") or [])
    if any(p is not None and _calls_operator(p, operators) for p in inner_parts) or _calls_operator(group, operators):
        return
    if any(isinstance(k, exp.Literal) for k in group.expressions):
        return  # GROUP BY 1: positions would change meaning
    probe = exp.select("1").from_(select.args["from_"].this.copy())
    if not _pushable(probe, operators, dialect) or select.args.get("joins"):
        return
    aggs = [_with_modifiers(a) for a in select.find_all(exp.AggFunc) if not a.find_ancestor(exp.AggFunc)]
    if any(_calls_operator(a, operators) or a.find_ancestor(exp.Window) for a in aggs):
        return
    if any(unsendable(part, dialect) for part in [*group.expressions, *aggs, select.args.get("where")] if part):
        return  # the inner query could not be sent: keep the query as it is
    keys = {k.sql(): f"_k{i}" for i, k in enumerate(group.expressions)}
    # Output names the query would have had: an alias, a column's name, or DuckDB's name for the text.
    names = [e.alias_or_name if isinstance(e, (exp.Alias, exp.Column)) else e.meta.get(NAME, e.sql(dialect="duckdb"))
             for e in select.expressions]
    inner = exp.select(*[exp.alias_(k.copy(), f"_k{i}") for i, k in enumerate(group.expressions)])
    inner = inner.from_(select.args["from_"].this.copy())
    for i, agg in enumerate(aggs):
        inner = inner.select(exp.alias_(agg.copy(), f"_a{i}"), copy=False)
        agg.replace(exp.column(f"_a{i}"))
    if select.args.get("where"):
        inner.set("where", select.args["where"].copy())
    inner.set("group", group.copy())

    def to_key(node):
        return exp.column(keys[node.sql()]) if node.sql() in keys else node

    projections = []
    for e, name in zip(select.expressions, names):
        new = e.transform(to_key)
        keeps_name = isinstance(e, exp.Alias) or (isinstance(new, exp.Column) and new.name == name)
        projections.append(new if keeps_name else exp.alias_(new.unalias(), name))
    select.set("expressions", projections)
    if select.args.get("order"):
        select.set("order", select.args["order"].transform(to_key))
    having = select.args.get("having")
    select.set("where", exp.Where(this=having.this.transform(to_key)) if having else None)
    select.set("having", None)
    select.set("group", None)
    select.set("from_", exp.From(this=exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier("_grouped")))))


def _with_modifiers(agg: exp.Expression) -> exp.Expression:
    """An aggregate with what modifies it (FILTER, WITHIN GROUP, IGNORE NULLS): they move with it."""
    while isinstance(agg.parent, (exp.Filter, exp.WithinGroup, exp.IgnoreNulls, exp.RespectNulls)) \
            and agg.arg_key == "this":
        agg = agg.parent
    return agg


def _whole_candidates(tree: exp.Query):
    """Derived tables in FROM/JOIN and CTE bodies, outermost first, while still in the tree (one
    inside a query already pushed whole went with it)."""
    for node in list(tree.walk()):
        if isinstance(node, exp.Query) and isinstance(node.parent, (exp.Subquery, exp.CTE)):
            outer = node.parent
            if (isinstance(outer, exp.CTE) or isinstance(outer.parent, (exp.From, exp.Join))) and node.root() is tree:
                yield node


def _pushable(query: exp.Query, operators: set[str], dialect: str) -> bool:
    if _calls_operator(query, operators) or query.find(exp.Lateral, exp.Unnest):
        return False
    tables = list(query.find_all(exp.Table))
    return bool(tables) and all(map(_reads_source, tables)) and unsendable(query, dialect) is None


def _calls_operator(node: exp.Expression, operators: set[str]) -> bool:
    return any(f.name.lower() in operators for f in node.find_all(exp.Anonymous))


def _push_tables(scope: Scope, operators, columns_of, scan, dialect: str) -> None:
    select = scope.expression
    if not isinstance(select, exp.Select):
        return
    # The scope's tables as DuckDB reads them (`_mark_local`), not as sqlglot's scope sees them: it
    # takes a recursive CTE's own name in its first part for the CTE, where DuckDB reads the table.
    tables = {t.alias_or_name: t for t in scope.tables if _reads_source(t)}
    if not tables:
        return
    bare = {alias: _bare(t) for alias, t in tables.items()}
    for alias, t in bare.items():
        problem = unsendable(t, dialect)
        if problem:
            raise QueryRefused(f"cannot send the table {'.'.join(p.name for p in t.parts)[:80]!r} "
                               f"to the source: {problem}")
    known = {alias: columns_of(t) for alias, t in bare.items()}
    nullable = _null_supplying(select, tables)
    where = select.args.get("where")
    conjuncts = list(where.this.flatten()) if where and isinstance(where.this, exp.And) else ([where.this] if where else [])
    for alias, table in tables.items():
        # A column list on the alias (`t AS r(a, b)`) renames the table's columns here: the query's
        # names are not the source's, so the scan sends every column and no filter.
        renamed = bool(table.args.get("alias") and table.args["alias"].columns)
        needed = known[alias] if renamed else _needed(select, alias, known)
        filters = [] if alias in nullable or renamed else [
            c.copy() for c in conjuncts
            if not _calls_operator(c, operators) and not c.find(exp.Query, exp.AggFunc, exp.Window)
            and c.find(exp.Column) and all(_belongs(col, alias, known) for col in c.find_all(exp.Column))
            and unsendable(c, dialect) is None  # else it stays local only (the local WHERE keeps all)
        ]
        piece = exp.select(*[exp.column(c, quoted=True) for c in needed]).from_(bare[alias])
        for f in filters:
            for col in f.find_all(exp.Column):
                col.set("table", None)
            piece = piece.where(f, copy=False)
        # A sample is taken here, of what the source streams.
        scanned = scan(piece)
        scanned.set("alias", table.args["alias"].copy() if renamed else exp.TableAlias(this=exp.to_identifier(alias)))
        scanned.set("sample", table.args.get("sample"))
        table.replace(scanned)


def _bare(table: exp.Table) -> exp.Table:
    bare = table.copy()
    bare.set("alias", None)
    bare.set("sample", None)
    return bare


# ---------------------------------------------------------------- what may be sent (the allow-list)

_BINARY = frozenset({"this", "expression"})
_THIS = frozenset({"this"})
_QUERY = frozenset({"with_", "order", "limit", "offset"})
# Node types a piece sent to the source may hold, each with the arguments it may carry there.
SENDABLE: dict[type, frozenset[str]] = {
    exp.Select: _QUERY | {"expressions", "distinct", "from_", "joins", "where", "group", "having", "qualify"},
    exp.Union: _QUERY | {"this", "expression", "distinct"},
    exp.Intersect: _QUERY | {"this", "expression", "distinct"},
    exp.Except: _QUERY | {"this", "expression", "distinct"},
    exp.Subquery: frozenset({"this", "alias"}),
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias"}),
    exp.From: _THIS, exp.Where: _THIS, exp.Having: _THIS, exp.Qualify: _THIS,
    exp.Join: frozenset({"this", "on", "using", "side", "kind"}),
    exp.Group: frozenset({"expressions"}),
    exp.Order: frozenset({"this", "expressions"}),
    exp.Ordered: frozenset({"this", "desc", "nulls_first"}),
    exp.Limit: frozenset({"expression"}), exp.Offset: frozenset({"expression"}),
    exp.Distinct: frozenset({"expressions"}),
    exp.Table: frozenset({"this", "db", "catalog", "alias"}),
    exp.TableAlias: frozenset({"this", "columns"}),
    exp.Alias: frozenset({"this", "alias"}),
    exp.Column: frozenset({"this", "table", "db", "catalog"}),
    exp.Dot: _BINARY,
    exp.Identifier: frozenset({"this", "quoted"}),
    exp.Star: frozenset(),
    exp.Literal: frozenset({"this", "is_string"}),
    exp.Null: frozenset(), exp.Boolean: _THIS,
    exp.Paren: _THIS, exp.Tuple: frozenset({"expressions"}),
    **{op: _BINARY for op in (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ,
                              exp.NullSafeNEQ, exp.And, exp.Or, exp.Add, exp.Sub, exp.Mul, exp.Mod, exp.Escape,
                              exp.Filter, exp.WithinGroup)},
    exp.Div: frozenset({"this", "expression", "typed", "safe"}),
    exp.DPipe: frozenset({"this", "expression", "safe"}),
    exp.Not: _THIS, exp.Neg: _THIS, exp.Any: _THIS, exp.All: _THIS,
    exp.IgnoreNulls: _THIS, exp.RespectNulls: _THIS,
    exp.Is: frozenset({"this", "expression", "negate"}),
    exp.Like: frozenset({"this", "expression", "negate"}),
    exp.ILike: frozenset({"this", "expression", "negate"}),
    exp.In: frozenset({"this", "expressions", "query"}),
    exp.Between: frozenset({"this", "low", "high", "symmetric"}),
    exp.Window: frozenset({"this", "partition_by", "order", "spec", "over"}),
    exp.WindowSpec: frozenset({"kind", "start", "start_side", "end", "end_side"}),
    exp.Interval: frozenset({"this", "unit"}),
    exp.DataType: frozenset({"this", "expressions", "nested"}),
    exp.DataTypeParam: _BINARY,
    exp.Var: _THIS,
}
# Typed functions that read files or produce tables: never sent.
NOT_SENT_FUNCTIONS = (exp.UDTF, exp.ReadCSV, exp.ReadParquet, exp.ToFile)
# Dremio's table functions, which sqlglot does not know (Anonymous).
TABLE_FUNCTION_NAMES = {"table", "external_query", "table_files", "table_history", "table_snapshot",
                        "table_manifests", "table_partitions", "clustering_information"}
KEYWORDS = re.compile(r"[A-Za-z_]+(?: [A-Za-z_]+)*")  # what sqlglot's parser puts in a str argument
NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAMED = {exp.Placeholder: "a bound parameter", exp.ByteString: "an escape string E'...'",
          exp.HexString: "a hex string", exp.BitString: "a bit string", exp.RawString: "a raw string",
          exp.National: "a national string", exp.Bracket: "an index a[i]", exp.JSONPath: "a JSON path"}


def unsendable(node: exp.Expression, dialect: str) -> str | None:
    """Why this piece of an approved tree may not be sent to the source, or None when every node
    is on the allow-list (module docstring) and the source's dialect can write all of it."""
    for n in node.walk():
        problem = _node_problem(n)
        if problem:
            return problem
    try:
        node.sql(dialect=dialect, comments=False, unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as e:
        return f"the source's SQL has no form for it ({first_line(e)[:80]})"
    return None


def _node_problem(node: exp.Expression) -> str | None:
    kind = type(node)
    if isinstance(node, exp.Func) and node.meta.get(LOCAL_ONLY):
        return f"{node.key.upper()}, written by a table function for the local DuckDB"
    if isinstance(node, exp.Func) and kind not in SENDABLE:
        if isinstance(node, NOT_SENT_FUNCTIONS):
            return f"the table or file function {node.key.upper()}"
        if isinstance(node, exp.Anonymous):
            if not PLAIN_WORD.fullmatch(node.name):
                return f"the function name {node.name[:40]!r} (not a plain word)"
            if node.name.lower() in TABLE_FUNCTION_NAMES:
                return f"the table function {node.name}()"
        allowed = None  # any arguments: each is checked as a node of its own
    elif kind in SENDABLE:
        allowed = SENDABLE[kind]
    else:
        return next((what for cls, what in _NAMED.items() if isinstance(node, cls)), node.key.upper())
    for key, value in node.args.items():
        if value is None or value is False or value == []:
            continue
        if allowed is not None and key not in allowed:
            return f"{key.rstrip('_').upper()} in {node.key.upper()}"
        if key == "unit" and not isinstance(value, exp.Var):
            return f"a {node.key.upper()} unit that is not a plain word"
        if not isinstance(value, (exp.Expression, list, bool, int, exp.DataType.Type)):
            problem = _text_problem(node, key, value)
            if problem:
                return problem
    if isinstance(node, exp.DataType) and (
            not isinstance(node.this, exp.DataType.Type)
            or node.this in (exp.DataType.Type.USERDEFINED, exp.DataType.Type.UNKNOWN)):
        return "a type that is not built in"
    if isinstance(node, exp.With) and node.args.get("recursive"):
        return "a recursive CTE"
    if isinstance(node, exp.Dot) and not all(isinstance(p, (exp.Identifier, exp.Column, exp.Dot, exp.Star))
                                             for p in (node.this, node.expression)):
        return "a call on a path (a.f(...))"
    return None


def _text_problem(node: exp.Expression, key: str, value) -> str | None:
    """Text in the tree that sqlglot writes as it is, unless it quotes it."""
    if not isinstance(value, str):
        return f"{key.upper()} in {node.key.upper()}"
    if isinstance(node, exp.Literal) and key == "this":
        return None if node.is_string or NUMBER.fullmatch(value) else f"the number {value[:40]!r}"
    if isinstance(node, exp.Identifier) and key == "this":
        return None if node.quoted or PLAIN_WORD.fullmatch(value) else f"the bare name {value[:40]!r}"
    if isinstance(node, (exp.Var, exp.Anonymous)) and key == "this":
        return None if PLAIN_WORD.fullmatch(value) else f"{value[:40]!r} where a plain word belongs ({node.key})"
    return None if KEYWORDS.fullmatch(value) else f"{value[:40]!r} in {node.key.upper()}"


def _needed(select: exp.Select, alias: str, known: dict[str, list[str]]) -> list[str]:
    """The columns of `alias`'s table that the query reads: those its column references may mean
    (an unqualified name any source of the scope has counts for each), and a join's USING columns;
    all of them where a star, a COLUMNS(...) pattern, a position (`#1`), a NATURAL join or the
    table read as a whole row (`SELECT t FROM x t`, `to_json(t)`) names columns without a reference
    to each. Those had been left out: a USING join failed, COLUMNS matched nothing, a whole row lost
    fields, `#1` read another column."""
    cols = known[alias]
    lower = {c.lower(): c for c in cols}
    sources = {c.lower() for columns in known.values() for c in columns}
    whole = any(isinstance(n, exp.Star) and not isinstance(n.parent, exp.Count) for n in select.find_all(exp.Star)) \
        or select.find(exp.Columns, exp.PositionalColumn) is not None \
        or any(str(j.args.get("method") or "").upper() == "NATURAL" for j in select.args.get("joins") or []) \
        or any(not c.table and c.name.lower() not in sources and fold(c.name) == fold(alias)
               for c in select.find_all(exp.Column))
    if whole:
        return cols
    used = {lower[c.name.lower()] for c in select.find_all(exp.Column)
            if c.name.lower() in lower and (fold(c.table) == fold(alias) if c.table else True)}
    used |= {lower[i.name.lower()] for j in select.args.get("joins") or [] for i in j.args.get("using") or []
             if i.name.lower() in lower}
    return [c for c in cols if c in used] or cols[:1]


def _belongs(column: exp.Column, alias: str, known: dict[str, list[str]]) -> bool:
    """Whether a column reference means `alias`'s column: qualified with it, or unqualified and
    found in no other source of the scope."""
    if column.table:
        return fold(column.table) == fold(alias)
    owners = [a for a, cols in known.items() if column.name.lower() in {c.lower() for c in cols}]
    return owners == [alias]


def _null_supplying(select: exp.Select, tables: dict) -> set[str]:
    """Aliases whose rows an outer join may NULL-extend: filters on them cannot move below it."""
    order = [select.args["from_"].this.alias_or_name] if select.args.get("from_") else []
    nullable: set[str] = set()
    for join in select.args.get("joins") or []:
        name, side = join.this.alias_or_name, (join.side or "").upper()
        if side in ("LEFT", "FULL"):
            nullable.add(name)
        if side in ("RIGHT", "FULL"):
            nullable.update(order)
        order.append(name)
    return nullable


def _read_scans_once(tree: exp.Query, scans: set[str]) -> None:
    """Under WITH RECURSIVE, each scan is read through a MATERIALIZED CTE of the whole query
    (`_scan_0_m`): DuckDB reads a recursive part, and what it names, again at every step, and a
    scan streams once ("already been consumed"). The names are free: no name of the query starts
    with the scans' prefix."""
    if not any(w.args.get("recursive") for w in tree.find_all(exp.With)):
        return
    read = [t for t in tree.find_all(exp.Table) if t.meta.get(_LOCAL) and t.name in scans]
    if not read:
        return
    names = sorted({t.name for t in read})
    for table in read:
        table.set("this", exp.to_identifier(f"{table.name}_m"))
    ctes = [exp.CTE(this=exp.select("*").from_(name), alias=exp.TableAlias(this=exp.to_identifier(f"{name}_m")),
                    materialized=True) for name in names]
    with_ = tree.args.get("with_")
    if with_ is None:
        tree.set("with_", exp.With(expressions=ctes))
    else:
        with_.set("expressions", [*ctes, *with_.expressions])


def _materialize_shared_ctes(tree: exp.Query) -> None:
    refs: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        refs[t.name.lower()] = refs.get(t.name.lower(), 0) + 1
    for cte in tree.find_all(exp.CTE):
        if refs.get(cte.alias_or_name.lower(), 0) > 1:
            cte.set("materialized", True)
