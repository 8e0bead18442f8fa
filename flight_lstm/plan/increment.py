"""The incremental filter of an enrichment run: which of the query's rows still need scoring,
decided before any operator runs. A planner step: the run's query, parsed once, in; two queries
(trees) out, each then planned like any other.

A run puts two queries to the source, each planned like any other:
- the *keys query*: the user's query with its SELECT list replaced by the key (and watermark)
  expressions, so it calls no operator at all, compared with the keys already in the target
  (registered locally as `_done_keys`) to mark each row new, changed or done;
- the *chunk query*: the user's query with one more WHERE condition, evaluated below the SELECT
  list where the operators are, keeping only one chunk of the pending keys (`_chunk_keys`).

So a row already scored never reaches a model, whatever order the engine picks for the rest.
Both compare keys as every other place does (sinks/keys.py: identical values, text byte for byte).

A query straight over `anomaly_table(...)`, keyed on its (key, ts), marks the call instead
(plan/anomaly_table.py): the keys query reads the keys without scoring, and the chunk query
scores the pending points of each series from just enough of its past.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.identifiers import quote
from flight_lstm.plan import anomaly_table
from flight_lstm.plan.operators import operator_calls
from flight_lstm.sinks.keys import is_text, same_key

DONE, CHUNK = "_done_keys", "_chunk_keys"
EXISTING, TODO = "__enrich_existing", "__enrich_todo"
DONE_MODEL, DONE_WATERMARK = "__enrich_model", "__enrich_watermark"


def key_column(i: int) -> str:
    """Names the key columns of `_done_keys`/`_chunk_keys` so they never capture a query's own."""
    return f"__enrich_k{i}"


@dataclass(frozen=True)
class Increment:
    keys_query: exp.Query  # every candidate key, with EXISTING and TODO flags
    chunk_query: exp.Query  # the user's query for the keys in CHUNK only
    done_condition: str  # when a candidate counts as done, for --dry-run
    key_sql: tuple[str, ...]  # each key's expression over the source's columns


def build(tree: exp.Expression, keys: tuple[str, ...], operators, *,
          key_types: dict[str, pa.DataType] | None = None, watermark: str | None = None,
          model: str | None = None, rescore_on_model_change: bool = False) -> Increment:
    """`tree` is the run's query as parsed (left unchanged). `key_types`, each key's type in the
    query's output (sinks/keys.key_types), tells which keys are text; a run passes it, so they
    compare byte for byte whatever the source's collation."""
    text = {k for k, t in (key_types or {}).items() if is_text(t)}
    if not isinstance(tree, exp.Select):
        raise InvalidQuery("enrichment needs one SELECT (not a UNION or VALUES) so rows can be found by key")
    if tree.args.get("limit") or tree.args.get("offset"):
        raise InvalidQuery("enrichment runs the whole query: drop LIMIT/OFFSET")
    below = tree.copy()
    below.set("expressions", [exp.null()])
    if _calls(below, operators):
        raise InvalidQuery("operators may appear only in the SELECT list of the outer query "
                           "(not in FROM, WHERE, GROUP BY, HAVING or a CTE), so rows can be "
                           "filtered by key before any model runs")
    outputs = _outputs(tree)
    key_exprs = [_expression(outputs, k, "--key", operators) for k in keys]
    for k, e in zip(keys, key_exprs):
        if e.find(exp.AggFunc, exp.Window):
            raise InvalidQuery(f"key {k!r} must be computed without aggregates or window functions")
    probe, chunk = tree.copy(), tree.copy()
    series = _anomaly_call(tree)
    if series is not None:
        _mark_anomaly_call(series, probe, chunk, keys, text)
    probe.set("order", None)
    selected = [exp.alias_(e.copy(), k, quoted=True) for k, e in zip(keys, key_exprs)]
    if watermark:
        if watermark in keys:
            raise InvalidQuery("the watermark column cannot be a key column")
        selected.append(exp.alias_(_expression(outputs, watermark, "--watermark", operators).copy(), watermark,
                                   quoted=True))
    probe.set("expressions", selected)

    known = " AND ".join(same_key(f"d.{key_column(i)}", f"p.{quote(k)}", text=k in text)
                         for i, k in enumerate(keys))
    done = known
    if rescore_on_model_change:
        done += f" AND d.{DONE_MODEL} IS NOT DISTINCT FROM {exp.Literal.string(model).sql() if model else 'NULL'}"
    if watermark:
        done += f" AND NOT coalesce(p.{quote(watermark)} > d.{DONE_WATERMARK}, false)"
    keys_query = exp.select(
        "p.*",
        exp.alias_(_exists(DONE, "d", known), EXISTING),
        exp.alias_(exp.not_(_exists(DONE, "d", done)), TODO),
    ).from_(exp.Subquery(this=probe, alias=exp.TableAlias(this=exp.to_identifier("p"))))
    in_chunk = exp.and_(*(_with_expression(same_key(f"c.{key_column(i)}", KEY, text=k in text), e)
                          for i, (k, e) in enumerate(zip(keys, key_exprs))))
    chunk = chunk.where(exp.Exists(this=exp.select("1").from_(f"{CHUNK} AS c").where(in_chunk)))
    return Increment(keys_query, chunk, done, tuple(e.sql(dialect="duckdb") for e in key_exprs))


