"""One logging path for training: a progress bar, scalars to TensorBoard event files (written
by tensorboardX, no TensorFlow) and to ``metrics.jsonl``, and sample videos (GIF + PNG grid).

Only process 0 writes; other processes get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

import imageio.v3 as iio
import numpy as np
from etils import epath
from tqdm import tqdm


def video_grid(videos: np.ndarray) -> np.ndarray:
    """uint8 [N, T, H, W, C] -> one image [N * H, T * W, C]: a row per video, a column per frame."""
    n, t, h, w, c = videos.shape
    return videos.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, c)


def side_by_side(videos: np.ndarray) -> np.ndarray:
    """uint8 [N, T, H, W, C] -> [T, H, N * W, C]: the videos next to each other, frame by frame."""
    n, t, h, w, c = videos.shape
    return videos.transpose(1, 2, 0, 3, 4).reshape(t, h, n * w, c)


def _open_jsonl(log_dir: epath.Path, start_step: int):
    """``metrics.jsonl``, appended to across resumed runs; object stores (gs://...) cannot
    append, so there each run writes its own ``metrics_<start step>.jsonl``."""
    if "://" in str(log_dir):
        return (log_dir / f"metrics_{start_step:08d}.jsonl").open("w")
    return (log_dir / "metrics.jsonl").open("a")


class TrainLogger:
    """Progress bar with step/s, loss and ETA; scalars to TensorBoard and JSONL; samples."""

    def __init__(
        self,
        log_dir: str | epath.Path,
        *,
        start_step: int,
        total_steps: int,
        enabled: bool = True,
        progress_bar: bool = True,
        description: str | None = None,
    ):
        self.enabled = enabled
        self.log_dir = epath.Path(log_dir)
        self._writer = None
        self._bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.log_dir))
        self._jsonl = _open_jsonl(self.log_dir, start_step)
        if progress_bar:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=description,
                unit="step",
                dynamic_ncols=True,
            )

    def step(self, step: int, loss: float) -> None:
        """Advance the progress bar to ``step`` (the number of steps done), showing ``loss``."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time()}
        for name, value in values.items():
            value = float(value)
            self._writer.add_scalar(f"train/{name}", value, step)
            record[name] = value if math.isfinite(value) else str(value)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def message(self, text: str) -> None:
        """A line of text that does not break the progress bar."""
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(text)

    def samples(self, step: int, videos: np.ndarray, fps: float) -> epath.Path | None:
        """Write uint8 videos [N, T, H, W, 3] as ``samples/step_<step>.gif`` (the videos side
        by side) and ``.png`` (a grid: a row per video, a column per frame)."""
        if not self.enabled:
            return None
        folder = self.log_dir.parent / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"step_{step:08d}"
        grid = video_grid(videos)
        # Encoded in memory and written through epath, so gs:// workdirs work too.
        png = iio.imwrite("<bytes>", grid, extension=".png")
        gif = iio.imwrite(
            "<bytes>", side_by_side(videos), extension=".gif", duration=1000.0 / fps, loop=0
        )
        stem.with_suffix(".png").write_bytes(png)
        stem.with_suffix(".gif").write_bytes(gif)
        self._writer.add_image("samples", grid, step, dataformats="HWC")
        return stem

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()
