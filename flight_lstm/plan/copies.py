"""How large DuckDB holds a query: a simple CASE (`CASE x WHEN a THEN ... WHEN b THEN ... END`)
has its operand copied into every WHEN, so a long operand, or CASEs nested as operands, grow
past the text (2,000 WHENs over a 64 KiB literal: a 131 MB parse; 16 nested CASEs of two WHENs in
618 bytes: 2^16 copies)."""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.errors import InvalidQuery

# DuckDB's parse of the planned text may hold this many nodes, and characters of names and
# literals, with the copies (the tree alone is bounded later, at 20,000 nodes: plan/size.py).
MAX_COPIED_NODES = 50_000
MAX_COPIED_CHARS = 4 * 1024 * 1024


def check_copies(tree: exp.Expression) -> None:
    """Refuse a query whose simple CASEs' copies make it larger than the bounds above."""
    nodes, chars = expanded_size(tree)
    if nodes > MAX_COPIED_NODES or chars > MAX_COPIED_CHARS:
        raise InvalidQuery(f"the query grows past {MAX_COPIED_NODES:,} SQL nodes or {MAX_COPIED_CHARS:,} characters "
                           "once each simple CASE's operand is copied into each of its WHENs, as DuckDB copies it; "
                           "compute the operand once (in a subquery) and CASE on that column")


def expanded_size(tree: exp.Expression) -> tuple[int, int]:
    """(nodes, characters of names and literals) of `tree` with every simple CASE's operand
    counted once per WHEN; computed children first, without recursion."""
    sizes: dict[int, tuple[int, int]] = {}
    for node in reversed(list(tree.walk())):  # breadth first: reversed, each child comes before its parent
        text = node.this if isinstance(node, (exp.Literal, exp.Identifier)) and isinstance(node.this, str) else ""
        nodes, chars = 1, len(text)
        for child in node.iter_expressions():
            child_nodes, child_chars = sizes.pop(id(child))
            nodes, chars = nodes + child_nodes, chars + child_chars
            if child is node.args.get("this") and isinstance(node, exp.Case):
                copies = max(len(node.args.get("ifs") or []) - 1, 0)
                nodes, chars = nodes + copies * child_nodes, chars + copies * child_chars
        sizes[id(node)] = nodes, chars
    return sizes[id(tree)]
