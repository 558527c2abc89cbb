#!/usr/bin/env bash
# Train on one node with all its GPUs (or NUM_GPUS of them) through accelerate.
#   scripts/launch_node.sh configs/imagenet_k3.yaml --data-dir /data/imagenet --batch-size 32 --wandb  # 8 x 32 = 256
#   NUM_GPUS=4 MIXED_PRECISION=bf16 scripts/launch_node.sh configs/cifar10_k3.yaml
# Resume a stopped run with the same script: scripts/launch_node.sh --resume runs/NAME
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_GPUS=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NUM_GPUS" -ge 1 ] || NUM_GPUS=1
MIXED_PRECISION=${MIXED_PRECISION:-no}
PY=${PY:-.venv/bin/python}
if [ "$1" != "--resume" ]; then set -- -c "$@"; fi
exec "$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NUM_GPUS" --num_machines 1 \
    --mixed_precision "$MIXED_PRECISION" --dynamo_backend no \
    train.py "$@" --mixed-precision "$MIXED_PRECISION"
