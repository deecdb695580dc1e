"""Video files of samples: MP4 (H.264 through imageio-ffmpeg), GIF, and PNG contact sheets of
frames with captions (Pillow). Small videos are enlarged by an integer factor (nearest
neighbour) so that every pixel stays visible."""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_VIDEO_SIDE = 256  # videos are enlarged until their shorter side is at least this
MIN_SHEET_SIDE = 64  # contact-sheet frames likewise
MAX_SHEET_FRAMES = 16
_PAD = 4
_FONT_SIZE = 14
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def check_video(video: np.ndarray) -> np.ndarray:
    """A uint8 video [frames, height, width, 3]; a clear error otherwise."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 video [frames, height, width, 3]; got {video.dtype} "
            f"{list(video.shape)}"
        )
    return video


def enlarge(video: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor that brings the shorter
    side to at least ``min_side`` (none if it is already there)."""
    video = check_video(video)
    factor = max(1, -(-min_side // min(video.shape[1:3])))
    return video.repeat(factor, axis=1).repeat(factor, axis=2)


def write_mp4(path: str | Path, video: np.ndarray, fps: float) -> Path:
    """H.264 MP4 of a uint8 video [frames, height, width, 3]."""
    path = Path(path)
    frames = enlarge(video, MIN_VIDEO_SIDE)
    with warnings.catch_warnings():
        # ffmpeg runs as a subprocess (fork then exec), which JAX's fork warning does not mean.
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        _write_ffmpeg(path, frames, fps)
    return path


def _write_ffmpeg(path: Path, frames: np.ndarray, fps: float) -> None:
    with imageio.get_writer(
        path,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        quality=8,
        pixelformat="yuv420p",
        macro_block_size=2,
        ffmpeg_log_level="error",
    ) as writer:
        for frame in frames:
            writer.append_data(frame)


def gif_bytes(video: np.ndarray, fps: float) -> bytes:
    """A looping GIF of a uint8 video [frames, height, width, 3] (e.g. to show in a notebook)."""
    frames = [Image.fromarray(frame) for frame in enlarge(video, MIN_VIDEO_SIDE)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / fps),
        loop=0,
        optimize=False,
    )
    return buffer.getvalue()


def write_gif(path: str | Path, video: np.ndarray, fps: float) -> Path:
    """Looping GIF of a uint8 video [frames, height, width, 3]."""
    path = Path(path)
    path.write_bytes(gif_bytes(video, fps))
    return path


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom - top + 4


def _sheet_frames(video: np.ndarray, max_frames: int) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames (first and last included)."""
    video = enlarge(video, MIN_SHEET_SIDE)
    if len(video) <= max_frames:
        return video
    return video[np.round(np.linspace(0, len(video) - 1, max_frames)).astype(int)]


def contact_sheet(
    videos: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    title: str | None = None,
    max_frames: int = MAX_SHEET_FRAMES,
) -> Image.Image:
    """One row of frames per video, each under its caption (and a title above all)."""
    if len(videos) != len(captions):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} captions")
    rows = [_sheet_frames(video, max_frames) for video in videos]
    font = _font()
    line = _line_height(font)
    width = max(_PAD + len(r) * (r.shape[2] + _PAD) for r in rows)
    chars = max(16, width // max(1, round(0.6 * _FONT_SIZE)))

    def lines(text: str | None) -> list[str]:
        return textwrap.wrap(text, chars) if text else []

    title_lines = lines(title)
    caption_lines = [lines(caption) for caption in captions]
    height = _PAD + len(title_lines) * line + (_PAD if title_lines else 0)
    height += sum(len(c) * line + r.shape[1] + 2 * _PAD for c, r in zip(caption_lines, rows))
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = _PAD
    for text in title_lines:
        draw.text((_PAD, y), text, fill=_TEXT, font=font)
        y += line
    y += _PAD if title_lines else 0
    for text_lines, frames in zip(caption_lines, rows):
        for text in text_lines:
            draw.text((_PAD, y), text, fill=_TEXT, font=font)
            y += line
        for i, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (_PAD + i * (frame.shape[1] + _PAD), y))
        y += frames.shape[1] + 2 * _PAD
    return sheet


def numbered_paths(out: str | Path, count: int, suffix: str, tag: str = "") -> list[Path]:
    """``out`` with ``suffix`` for one video, ``<stem>_<i>`` for several (``tag`` appended
    to the stem, e.g. a stage name)."""
    out = Path(out)
    stem = out.stem + (f"_{tag}" if tag else "")
    if count == 1:
        return [out.with_name(stem + suffix)]
    return [out.with_name(f"{stem}_{i:03d}{suffix}") for i in range(count)]


def write_samples(
    out: str | Path,
    videos: np.ndarray,
    fps: float,
    captions: Sequence[str],
    *,
    title: str | None = None,
    tag: str = "",
) -> list[Path]:
    """MP4 and GIF of each video [batch, frames, height, width, 3] next to ``out`` and one PNG
    contact sheet of all of them with their captions; returns the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, writer in ((".mp4", write_mp4), (".gif", write_gif)):
        for path, video in zip(numbered_paths(out, len(videos), suffix, tag), videos):
            written.append(writer(path, video, fps))
    sheet_path = out.with_name(out.stem + (f"_{tag}" if tag else "") + ".png")
    contact_sheet(list(videos), list(captions), title=title).save(sheet_path)
    written.append(sheet_path)
    return written
