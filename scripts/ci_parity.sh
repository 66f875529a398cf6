#!/usr/bin/env bash
# CI accuracy-parity check on the shared checkpoints: export STTABT (keep ratio 0.3) and dense
# ONNX graphs, then `sttabt-edge verify` them against PyTorch on real data. Any mismatch beyond
# tolerance makes verify exit 1, which fails CI. The STTABT exports use an untrained
# interpolate-init ApproxNet: parity is what is checked here, not accuracy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-../shared}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

check() {  # name model data method
    local name=$1 model=$2 data=$3 method=$4 approx=()
    [ "$method" = sttabt ] && approx=(--approx untrained)
    "$BIN/sttabt-edge" export --model "$model" --method "$method" "${approx[@]}" --keep-ratio 0.3 --calib "$data" \
        --calib-samples 8 --latency-runs 0 --out "$OUT/$name.onnx" --json "$OUT/$name.export.json" > /dev/null
    "$BIN/sttabt-edge" verify "$OUT/$name.onnx" --reference "$model" --data "$data" --max-samples 32 \
        --json "$OUT/$name.verify.json" > /dev/null
    echo "parity ok: $name ($(python3 -c "import json;r=json.load(open('$OUT/$name.verify.json'));print(f\"{r['samples']} samples, max |dlogit| {r['max_abs_logit']:.1e}, top-1 agreement {r['top1_agreement']:.3f}\")"))"
}

check deit_sttabt "$SHARED/models/deit-tiny-imagenet" "$SHARED/data/imagenet-sample" sttabt
check deit_dense "$SHARED/models/deit-tiny-imagenet" "$SHARED/data/imagenet-sample" dense
check minilm_sttabt "$SHARED/models/minilm-l6-sst2" "$SHARED/data/glue/SST-2/dev.tsv" sttabt
