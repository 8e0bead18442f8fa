"""Expand `forecast_table(...)` in FROM into plain SQL: one row per series and future step.

    SELECT * FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount',
                                 horizon => 24, level => 0.95[, freq => 'monthly'][, tz => 'Europe/Berlin']
                                 [, model => 'name@version'])

gives columns (store, ts, step, mean, lo, hi, forecast_origin).

Each series' frequency (flight_lstm/frequencies.py) is inferred from its timestamps, in SQL:
yearly, quarterly or monthly when every point falls on the same day of the month (1..28) or on
month ends, at one time of day (and in one month of the quarter or year); weekly on one weekday;
business daily when only Monday to Friday are observed and a weekend is skipped; daily; else a
fixed step, the most common gap (5, 10, 15, 30 minutes and hourly are named; any other is kept,
unnamed, as before). Each needs its most common step to be one step of the frequency. `freq =>`
names the frequency instead (it must fit the timestamps) or gives a seasonal period (the step is
still inferred). The frequency picks the model (`forecast_interval(..., 'monthly')`, resolved by
models/registry.py) unless `model =>` names one.

Missing steps are filled (NULL, interpolated by the model), and so are NaN and infinite values. A
series with no finite value has its rows with NULL mean, lo and hi, as the operators give it NULL.
Refused, with an error naming the series: duplicate timestamps; stamps no frequency fits; a key
that mixes frequencies (its first MIN_RUN steps of one, its last of another); a `freq` its stamps
contradict; a horizon beyond the rule of flight_lstm/frequencies.py (10 years of its steps, and
8,760 steps at most); a timestamp that is infinite or outside FIRST_TS .. LAST_TS.

Future timestamps follow the calendar on the wall clock for daily and longer frequencies (month
ends stay month ends, Feb 29 included) and are fixed durations below a day. A TIMESTAMPTZ is read
on the wall clock of `tz =>` (default: the engine's session time zone, the server's own), so a
daily series stays at its local hour across DST changes; it stays a TIMESTAMPTZ, a DATE stays a
DATE, a TIMESTAMP a TIMESTAMP (other precisions become one); future times past 2262-04-11 are refused.
`forecast_origin` is the series' last timestamp in the same type. A series with a single point has
no step unless `freq` names one: its ts is NULL.
"""
from __future__ import annotations

import zoneinfo
from functools import cache

from sqlglot import exp

from flight_lstm import frequencies
from flight_lstm.plan.arguments import TableCall, expansion
from flight_lstm.frequencies import FREQUENCIES

NAME = "forecast_table"
PARAMETERS = ("key", "ts", "value", "horizon", "level", "model", "freq", "tz")
MAX_FILL = 10  # a filled series may be at most this many times longer than its points (+1000)
MIN_RUN = 3  # a key mixes frequencies when its first this many steps are of one, its last of another
US_PER_MINUTE = 60_000_000
US_PER_YEAR = round(frequencies.DAYS_PER_YEAR * 86_400_000_000)
# Inference tries these in order, coarsest first; then any other fixed step.
INFERENCE_ORDER = ("yearly", "quarterly", "monthly", "weekly", "business_daily", "daily",
                   "hourly", "30min", "15min", "10min", "5min")
MONTHS_PER_STEP = {"yearly": 12, "quarterly": 3, "monthly": 1}
DAYS_PER_STEP = {"weekly": 7, "daily": 1}
FIXED = "fixed"  # an unnamed fixed step (say 2 hours): the kind's default model, capped by its length
# Epoch microseconds `us` as a value of the ts column's own type (a DATE stays a DATE), up to
# LAST_TS: time_bucket(width, x, offset) has x's type and is offset + the start of (x - offset)'s
# bucket, so with x = LAST_TS (in that type, and at least `us`) and offset = `us` - a bucket start,
# it is exactly `us`. Day-sized buckets start at 2000-01-03 00:00 (UTC for a TIMESTAMPTZ).
LAST_TS = "2262-04-11"  # the last day every timestamp type holds (TIMESTAMP_NS ends on it)
FIRST_TS = "0001-01-01"  # points before it are refused: years BC and DuckDB's extremes overflow the arithmetic
LAST_US = 9_223_286_400_000_000  # its microseconds


