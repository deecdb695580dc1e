"""Train the moving_digits caption classifier and report its held-out accuracy.

    python launch/train_caption_classifier.py  # -> imagen_video_jax/assets/caption_classifier.*

Renders one-digit clips from the train split at each ``--shapes`` entry, trains, then prints
digit / motion / caption accuracy on test-split clips (disjoint source scans) as JSON, also
written next to the weights as ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from imagen_video_jax.eval.caption_classifier import DEFAULT_WEIGHTS, ClassifierConfig
from imagen_video_jax.eval.classifier_training import (
    DEFAULT_RENDER_SHAPES,
    TrainingSettings,
    held_out_accuracy,
    train_classifier,
)


def parse_shape(text: str) -> tuple[int, int, int, float]:
    """``"4x16x16@3"`` -> (frames, height, width, fps)."""
    try:
        size, fps = text.split("@")
        frames, height, width = (int(v) for v in size.split("x"))
        return frames, height, width, float(fps)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape {text!r} must look like FRAMESxHEIGHTxWIDTH@FPS, e.g. 4x16x16@3"
        ) from None


def main(argv: list[str] | None = None) -> int:
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file (msgpack)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--clips-per-shape", type=int, default=defaults.clips_per_shape)
    parser.add_argument("--eval-clips-per-shape", type=int, default=defaults.eval_clips_per_shape)
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=list(DEFAULT_RENDER_SHAPES),
        help="clip shapes to render, FRAMESxHEIGHTxWIDTH@FPS",
    )
    parser.add_argument("--bounce-prob", type=float, default=defaults.bounce_prob)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--input-frames", type=int, default=ClassifierConfig.frames)
    parser.add_argument("--input-size", type=int, default=ClassifierConfig.size)
    args = parser.parse_args(argv)

    settings = TrainingSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        clips_per_shape=args.clips_per_shape,
        eval_clips_per_shape=args.eval_clips_per_shape,
        render_shapes=tuple(args.shapes),
        bounce_prob=args.bounce_prob,
        seed=args.seed,
    )
    config = ClassifierConfig(frames=args.input_frames, size=args.input_size)
    started = time.time()
    classifier = train_classifier(settings, config)
    train_seconds = time.time() - started
    classifier.save(args.out)
    report = {
        "weights": args.out.name,
        "train_seconds": round(train_seconds, 1),
        "settings": {key: value for key, value in vars(args).items() if key != "out"},
        "held_out_accuracy": held_out_accuracy(classifier, settings),
    }
    text = json.dumps(report, indent=2)
    args.out.with_suffix(args.out.suffix + ".json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
