"""Input-pipeline throughput: clips per second out of ``make_train_iterator``.

    python -m imagen_video_jax.data.bench                      # moving_digits, 16 x 64 x 64
    python -m imagen_video_jax.data.bench --config configs/imagen_video.py:stage=ssr2,size=mini \\
        --set data.num_workers=4

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from imagen_video_jax.config import load_config
from imagen_video_jax.data.pipeline import make_train_iterator

# tiny tsr3 is 16 frames of 64 x 64 at 24 fps.
DEFAULT_CONFIG = "configs/imagen_video.py:stage=tsr3,size=tiny"


def measure(config: Any, num_batches: int, warmup: int = 3) -> dict[str, Any]:
    """Clips per second over ``num_batches`` batches after ``warmup`` batches."""
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    for _ in range(warmup):
        batch = next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
    seconds = time.perf_counter() - start
    clips = num_batches * len(batch["video"])
    return {
        "dataset": config.data.dataset,
        "source": config.data.source,
        "shape": list(batch["video"].shape[1:]),
        "batch_size": len(batch["video"]),
        "num_workers": config.data.num_workers,
        "read_threads": config.data.read_threads,
        "clips_per_second": round(clips / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="stage config to read from")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--batches", type=int, default=20, help="batches to time")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    print(json.dumps(measure(config, args.batches)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