def _as_ts_type(us: str) -> str:
    return (f"time_bucket(INTERVAL '10000000 days', greatest(_origin, '{LAST_TS}'), "
            f"to_microseconds({us} - 946857600000000))")


# A key whose first MIN_RUN steps are all of one frequency and last MIN_RUN steps all of another.
MIXED = ("CASE WHEN len(list_distinct(_first_steps)) = 1 AND len(list_distinct(_last_steps)) = 1 "
         f"AND len(_first_steps) = {MIN_RUN} AND len(_last_steps) = {MIN_RUN} AND _first_steps[1] <> '' "
         "AND _last_steps[1] <> '' AND _first_steps[1] <> _last_steps[1] "
         "THEN _first_steps[1] || ' steps, then ' || _last_steps[1] || ' steps' END")
TZ_HINT = ("CASE WHEN typeof(s._origin) = 'TIMESTAMP WITH TIME ZONE' THEN ' (a TIMESTAMPTZ is read on the wall "
           "clock of the server''s time zone; for daily or longer steps, tz => ''Area/City'' names another)' "
           "ELSE '' END")

INPUTS = """
WITH _pairs AS (  -- each point, where it falls on the calendar, and how it follows the one before
    SELECT *, CASE
            WHEN _pair_tod AND _pair_anchor AND _months IN (1, 3, 12)
                THEN CASE _months WHEN 1 THEN 'monthly' WHEN 3 THEN 'quarterly' ELSE 'yearly' END
            WHEN _pair_tod AND _days = 7 THEN 'weekly'
            WHEN _pair_tod AND (_days = 1 OR (_bdays = 1 AND _wd < 5 AND _previous_wd < 5)) THEN 'daily'
            {sub_daily_pairs}
        END AS _class
    FROM (SELECT *, _day - {previous[day]} AS _days, _month - {previous[month]} AS _months,
                 _bday - {previous[bday]} AS _bdays, {previous[wd]} AS _previous_wd, {previous[tod]} = _tod AS _pair_tod,
                 ({previous[eom]} AND _eom) OR ({previous[dom]} = _dom AND _dom <= 28) AS _pair_anchor
          FROM (SELECT *, {calendar} FROM (SELECT *, _t - lag(_t) OVER w AS _gap, lag(_w) OVER w AS _pw
                                           FROM ({points}) WINDOW w AS (PARTITION BY _key ORDER BY _t))))
), _stats AS (
    SELECT _key, count(*) AS _n, coalesce(min(_gap), 1) = 0 AS _duplicates, first(_value) AS _single,
           list(_value ORDER BY _t) AS _observed, arg_max(_ts, _t) AS _origin, arg_max(_w, _t) AS _wl,
           min(_t) AS _t0, max(_t) AS _tl, min(_day) AS _day0, max(_day) AS _dayl,
           min(_month) AS _month0, max(_month) AS _monthl, min(_bday) AS _bday0, max(_bday) AS _bdayl,
           min(_tod) = max(_tod) AS _same_tod, min(_dom) = max(_dom) AND max(_dom) <= 28 AS _same_dom,
           bool_and(_eom) AS _month_ends,
           min(_tod) = max(_tod) AND (min(_dom) = max(_dom) AND max(_dom) <= 28 OR bool_and(_eom)) AS _anchored,
           min(_month % 3) = max(_month % 3) AS _same_moq, min(_month % 12) = max(_month % 12) AS _same_moy,
           min(_wd) = max(_wd) AS _same_wd, max(_wd) < 5 AS _weekdays,
           coalesce(bool_or(_days > _bdays), false) AS _skips_weekends, {multiples},
           mode(_gap) AS _gap_mode, mode(_days) AS _days_mode, mode(_months) AS _months_mode,
           mode(_bdays) AS _bdays_mode,
           arg_min(coalesce(_class, ''), _t, {run}) FILTER (WHERE _gap IS NOT NULL) AS _first_steps,
           arg_max(coalesce(_class, ''), _t, {run}) FILTER (WHERE _gap IS NOT NULL) AS _last_steps
    FROM _pairs GROUP BY _key
), _series AS (
    SELECT *, CASE
            WHEN _months_step IS NOT NULL THEN (_monthl - _month0) // _months_step
            WHEN _days_step IS NOT NULL THEN (_dayl - _day0) // _days_step
            WHEN _freq = 'business_daily' THEN _bdayl - _bday0
            ELSE (_tl - _t0) // _us_step
        END + 1 AS _length
    FROM (SELECT *, {months_step} AS _months_step, {days_step} AS _days_step, {us_step} AS _us_step, {cap} AS _cap
          FROM (SELECT *, {chosen} AS _freq, {mixed} AS _mixed
                FROM (SELECT *, CASE WHEN _n > 1 THEN CASE {inference} WHEN _gap_mode > 0 THEN '{fixed}' END END AS _guess
                      FROM _stats)))
), _filled AS (  -- series with missing steps: each point after the NULLs of the steps missing before it
    SELECT _key, flatten(list(list_resize(CAST([] AS DOUBLE[]), greatest(coalesce(_pos - _previous, 1) - 1, 0))
                              || [_value] ORDER BY _t)) AS _values, count(*) FILTER (WHERE _on_grid) AS _on_grid
    FROM (SELECT *, lag(_pos) OVER (PARTITION BY _key ORDER BY _t) AS _previous
          FROM (SELECT p._key, p._t, p._value, CASE
                        WHEN s._months_step IS NOT NULL THEN ({point[month]} - s._month0) // s._months_step
                        WHEN s._days_step IS NOT NULL THEN ({point[day]} - s._day0) // s._days_step
                        WHEN s._freq = 'business_daily' THEN {point[bday]} - s._bday0
                        ELSE (p._t - s._t0) // s._us_step
                    END AS _pos, s._us_step IS NULL OR (p._t - s._t0) % s._us_step = 0 AS _on_grid
                FROM ({points}) AS p JOIN _series AS s ON p._key IS NOT DISTINCT FROM s._key
                WHERE (s._length > s._n OR s._freq = '{fixed}') AND s._length < {max_fill} * s._n + 1000))
    GROUP BY _key
), _inputs AS (
    SELECT s.*, CASE
            WHEN s._duplicates THEN error('{function}: ' || {label} || ' has duplicate timestamps{duplicates_hint}')
            WHEN s._mixed IS NOT NULL THEN error('{function}: ' || {label} || ' mixes frequencies: '
                || s._mixed || '; forecast one part, or choose with freq => ...')
            WHEN {given} AND s._freq IS NULL THEN error('{function}: ' || {label}
                || ': freq => ''{freq}'' contradicts its timestamps' || coalesce(' (they look ' || CASE s._guess
                    WHEN '{fixed}' THEN 'like steps of ' || CAST(to_microseconds(s._gap_mode) AS VARCHAR)
                    ELSE s._guess END || ')', ''))
            WHEN s._n = 1 THEN [s._single]
            WHEN {horizon} > s._cap THEN error('{function}: horizon => {horizon} is more than {years} years of '
                || replace(s._freq, '{fixed}', 'its') || ' steps (' || CAST(s._cap AS VARCHAR) || ') for ' || {label})
            WHEN s._length >= {max_fill} * s._n + 1000 THEN error('{function}: ' || {label} || ' has too sparse timestamps to lay on a regular grid')
            WHEN f._on_grid < s._n THEN error('{function}: ' || {label} || ' has irregular timestamps: no frequency '
                || 'fits them (its steps are not all multiples of its most common step, '
                || CAST(to_microseconds(s._gap_mode) AS VARCHAR) || ')' || {tz_hint})
            ELSE coalesce(f._values, s._observed)
        END AS _input
    FROM _series AS s LEFT JOIN _filled AS f ON s._key IS NOT DISTINCT FROM f._key
"""

