#!/usr/bin/env bash
# Train the seven mini cascade stages on one GPU and bundle them as the package's demo cascade.
#
#   bash launch/train_mini_cascade.sh                               # all stages, then export
#   PARALLEL=1 TIME_LIMIT=1200 bash launch/train_mini_cascade.sh    # all at once, 20 minutes
#   STEPS_base=40000 STAGES="base" bash launch/train_mini_cascade.sh  # retrain one stage
#   INIT_FROM=imagen_video_jax/assets/demo_cascade STAGES=tsr1 bash launch/train_mini_cascade.sh
#                                                                   # train the bundled tsr1 further
#
# Every stage trains with `imagen-video train` on the procedural moving_digits dataset (rendered
# on the fly; SR_DATASET=photo_motion trains the super-resolution stages on camera motion over
# photos instead). The stages keep the mini sizes' shapes (4x16x16 at 3 fps up to 32x512x512
# at 24 fps) with narrower U-Nets, so that their EMA params, stored as float16, fit the
# package's 30 MB budget: about 14M parameters in all (28 MB). Runs resume from WORKDIR.
#
# The demo cascade is trained on one-digit clips (TWO_DIGIT_PROB=0), whose 90 captions are
# embedded once by `imagen-video embed` into TEXT_CACHE; the train steps look captions up there
# (train.text_cache), so the GPU machine needs no text encoder weights, only that file.
#
# The stages are independent given the data (each SR stage is conditioned on downsampled real
# clips), so PARALLEL=1 trains all of them at once on one GPU, each its own process; the small
# stages do not fill a GPU alone. With TIME_LIMIT (seconds) a stage that has not finished its
# steps by then is stopped by SIGTERM, on which `imagen-video train` writes a checkpoint: use
# LR_SCHEDULE=constant for such time-boxed runs, so that stopping early is not stopping in the
# middle of a decay. Train the base stage on its own: started beside four busy SR stages on an
# H100 it once stayed at its first step for 9 minutes (cause not found), and its direction words
# need many steps: 13,000 at batch 64 (STAGES=base BATCH=64 EXTRA="--set
# train.learning_rate=2e-4", 9.5 minutes alone on an H100; docs/PERFORMANCE.md).
#
# Then the EMA params and configs of the stages are exported to imagen_video_jax/assets/
# demo_cascade/ (python -m imagen_video_jax.cascade.export), with demo.json holding the defaults
# of `imagen-video demo`: the stages it runs (through DEMO_STOP_AFTER) and their step counts,
# chosen so that the demo takes well under two minutes on a laptop CPU: through ssr1 (8 x 32 x 32
# at 6 fps) about 56 s on 2 CPU cores; on 8 server cores, through tsr2 (16 x 128 x 128 at
# 12 fps) about 45 s, through tsr3 (32 x 128 x 128 at 24 fps) about 65 s; ssr3 is for GPUs.
#
# Run it from the project's environment (`imagen-video` and `python` on PATH) on a GPU machine.
# Settings (environment variables):
#   WORKDIR          run folder, one subfolder per stage            (workdir/mini_cascade)
#   STEPS            training steps per stage                       (20000)
#   STEPS_<stage>    steps of one stage, e.g. STEPS_base=40000      (STEPS)
#   BATCH            global batch of the low-resolution stages      (32)
#   SR_BATCH         global batch of the 128x128-and-up stages      (16)
#   STAGES           stages to train, in order                      (all seven)
#   SR_DATASET       data of the super-resolution stages            (moving_digits)
#   TWO_DIGIT_PROB   share of two-digit clips                       (0)
#   TEXT_CACHE       caption embeddings; made if absent            (WORKDIR/captions.npz)
#   PARALLEL         1: train the stages at once, logs in WORKDIR   (0)
#   TIME_LIMIT       seconds after which a stage is stopped         (none)
#   LR_SCHEDULE      cosine | constant                              (cosine)
#   OUT              where the bundled cascade goes                 (imagen_video_jax/assets/demo_cascade)
#   MAX_MB           size limit of the bundle                       (30)
#   DEMO_STOP_AFTER  last stage `imagen-video demo` runs            (ssr1)
#   DEMO_STEPS       the demo's steps per stage                   (base=32,tsr1=8,ssr1=8)
#   INIT_FROM        a cascade folder to start new runs from (train further), e.g. the bundle
#   EXTRA            more `imagen-video train` arguments for every stage
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${WORKDIR:-workdir/mini_cascade}
STEPS=${STEPS:-20000}
BATCH=${BATCH:-32}
SR_BATCH=${SR_BATCH:-16}
STAGES=${STAGES:-"base tsr1 ssr1 ssr2 tsr2 tsr3 ssr3"}
SR_DATASET=${SR_DATASET:-moving_digits}
OUT=${OUT:-imagen_video_jax/assets/demo_cascade}
MAX_MB=${MAX_MB:-30}
DEMO_STOP_AFTER=${DEMO_STOP_AFTER:-ssr1}
DEMO_STEPS=${DEMO_STEPS:-base=32,tsr1=8,ssr1=8}
EXTRA=${EXTRA:-}
INIT_FROM=${INIT_FROM:-}
TWO_DIGIT_PROB=${TWO_DIGIT_PROB:-0}
TEXT_CACHE=${TEXT_CACHE:-$WORKDIR/captions.npz}
PARALLEL=${PARALLEL:-0}
TIME_LIMIT=${TIME_LIMIT:-}
LR_SCHEDULE=${LR_SCHEDULE:-cosine}

