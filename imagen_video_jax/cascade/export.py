"""Write a trained cascade in the compact sampling format: per stage the EMA params (float16 by
default) and the config, nothing else. This is how the bundled demo cascade is made:

    python -m imagen_video_jax.cascade.export --checkpoints WORKDIR \
        --out imagen_video_jax/assets/demo_cascade --max-mb 30 \
        [--stop-after tsr3] [--demo-stop-after ssr2] [--demo-steps base=32,tsr1=8]

``demo.json`` (the defaults of ``imagen-video demo``: prompt, last stage, step counts) is
written next to the stages when any ``--demo-*`` option is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from imagen_video_jax.cascade.checkpoints import PARAMS_FILE, SAVE_DTYPES
from imagen_video_jax.cascade.cli import per_stage_value
from imagen_video_jax.stages import STAGE_ORDER

DEMO_FILE = "demo.json"


def params_bytes(cascade: Any, dtype: str) -> int:
    """Bytes of every stage's params stored as ``dtype``."""
    leaves = jax.tree_util.tree_leaves([stage.params for stage in cascade.stages.values()])
    return sum(int(np.prod(leaf.shape)) for leaf in leaves) * np.dtype(dtype).itemsize


def export_cascade(
    checkpoints: str | Path,
    out: str | Path,
    *,
    stop_after: str | None = None,
    dtype: str = "float16",
    max_bytes: int | None = None,
    demo: dict | None = None,
) -> int:
    """Load the cascade in ``checkpoints`` (up to ``stop_after``) and save it compactly in
    ``out``, replacing stages exported there before; returns the bytes written."""
    from imagen_video_jax.cascade import Cascade

    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {SAVE_DTYPES}, got {dtype!r}")
    cascade = Cascade.from_checkpoints(checkpoints, stop_after=stop_after)
    demo_stop = (demo or {}).get("stop_after")
    if demo_stop is not None and demo_stop not in cascade.stages:
        raise ValueError(
            f"the demo's last stage {demo_stop!r} is not among the exported stages "
            f"{cascade.stage_names}"
        )
    size = params_bytes(cascade, dtype)
    if max_bytes is not None and size > max_bytes:
        raise ValueError(
            f"the stages {cascade.stage_names} hold {size / 1e6:.1f} MB of {dtype} params, over "
            f"the limit of {max_bytes / 1e6:.1f} MB: export fewer stages (--stop-after) or "
            "train narrower ones"
        )
    out = Path(out)
    for name in STAGE_ORDER:
        if (out / name / PARAMS_FILE).is_file():
            shutil.rmtree(out / name)
    written = cascade.save(out, dtype)
    demo_path = out / DEMO_FILE
    if demo:
        demo_path.write_text(json.dumps(demo, indent=1))
        written += demo_path.stat().st_size
    elif demo_path.exists():
        demo_path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagen_video_jax.cascade.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoints", required=True, help="cascade folder (train workdir)")
    parser.add_argument("--out", required=True, help="folder to write the compact cascade to")
    parser.add_argument("--stop-after", choices=STAGE_ORDER, help="last stage to export")
    parser.add_argument("--dtype", choices=SAVE_DTYPES, default="float16")
    parser.add_argument("--max-mb", type=float, help="refuse to write more than this (1e6 B)")
    parser.add_argument("--demo-prompt", help="default prompt of `imagen-video demo`")
    parser.add_argument("--demo-stop-after", choices=STAGE_ORDER, help="demo's last stage")
    parser.add_argument(
        "--demo-steps",
        type=lambda t: per_stage_value(t, int),
        help="demo's steps: one count or STAGE=N,...",
    )
    args = parser.parse_args(argv)
    demo = {
        key: value
        for key, value in (
            ("prompt", args.demo_prompt),
            ("stop_after", args.demo_stop_after),
            ("num_steps", args.demo_steps),
        )
        if value is not None
    }
    try:
        written = export_cascade(
            args.checkpoints,
            args.out,
            stop_after=args.stop_after,
            dtype=args.dtype,
            max_bytes=None if args.max_mb is None else int(args.max_mb * 1e6),
            demo=demo,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written / 1e6:.1f} MB to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
