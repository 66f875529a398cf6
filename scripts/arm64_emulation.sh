#!/usr/bin/env bash
# Prove the torch-free runtime (sttabt_edge.runtime) and the exported ONNX files work on
# ARM64 (aarch64): a real arm64 Debian Python with the aarch64 wheels from PyPI, run under
# qemu-user emulation. This checks parity, not speed.
#
# No docker and no binfmt_misc: every ARM program is started explicitly through
# `qemu-aarch64-static -L <sysroot>`. Everything downloaded is cached in .arm64/ (git-ignored),
# so a second run only rebuilds the project wheel and reruns the checks.
#
# Checks:
#   1. the interpreter really is aarch64, and torch/transformers are not installed there;
#   2. the runtime tests (test_runtime.py, test_preprocess.py, test_runtime_no_torch.py,
#      `-m "not integration"`) pass on ARM;
#   3. when the exporter is available on the x86 side: DeiT-Tiny (../shared) exported with
#      --method dense and --method sttabt gives the same logits (max |diff| <= 1e-4), top-1 and
#      kept-token counts on ARM as on x86 for 8 shared images (ARM64_IMAGES); `sttabt-edge run` works on ARM.
#
# Environment:
#   ARM64_SUITE   Debian suite of the sysroot (bookworm -> Python 3.11, trixie -> 3.13)
#   ARM64_PY      its python version (default: 3.11 for bookworm, 3.13 for trixie)
#   ARM64_CPU     qemu CPU model: cortex-a72 (Raspberry Pi 4, default) or cortex-a76 (Pi 5)
#   X86_PYTHON    x86 python with torch + the [export] extra (default: .venv/bin/python)
#   ARM64_REQUIRE_PARITY=1  fail (instead of skip) when the exported-model check cannot run
#   ARM64_IMAGES  images in the exported-model check (default 8; each costs ~10-20 s per model emulated)
#   ARM64_BENCH=1 also run `sttabt-edge bench` on the exported models (slow under emulation)
#   DEBIAN_MIRROR where mmdebstrap downloads the arm64 packages
#
# Usage: scripts/arm64_emulation.sh        (exits non-zero if any check fails)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CACHE=$ROOT/.arm64
SUITE=${ARM64_SUITE:-bookworm}
case $SUITE in bookworm) default_py=3.11 ;; trixie) default_py=3.13 ;; *) default_py= ;; esac
PY=${ARM64_PY:-$default_py}
[ -n "$PY" ] || { echo "set ARM64_PY for suite $SUITE" >&2; exit 2; }
CPU=${ARM64_CPU:-cortex-a72}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SHARED=$ROOT/../shared
X86_PYTHON=${X86_PYTHON:-$ROOT/.venv/bin/python}
NIMG=${ARM64_IMAGES:-8}

SYSROOT=$CACHE/sysroot-$SUITE
SITE=$CACHE/site-py$PY      # third-party aarch64 wheels, unpacked
PROJECT=$CACHE/project      # this checkout's wheel, unpacked fresh each run
WORK=$CACHE/work            # exported models, reference outputs
ARMPY=$SYSROOT/usr/bin/python$PY-qemu   # host-side launcher for the ARM interpreter

# quiet pip's "running as root" and version notices without options older pips lack
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

START=$SECONDS
RESULTS=()
FAILED=0
pass() { RESULTS+=("PASS  $1"); }
fail() { RESULTS+=("FAIL  $1"); FAILED=1; }
skip() {
    if [ "${ARM64_REQUIRE_PARITY:-0}" = 1 ]; then fail "$1"; else RESULTS+=("SKIP  $1"); fi
}
step() { echo; echo "== [$((SECONDS - START))s] $*"; }
trap 'echo "FAIL: setup step failed at line $LINENO (see above)" >&2' ERR

# --------------------------------------------------------------------------- host tools
step "host tools: qemu-aarch64-static, mmdebstrap"
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "FAIL: install ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
qemu-aarch64-static --version | head -1

