"""SQL names as text: the one way a name becomes an identifier in SQL we write."""
from __future__ import annotations


def quote(name: str) -> str:
    """A name as one double-quoted SQL identifier (DuckDB's and Dremio's rule: `"` doubles)."""
    return '"' + name.replace('"', '""') + '"'
