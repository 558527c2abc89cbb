#!/usr/bin/env bash
# Multi-node training: one `accelerate launch` per node, started by srun.
#   sbatch --nodes 4 --gres gpu:8 --ntasks-per-node 1 scripts/launch_slurm.sh configs/imagenet_k3.yaml \
#          --data-dir /data/imagenet --batch-size 8 --name inet_k3 --wandb --experiment inet
# (--batch-size is per process: 4 nodes x 8 GPUs x 8 = the paper's 256)
# Re-submitting with `--resume runs/inet_k3` continues from the last complete epoch.
#SBATCH --job-name=greedy
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
MIXED_PRECISION=${MIXED_PRECISION:-bf16}
PY=${PY:-.venv/bin/python}
if [ "$1" != "--resume" ]; then set -- -c "$@"; fi
# Single quotes: SLURM_NODEID must be expanded on each node, not here.
srun --kill-on-bad-exit=1 bash -c '"$0" -m accelerate.commands.launch --multi_gpu \
    --num_machines "$1" --num_processes "$(($1 * $2))" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$3" --main_process_port "$4" --mixed_precision "$5" --dynamo_backend no \
    train.py "${@:6}" --mixed-precision "$5"' \
    "$PY" "$NNODES" "$GPUS_PER_NODE" "$MASTER_ADDR" "$MASTER_PORT" "$MIXED_PRECISION" "$@"