FORECASTS = """), _forecasts AS (
    SELECT *, unnest(coalesce({call}, list_transform(range(1, {horizon} + 1), lambda i: {{'step': CAST(i AS INTEGER),
                     'mean': CAST(NULL AS DOUBLE), 'lo': CAST(NULL AS DOUBLE), 'hi': CAST(NULL AS DOUBLE)}}))) AS _f
    FROM _inputs
), _future AS (
    SELECT *, CASE
            WHEN _us_step IS NOT NULL THEN _tl + _us_step * _f.step
            WHEN typeof(_origin) = 'TIMESTAMP WITH TIME ZONE' THEN epoch_us({instant})
            ELSE epoch_us(_fw)
        END AS _us
    FROM (SELECT *, CASE
            WHEN _months_step IS NOT NULL THEN CAST(CASE
                    WHEN _month_ends AND NOT _same_dom THEN last_day(date_trunc('month', _wl) + to_months(_months_step * _f.step))
                    ELSE CAST(date_trunc('month', _wl) + to_months(_months_step * _f.step) AS DATE) + CAST(day(_wl) - 1 AS INTEGER)
                END AS TIMESTAMP) + (_wl - date_trunc('day', _wl))
            WHEN _days_step IS NOT NULL THEN _wl + to_days(_days_step * _f.step)
            WHEN _freq = 'business_daily' THEN _wl + to_days(CAST(
                4 + 7 * ((_bdayl + _f.step - ((_bdayl + _f.step) % 5 + 5) % 5) // 5)
                + ((_bdayl + _f.step) % 5 + 5) % 5 - _dayl AS INTEGER))
        END AS _fw FROM _forecasts)
)
SELECT {key_out}CASE
            WHEN coalesce(_us, _tl) > {last_us} THEN error('forecast_table: ' || {label} || ' reaches past {last_ts}')
            WHEN _freq IS NULL THEN NULL
            ELSE {as_ts_type}
        END AS {ts_name},
       _f.step AS step, _f.mean AS mean, _f.lo AS lo, _f.hi AS hi, {origin} AS forecast_origin
FROM _future AS s
"""


