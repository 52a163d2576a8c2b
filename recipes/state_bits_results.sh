#!/usr/bin/env bash
# The accuracy of 8-bit optimizer states (issue 21), with the recipes' defaults and
# --opt-arg state_bits=8 beside 32-bit states: LeNet on MNIST, 3 epochs (the README's
# main table); the Adam paper's MLP (784-1000-1000, dropout), 3 epochs, training loss.
# Writes results/state_bits/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MNIST_DIR=${MNIST_DIR:-../shared/data/mnist}
OUT=results/state_bits
mkdir -p "$OUT"
$PY recipes/mnist_pretrain.py --model lenet --epochs 3 --opt-arg state_bits=8 --data-dir "$MNIST_DIR" \
    --no-progress --out "$OUT/lenet_8bit.json"
for bits in 32 8; do
  $PY recipes/mnist_pretrain.py --model mlp-1000-1000 --epochs 3 --opt-arg state_bits=$bits \
      --data-dir "$MNIST_DIR" --no-progress --out "$OUT/mlp_1000_1000_${bits}bit.json"
done
