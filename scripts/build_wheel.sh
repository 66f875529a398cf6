#!/usr/bin/env bash
# Build the sttabt-edge wheel into dist/ (what `make wheel` runs; scripts/arm64_emulation.sh and
# scripts/check_wheel.sh install from it). The wheel is pure Python (py3-none-any); its base
# dependencies are the torch-free runtime's, the extras add training and export.
#
# The build runs on a copy of the sources, so it leaves no build/ or egg-info in the checkout.
# With setuptools in $PYTHON it builds offline (--no-build-isolation); otherwise pip fetches
# setuptools from the package index into an isolated build env.
#
#   scripts/build_wheel.sh [DIST_DIR]     (default dist/; prints the wheel's path)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DIST=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -r pyproject.toml README.md sttabt_edge runtime export "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
isolation=(--no-build-isolation)
"$PYTHON" -c "import setuptools" 2>/dev/null || isolation=()
rm -f "$DIST"/sttabt_edge-*.whl
"$PYTHON" -m pip wheel --quiet --no-deps "${isolation[@]}" -w "$DIST" "$SRC" >&2
wheel=$(ls "$DIST"/sttabt_edge-*.whl)
# the package-dir mapping (runtime/ -> sttabt_edge/runtime) is what a broken wheel gets wrong
"$PYTHON" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["sttabt_edge/cli.py", "sttabt_edge/runtime/__init__.py", "sttabt_edge/export/onnx.py"]
missing = [n for n in need if n not in names]
stray = sorted({n.split("/")[0] for n in names} - {"sttabt_edge"} - {n.split("/")[0] for n in names if ".dist-info" in n})
assert not missing and not stray, f"bad wheel: missing {missing}, stray top-level {stray}"
EOF
echo "${wheel#"$ROOT"/}"
