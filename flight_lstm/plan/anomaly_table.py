"""Expand `anomaly_table(...)` and `anomaly_events(...)` in FROM into plain SQL.

    SELECT * FROM anomaly_table('metrics', key => 'host', ts => 'ts', value => 'cpu',
                                level => 0.999[, model => 'name@version'])

gives one row per input row: (host, ts, value, expected, lo, hi, score, is_anomaly). `key` may be
left out (one series). `value => 'a, b, c'` scores several columns at once: `value`, `expected`,
`lo` and `hi` are then STRUCTs with one field per column, and `score` is one over all of them.

Each series is judged in `ts` order, as the sequence of its observations: a gap of a day or an
irregular step is simply the next observation, a repeated timestamp is two observations (ordered
by value), rows arriving out of order are sorted first. Nothing is refused or filled in. A NULL
value is a missing observation (NULL score, and the model reads past it); a row with a NULL `ts`
belongs to no sequence (NULL expected and score). `is_anomaly` is `score > level`.

`freq => 'hourly'` (any name of flight_lstm/frequencies.py) lays each series on that frequency's
grid instead: the steps missing between two observations are read by the model as missing
observations (at most MAX_CONTEXT per gap), so a daily cycle stays in phase across an outage.
Rows are still only the input's; a repeated or off-grid stamp is still an observation of its own.

    SELECT * FROM anomaly_events('metrics', key => 'host', ts => 'ts', value => 'cpu'[, level, model,
                                 gap => 3])

gives one row per incident: anomalous points of a series that follow each other, with fewer
than `gap` normal observations between them, are one event (host, start_ts, end_ts, points,
peak_score, peak_ts).

A scheduled enrichment marks the call for its two queries (plan/increment.py, in the call's
`meta`, which no SQL text can set): KEYS_ONLY reads the (key, ts) of every row without scoring,
PENDING scores only the series holding a pending key, from MAX_CONTEXT observations before its
first pending point: the model's answer for a point depends on no more of its past than that.
"""
from __future__ import annotations

from sqlglot import exp

from flight_lstm import frequencies
from flight_lstm.frequencies import FREQUENCIES
from flight_lstm.models.series import MAX_CONTEXT
from flight_lstm.plan.arguments import TableCall, expansion, quote_column
from flight_lstm.plan.forecast_table import calendar

TABLE, EVENTS = "anomaly_table", "anomaly_events"
PARAMETERS = ("key", "ts", "value", "level", "model", "freq")
USAGE = ("'table', key => 'col', ts => 'col', value => 'col' or 'a, b, c'[, level => 0.999][, freq => 'hourly']"
         "[, model => 'name@version']")
# Steps of each named frequency between two wall-clock times `_w` and `_pw` (their calendar()).
CALENDAR_STEPS = {"daily": ("day", 1), "weekly": ("day", 7), "business_daily": ("bday", 1),
                  "monthly": ("month", 1), "quarterly": ("month", 3), "yearly": ("month", 12)}
LEVEL = "0.999"
GAP = 3
MAX_GAP = 1_000_000  # observations between flags that still join one event
MAX_COLUMNS = 64  # value => 'a, b, ...': each column adds its own SQL, so a request cannot grow it unbounded
KEYS_ONLY = "keys_only"  # meta: the rows' keys only
PENDING = "pending"  # meta: (local table `c` of pending keys, SQL matching its row to a point `p`)

TEMPLATE = """
WITH _rows AS (
    SELECT {key} AS _key, {ts} AS _ts, {value} AS _value, {doubles} AS _x FROM {table}
), _numbered AS (
    SELECT *, CAST(row_number() OVER w - 1{missed} AS BIGINT) AS _pos
    FROM (SELECT *, {missing} AS _missing
          FROM (SELECT *, lag(_ts) OVER (PARTITION BY _key ORDER BY _ts, _x) AS _previous FROM _rows WHERE _ts IS NOT NULL))
    WINDOW w AS (PARTITION BY _key ORDER BY _ts, _x ROWS UNBOUNDED PRECEDING)
), _series AS (
    SELECT _key, min(_from) AS _start, list(_ts ORDER BY _pos) AS _tss, list(_value ORDER BY _pos) AS _values,
           {xs} AS _xs{at}
    FROM (SELECT n.*, min(n._pos - n._missing) OVER (PARTITION BY n._key) AS _from FROM _numbered AS n {pending})
    GROUP BY _key
), _scored AS (
    SELECT _key, unnest(_tss) AS _ts, unnest(_values) AS _value, unnest({call}) AS _s FROM _series
)
SELECT {key_out}_ts AS {ts_name}, _value AS value, {expected} AS expected, {lo} AS lo, {hi} AS hi,
       _s.score AS score, _s.score > {level} AS is_anomaly
FROM _scored
{unsequenced}
"""

