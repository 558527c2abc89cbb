#!/usr/bin/env bash
# Multi-node training: one `accelerate launch` per node, started by srun.
#   sbatch --nodes 4 --gres gpu:8 --ntasks-per-node 1 scripts/launch_slurm.sh configs/imagenet_k3.yaml \
#          --data-dir /data/imagenet --batch-size 8 --name inet_k3 --wandb --experiment inet
# (--batch-size is per process: 4 nodes x 8 GPUs x 8 = the paper's 256)
# Time limit and preemption: Slurm sends USR1 to this script STOP_EARLY seconds (default 300: `--signal`) before
# the limit; the script passes SIGTERM to every train.py, which ends in one line (exit 143) with the last complete
# epoch saved, and requeues the job; the requeued job resumes the run (--resume RUN). A preempted job gets SIGTERM
# from Slurm itself and ends the same way. Re-submitting with `--resume runs/inet_k3` also continues a run.
#SBATCH --job-name=greedy
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
MIXED_PRECISION=${MIXED_PRECISION:-bf16}
PY=${PY:-.venv/bin/python}

# The run directory is fixed before the first start, so that a requeued job knows what to resume: --out-dir and
# --name as given, else runs/ and the job's name and id.
if [ "$1" != "--resume" ]; then
    OUT_DIR=runs NAME=""
    ARGS=("$@")
    for ((i = 1; i < ${#ARGS[@]}; i++)); do
        case "${ARGS[i]}" in
            --out-dir) OUT_DIR=${ARGS[i + 1]} ;;
            --out-dir=*) OUT_DIR=${ARGS[i]#--out-dir=} ;;
            --name) NAME=${ARGS[i + 1]} ;;
            --name=*) NAME=${ARGS[i]#--name=} ;;
        esac
    done
    if [ -z "$NAME" ]; then NAME="${SLURM_JOB_NAME:-greedy}-${SLURM_JOB_ID:-$$}"; set -- "$@" --name "$NAME"; fi
    if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$OUT_DIR/$NAME/config.yaml" ]; then
        set -- --resume "$OUT_DIR/$NAME"  # requeued: continue from the last complete epoch
    else
        set -- -c "$@"
    fi
fi

REQUEUE=0
# Slurm's early warning: stop every train.py now (SIGTERM through srun), requeue once they have ended.
trap 'echo "launch_slurm.sh: the time limit is near; stopping the run to requeue it" >&2; REQUEUE=1; \
      kill -TERM "$SRUN_PID" 2>/dev/null || true' USR1
# Single quotes: SLURM_NODEID must be expanded on each node, not here.
srun --kill-on-bad-exit=1 bash -c 'exec "$0" -m accelerate.commands.launch --multi_gpu \
    --num_machines "$1" --num_processes "$(($1 * $2))" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$3" --main_process_port "$4" --mixed_precision "$5" --dynamo_backend no \
    train.py "${@:6}" --mixed-precision "$5"' \
    "$PY" "$NNODES" "$GPUS_PER_NODE" "$MASTER_ADDR" "$MASTER_PORT" "$MIXED_PRECISION" "$@" &
SRUN_PID=$!
CODE=0
wait "$SRUN_PID" || CODE=$?
while kill -0 "$SRUN_PID" 2>/dev/null; do  # the trap interrupted the wait: wait for the run to end
    CODE=0
    wait "$SRUN_PID" || CODE=$?
done
if [ "$REQUEUE" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$CODE"
