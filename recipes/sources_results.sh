#!/usr/bin/env bash
# The README's data-source results, in one command (about an hour on 2 cores):
#   bash recipes/sources_results.sh [MNIST_DIR] [OUT_DIR] [WORK_DIR]
# Fashion-MNIST (Debian's dataset-fashion-mnist) written as a folder of PNGs and trained
# through --data folder: with GluonCV's CIFAR ResNet-20 and adanag, 10 epochs; the same
# folder's classes 0-4 pretrained, then 5-9 fine-tuned from 100 images per class against
# the same from scratch; LeNet on MNIST through --data mnist and through its exported folder.
set -euo pipefail
DATA=${1:-../shared/data/mnist}
OUT=${2:-results}
WORK=${3:-runs/sources}
PY=${PYTHON:-python}
R=$(dirname "$0")
mkdir -p "$OUT" "$WORK"
run() { echo "+ $*" >&2; "$PY" "$@" --no-progress; }

[ -d "$WORK/fashion/train" ] || "$PY" "$R/export_images.py" --data fashion-mnist --out-dir "$WORK/fashion"
run "$R/pretrain.py" --data "folder:$WORK/fashion" --model cifar_resnet20_v1 --epochs 10 --workers 2 \
    --out "$OUT/fashion_folder_resnet20.json" --log "$WORK/fashion_resnet20.jsonl"
run "$R/pretrain.py" --data "folder:$WORK/fashion" --classes 0-4 --model cifar_resnet20_v1 --epochs 5 \
    --workers 2 --out "$OUT/fashion_folder_0-4.json" --save "$WORK/resnet20-fashion-0-4.params"
run "$R/finetune.py" --pretrained "$WORK/resnet20-fashion-0-4.params" --data "folder:$WORK/fashion" \
    --classes 5-9 --shots 100 --compare-scratch --workers 2 --features-lr-mult 0.1 --lr-schedule cosine \
    --out "$OUT/fashion_folder_finetune_5-9.json"
[ -d "$WORK/mnist/train" ] || "$PY" "$R/export_images.py" --data mnist --data-dir "$DATA" --out-dir "$WORK/mnist"
run "$R/pretrain.py" --data mnist --data-dir "$DATA" --model lenet --epochs 3 \
    --out "$OUT/lenet_mnist_memory.json"
run "$R/pretrain.py" --data "folder:$WORK/mnist" --augment none --model lenet --epochs 3 --workers 2 \
    --out "$OUT/lenet_mnist_folder.json"
