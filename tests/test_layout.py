"""The tree's shape as rules that can fail: no import cycles (function-local imports count), each
layer imports only below it, and importing the operators loads no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flight_lstm", "udfs")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in its body."""
    files = {_module(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:  # the longest project module the name falls in
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ that re-exports its modules is not a cycle with them.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and (ROOT / t.replace(".", "/") / "__init__.py").exists())}
             for m, ts in graph.items()}
    assert _cycles(graph) == []


def _imports_below(graph, prefix: str) -> set[str]:
    return {t for m, ts in graph.items() if m == prefix or m.startswith(prefix + ".") for t in ts}


def test_enrichment_goes_through_the_service():
    imported = _imports_below(_graph(), "flight_lstm.enrich")
    assert not {t for t in imported if t.startswith(("flight_lstm.engine", "udfs"))}


def test_sinks_import_nothing_of_enrichment():
    imported = _imports_below(_graph(), "flight_lstm.sinks")
    assert not {t for t in imported if t.startswith("flight_lstm.enrich")}


def test_importing_the_operators_and_models_loads_no_torch():
    code = "import sys, udfs, flight_lstm.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_no_test_file_imports_another():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not set(names) & tests, f"{path.name} imports a test file: share helpers in a helper module"
