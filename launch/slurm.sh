#!/usr/bin/env bash
# Train one cascade stage on a SLURM GPU cluster: one process per GPU, all nodes together.
#
#   CONFIG=configs/imagen_video.py:stage=ssr1,size=paper WORKDIR=/shared/runs/iv \
#     sbatch --nodes=4 launch/slurm.sh [--set key=value ...]
#
# jax.distributed reads the job's layout from SLURM's variables (SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_STEP_NODELIST); each process uses the GPU of its local rank (JAX sets
# local_device_ids=[SLURM_LOCALID], so leave CUDA_VISIBLE_DEVICES unset). Near the
# time limit SLURM sends SIGTERM, every process reaches the same step, saves a checkpoint and
# exits 0; the job is requeued and resumes from that checkpoint. WORKDIR must be a filesystem
# all nodes share (or a gs:// path).
#
#SBATCH --job-name=imagen-video
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

: "${CONFIG:?set CONFIG, e.g. configs/imagen_video.py:stage=base,size=paper}"
: "${WORKDIR:?set WORKDIR, a folder every node can reach}"
data_args=()
[[ -n "${DATA_DIR:-}" ]] && data_args=(--data-dir "$DATA_DIR")

srun --kill-on-bad-exit=1 imagen-video train --multihost auto --no-progress \
  --config "$CONFIG" --workdir "$WORKDIR" "${data_args[@]}" "$@"
