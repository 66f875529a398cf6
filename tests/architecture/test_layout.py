"""The tests mirror the package (#27): every test module sits in ``tests/<area>/``, one folder per area.

Areas named after the package: each subpackage (``tests/train/`` tests ``sttabt_edge/train/``; export/
and runtime/ install as ``sttabt_edge.export`` and ``sttabt_edge.runtime``), ``cli`` (the
``sttabt_edge/cli*.py`` modules and the commands end to end) and ``core`` (the other top-level modules of
``sttabt_edge/``). Cross-cutting areas: ``architecture`` (rules over the whole source tree, this file
among them), ``benchmarks`` (the scripts in benchmarks/), ``integration`` (real checkpoints from
../shared, audits across areas).

tests/ is no package (no ``__init__.py``): pytest imports a test module by its basename, so two
``test_config.py`` in two areas would collide, and basenames are unique. The helpers the tests share
(tiny.py, handmade.py, ...) sit in tests/ itself, which tests/conftest.py puts on sys.path; an area
folder holds test modules and a conftest.py only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
# the source trees, by installed name (pyproject's package-dir): a subpackage is an area
SUBPACKAGES = {
    p.name: p for p in sorted((ROOT / "sttabt_edge").iterdir()) if (p / "__init__.py").is_file()
} | {"export": ROOT / "export", "runtime": ROOT / "runtime"}
MODULE_AREAS = {"cli", "core"}  # modules of sttabt_edge/ itself
CROSS_AREAS = {"architecture", "benchmarks", "integration"}
AREAS = set(SUBPACKAGES) | MODULE_AREAS | CROSS_AREAS


def _test_modules() -> list[Path]:
    """What pytest collects as test modules (its default ``python_files``) anywhere under tests/."""
    found = {*TESTS.rglob("test_*.py"), *TESTS.rglob("*_test.py")}
    return sorted(p for p in found if "__pycache__" not in p.parts)


def test_the_package_trees_were_found():
    assert {"method", "models", "reducers", "train", "compress", "export", "runtime"} <= set(SUBPACKAGES)
    assert len(_test_modules()) > 50


def test_every_test_module_sits_in_an_area_folder():
    misplaced = [
        str(p.relative_to(TESTS))
        for p in _test_modules()
        if len(p.relative_to(TESTS).parts) != 2 or p.parent.name not in AREAS
    ]
    assert not misplaced, f"move these into tests/<area>/, one of {sorted(AREAS)}: {misplaced}"


def test_every_folder_of_tests_is_an_area_with_tests():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - AREAS == set(), f"not an area: {sorted(folders - AREAS)} (areas: {sorted(AREAS)})"
    empty = sorted(a for a in AREAS if not list((TESTS / a).glob("test_*.py")))
    assert not empty, f"areas without a test module: {empty}"


def test_area_folders_hold_test_modules_and_a_conftest_only():
    """Helpers go beside tests/conftest.py (on sys.path), where every area can import them."""
    stray = [
        str(p.relative_to(TESTS))
        for area in sorted(AREAS)
        for p in sorted((TESTS / area).rglob("*.py"))
        if "__pycache__" not in p.parts and p not in _test_modules() and p.name != "conftest.py"
    ]
    assert not stray, stray


def test_test_module_basenames_are_unique_and_tests_is_no_package():
    dup = {name: n for name, n in Counter(p.name for p in _test_modules()).items() if n > 1}
    assert not dup, f"test modules import by basename; rename one of each: {dup}"
    inits = [str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py")]
    assert not inits, inits