# U-Net width (channels of the first level) and attention head width of each stage.
declare -A CHANNELS=([base]=48 [tsr1]=32 [ssr1]=32 [ssr2]=16 [tsr2]=16 [tsr3]=16 [ssr3]=16)
declare -A HEAD_DIM=([base]=16 [tsr1]=32 [ssr1]=32 [ssr2]=32 [tsr2]=32 [tsr3]=32 [ssr3]=32)
# Only ssr3 trains on random crops (height = width) of its output. The crop must not be much
# smaller than the U-Net's receptive field: stages trained on 64 x 64 crops of 128 x 128 frames
# drew a grey square far from the borders of full frames, a region unlike any crop they saw.
declare -A CROP=([ssr3]=256)

stage_args() {
  local stage=$1
  local channels=${CHANNELS[$stage]}
  local steps_var="STEPS_${stage}"
  local steps=${!steps_var:-$STEPS}
  local args=(
    --set "train.num_steps=${steps}"
    --set "model.channels=${channels}"
    --set "model.emb_channels=$((4 * channels))"
    --set "model.head_dim=${HEAD_DIM[$stage]}"
    --set "model.norm_groups=$((channels < 16 ? channels : 16))"
    --set "train.warmup_steps=$(( steps / 20 < 1 ? 1 : (steps / 20 > 1000 ? 1000 : steps / 20) ))"
    --set "train.lr_schedule=${LR_SCHEDULE}"
    --set "train.text_cache=${TEXT_CACHE}"
    --set "data.moving_digits.two_digit_prob=${TWO_DIGIT_PROB}"
  )
  if [[ -n "${CROP[$stage]:-}" ]]; then
    args+=(--set "data.crop_height=${CROP[$stage]}" --set "data.crop_width=${CROP[$stage]}")
    args+=(--set "data.batch_size=${SR_BATCH}")
  else
    args+=(--set "data.batch_size=${BATCH}")
  fi
  if [[ "$stage" != base ]]; then
    args+=(--set "data.dataset=${SR_DATASET}")
  fi
  if [[ -n "$INIT_FROM" ]]; then
    args+=(--init-from "$INIT_FROM")
  fi
  echo "${args[@]}"
}

train_stage() {
  local stage=$1
  local limit=()
  if [[ -n "$TIME_LIMIT" ]]; then
    limit=(timeout --signal=TERM --kill-after=120 "$TIME_LIMIT")
  fi
  # shellcheck disable=SC2046,SC2086
  "${limit[@]}" imagen-video train --config "configs/imagen_video.py:stage=${stage},size=mini" \
    --workdir "$WORKDIR" $(stage_args "$stage") "${@:2}" $EXTRA || {
    local status=$?
    # 124: stopped at TIME_LIMIT, after writing a checkpoint.
    [[ $status == 124 ]] || { echo "=== ${stage} failed (exit ${status})"; return "$status"; }
  }
}

mkdir -p "$WORKDIR"
if [[ ! -f "$TEXT_CACHE" ]]; then
  echo "=== embedding the captions into ${TEXT_CACHE}"
  imagen-video embed --config "configs/imagen_video.py:stage=base,size=mini" --dtype float32 \
    --set "data.moving_digits.two_digit_prob=${TWO_DIGIT_PROB}" --out "$TEXT_CACHE"
fi

if [[ "$PARALLEL" == 1 ]]; then
  # One process per stage on the same GPU: each takes memory as it needs it.
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  pids=()
  for stage in $STAGES; do
    echo "=== training ${stage} in the background, log: ${WORKDIR}/${stage}.log ($(date))"
    train_stage "$stage" --no-progress >"${WORKDIR}/${stage}.log" 2>&1 &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [[ $failed == 0 ]] || { echo "=== a stage failed: see ${WORKDIR}/*.log"; exit 1; }
else
  for stage in $STAGES; do
    echo "=== training ${stage} ($(date))"
    train_stage "$stage"
  done
fi

echo "=== exporting to ${OUT}"
python -m imagen_video_jax.cascade.export --checkpoints "$WORKDIR" --out "$OUT" \
  --dtype float16 --max-mb "$MAX_MB" \
  --demo-stop-after "$DEMO_STOP_AFTER" --demo-steps "$DEMO_STEPS" \
  --demo-prompt "a handwritten 2 moving up and to the right"
du -sh "$OUT"
echo "=== done: try it with  imagen-video demo"
