"""What Flight SQL clients ask before they query: server facts (GetSqlInfo), the catalog listings
(schemas, tables, table types, keys) and the SQL types (GetXdbcTypeInfo), as the Arrow tables the
specification defines.

There are no catalogs: tables sit in schemas named as the SQL names them (`main` for unqualified
names, `sch` for `sch.tbl`, a Dremio path's folders), so what a client lists is what it can query.
"""
from __future__ import annotations

import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import duckdb
import pyarrow as pa
from sqlglot import exp

from flight_lstm.errors import InvalidQuery

DEFAULT_SCHEMA = "main"
TABLE_TYPES = ("TABLE", "VIEW")


class Int32(int):
    """An int the SqlInfo union carries as `int32_bitmask` (other ints travel as `bigint_value`)."""


# --- GetSqlInfo -------------------------------------------------------------------------------

SQL_INFO_VALUE = pa.dense_union([
    pa.field("string_value", pa.string()),
    pa.field("bool_value", pa.bool_()),
    pa.field("bigint_value", pa.int64()),
    pa.field("int32_bitmask", pa.int32()),
    pa.field("string_list", pa.list_(pa.string())),
    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32()))),
])
SQL_INFO_SCHEMA = pa.schema([pa.field("info_name", pa.uint32(), nullable=False),
                             pa.field("value", SQL_INFO_VALUE, nullable=False)])


def _version() -> str:
    try:
        return version("flight-lstm")
    except PackageNotFoundError:
        return "unknown"


@cache
def _keywords() -> list[str]:
    with duckdb.connect() as con:
        return [k for (k,) in con.execute("SELECT keyword_name FROM duckdb_keywords() ORDER BY 1").fetchall()]


def sql_info(statement_ttl_ms: int) -> dict[int, object]:
    """SqlInfo id -> value; ids and value kinds as in FlightSql.proto and Java's SqlInfoBuilder."""
    return {
        0: "flight-lstm",                # server name
        1: _version(),                   # server version
        2: pa.__version__,               # Arrow version
        3: True,                         # read only
        4: True,                         # speaks SQL
        5: False,                        # Substrait
        8: Int32(0),                     # transactions: none
        9: False,                        # CancelQuery action (a gRPC cancel of DoGet works)
        100: Int32(statement_ttl_ms),    # prepared statement timeout
        101: Int32(0),                   # transaction timeout
        500: False, 501: False, 502: False,  # DDL for catalogs, schemas, tables
        503: 1,                          # identifiers: case-insensitive (DuckDB)
        504: '"',                        # identifier quote
        505: 1,                          # quoted identifiers: case-insensitive too
        506: True,                       # all tables selectable
        507: 3,                          # NULLs sort at the end
        508: _keywords(),
        513: "\\",                       # search pattern escape
        514: "",                         # extra identifier characters
        515: True, 516: True,            # column aliases; NULL + NULL is NULL
        520: True, 521: True,            # expressions in ORDER BY; ORDER BY unrelated columns
        522: Int32(0b11),                # GROUP BY unrelated / beyond SELECT
        523: True,                       # LIKE ... ESCAPE
        525: Int32(0b11),                # ODBC minimum + core grammar
        526: Int32(0b1),                 # ANSI-92 entry level
        528: Int32(2),                   # full outer joins
        529: "schema", 530: "", 531: "",  # no procedures, no catalogs
        532: False,                      # catalog at start of a name
        536: False, 537: False,          # SELECT FOR UPDATE; stored procedures
        538: Int32(0b1111),              # subqueries in comparisons, EXISTS, IN, quantifieds
        539: True,                       # correlated subqueries
        540: Int32(0b11),                # UNION, UNION ALL
    }


def sql_info_table(info: dict[int, object], wanted: list[int]) -> pa.Table:
    """Rows for the ids asked for (all when none), each once, skipping ids we don't answer: an
    id asked 20,000 times must not be answered 20,000 times."""
    ids = list(dict.fromkeys(i for i in (wanted or sorted(info)) if i in info))  # holds only ids we answer
    children: list[list] = [[] for _ in range(6)]
    codes, offsets = [], []
    for i in ids:
        value = info[i]
        code = (3 if isinstance(value, Int32) else 1 if isinstance(value, bool) else 2 if isinstance(value, int)
                else 0 if isinstance(value, str) else 4)
        codes.append(code)
        offsets.append(len(children[code]))
        children[code].append(value)
    arrays = [pa.array(values, type=field.type) for values, field in zip(children, SQL_INFO_VALUE)]
    union = pa.UnionArray.from_dense(pa.array(codes, pa.int8()), pa.array(offsets, pa.int32()), arrays,
                                     [f.name for f in SQL_INFO_VALUE], list(range(6)))
    return pa.Table.from_arrays([pa.array(ids, pa.uint32()), union], schema=SQL_INFO_SCHEMA)


# --- Catalog listings -------------------------------------------------------------------------

