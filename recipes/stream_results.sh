#!/usr/bin/env bash
# The README's real-time fine-tuning numbers, in one command (a few minutes on 2 cores):
#   bash recipes/stream_results.sh [MNIST_DIR] [OUT_DIR]
# LeNet pretrained on digits 0-4 (the recipe's defaults), then all training images of 5-9
# streamed once with the stream recipe's defaults (arrival batches of 16, DER++ replay from
# a class-balanced memory of 2,000 kept 0-4 images and 2,000 more for the stream, adanag);
# then the same stream with each optimizer at its default rate.
set -euo pipefail
DATA=${1:-../shared/data/mnist}
OUT=${2:-results}
PY=${PYTHON:-python}
R=$(dirname "$0")
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$PY" "$@" --no-progress; }

run "$R/mnist_pretrain.py" --model lenet --classes 0-4 --data-dir "$DATA" \
    --out "$OUT/stream_pretrain_0-4.json" --save "$OUT/stream-lenet-0-4.params"
run "$R/mnist_stream.py" --pretrained "$OUT/stream-lenet-0-4.params" --classes 5-9 \
    --data-dir "$DATA" --out "$OUT/stream_5-9.json"
run "$R/mnist_stream.py" --pretrained "$OUT/stream-lenet-0-4.params" --classes 5-9 \
    --data-dir "$DATA" --compare adanag,adan,nadamw,sgd,adam --out-dir "$OUT"
