#!/usr/bin/env bash
# CI accuracy-parity check on the shared checkpoints: export STTABT (keep ratio 0.3), ToMe, EViT top-k and dense
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
check deit_tome "$SHARED/models/deit-tiny-imagenet" "$SHARED/data/imagenet-sample" tome
check deit_topk "$SHARED/models/deit-tiny-imagenet" "$SHARED/data/imagenet-sample" topk

# The whole product path on the shared models at toy budgets: `compress` distils the ApproxNet, searches
# the retention on held-out training data, trains thresholds, exports (fp32 + INT8), verifies every file
# against PyTorch and benchmarks it. It exits 1 when an exported file fails verification.
compress() {  # name model data extra...
    local name=$1 model=$2 data=$3
    shift 3
    "$BIN/sttabt-edge" compress --model "$model" --data "$data" --out "$OUT/compress_$name" --max-drop 2 \
        --approx-steps 20 --threshold-steps 10 --search-steps 2 --batch-size 8 --bench-runs 2 --threads 1 \
        --quantize int8 --json "$@" > "$OUT/compress_$name.json"
    echo "compress ok: $name ($(python3 -c "import json;r=json.load(open('$OUT/compress_$name.json'));c=r['chosen'];print(f\"{c['kind']} at retention {c['retention']:.3f}, held-out {c['accuracy']:.1f}% (dense {r['dense']['accuracy']:.1f}%), files verified: {r['files']['passed']}\")"))"
}

compress minilm "$SHARED/models/minilm-l6-sst2" "$SHARED/data/glue/SST-2" --holdout 200 --max-length 64
compress deit "$SHARED/models/deit-tiny-imagenet" "$SHARED/data/imagenet-sample" --holdout 100

# The DeiT-Tiny CPU recipe (docs/training.md) at its smoke budget: every command of it runs end to end
# (ApproxNet, function-matching concrete training with the Lagrangian retention control, the held-out
# evaluation); accuracy is not what is checked here.
BIN=$BIN SHARED=$SHARED bash scripts/recipe_deit.sh smoke "$OUT/recipe_deit" 0.5