# --------------------------------------------------------------------------- arm64 sysroot
# mmdebstrap's `extract` variant only downloads and unpacks the packages (with their
# dependencies): no maintainer scripts run, so it needs neither binfmt_misc nor a chroot,
# and it leaves the host's dpkg configuration alone (no `dpkg --add-architecture`).
if [ ! -x "$SYSROOT/usr/bin/python$PY" ]; then
    step "building the arm64 $SUITE sysroot (python$PY)"
    rm -rf "$SYSROOT.tmp"
    mkdir -p "$CACHE"
    mmdebstrap --quiet --variant=extract --arch=arm64 --components=main \
        --include="python$PY,libstdc++6,libgomp1" "$SUITE" "$SYSROOT.tmp" "$MIRROR"
    # merged /usr: the ELF interpreter is /lib/ld-linux-aarch64.so.1 (trixie's extract has no /lib link)
    for d in bin lib sbin; do [ -e "$SYSROOT.tmp/$d" ] || ln -s "usr/$d" "$SYSROOT.tmp/$d"; done
    mv "$SYSROOT.tmp" "$SYSROOT"   # only a complete sysroot counts as cached
fi

# qemu-user (7.x) shows the guest the host's x86 /proc/cpuinfo. onnxruntime >= 1.23 parses it
# with the pytorch `cpuinfo` library at import and crashes (SIGSEGV) on the x86 format.
# qemu's -L looks a path up in the sysroot first, so an ARM cpuinfo there is what the guest
# reads, as on a real board. Its CPU part matches the emulated CPU model.
case $CPU in
    cortex-a72) part=0xd08; feats="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) part=0xd0b; feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) echo "FAIL: ARM64_CPU must be cortex-a72 or cortex-a76, got $CPU" >&2; exit 2 ;;
