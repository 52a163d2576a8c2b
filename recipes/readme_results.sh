#!/usr/bin/env bash
# Every number in the README's "Results" section, in one command (about 1.5 hours on 2 cores):
#   bash recipes/readme_results.sh [MNIST_DIR] [OUT_DIR]
# Writes OUT_DIR/*.json, sweep.{json,md,png} and results.md (the README's tables).
set -euo pipefail
DATA=${1:-../shared/data/mnist}
OUT=${2:-results}
PY=${PYTHON:-python}
R=$(dirname "$0")
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$PY" "$@" --no-progress; }

# targets: LeNet and the MLP with adanag's defaults (lr 0.002) and a cosine learning-rate
# decay over the run (the recipes' default, written out): 3 epochs (LeNet), and 10 epochs (both)
run "$R/mnist_pretrain.py" --model lenet --optimizer adanag --epochs 3 --lr-schedule cosine \
    --data-dir "$DATA" --out "$OUT/lenet_adanag_3.json"
run "$R/mnist_pretrain.py" --model lenet --optimizer adanag --epochs 10 --lr-schedule cosine \
    --data-dir "$DATA" --out "$OUT/lenet_adanag_10.json"
run "$R/mnist_pretrain.py" --model mlp --optimizer adanag --epochs 10 --lr-schedule cosine \
    --data-dir "$DATA" --out "$OUT/mlp_adanag_10.json"

# transfer: LeNet pretrained on digits 0-4, fine-tuned on 5-9, against training from scratch;
# these numbers were measured with a constant learning rate and the features at 0.1x (the
# recipes' defaults then; the fine-tuning recipe's defaults now are in `make mnist`)
run "$R/mnist_pretrain.py" --model lenet --classes 0-4 --epochs 3 --lr-schedule constant --data-dir "$DATA" \
    --out "$OUT/pretrain_0-4.json" --save "$OUT/lenet-0-4.params"
for shots in 10 100; do
  run "$R/mnist_finetune.py" --pretrained "$OUT/lenet-0-4.params" --classes 5-9 --shots "$shots" \
      --lr-schedule constant --features-lr-mult 0.1 --compare-scratch --data-dir "$DATA" \
      --out "$OUT/finetune_${shots}_shots.json"
done
run "$R/mnist_finetune.py" --pretrained "$OUT/lenet-0-4.params" --classes 5-9 --features freeze \
    --train-last 1 --epochs 5 --batch-size 128 --lr-schedule constant --data-dir "$DATA" \
    --out "$OUT/finetune_all_frozen.json"

# the optimizer comparison table and plot
"$PY" "$R/compare_optimizers.py" --data-dir "$DATA" --out-dir "$OUT"

"$PY" -c "import sys; from mxnag.train import sweep; print(sweep.results_markdown(sys.argv[1]), end='')" "$OUT" \
    | tee "$OUT/results.md"