UNSEQUENCED = """UNION ALL
SELECT {key_out}_ts, _value, NULL, NULL, NULL, NULL, NULL FROM _rows WHERE _ts IS NULL"""

# Pending keys: each series with one, from MAX_CONTEXT observations before its first to its last.
PENDING_JOIN = """JOIN (SELECT p._key, min(p._pos) AS _first, max(p._pos) AS _last
          FROM _numbered AS p JOIN {table} AS c ON {matches} GROUP BY p._key) AS w
      ON n._key IS NOT DISTINCT FROM w._key AND n._pos BETWEEN w._first - {context} AND w._last"""

KEYS = "SELECT {key_out}{ts} AS {ts_name} FROM {table} WHERE {ts} IS NOT NULL"

EVENTS_TEMPLATE = """
SELECT {key_out}min(_ts) AS start_ts, max(_ts) AS end_ts, count(*) AS points, max(score) AS peak_score,
       arg_max(_ts, score) AS peak_ts
FROM (SELECT *, sum(_opens) OVER (PARTITION BY _key ORDER BY _ts, _seq) AS _event
      FROM (SELECT *, coalesce(_seq - lag(_seq) OVER (PARTITION BY _key ORDER BY _ts, _seq) > {gap}, true) AS _opens
            FROM (SELECT {key_in} AS _key, {ts_name} AS _ts, score, is_anomaly,
                         row_number() OVER (PARTITION BY {key_in} ORDER BY {ts_name}, value) AS _seq
                  FROM ({scores}) WHERE {ts_name} IS NOT NULL)
            WHERE is_anomaly))
GROUP BY _key, _event
"""


def expand_anomaly_tables(tree: exp.Expression) -> exp.Expression:
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        name = call.name.lower() if isinstance(call, exp.Anonymous) else None
        if name in (TABLE, EVENTS):
            sql = _expansion(call) if name == TABLE else _events(call)
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
            table.replace(exp.Subquery(this=expansion(sql), alias=alias))
    return tree


def series_columns(call: exp.Anonymous) -> tuple[str | None, str]:
    """The names of an anomaly_table call's key (None: one series) and ts columns."""
    parsed = TableCall.of(call, PARAMETERS, USAGE)
    parsed.require("ts", "value")
    return (parsed.string("key") if "key" in parsed else None), parsed.string("ts")