def _anomaly_call(tree: exp.Select) -> exp.Anonymous | None:
    """The anomaly_table(...) call the query reads from; InvalidQuery if one is anywhere else."""
    calls = [c for c in tree.find_all(exp.Anonymous) if c.name.lower() in (anomaly_table.TABLE, anomaly_table.EVENTS)]
    source = tree.args.get("from_")
    direct = source.this.this if source is not None and isinstance(source.this, exp.Table) else None
    if not calls:
        return None
    if calls != [direct] or direct.name.lower() != anomaly_table.TABLE or tree.args.get("joins"):
        raise InvalidQuery("an enrichment over anomalies selects straight FROM anomaly_table(...), with no "
                           "join or other table function, keyed on its key and ts columns")
    if any(tree.args.get(part) for part in ("where", "group", "having", "distinct", "qualify")):
        raise InvalidQuery("an enrichment over anomaly_table(...) writes every scored point: drop WHERE, "
                           "GROUP BY and DISTINCT, and filter when you read the table (WHERE is_anomaly)")
    return direct


def _mark_anomaly_call(call: exp.Anonymous, probe: exp.Select, chunk: exp.Select, keys: tuple[str, ...],
                       text: set[str]) -> None:
    """Mark the copies' anomaly_table call: keys only in the probe, pending points in the chunk."""
    key, ts = anomaly_table.series_columns(call)
    wanted = [c for c in (key, ts) if c is not None]
    position = {k.lower(): i for i, k in enumerate(keys)}
    if sorted(position) != sorted(c.lower() for c in wanted):
        raise InvalidQuery(f"an enrichment over anomaly_table(...) is keyed on its series and time: "
                           f"--key {','.join(wanted)}")
    matches = [same_key(f"c.{key_column(position[ts.lower()])}", "p._ts", text=False)]
    if key is not None:
        matches.append(same_key(f"c.{key_column(position[key.lower()])}", "p._key",
                                text=any(k.lower() == key.lower() for k in text)))
    _anomaly_call(probe).meta[anomaly_table.KEYS_ONLY] = True
    _anomaly_call(chunk).meta[anomaly_table.PENDING] = (CHUNK, " AND ".join(matches))


KEY = "__enrich_key"  # stands for a key's expression in a condition written as text


def _exists(table: str, alias: str, condition: str) -> exp.Exists:
    return exp.Exists(this=exp.select("1").from_(f"{table} AS {alias}").where(condition, dialect="duckdb"))


def _with_expression(condition: str, expression: exp.Expression) -> exp.Expression:
    """`condition` (our own text) with the key's expression tree in place of KEY: the user's SQL
    is not written out and read back."""
    tree = exp.condition(condition, dialect="duckdb")
    for column in list(tree.find_all(exp.Column)):
        if column.name == KEY and not column.table:
            column.replace(exp.paren(expression.copy()))
    return tree


def _outputs(select: exp.Select) -> dict[str, exp.Expression] | None:
    """Output name -> expression; None stands for a `*` (names then come from the FROM)."""
    outputs: dict = {}
    for e in select.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            outputs[None] = e
        else:
            outputs[e.alias_or_name] = e.unalias()
    return outputs


def _expression(outputs: dict, name: str, option: str, operators) -> exp.Expression:
    found = outputs.get(name)
    if found is None:
        found = next((e for n, e in outputs.items() if n is not None and n.lower() == name.lower()), None)
    if found is None and None in outputs:
        found = exp.column(name, quoted=True)
    if found is None:
        raise InvalidQuery(f"{option} {name!r} is not a column of the query's output")
    if _calls(found, operators):
        raise InvalidQuery(f"{option} {name!r} is computed by an operator; it must come from the source")
    return found


def _calls(node: exp.Expression, operators) -> bool:
    return next(operator_calls(node, operators), None) is not None