esac
mkdir -p "$SYSROOT/proc"
for ((i = 0; i < $(nproc --all); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$feats"
    printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
done >"$SYSROOT/proc/cpuinfo"

# A host-side launcher that is also the guest's sys.executable (qemu's -0 sets argv[0]), so
# code that starts `sys.executable` (the no-torch test, the bench workers) works without binfmt.
# It sits beside the real binary so Python finds its stdlib inside the sysroot, and it pins
# PYTHONPATH so no host (x86) package can leak in. PYTHONSAFEPATH: the checkout's own
# sttabt_edge/ (which has no runtime/) must not shadow the installed wheel via the cwd, also in
# the subprocesses the tests start.
cat >"$ARMPY" <<EOF
#!/bin/sh
# generated by scripts/arm64_emulation.sh
export QEMU_CPU=$CPU PYTHONPATH="$PROJECT:$SITE" PYTHONSAFEPATH=1 PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
exec qemu-aarch64-static -L "$SYSROOT" -0 "\$0" "$SYSROOT/usr/bin/python$PY" "\$@"
EOF
chmod +x "$ARMPY"

# --------------------------------------------------------------------------- aarch64 wheels
# The runtime's dependencies come from pyproject.toml (what `pip install sttabt-edge` gets on a
# Pi); pytest/onnx/matplotlib are what the runtime tests use. The host pip resolves and unpacks
# the aarch64 wheels (no emulation needed); manylinux tags go up to the sysroot's glibc.
glibc=$("$ARMPY" -c 'import platform; print(platform.libc_ver()[1])')
read -r -a deps < <(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
deps+=(pytest onnx matplotlib)
stamp="$SUITE py$PY glibc$glibc ${deps[*]}"
if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$stamp" ]; then
    step "downloading aarch64 wheels: ${deps[*]}"
    platforms=(--platform manylinux2014_aarch64)
    for ((m = 17; m <= ${glibc#2.}; m++)); do platforms+=(--platform "manylinux_2_${m}_aarch64"); done
    rm -rf "$SITE"
    python3 -m pip install --quiet --no-warn-conflicts --no-warn-script-location \
        --target "$SITE" --only-binary=:all: --implementation cp --python-version "$PY" --abi "cp${PY/./}" \
        "${platforms[@]}" "${deps[@]}"
    echo "$stamp" >"$SITE/.stamp"
fi

# --------------------------------------------------------------------------- this checkout
# The wheel `make wheel` builds (scripts/build_wheel.sh, from a copy of the sources: the checkout
# stays clean), installed by pip for the ARM side: it is pure Python (py3-none-any), and its
# dependencies are the aarch64 wheels above. So what runs on ARM is what `pip install` of the
# wheel gives a Pi, package-dir mapping (runtime/ -> sttabt_edge/runtime) included.
step "building the sttabt-edge wheel (make wheel) and installing it for ARM"
WHEEL=$(scripts/build_wheel.sh dist)
rm -rf "$PROJECT" && mkdir -p "$PROJECT"
python3 -m pip install --quiet --no-deps --no-warn-script-location --target "$PROJECT" "$WHEEL"
echo "$WHEEL -> $PROJECT"
trap - ERR

# --------------------------------------------------------------------------- 1. interpreter
step "ARM interpreter"
if "$ARMPY" - "$PROJECT" <<'EOF'
import importlib.util, platform, sys
import numpy, onnxruntime, PIL, tokenizers
import sttabt_edge.runtime
print(f"machine={platform.machine()} python={platform.python_version()} executable={sys.executable}")
print(f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, pillow {PIL.__version__}, "
      f"tokenizers {tokenizers.__version__}")
assert platform.machine() == "aarch64", platform.machine()
assert sttabt_edge.runtime.__file__.startswith(sys.argv[1]), sttabt_edge.runtime.__file__
absent = [m for m in ("torch", "torchvision", "transformers") if importlib.util.find_spec(m) is None]
print("not installed:", ", ".join(absent))
assert len(absent) == 3, "torch/transformers must not be installed on the ARM side"
EOF
then pass "aarch64 python$PY ($SUITE, qemu -cpu $CPU), runtime imports, no torch installed"
else fail "ARM interpreter / imports"; fi

# --------------------------------------------------------------------------- 2. runtime tests
TESTS=(tests/runtime/test_runtime.py tests/runtime/test_preprocess.py tests/runtime/test_runtime_no_torch.py)
step "runtime tests on ARM: ${TESTS[*]} -m 'not integration'"
if "$ARMPY" -m pytest -q -p no:cacheprovider -m "not integration" "${TESTS[@]}"; then
    pass "pytest on ARM: ${TESTS[*]} (-m 'not integration')"
else fail "pytest on ARM: ${TESTS[*]}"; fi

# --------------------------------------------------------------------------- 3. exported models
# One script for both sides: run the runtime on the images, save the outputs; given a reference
# .npz (from x86), compare the preprocessed pixels, logits, top-1 and kept-token counts.
PARITY_PY='
import sys
import numpy as np
from sttabt_edge.runtime import load
model, out, ref, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
pred = load(model, threads=2)
x = pred.preprocess(images=images)
res = pred.postprocess(pred.run(x), top_k=1)
kept = res.kept_counts if res.kept_counts is not None else np.zeros((len(images), 0), np.int64)
np.savez(out, pixel_values=x["pixel_values"], logits=res.logits, top1=res.indices[:, 0], kept=kept)
if ref != "-":
    r = np.load(ref)
    dpix = float(np.abs(x["pixel_values"] - r["pixel_values"]).max())
    dlog = float(np.abs(res.logits - r["logits"]).max())
    same_top1 = bool((res.indices[:, 0] == r["top1"]).all())
    same_kept = bool(np.array_equal(kept, r["kept"]))
    name = model.rsplit("/", 1)[-1]
    print(f"  {name}: pixels max|diff| {dpix:.2e}, logits max|diff| {dlog:.2e}, "
          f"top-1 equal: {same_top1}, kept counts equal: {same_kept}; top-1 {[lab[0] for lab in res.labels[:3]]}...")
    sys.exit(0 if (dlog <= 1e-4 and same_top1 and same_kept) else 1)
'

parity() {  # method -> 0 pass, 1 fail
    local m=$1 onnx=$WORK/deit_$1.onnx
    if [ "$(cat "$WORK/x86_$m.stamp" 2>/dev/null)" != "$SRC_HASH" ]; then
        echo "-- [$((SECONDS - START))s] export --method $m (x86)"
        rm -f "$onnx" "$WORK/x86_$m.stamp"
        # untrained ApproxNet for sttabt (the exporter warns): parity does not need accuracy
        local approx=(); [ "$m" = sttabt ] && approx=(--approx untrained)
        if ! "$X86_PYTHON" -m sttabt_edge.cli export --model "$SHARED/models/deit-tiny-imagenet" --method "$m" \
            "${approx[@]}" --out "$onnx" --calib "$SHARED/data/imagenet-sample" --calib-samples 4 --latency-runs 0 \
            >"$WORK/export_$m.log" 2>&1; then
            tail -20 "$WORK/export_$m.log"
            return 1
        fi
        echo "-- [$((SECONDS - START))s] x86 reference outputs"
        "$X86_PYTHON" -c "$PARITY_PY" "$onnx" "$WORK/x86_$m.npz" - "${IMAGES[@]}" || return 1
        echo "$SRC_HASH" >"$WORK/x86_$m.stamp"
    else
        echo "-- export and x86 outputs for --method $m are cached (sources unchanged)"
    fi
    echo "-- [$((SECONDS - START))s] ARM run and comparison (emulated: ~10-20 s per image, plus session setup)"
    "$ARMPY" -c "$PARITY_PY" "$onnx" "$WORK/arm_$m.npz" "$WORK/x86_$m.npz" "${IMAGES[@]}"
}

step "exported DeiT-Tiny: x86 vs ARM"
mkdir -p "$WORK"
mapfile -t IMAGES < <(find "$SHARED/data/imagenet-sample" -maxdepth 1 -name '*.JPEG' 2>/dev/null | sort | head -"$NIMG")
why=
if [ ! -f "$SHARED/models/deit-tiny-imagenet/config.json" ] || [ ${#IMAGES[@]} -lt "$NIMG" ]; then
    why="../shared DeiT-Tiny or imagenet-sample images not found"
elif [ ! -x "$X86_PYTHON" ]; then
    why="no x86 python at $X86_PYTHON (run \`make venv\`, or set X86_PYTHON)"
elif ! "$X86_PYTHON" -m sttabt_edge.cli export --help >/dev/null 2>&1; then
    why="\`sttabt-edge export\` is not available in $X86_PYTHON yet"
fi
if [ -n "$why" ]; then
    echo "not run: $why"
    skip "exported-model parity x86 vs ARM: $why"
else
    # Exports and x86 references are reused while the sources that make them are unchanged.
    SRC_HASH=$({ echo "$X86_PYTHON $NIMG"; cat pyproject.toml "$SHARED/models/deit-tiny-imagenet/config.json"
        find sttabt_edge export runtime -name '*.py' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)
    for m in dense sttabt; do
        if parity "$m"; then pass "DeiT-Tiny --method $m: ARM logits within 1e-4 of x86, same top-1 and kept counts ($NIMG images)"
        else fail "DeiT-Tiny --method $m: x86 vs ARM parity"; fi
    done
    # The command a Pi user runs, on the real exported file. `bench` is covered by the tests with
    # a tiny model; on DeiT it costs minutes under emulation and its timings mean nothing here.
    step "sttabt-edge run on ARM"
    if [ -f "$WORK/deit_sttabt.onnx" ] \
        && "$ARMPY" -m sttabt_edge.cli run "$WORK/deit_sttabt.onnx" --image "${IMAGES[0]}" --top-k 3; then
        pass "sttabt-edge run on ARM with the exported DeiT-Tiny (sttabt)"
    else fail "sttabt-edge run on ARM"; fi
    if [ "${ARM64_BENCH:-0}" = 1 ]; then
        if "$ARMPY" -m sttabt_edge.cli bench "$WORK/deit_sttabt.onnx" --vs "$WORK/deit_dense.onnx" \
            --runs 3 --warmup 1 --threads 2; then pass "sttabt-edge bench on ARM (sttabt vs dense)"
        else fail "sttabt-edge bench on ARM"; fi
    fi
fi

# --------------------------------------------------------------------------- summary
echo
echo "== ARM64 emulation summary ($((SECONDS - START))s; $(qemu-aarch64-static --version | head -1 | cut -d' ' -f1-3), -cpu $CPU)"
printf '  %s\n' "${RESULTS[@]}"
if [ "$FAILED" = 0 ]; then echo "== ARM64: PASS"; else echo "== ARM64: FAIL"; exit 1; fi
