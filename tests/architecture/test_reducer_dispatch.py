"""``REDUCERS[spec.kind]`` is the one dispatch from a reducer spec to a reducer (#27).

A spec is built once where the user's input enters and carried as is; nothing outside
``sttabt_edge/reducers/`` decides by a reducer's kind how to build one (``if method == "sttabt":
kwargs = ...``, ``isinstance(spec, SttabtSpec)`` before a constructor). What differs between kinds
is the spec's and the reducer class's business (``spec.for_inference()``, ``Reducer.takes_approx``).

Checked per function, from the source: a function that builds a reducer or a spec (``build``,
``make_reducer``, ``make_spec``, ``from_spec``, a ``...Reducer`` or ``...Spec`` class of
``sttabt_edge.reducers``) must not compare anything with a reducer kind (``"sttabt"``,
``Method.dense``, ...) nor test ``isinstance`` against a reducer or spec class. The dense
model (``DenseReducer()``, the reference a pruned export is timed against) is no dispatch.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sttabt_edge.reducers import factory
from sttabt_edge.reducers.spec import SPECS

ROOT = Path(__file__).resolve().parents[2]
TREES = (ROOT / "sttabt_edge", ROOT / "export", ROOT / "runtime")  # the package (not the benchmarks)
REDUCERS_DIR = ROOT / "sttabt_edge" / "reducers"
KINDS = set(SPECS)
BUILDERS = {"build", "make_reducer", "make_spec", "from_spec"}

# Readers of formats that name the kind in their own keys: they build the spec, once.
ALLOWED = {"export/metadata.py:reducer_spec"}  # export metadata written before "reducer_spec"
# Functions that still branch on a kind to build a reducer. This list may only shrink (empty
# since #27 moved training's baselines and sweep onto spec_from_options / REDUCERS).
KNOWN: set[str] = set()


def _reducer_names(tree: ast.Module) -> set[str]:
    """Names a module imports from sttabt_edge.reducers (module level or inside functions)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sttabt_edge.reducers"):
            names |= {a.asname or a.name for a in node.names}
    return names


def _own(fn: ast.AST) -> list[ast.AST]:
    """The nodes of a function's body, without those of functions defined inside it (their own)."""
    out, stack = [], list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack += ast.iter_child_nodes(node)
    return out


def _called(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _builds(fn: ast.AST, imported: set[str]) -> bool:
    for node in _own(fn):
        if isinstance(node, ast.Call):
            name = _called(node)
            if name == "from_spec" or (
                name in imported
                and (name in BUILDERS or name.endswith(("Reducer", "Spec")))
                and not name.startswith("Dense")
            ):
                return True
    return False


def _is_kind(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.lower() in KINDS
    return isinstance(node, ast.Attribute) and node.attr in KINDS  # an enum member: Method.dense


def _branches_on_kind(fn: ast.AST, imported: set[str]) -> bool:
    for node in _own(fn):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_kind(s) for s in sides):
                return True
            if any(
                isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(map(_is_kind, s.elts)) for s in sides
            ):
                return True
        if isinstance(node, ast.Call) and _called(node) == "isinstance" and len(node.args) == 2:
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            if any(isinstance(c, ast.Name) and c.id in imported for c in classes):
                return True
    return False


def _violations() -> set[str]:
    found = set()
    for tree_dir in TREES:
        for path in sorted(tree_dir.rglob("*.py")):
            if path.is_relative_to(REDUCERS_DIR):
                continue
            tree = ast.parse(path.read_text())
            imported = _reducer_names(tree)
            if not imported:
                continue
            for fn in ast.walk(tree):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if _builds(fn, imported) and _branches_on_kind(fn, imported):
                        found.add(f"{path.relative_to(ROOT)}:{fn.name}")
    return found


def test_no_kind_branches_around_reducer_construction():
    found = _violations() - ALLOWED
    new = sorted(found - KNOWN)
    assert not new, (
        f"build reducers from a spec through REDUCERS (reducers/factory.build), not by kind: {new}"
    )
    assert not sorted(KNOWN - found), f"fixed: drop them from KNOWN: {sorted(KNOWN - found)}"


def test_build_dispatches_through_the_registry():
    src = ast.parse(Path(factory.__file__).read_text())
    build = next(n for n in src.body if isinstance(n, ast.FunctionDef) and n.name == "build")
    names = {n.id for n in ast.walk(build) if isinstance(n, ast.Name)}
    assert "REDUCERS" in names
    assert not any(
        isinstance(n, ast.Call) and _called(n) == "isinstance" and "SPECS" not in ast.unparse(n)
        for n in ast.walk(build)
    ), "build dispatches on REDUCERS[spec.kind], not on isinstance chains"
    assert set(factory.REDUCERS) == set(SPECS)
    assert all(cls.name == kind for kind, cls in factory.REDUCERS.items())


def test_the_check_finds_a_kind_branch():
    bad = ast.parse(
        "from sttabt_edge.reducers.factory import make_reducer\n"
        "def f(method, r):\n"
        "    kw = {} if method == 'dense' else {'keep_ratio': r}\n"
        "    return make_reducer(method, **kw)\n"
    )
    fn = bad.body[1]
    imported = _reducer_names(bad)
    assert _builds(fn, imported) and _branches_on_kind(fn, imported)