def expand_forecast_tables(tree: exp.Expression) -> exp.Expression:
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        if isinstance(call, exp.Anonymous) and call.name.lower() == NAME:
            body = expansion(_expansion(call))
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(NAME))
            table.replace(exp.Subquery(this=body, alias=alias))
    return tree


USAGE = ("'table', key => 'col', ts => 'col', value => 'col', horizon => N[, level => 0.95]"
         "[, freq => 'monthly' or a period][, tz => 'Europe/Berlin'][, model => 'name@version']")


def _expansion(node: exp.Anonymous) -> str:
    call = TableCall.of(node, PARAMETERS, USAGE)
    fields = series_inputs(call)
    return (INPUTS + FORECASTS).format(**fields, call=forecast_call(fields["model"], fields["horizon"], fields["level"]))


def series_inputs(call: TableCall) -> dict[str, str]:
    """What INPUTS is formatted with for a call of forecast_table's parameters (and the `model`,
    `horizon` and `level` it asks for): `_inputs` then holds each series' points on its grid."""
    call.require("ts", "value", "horizon")
    key = call.column("key") if "key" in call else None
    ts = call.column("ts")
    horizon = call.number("horizon")
    level = call.number("level") if "level" in call else "0.95"
    if not horizon.isdigit() or int(horizon) < 1:
        raise call.error(f"horizon => {horizon} must be a whole number of steps, at least 1")
    if not 0 < float(level) < 1:
        raise call.error(f"level => {level} must be between 0 and 1")
    freq = _freq(call) if "freq" in call else None
    given = freq if isinstance(freq, str) else None  # a name fixes the grid; a period only the model
    if int(horizon) > frequencies.horizon_cap(given):
        raise call.error(f"horizon => {horizon} is more than {frequencies.horizon_limit(given)}")
    model = call.string("model") if "model" in call else (None if freq is None else str(freq))
    zone = _zone(call) if "tz" in call else None
    # Each point checked before any arithmetic on its time (a raw DuckDB overflow names nothing);
    # NaN and infinite values are missing values, as the operators take them.
    points = (f"SELECT *, epoch_us(_ts) AS _t, {_wall_clock('_ts', zone)} AS _w FROM ("
              f"SELECT _key, CASE WHEN NOT isfinite(_ts) OR CAST(_ts AS DATE) NOT BETWEEN DATE '{FIRST_TS}' "
              f"AND DATE '{LAST_TS}' THEN error('{call.function}: ' || {_label(key, '_key')} "
              f"|| ' has a timestamp outside {FIRST_TS} .. {LAST_TS}: ' || CAST(_ts AS VARCHAR)) ELSE _ts END AS _ts, "
              f"CASE WHEN isfinite(_value) THEN _value END AS _value FROM ("
              f"SELECT {key or 'NULL'} AS _key, {ts} AS _ts, {call.number_column(call.column('value'))} AS _value "
              f"FROM {call.table} WHERE {ts} IS NOT NULL))")
    sub_daily = [f for f in FREQUENCIES.values() if f.minutes]
    return dict(
        function=call.function,
        model=model,
        level=level,
        period=_by_frequency({f.name: f.period for f in FREQUENCIES.values()}, fixed="1")
        if not isinstance(freq, int) else str(freq),
        points=points,
        key_out=f"_key AS {key}, " if key else "",
        ts_name=ts,
        label=_label(key, "s._key"),
        duplicates_hint="" if key else ": several series in one table? name the column that tells them apart with key => ''col''",
        horizon=horizon,
        calendar=", ".join(f"{expr} AS _{name}" for name, expr in calendar("_w").items()),
        previous={name: f"({expr})" for name, expr in calendar("_pw").items()},
        point={name: f"({expr})" for name, expr in calendar("p._w").items()},
        sub_daily_pairs=" ".join(f"WHEN _gap = {f.minutes * US_PER_MINUTE} THEN '{f.name}'" for f in sub_daily),
        multiples=", ".join(f"coalesce(bool_and(_gap % {f.minutes * US_PER_MINUTE} = 0), true) AS _on_{f.name}"
                            for f in sub_daily),
        inference=" ".join(f"WHEN {_fits(name, given=False)} THEN '{name}'" for name in INFERENCE_ORDER),
        chosen=f"CASE WHEN {_fits(given, given=True)} THEN '{given}' END" if given else "_guess",
        mixed="NULL" if given else MIXED,
        months_step=_by_frequency(MONTHS_PER_STEP),
        days_step=_by_frequency(DAYS_PER_STEP),
        us_step=_by_frequency({f.name: f.minutes * US_PER_MINUTE for f in sub_daily}, fixed="_gap_mode"),
        # The horizon rule's years; its step cap (frequencies.MAX_STEPS) is checked above, at planning.
        cap=_by_frequency({f.name: f.max_horizon for f in FREQUENCIES.values()},
                          fixed=f"{frequencies.MAX_YEARS * US_PER_YEAR} // _gap_mode"),
        given="true" if given else "false",
        freq=given or "",
        tz_hint="''" if zone else TZ_HINT,
        instant=f"timezone({zone}, _fw)" if zone else "CAST(_fw AS TIMESTAMPTZ)",
        fixed=FIXED,
        as_ts_type=_as_ts_type("_us"),
        origin=_as_ts_type("_tl"),  # the last timestamp, in the same type as the future ones
        last_us=LAST_US,
        last_ts=LAST_TS,
        years=frequencies.MAX_YEARS,
        run=MIN_RUN,
        max_fill=MAX_FILL,
    )


