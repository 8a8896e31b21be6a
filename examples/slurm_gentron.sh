#!/bin/bash
# Multi-node GenTron training on SLURM with torchrun rendezvous (see docs/training-at-scale.md).
#
#   sbatch examples/slurm_gentron.sh configs/my-run.yaml
#
# One srun task per node; torchrun starts one process per GPU on each node and they meet at the first
# node's c10d rendezvous. SLURM sends SIGUSR1 120 s before the time limit (--signal): the trainer
# finishes the step, writes a checkpoint and exits 0; `--requeue` + `--resume auto` continue the run.
#SBATCH --job-name=gentron
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch examples/slurm_gentron.sh CONFIG.yaml [RUN_DIR]}
RUN_DIR=${2:-runs/$(basename "${CONFIG%.*}")}
GPUS_PER_NODE=${SLURM_GPUS_PER_NODE:-8}

HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=8
export HF_HUB_OFFLINE=1  # text encoders come from local folders on a cluster

# `exec` so the SIGUSR1/SIGTERM that srun forwards reaches torchrun, which passes it to every rank.
srun --kill-on-bad-exit=1 bash -c "exec torchrun \
  --nnodes=$SLURM_NNODES \
  --nproc_per_node=$GPUS_PER_NODE \
  --rdzv_id=$SLURM_JOB_ID \
  --rdzv_backend=c10d \
  --rdzv_endpoint=$HEAD_NODE:29500 \
  -m gentron train $CONFIG --out $RUN_DIR --resume auto \
  --set train.parallel=fsdp --set train.activation_checkpointing=every_k --set train.ac_every=2"
