"""Dremio paths as SQL text: quoting a part, splitting INFORMATION_SCHEMA's dotted schemas, and
telling the system schemas (`sys`, `INFORMATION_SCHEMA`) apart as Dremio matches names."""
from __future__ import annotations

import re
import unicodedata

from sqlglot.dialects.dremio import Dremio

from flight_lstm.identifiers import quote

SYSTEM_SCHEMAS = ("information_schema", "sys")  # read or listed only with ?system_tables=true


def names_system_schema(parts: list[str]) -> bool:
    """Whether a Dremio path lies in a system schema: any part but the last, split at dots (Dremio
    may read `"sys.jobs"` as a path), is `sys` or `INFORMATION_SCHEMA` as Dremio matches names,
    ignoring case the way Java's equalsIgnoreCase does (`ſys` and `ınformation_schema` count)."""
    pieces = [piece for part in parts for piece in part.split(".")]
    return any(_fold(p) in SYSTEM_SCHEMAS or _fold(p.upper()) in SYSTEM_SCHEMAS for p in pieces[:-1])


def _fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {k.upper() for k in Dremio.Tokenizer.KEYWORDS if " " not in k} | {
    "USER", "TABLE", "SCHEMA", "VALUE", "VALUES", "DATE", "TIME", "TIMESTAMP", "YEAR", "MONTH", "DAY",
    "HOUR", "MINUTE", "SECOND", "POSITION", "LANGUAGE", "SYSTEM", "SESSION", "CURRENT", "RESULT", "TABLES",
}


def quote_part(part: str) -> str:
    """One path part as Dremio SQL: bare when safe, else double-quoted (quoting never changes
    what Dremio matches, as its matching ignores case)."""
    if _SAFE.match(part) and part.upper() not in _KEYWORDS:
        return part
    return quote(part)


def quote_path(parts) -> str:
    """A whole path as Dremio SQL, each part by `quote_part`."""
    return ".".join(quote_part(p) for p in parts)


def split_schema(schema: str, known: set[str]) -> list[str]:
    """Split a dot-joined TABLE_SCHEMA into its parts, using the schema names that exist
    (lower-cased) to keep dots that belong inside a part; plain dot splitting otherwise."""
    pieces = schema.split(".")
    if not known or len(pieces) == 1:
        return pieces
    # The finest split whose every prefix is a schema Dremio lists: "Samples.samples.dremio.com"
    # becomes Samples + samples.dremio.com when "Samples" is a schema and "Samples.samples" is not.
    best: dict[int, list[str]] = {0: []}
    for end in range(1, len(pieces) + 1):
        for start in range(end):
            if start not in best:
                continue
            candidate = [*best[start], ".".join(pieces[start:end])]
            if ".".join(candidate).lower() in known and (end not in best or len(candidate) > len(best[end])):
                best[end] = candidate
    return best.get(len(pieces), pieces)