def _label(key: str | None, column: str) -> str:
    """SQL naming a series in an error: 'series ' and its key in `column`, or 'the series' without a key."""
    return f"'series ' || coalesce(CAST({column} AS VARCHAR), 'NULL')" if key else "'the series'"


def calendar(w: str) -> dict[str, str]:
    """Where the wall-clock TIMESTAMP `w` falls: time of day (us), day number (days since
    1970-01-01), month number (12 * year + month - 1), day of month, month end, weekday (Monday
    0) and business-day number (Monday to Friday, counted from Monday 1970-01-05)."""
    day, wd = f"(CAST({w} AS DATE) - DATE '1970-01-01')", f"(isodow({w}) - 1)"
    return {"tod": f"epoch_us({w}) - epoch_us(date_trunc('day', {w}))", "day": day,
            "month": f"12 * year({w}) + month({w}) - 1", "dom": f"day({w})",
            "eom": f"CAST({w} AS DATE) = last_day({w})", "wd": wd,
            "bday": f"5 * (({day} - 4 - {wd}) // 7) + {wd}"}


def _fits(name: str, given: bool) -> str:
    """SQL over a series' statistics: its points lie on `name`'s grid, usually one step apart (a
    single point fits any frequency it could belong to when the frequency is given)."""
    def one(mode: str, steps: int) -> str:
        return f"({mode} = {steps} OR _n = 1)" if given else f"{mode} = {steps}"

    f = FREQUENCIES[name]
    if f.minutes:  # and every gap a multiple of the step (other fixed steps are checked point by point)
        return f"{one('_gap_mode', f.minutes * US_PER_MINUTE)} AND _on_{f.name}"
    return {
        "daily": f"_same_tod AND {one('_days_mode', 1)}",
        # inferred only when a weekend is skipped at least once: Monday to Friday alone could be daily
        "business_daily": f"_same_tod AND _weekdays AND {one('_bdays_mode', 1)}" + ("" if given else " AND _skips_weekends"),
        "weekly": f"_same_tod AND _same_wd AND {one('_days_mode', 7)}",
        "monthly": f"_anchored AND {one('_months_mode', 1)}",
        "quarterly": f"_anchored AND _same_moq AND {one('_months_mode', 3)}",
        "yearly": f"_anchored AND _same_moy AND {one('_months_mode', 12)}",
    }[name]


