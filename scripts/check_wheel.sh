#!/usr/bin/env bash
# The runtime alone, as a device installs it: the wheel from `make wheel` into a fresh venv
# (python -m venv; pip install the wheel, whose base dependencies come from the package index:
# numpy, onnxruntime, typer, pillow, tokenizers, rich; no torch, no transformers). Then, in that
# venv: `import sttabt_edge.runtime`, and `sttabt-edge run`, `bench` and `info` on models the dev
# venv exported (a tiny random ViT, STTABT with an untrained ApproxNet; a tiny BERT, dense, INT8);
# `show` must refuse in one line. Needs the package index (about a minute the first time; the
# venv is reused afterwards). Not part of the unit suite: tests/cli/test_cli_no_torch.py checks the
# same import structure offline.
#
#   scripts/check_wheel.sh [WORK_DIR]      (default /tmp/sttabt-wheel-check; exits 1 on a failure)
# Environment: DEV_PYTHON (the dev venv's python, default .venv/bin/python: builds and exports),
#              BASE_PYTHON (the python the fresh venv is made from, default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK=${1:-/tmp/sttabt-wheel-check}
DEV=${DEV_PYTHON:-$ROOT/.venv/bin/python}
BASE=${BASE_PYTHON:-python3}
VENV=$WORK/venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$WORK"
FAILED=0
pass() { echo "PASS  $1"; }
fail() { echo "FAIL  $1"; FAILED=1; }

echo "== building the wheel"
WHEEL=$(PYTHON=$DEV scripts/build_wheel.sh "$WORK/dist")
case $WHEEL in /*) ;; *) WHEEL=$ROOT/$WHEEL ;; esac
echo "$WHEEL"

echo "== fresh venv ($("$BASE" --version)) + pip install the wheel"
[ -x "$VENV/bin/python" ] || "$BASE" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
"$VENV/bin/python" -m pip install --quiet "$WHEEL"   # its dependencies, from the index

echo "== tiny models, exported with the dev venv ($DEV)"
MODELS=$WORK/models
rm -rf "$MODELS" && mkdir -p "$MODELS"
"$DEV" - "$MODELS" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
import numpy as np
from PIL import Image
from tiny import tiny_bert, tiny_vit
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

out = Path(sys.argv[1])
tiny_vit().save_pretrained(out / "vit")
tiny_bert().save_pretrained(out / "bert")
words = "a fine film dull tedious mess charming moving plot cast story".split()
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
tok.save(str(out / "bert" / "tokenizer.json"))
Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8)).save(out / "x.png")
EOF
FAST=(--no-simplify --latency-runs 0 --calib-samples 2)
"$DEV" -m sttabt_edge.cli export --model "$MODELS/vit" --approx untrained --out "$MODELS/vit.onnx" "${FAST[@]}" \
    >"$WORK/export_vit.log" 2>&1 || { tail -5 "$WORK/export_vit.log"; exit 1; }
"$DEV" -m sttabt_edge.cli export --model "$MODELS/bert" --method dense --quantize int8 --out "$MODELS/bert.onnx" \
    "${FAST[@]}" >"$WORK/export_bert.log" 2>&1 || { tail -5 "$WORK/export_bert.log"; exit 1; }

echo "== the runtime venv's sttabt-edge (from $WORK, so no checkout folder is importable)"
CLI=$VENV/bin/sttabt-edge
cd "$WORK"
if "$VENV/bin/python" -c "
import importlib.util, sys
absent = [m for m in ('torch', 'transformers', 'torchvision') if importlib.util.find_spec(m) is None]
assert len(absent) == 3, f'installed in the runtime venv: {set((\"torch\", \"transformers\", \"torchvision\")) - set(absent)}'
import sttabt_edge.runtime
assert 'torch' not in sys.modules
print('sttabt_edge.runtime from', sttabt_edge.runtime.__file__)
"; then pass "fresh venv: runtime imports from the wheel, no torch/transformers installed"
else fail "fresh venv: runtime import"; fi
if "$CLI" run "$MODELS/vit.onnx" --image "$MODELS/x.png" --top-k 2; then pass "run: STTABT image model"
else fail "run: STTABT image model"; fi
if "$CLI" run "$MODELS/bert.onnx" --text "a fine film" --text "a dull , tedious mess" --json >/dev/null
then pass "run: INT8 text model (its own tokenizer copy)"; else fail "run: INT8 text model"; fi
if "$CLI" bench "$MODELS/vit.onnx" --runs 3 --warmup 1 --threads 1 >/dev/null; then pass "bench"
else fail "bench"; fi
if "$CLI" info --model "$MODELS/vit" | grep -q '"layers": 3'; then pass "info (config.json only)"
else fail "info"; fi
set +e
msg=$("$CLI" show --model "$MODELS/vit" --image "$MODELS/x.png" --out g.png --approx oracle 2>&1)
rc=$?
set -e
if [ "$rc" = 2 ] && [ "$(printf '%s\n' "$msg" | grep -c .)" = 1 ] && [[ "$msg" == *"needs torch"* ]]; then
    pass "show without torch: one error line, exit 2"
else fail "show without torch (rc $rc): $msg"; fi
[ "$FAILED" = 0 ] && echo "== wheel check: PASS" || { echo "== wheel check: FAIL"; exit 1; }
