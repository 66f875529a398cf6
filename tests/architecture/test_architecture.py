"""Package structure (#27): no import cycle, no source module over 400 lines, no family branches in
the exporter.

Imports in a module's body are edges, ``if TYPE_CHECKING:`` ones included: a type-only loop is
still two modules that each need the other to be read. Lazy (function-local) imports are not: they
run after every module involved has loaded, which is how the CLI keeps torch out of ``--help``.

What differs between model families (input names, dtypes, dynamic axes, preprocessing) is
described once, in the runtime's contract (``FAMILY_IO``); the exporter reads that description
instead of testing ``family == "vit"``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# installed names of the three source trees (pyproject's package-dir)
TREES = {
    "sttabt_edge": ROOT / "sttabt_edge",
    "sttabt_edge.export": ROOT / "export",
    "sttabt_edge.runtime": ROOT / "runtime",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, tree in TREES.items():
        for f in tree.rglob("*.py"):
            rel = f.relative_to(tree).with_suffix("").parts
            name = ".".join((prefix, *rel))
            mods[name.removesuffix(".__init__")] = f
    return mods


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports in its body (incl. try and if blocks, TYPE_CHECKING too)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    stack = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            # `from pkg import submodule` loads the submodule (pkg is already loading); anything else: pkg
            out |= subs if len(subs) == len(node.names) else subs | {mod}
    return {m for m in out if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m] if m in path else [n, m]
            if m not in state and (found := visit(m, path + [m])):
                return found
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n, [n])):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_type_only_included():
    mods = _modules()
    assert len(mods) > 50  # the trees were found
    graph = {n: _top_level_imports(n, p, set(mods)) for n, p in mods.items()}
    assert sum(map(len, graph.values())) > 100  # the imports were parsed
    assert "sttabt_edge.runtime.contract" in graph["sttabt_edge.runtime.predictor"]
    assert "sttabt_edge.train.config" in graph["sttabt_edge.cli_train"]  # an import under TYPE_CHECKING
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_type_only_imports_are_edges(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    assert _top_level_imports("pkg.a", path, {"pkg.a", "pkg.b"}) == {"pkg.b"}


MAX_LINES = 400


@pytest.mark.parametrize("tree", sorted(TREES))
def test_no_source_module_over_400_lines(tree):
    long = {
        str(f.relative_to(ROOT)): n
        for f in TREES[tree].rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


FAMILIES = ("vit", "bert")


def _family_tests(tree: ast.AST) -> list[int]:
    """Lines that branch on a family: ``family == x``, ``parts.family != y``, or any comparison with a
    family's name (``kind in ("vit", ...)``). Looking a family up (``family in FAMILY_IO``) is fine."""

    def is_family(e: ast.expr) -> bool:
        return (isinstance(e, ast.Name) and e.id == "family") or (
            isinstance(e, ast.Attribute) and e.attr == "family"
        )

    def is_name(e: ast.expr) -> bool:
        return (isinstance(e, ast.Constant) and e.value in FAMILIES) or (
            isinstance(e, (ast.Tuple, ast.List, ast.Set)) and any(map(is_name, e.elts))
        )

    def branches(node: ast.Compare) -> bool:
        operands = [node.left, *node.comparators]
        equality = any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
        return any(map(is_name, operands)) or (equality and any(map(is_family, operands)))

    return sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare) and branches(node))


def test_family_test_finder():
    src = 'a = family == "vit"\nb = x.parts.family != y\nc = k in ("bert", "z")\nd = f("bert")\ne = family in IO\n'
    assert _family_tests(ast.parse(src)) == [1, 2, 3]


def test_no_family_branches_in_the_exporter():
    """The exporter asks the family's I/O description (``runtime.contract.FAMILY_IO``), never the name."""
    found = {
        str(f.relative_to(ROOT)): lines
        for f in sorted(TREES["sttabt_edge.export"].rglob("*.py"))
        if (lines := _family_tests(ast.parse(f.read_text())))
    }
    assert not found, found
