#!/usr/bin/env bash
# The latency table in README: dense vs STTABT (keep 0.3, untrained ApproxNet /4 with one head), batch-1
# ONNX exports, `sttabt-edge bench --vs` interleaved, 2 threads. Writes benchmarks/results/bench_*.json.
set -e
cd "$(dirname "$0")/.."
source "${VENV:-.venv}/bin/activate"
D=${BENCH_DIR:-/tmp/sttabt-bench}; mkdir -p $D
DEIT=../shared/models/deit-tiny-imagenet; IMG=../shared/data/imagenet-sample
MINI=../shared/models/minilm-l6-sst2; SST=../shared/data/glue/SST-2/dev.tsv
sttabt-edge export --model $DEIT --method dense --batch 1 --latency-runs 0 --calib $IMG --out $D/deit_dense.onnx > $D/log1 2>&1
sttabt-edge export --model $DEIT --keep-ratio 0.3 --approx-heads 1 --batch 1 --latency-runs 0 --calib $IMG --out $D/deit_sttabt30_h1.onnx > $D/log2 2>&1
sttabt-edge bench $D/deit_sttabt30_h1.onnx --vs $D/deit_dense.onnx --threads 2 --batch 1 --runs 60 --json benchmarks/results/bench_deit.json --plot benchmarks/results/bench_deit.png > $D/bench_deit.txt 2>&1
sttabt-edge export --model $MINI --method dense --batch 1 --latency-runs 0 --calib $SST --out $D/minilm_dense.onnx > $D/log3 2>&1
sttabt-edge export --model $MINI --keep-ratio 0.3 --approx-heads 1 --batch 1 --latency-runs 0 --calib $SST --out $D/minilm_sttabt30_h1.onnx > $D/log4 2>&1
for L in 64 128; do
sttabt-edge bench $D/minilm_sttabt30_h1.onnx --vs $D/minilm_dense.onnx --threads 2 --batch 1 --seq-len $L --runs 60 --json benchmarks/results/bench_minilm_$L.json > $D/bench_minilm_$L.txt 2>&1
done
echo done