def _expansion(node: exp.Anonymous) -> str:
    call = TableCall.of(node, PARAMETERS, USAGE)
    call.require("ts", "value")
    key = call.column("key") if "key" in call else None
    ts = call.column("ts")
    key_out = f"_key AS {key}, " if key else ""
    if node.meta.get(KEYS_ONLY):
        return KEYS.format(key_out=f"{key} AS {key}, " if key else "", ts=ts, ts_name=ts, table=call.table)
    level = _level(call)
    columns = _value_columns(call)
    doubles = [call.number_column(c) for c in columns]
    model = (", " + exp.Literal.string(call.string("model")).sql("duckdb")) if "model" in call else ""
    if len(columns) == 1:
        value, x = columns[0], doubles[0]
        call_sql = f"anomaly_scores(_xs, {level}, _start{model})"
        expected, lo, hi = "_s.expected", "_s.lo", "_s.hi"
    else:
        value = "struct_pack(" + ", ".join(f"{c} := {c}" for c in columns) + ")"
        x = "[" + ", ".join(doubles) + "]"
        call_sql = f"anomaly_scores_multi(_xs, {level}, _start{model})"
        expected, lo, hi = ("struct_pack(" + ", ".join(f"{c} := _s.{part}[{i + 1}]" for i, c in enumerate(columns)) + ")"
                            for part in ("expected", "lo", "hi"))
    pending = node.meta.get(PENDING)
    grid = {"missed": "", "missing": "0", "xs": "list(_x ORDER BY _pos)", "at": ""}
    if "freq" in call:
        empty = "CAST([] AS DOUBLE[])" if len(columns) == 1 else (
            f"CAST([] AS DOUBLE[][]), _missing, CAST([{', '.join(['NULL'] * len(columns))}] AS DOUBLE[])")
        grid = {"missed": " + sum(_missing) OVER w", "missing": _missing(call),
                "xs": f"flatten(list(list_resize({empty}{', _missing' if len(columns) == 1 else ''}) || [_x] ORDER BY _pos))",
                "at": ", list(_pos - _from + 1 ORDER BY _pos) AS _at"}
        call_sql = f"list_select({call_sql}, _at)"
    return TEMPLATE.format(
        key=key or "NULL", ts=ts, value=value, doubles=x, table=call.table, key_out=key_out, ts_name=ts,
        pending=_pending(pending) if pending else "", call=call_sql, expected=expected, lo=lo, hi=hi,
        level=level, unsequenced="" if pending else UNSEQUENCED.format(key_out=key_out), **grid,
    )


def _missing(call: TableCall) -> str:
    """SQL for the steps of `freq` missing between a point and the one before it (0 for the
    first), at most MAX_CONTEXT."""
    name = call.string("freq")
    try:
        freq = FREQUENCIES[frequencies.parse(name)]
    except (ValueError, KeyError, TypeError):
        raise call.error(f"freq => {name[:40]!r} is not a frequency; one of {', '.join(FREQUENCIES)}") from None
    if freq.minutes:
        steps = f"(epoch_us(_ts) - epoch_us(_previous)) / {freq.minutes * 60_000_000}"
    else:
        part, size = CALENDAR_STEPS[freq.name]
        now, before = calendar("CAST(_ts AS TIMESTAMP)")[part], calendar("CAST(_previous AS TIMESTAMP)")[part]
        steps = f"(({now}) - ({before})) / {size}"
    return f"coalesce(least(greatest(CAST(round({steps}) AS BIGINT) - 1, 0), {MAX_CONTEXT}), 0)"


def _events(node: exp.Anonymous) -> str:
    call = TableCall.of(node, PARAMETERS + ("gap",), USAGE + "[, gap => 3]")
    gap = call.number("gap") if "gap" in call else str(GAP)
    if not gap.isdigit() or int(gap) > MAX_GAP:
        raise call.error(f"gap => {gap} must be a whole number of observations from 0 to {MAX_GAP:,}")
    inner = node.copy()
    inner.set("expressions", [a for a in inner.expressions
                              if not (isinstance(a, exp.Kwarg) and a.this.name.lower() == "gap")])
    key = call.column("key") if "key" in call else None
    return EVENTS_TEMPLATE.format(
        key_out=f"_key AS {key}, " if key else "", key_in=key or "NULL", ts_name=call.column("ts"),
        gap=int(gap) + 1, scores=_expansion(inner))


def _level(call: TableCall) -> str:
    level = call.number("level") if "level" in call else LEVEL
    if not 0 < float(level) < 1:
        raise call.error(f"level => {level} must be between 0 and 1 (the share of normal points inside the interval)")
    return level


def _value_columns(call: TableCall) -> list[str]:
    names = [n.strip() for n in call.string("value").split(",")]
    if not all(names) or len({n.lower() for n in names}) != len(names):
        raise call.error("value => names one column, or several as 'a, b, c', each once")
    if len(names) > MAX_COLUMNS:
        raise call.error(f"value => names {len(names)} columns; at most {MAX_COLUMNS} are scored together")
    return [quote_column(n) for n in names]


def _pending(pending: tuple[str, str]) -> str:
    table, matches = pending
    return PENDING_JOIN.format(table=quote_column(table), matches=matches, context=MAX_CONTEXT)
