"""How wide a type is, in leaves (a struct's fields, a map's keys and values, a list's element), and
how widths meet: the arithmetic of plan/size.py's estimate of the types DuckDB will bind.

Struct types grow as columns do: `SELECT {'a': s, 'b': s} AS s FROM (...)` doubles s's type at each
level, 14 levels (542 bytes) bound for 3.65 s and 16 reached the process's memory cap. So no
column of any query may pass MAX_TYPE_WIDTH leaves (2^12): a struct, row, map or zip of values
holds the sum of theirs, a written type its own (`NULL::STRUCT(...)`), a struct's field its own.
Where values meet (a list's elements, CASE, COALESCE, UNION, VALUES, UNPIVOT, a USING join's
column), DuckDB unifies structs field by field: `[{'a': s}, {'b': s}][1]` is STRUCT(a, b), 20 such
levels (913 bytes) a million fields. So a struct keeps its fields by name (`Struct`) and values
that meet count as their structs unified (`Meetings`); a value whose fields are not known by name
(`Opaque`: a call's result over structs, a part of a struct not known by name, a column DuckDB
names by rules not followed here) counts beside them, so the names can only overcount. Rounds 20
to 25 found thirty ways to have a value carry names it has not; each is a test.
"""
from __future__ import annotations

import json
import string

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import ParseError

from flight_lstm.errors import InvalidQuery

MAX_TYPE_WIDTH = 4096
OTHER = object()  # the key of a struct's fields not known by name: no name is it
MAP_PARTS = (object(), object())  # a map's keys and values, as fields no name reads (m['key'] is a value)
# Unifying structs walks their fields: a thousand meetings of two 2,000-field structs (57 kB) took
# planning from 0.9 s to 6 s. A query's meetings may walk at most this many fields in all, about 0.3 s
# here and 300 times the largest legal plan's (four anomaly_table over 64 columns: 832).
MAX_MEETING_STEPS = 250_000


class Struct(int):
    """A width in leaves that keeps its struct's fields by name (folded, as DuckDB matches them; an
    unnamed field by its position, an int), so that structs which meet count unified (`Meetings`).
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
    values that meet count it beside theirs, whatever its width. A plain int is a scalar, or a value
    whose type is not known (a column of a table whose source cannot tell its types)."""


def opaque(width: int) -> int:
    """As wide, its names forgotten: a plain width stays plain."""
    return Opaque(width) if isinstance(width, (Struct, Opaque)) else width


class Meetings:
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
        unnamed = [w for w in widths if isinstance(w, Opaque)]
        plain = max([1, *(w for w in widths if not isinstance(w, (Struct, Opaque)))])
        if not structs and not unnamed:
            return plain
        others = sum(unnamed) + (plain if plain > 1 else 0)
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


def named(pairs: list[tuple[str | None, int]]) -> dict:
    """Fields by name, folded as DuckDB matches them; an unnamed one by its position (an int, never
    a name), and a name given twice twice (DuckDB renames the second `a_1`)."""
    fields: dict = {}
    for i, (name, w) in enumerate(pairs):
        key = i if name is None else fold(name)
        fields[(key, i) if key in fields else key] = w
    return fields


def fold(name: str) -> str:
    """A name as DuckDB matches it: ASCII letters folded to lower case, any other as written."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def field_of(value: int, path: list[str]) -> int:
    """A field of a struct (its fields' fields down `path`), if known by name; else as wide as the
    value, its names forgotten (`opaque`)."""
    for name in path:
        if value > MAX_TYPE_WIDTH:  # DuckDB binds the whole: refused as that
            return value
        if not (isinstance(value, Struct) and name in value.fields):
            return opaque(value)
        value = value.fields[name]
    return value


def type_width(node: exp.DataType) -> int:
    """A written type's width: a struct's fields by name (as DuckDB unifies them), a map's as its keys
    and values, a union's members summed (their names not followed), a list's its element's."""
    parts = [(p.name, p.args.get("kind")) if isinstance(p, exp.ColumnDef) else (None, p) for p in node.expressions]
    widths = [(name, type_width(t)) for name, t in parts if isinstance(t, exp.DataType)]
    if not widths:
        return 1
    if node.this == exp.DataType.Type.STRUCT:
        return Struct(named(widths))
    if node.this == exp.DataType.Type.MAP:
        return Struct({MAP_PARTS[i] if i < 2 else i: w for i, (_, w) in enumerate(widths)})
    if node.this == exp.DataType.Type.UNION:
        return Opaque(sum(w for _, w in widths))
    return max((w for _, w in widths), key=int)


def arrow_width(t: pa.DataType) -> int:
    """An Arrow type's leaves, a struct's fields by name (as DuckDB unifies them), a map's as its keys
    and values, a list's its element's; a union's members summed, their names not followed."""
    if pa.types.is_struct(t):
        return Struct(named([(f.name, arrow_width(f.type)) for f in t]))
    if pa.types.is_map(t):
        return Struct({MAP_PARTS[0]: arrow_width(t.key_type), MAP_PARTS[1]: arrow_width(t.item_type)})
    if pa.types.is_union(t):
        return Opaque(max(1, sum(arrow_width(f.type) for f in t)))
    if pa.types.is_dictionary(t):
        return arrow_width(t.value_type)
    value_type = getattr(t, "value_type", None)  # lists of every kind
    return arrow_width(value_type) if value_type is not None else 1


def described_width(call: exp.Expression) -> int:
    """The width of the type a call's structure text describes (json_transform, from_json: size.py's
    TYPED_BY_TEXT): an object's its values' by their keys, a list's its element's, a text's that of
    the type it names, anything else one. JSON
    that Python's reader refuses, and type names sqlglot cannot read, are refused."""
    name = "from_json" if isinstance(call, exp.FromJson) else call.name.lower()
    args = [call.this, call.expression] if isinstance(call, exp.FromJson) else call.expressions
    structure = args[1] if len(args) > 1 else None
    if not (isinstance(structure, exp.Literal) and structure.is_string):
        raise InvalidQuery(f"{name}'s structure must be a string literal (DuckDB reads the result's type from it)")

    def leaves(described) -> int:
        if isinstance(described, dict):
            return Struct(named([(k, leaves(v)) for k, v in described.items()])) if described else 1
        if isinstance(described, list):
            return leaves(described[0]) if described else 1
        if isinstance(described, str):  # a DuckDB type's name
            try:
                return type_width(exp.DataType.build(described, dialect="duckdb"))
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