def _utf8(name: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


CATALOGS_SCHEMA = pa.schema([_utf8("catalog_name", False)])
DB_SCHEMAS_SCHEMA = pa.schema([_utf8("catalog_name"), _utf8("db_schema_name", False)])
TABLES_SCHEMA = pa.schema([_utf8("catalog_name"), _utf8("db_schema_name"), _utf8("table_name", False),
                           _utf8("table_type", False)])
TABLES_WITH_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA = pa.schema([_utf8("table_type", False)])
PRIMARY_KEYS_SCHEMA = pa.schema([_utf8("catalog_name"), _utf8("db_schema_name"), _utf8("table_name", False),
                                 _utf8("column_name", False), _utf8("key_name"),
                                 pa.field("key_sequence", pa.int32(), nullable=False)])
FOREIGN_KEYS_SCHEMA = pa.schema([
    _utf8("pk_catalog_name"), _utf8("pk_db_schema_name"), _utf8("pk_table_name", False),
    _utf8("pk_column_name", False), _utf8("fk_catalog_name"), _utf8("fk_db_schema_name"),
    _utf8("fk_table_name", False), _utf8("fk_column_name", False),
    pa.field("key_sequence", pa.int32(), nullable=False), _utf8("fk_key_name"), _utf8("pk_key_name"),
    pa.field("update_rule", pa.uint8(), nullable=False), pa.field("delete_rule", pa.uint8(), nullable=False),
])
# No keys are declared anywhere, so these listings are always empty.
EMPTY_LISTINGS = {"CommandGetPrimaryKeys": PRIMARY_KEYS_SCHEMA, "CommandGetExportedKeys": FOREIGN_KEYS_SCHEMA,
                  "CommandGetImportedKeys": FOREIGN_KEYS_SCHEMA, "CommandGetCrossReference": FOREIGN_KEYS_SCHEMA}


def split_name(name: str) -> tuple[str, str]:
    """(schema, table) of a table as the SQL names it: `reviews`, `sch.t`, `"my space".folder.t`."""
    parts = [p.name for p in exp.to_table(name, dialect="duckdb").parts]
    return (".".join(parts[:-1]) or DEFAULT_SCHEMA), parts[-1]


MAX_PATTERN = 1_000  # characters in a search pattern

_ONE, _ANY = object(), object()  # `_` and `%` in a parsed pattern; anything else is a literal character


def like(pattern: str | None):
    """A JDBC/ODBC search pattern (`%`, `_`, `\\` escapes) as a predicate; no pattern matches all.

    Matched without regular expressions: `%%%...%!` made a regex backtrack for seconds. This
    greedy matcher with one resume point takes at most len(pattern) x len(name) steps."""
    if pattern is None:
        return lambda _: True
    if len(pattern) > MAX_PATTERN:
        raise InvalidQuery(f"a search pattern may hold at most {MAX_PATTERN} characters")
    tokens = []
    for tok in re.findall(r"\\.|.", pattern, re.S):
        token = tok[-1] if tok.startswith("\\") else _ANY if tok == "%" else _ONE if tok == "_" else tok
        if not (token is _ANY and tokens and tokens[-1] is _ANY):
            tokens.append(token)
    return lambda text: _matches(tokens, text)


def _matches(tokens: list, text: str) -> bool:
    t = p = 0
    star, resume = -1, 0  # the last `%` seen, and where in the text it would next take one more
    while t < len(text):
        if p < len(tokens) and tokens[p] is not _ANY and (tokens[p] is _ONE or tokens[p] == text[t]):
            t, p = t + 1, p + 1
        elif p < len(tokens) and tokens[p] is _ANY:
            star, resume, p = p, t, p + 1
        elif star >= 0:
            resume += 1
            t, p = resume, star + 1
        else:
            return False
    while p < len(tokens) and tokens[p] is _ANY:
        p += 1
    return p == len(tokens)


def schemas_table(relations: list[tuple[str, str]], pattern: str | None) -> pa.Table:
    matches = like(pattern)
    names = sorted({split_name(n)[0] for n, _ in relations} | {DEFAULT_SCHEMA})
    names = [n for n in names if matches(n)]
    return pa.table([pa.nulls(len(names), pa.string()), pa.array(names, pa.string())], schema=DB_SCHEMAS_SCHEMA)


def tables_table(relations: list[tuple[str, str]], schema_pattern: str | None, table_pattern: str | None,
                 types: list[str], schema_of=None) -> pa.Table:
    """The tables that match; with `schema_of` ((name, kind) -> Arrow schema), each one's IPC schema too."""
    in_schema, named = like(schema_pattern), like(table_pattern)
    rows = []
    for name, kind in relations:
        schema, table = split_name(name)
        if in_schema(schema) and named(table) and (not types or kind in types):
            rows.append((schema, table, kind, name))
    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    columns = [pa.nulls(len(rows), pa.string()), *(pa.array([r[i] for r in rows], pa.string()) for i in range(3))]
    if schema_of is None:
        return pa.table(columns, schema=TABLES_SCHEMA)
    blobs = [schema_of(r[3], r[2]).serialize().to_pybytes() for r in rows]
    return pa.table([*columns, pa.array(blobs, pa.binary())], schema=TABLES_WITH_SCHEMA)


def table_types_table() -> pa.Table:
    return pa.table([pa.array(TABLE_TYPES)], schema=TABLE_TYPES_SCHEMA)


# --- GetXdbcTypeInfo --------------------------------------------------------------------------

XDBC_TYPE_INFO_SCHEMA = pa.schema([
    _utf8("type_name", False), pa.field("data_type", pa.int32(), nullable=False),
    pa.field("column_size", pa.int32()), _utf8("literal_prefix"), _utf8("literal_suffix"),
    pa.field("create_params", pa.list_(pa.field("item", pa.string(), nullable=False))),
    pa.field("nullable", pa.int32(), nullable=False), pa.field("case_sensitive", pa.bool_(), nullable=False),
    pa.field("searchable", pa.int32(), nullable=False), pa.field("unsigned_attribute", pa.bool_()),
    pa.field("fixed_prec_scale", pa.bool_(), nullable=False), pa.field("auto_increment", pa.bool_()),
    _utf8("local_type_name"), pa.field("minimum_scale", pa.int32()), pa.field("maximum_scale", pa.int32()),
    pa.field("sql_data_type", pa.int32(), nullable=False), pa.field("datetime_subcode", pa.int32()),
    pa.field("num_prec_radix", pa.int32()), pa.field("interval_precision", pa.int32()),
])
# The types results come in (columns.type_name), as XdbcDataType codes (JDBC's java.sql.Types):
# (name, data type, column size, literal quote, create params, case sensitive, unsigned, radix,
#  scale range, datetime subcode).
_XDBC_TYPES = [
    ("BOOLEAN", -7, 1, None, None, False, None, None, None, None),
    ("TINYINT", -6, 3, None, None, False, False, 10, (0, 0), None),
    ("UTINYINT", -6, 3, None, None, False, True, 10, (0, 0), None),
    ("BIGINT", -5, 19, None, None, False, False, 10, (0, 0), None),
    ("UBIGINT", -5, 20, None, None, False, True, 10, (0, 0), None),
    ("BLOB", -3, None, "'", None, False, None, None, None, None),
    ("DECIMAL", 3, 38, None, ["precision", "scale"], False, False, 10, (0, 38), None),
    ("INTEGER", 4, 10, None, None, False, False, 10, (0, 0), None),
    ("UINTEGER", 4, 10, None, None, False, True, 10, (0, 0), None),
    ("SMALLINT", 5, 5, None, None, False, False, 10, (0, 0), None),
    ("USMALLINT", 5, 5, None, None, False, True, 10, (0, 0), None),
    ("FLOAT", 6, 7, None, None, False, False, 2, None, None),
    ("DOUBLE", 8, 15, None, None, False, False, 2, None, None),
    ("INTERVAL", 10, None, "'", None, False, None, None, None, None),
    ("VARCHAR", 12, None, "'", None, True, None, None, None, None),
    ("DATE", 91, 10, "'", None, False, None, None, None, 1),
    ("TIME", 92, 15, "'", None, False, None, None, (0, 6), 2),
    ("TIMESTAMP", 93, 26, "'", None, False, None, None, (0, 9), 3),
    ("TIMESTAMP WITH TIME ZONE", 93, 32, "'", None, False, None, None, (0, 6), 3),
]


def xdbc_type_info_table(data_type: int | None) -> pa.Table:
    """The SQL types a result may hold, ordered by data type then name; only `data_type`'s if given."""
    rows = sorted((t for t in _XDBC_TYPES if data_type is None or t[1] == data_type), key=lambda t: (t[1], t[0]))
    columns = {name: [] for name in XDBC_TYPE_INFO_SCHEMA.names}
    for name, code, size, quote, params, case, unsigned, radix, scales, subcode in rows:
        # A datetime type's SQL data type is its kind (9, with the subcode), as ODBC's SQL_DESC_TYPE.
        values = dict(type_name=name, data_type=code, column_size=size, literal_prefix=quote, literal_suffix=quote,
                      create_params=params, nullable=1, case_sensitive=case, searchable=3 if case else 2,
                      unsigned_attribute=unsigned, fixed_prec_scale=False, auto_increment=False,
                      local_type_name=name, minimum_scale=scales and scales[0], maximum_scale=scales and scales[1],
                      sql_data_type=9 if subcode else code, datetime_subcode=subcode, num_prec_radix=radix,
                      interval_precision=None)
        for key, value in values.items():
            columns[key].append(value)
    return pa.table(columns, schema=XDBC_TYPE_INFO_SCHEMA)
