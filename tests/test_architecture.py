"""The layering ARCHITECTURE.md names, checked on the source: no import cycles, no upward imports, no private
name imported across modules, no module over 300 lines. Imports inside functions count (they are how cycles
were hidden); imports under ``if TYPE_CHECKING:`` do not (they never run)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "specdef_lite"
# bottom to top: a module may import its own layer and the layers below it, never one above
LAYERS = ["common", "lock", "curvature", "optim", "experiments", "llm", "course"]
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every specdef_lite import in one module."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("specdef_lite")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("specdef_lite"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, "", node.lineno) if sub in modules else (target, a.name, node.lineno))
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = _modules()
GRAPH = {m: imports(m, p, MODULES) for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if m != "specdef_lite" and layer(m) is None]
    assert not loose, f"modules outside the layers of ARCHITECTURE.md: {loose}"


def test_no_upward_imports_between_layers():
    bad = [f"{m}:{line} imports {t} ({LAYERS[layer(t)]} is above {LAYERS[layer(m)]})"
           for m, edges in GRAPH.items() if layer(m) is not None
           for t, _, line in edges if layer(t) is not None and layer(t) > layer(m)]
    bad += [f"{m}:{line} imports the top-level package (the users' facade)"
            for m, edges in GRAPH.items() if m != "specdef_lite" for t, _, line in edges if t == "specdef_lite"]
    assert not bad, "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in a directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def _module_graph() -> dict[str, set[str]]:
    """Module → the modules it imports by name (``from . import name`` of a package's own names counts)."""
    return {m: {t for t, _, _ in edges if t in MODULES and t != m} for m, edges in GRAPH.items()}


def test_no_import_cycles():
    cycle = find_cycle(_module_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    g = _module_graph()
    g["specdef_lite.lock.deform"] = g["specdef_lite.lock.deform"] | {"specdef_lite.experiments.attack"}
    assert find_cycle(g) is not None


def test_no_private_name_imported_across_modules():
    bad = [f"{m}:{line} imports {t}.{n}" for m, edges in GRAPH.items()
           for t, n, line in edges if n.startswith("_") and t != m]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_300_lines(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (one idea per module, ≤ {MAX_LINES})"