def _by_frequency(values: dict[str, int], fixed: str = "NULL") -> str:
    """A CASE over the series' frequency `_freq` giving each listed name's value."""
    whens = " ".join(f"WHEN '{name}' THEN {value}" for name, value in values.items())
    return f"CASE _freq {whens} WHEN '{FIXED}' THEN {fixed} END"


def forecast_call(model: str | None, horizon: str, level: str, series: str = "_input") -> str:
    """The operator call over `series`: the model (or frequency) named, else the one of each
    series' frequency."""
    def call(ref: str | None) -> str:
        return f"forecast_interval({series}, {horizon}, {level}" + (f", '{ref}')" if ref is not None else ")")

    if model is not None:
        return call(model.replace("'", "''"))
    whens = " ".join(f"WHEN '{name}' THEN {call(name)}" for name in FREQUENCIES)
    return f"CASE _freq {whens} ELSE {call(None)} END"


def _wall_clock(ts: str, zone: str | None) -> str:
    """The ts column as a TIMESTAMP on the wall clock: a TIMESTAMPTZ in `zone` (default the session's)."""
    if zone is None:
        return f"CAST({ts} AS TIMESTAMP)"
    return (f"CASE WHEN typeof({ts}) = 'TIMESTAMP WITH TIME ZONE' THEN timezone({zone}, CAST({ts} AS TIMESTAMPTZ)) "
            f"ELSE CAST({ts} AS TIMESTAMP) END")


def _freq(call: TableCall) -> str | int:
    node = call.named["freq"]
    if isinstance(node, exp.Literal) and node.is_string:
        value: str | int = node.this
    elif isinstance(node, exp.Literal) and node.is_int:
        value = int(node.this)
    else:
        raise call.error("freq must be a frequency name such as 'monthly' or a seasonal period")
    try:
        return frequencies.parse(value)
    except ValueError as e:
        raise call.error(f"freq => {str(value)[:40]!r}: {e}") from None


def _zone(call: TableCall) -> str:
    """A zone named in the IANA list: a name is looked up there, never opened as a file."""
    name = call.string("tz")
    if name not in _zones():
        raise call.error(f"tz => {name[:40]!r} is not a known time zone (e.g. 'Europe/Berlin')")
    return "'" + name.replace("'", "''") + "'"


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())
