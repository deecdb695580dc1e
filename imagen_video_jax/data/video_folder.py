"""Video folder: a user's own videos as a captioned clip dataset.

Videos are files (mp4, webm, avi, mov, mkv, gif) or folders of frames (png, jpg), anywhere
under a root folder. Captions come from a CSV file (columns ``path`` and ``caption``) or a
JSONL file (objects with ``path`` and ``caption``), paths relative to the root; without one,
a video's caption is its folder's name, as in the UCF-101 layout
(``root/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`` -> ``"apply eye makeup"``).

Each video is decoded (imageio; the ffmpeg backend for mp4/webm and other containers),
resampled to the chosen frame rate, cut into up to ``clips_per_video`` consecutive clips of
the chosen length, resized to cover the chosen size and centre-cropped. A file that cannot be
decoded or is too short is skipped with a warning naming it, and counted in the summary; a
file's records are written only once all its clips are made. Text embeddings can be
precomputed into the records with a caller-supplied ``embed_fn(captions) -> (emb, mask)``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from imagen_video_jax.data.storage import ArrayRecordBuilder, clip_features
from imagen_video_jax.data.video_ops import resize_and_center_crop

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".gif")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
EmbedFn = Callable[[list[str]], tuple[Any, Any]]


def find_videos(root: str) -> list[str]:
    """Paths (relative to ``root``, sorted) of video files and of folders of frames."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder {root!r} does not exist")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        frames = [f for f in files if f.lower().endswith(FRAME_EXTENSIONS)]
        if frames and not subfolders and folder != root:
            found.append(os.path.relpath(folder, root))
        found += [
            os.path.relpath(os.path.join(folder, f), root)
            for f in files
            if f.lower().endswith(VIDEO_EXTENSIONS)
        ]
    return sorted(found)


def caption_from_folder(relpath: str) -> str:
    """The containing folder's name as words: ``ApplyEyeMakeup/x.avi`` -> ``apply eye makeup``.

    A video directly under the root is named by its own file name instead.
    """
    parent = os.path.dirname(relpath)
    name = os.path.basename(parent) if parent else os.path.splitext(os.path.basename(relpath))[0]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|[_\-\s]+", " ", name).split()
    return " ".join(words).lower()


def read_caption_table(path: str) -> dict[str, str]:
    """``{relative path: caption}`` from a CSV (path, caption columns) or JSONL file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption file {path!r} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        if path.lower().endswith((".jsonl", ".json")):
            rows = [json.loads(line) for line in handle if line.strip()]
        else:
            rows = list(csv.DictReader(handle))
    table = {}
    for number, row in enumerate(rows, start=1):
        if "path" not in row or "caption" not in row:
            raise ValueError(
                f"{path}, row {number}: expected fields 'path' and 'caption', got {sorted(row)}"
            )
        table[os.path.normpath(row["path"])] = str(row["caption"])
    return table


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3]).astype(np.uint8)


def read_frames(path: str, frames_fps: float, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames uint8 [N, H, W, 3] and their start times [N] (s), up to ``max_seconds``.

    ``frames_fps`` is the frame rate of a folder of frames (files have their own).
    """
    import imageio.v2
    import imageio.v3 as iio

    frames, times = [], []
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
        for i, name in enumerate(names):
            if i / frames_fps > max_seconds:
                break
            frames.append(_as_rgb(iio.imread(os.path.join(path, name))))
            times.append(i / frames_fps)
    elif path.lower().endswith(".gif"):
        with iio.imopen(path, "r", plugin="pillow") as gif:
            clock = 0.0
            for i, frame in enumerate(gif.iter(mode="RGB")):
                if clock > max_seconds:
                    break
                frames.append(_as_rgb(frame))
                times.append(clock)
                clock += (gif.metadata(index=i).get("duration") or 100) / 1000.0
    else:
        reader = imageio.v2.get_reader(path, format="ffmpeg")
        try:
            fps = float(reader.get_meta_data()["fps"])
            for i, frame in enumerate(reader.iter_data()):
                if i / fps > max_seconds:
                    break
                frames.append(_as_rgb(frame))
                times.append(i / fps)
        finally:
            reader.close()
    if not frames:
        raise ValueError("no frames decoded")
    if len({f.shape for f in frames}) > 1:
        raise ValueError("frames of different sizes")
    return np.stack(frames), np.asarray(times)


def cut_clips(
    frames: np.ndarray, times: np.ndarray, length: int, fps: float, max_clips: int
) -> list[np.ndarray]:
    """Up to ``max_clips`` consecutive clips of ``length`` frames at ``fps``.

    Each output frame is the source frame showing at its time. Empty if the video is too short.
    """
    clip_seconds = length / fps
    clips = []
    for number in range(max_clips):
        wanted = number * clip_seconds + np.arange(length) / fps
        if wanted[-1] > times[-1] + 1e-6:
            break
        chosen = np.searchsorted(times, wanted + 1e-6, side="right") - 1
        clips.append(frames[chosen])
    return clips


def in_test_split(relpath: str, test_fraction: float) -> bool:
    """A stable split: the same file always lands in the same split."""
    return zlib.crc32(relpath.encode()) % 10_000 < test_fraction * 10_000


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Where the videos are and how to cut them."""

    root: str = ""
    captions: str = ""  # CSV or JSONL file of (path, caption); "" = folder names
    frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 8.0
    clips_per_video: int = 1
    test_fraction: float = 0.0  # share of videos (by a hash of the path) in the test split
    frames_fps: float = 24.0  # frame rate of folders of frames
    embed_batch: int = 64  # captions per embed_fn call


@dataclasses.dataclass
class PrepareSummary:
    """What a prepare run wrote and skipped."""

    written: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"clips written: {self.written}", f"videos skipped: {len(self.skipped)}"]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


class VideoFolder(ArrayRecordBuilder):
    """A user's own videos, cut into captioned clips of one shape and frame rate."""

    def __init__(self, *, embed_fn: EmbedFn | None = None, **kwargs):
        self.embed_fn = embed_fn
        self.summary = PrepareSummary()
        self._text_shapes = _probe_embedding(embed_fn) if embed_fn else None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        extra: dict[str, Any] = {"path": tfds.features.Text()}
        if self._text_shapes:
            extra["text_emb"] = tfds.features.Tensor(
                shape=self._text_shapes, dtype=np.float32, encoding="zlib"
            )
            extra["text_mask"] = tfds.features.Tensor(shape=self._text_shapes[:1], dtype=np.bool_)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=clip_features(config.height, config.width, extra),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        table = read_caption_table(config.captions) if config.captions else None
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
        for relpath in find_videos(config.root):
            caption = caption_from_folder(relpath) if table is None else table.get(relpath)
            if caption is None:
                self._skip(relpath, "no caption in " + config.captions)
                continue
            split = "test" if in_test_split(relpath, config.test_fraction) else "train"
            splits[split].append((relpath, caption))
        if not splits["train"]:
            raise ValueError(f"no captioned videos found under {config.root!r}")
        return {
            name: self._generate_examples(name, items) for name, items in splits.items() if items
        }

    def _generate_examples(self, split: str, items: list[tuple[str, str]]) -> Iterator:
        captions: list[str] = []
        pending: list[tuple[str, dict]] = []
        for relpath, caption in items:
            clips = self._clips_of(relpath)
            for number, clip in enumerate(clips):
                record = {
                    "video": clip,
                    "caption": caption,
                    "fps": np.float32(self.builder_config.fps),
                    "index": np.int64(len(captions)),
                    "path": relpath,
                }
                captions.append(caption)
                pending.append((f"{relpath}#{number}", record))
            if len(pending) >= self.builder_config.embed_batch:
                yield from self._finish(pending)
                pending = []
        yield from self._finish(pending)
        if not captions:
            raise ValueError(
                f"no usable videos for the {split} split: all {len(items)} were skipped "
                "(see the warnings above)"
            )
        self.summary.written[split] = len(captions)
        self._record_caption_groups(split, captions)

    def _clips_of(self, relpath: str) -> list[np.ndarray]:
        """All clips of one video, or none (with a warning) if it is unreadable or too short."""
        config = self.builder_config
        needed_seconds = config.clips_per_video * config.frames / config.fps
        try:
            frames, times = read_frames(
                os.path.join(config.root, relpath), config.frames_fps, needed_seconds
            )
        except Exception as err:  # any decoder failure means a corrupt file, never a crash
            first_line = (str(err).strip().splitlines() or [""])[0]
            self._skip(relpath, f"cannot decode ({type(err).__name__}: {first_line})")
            return []
        clips = cut_clips(frames, times, config.frames, config.fps, config.clips_per_video)
        if not clips:
            self._skip(
                relpath,
                f"too short: {len(frames)} frames over {times[-1]:.2f} s, need {config.frames} "
                f"frames at {config.fps:g} fps",
            )
            return []
        return [resize_and_center_crop(clip, config.height, config.width) for clip in clips]

    def _finish(self, pending: list[tuple[str, dict]]) -> Iterator:
        if self.embed_fn and pending:
            emb, mask = self.embed_fn([record["caption"] for _, record in pending])
            emb, mask = np.asarray(emb), np.asarray(mask).astype(bool)
            length, width = self._text_shapes
            if emb.shape != (len(pending), length, width) or mask.shape != (len(pending), length):
                raise ValueError(
                    f"embed_fn returned shapes {emb.shape} and {mask.shape}; expected "
                    f"{(len(pending), length, width)} and {(len(pending), length)}"
                )
            for (_, record), e, m in zip(pending, emb.astype(np.float32), mask):
                record["text_emb"], record["text_mask"] = e, m
        yield from pending

    def _skip(self, relpath: str, reason: str) -> None:
        log.warning("skipping %s: %s", relpath, reason)
        self.summary.skipped.append((relpath, reason))
        self.info.metadata["skipped"] = [list(s) for s in self.summary.skipped]

    def _record_caption_groups(self, split: str, captions: list[str]) -> None:
        """Store which records share a caption, so image frames can match a clip's caption."""
        unique = sorted(set(captions))
        ids = {caption: i for i, caption in enumerate(unique)}
        self.info.metadata[f"{split}_captions"] = unique
        self.info.metadata[f"{split}_caption_ids"] = [ids[c] for c in captions]


def _probe_embedding(embed_fn: EmbedFn) -> tuple[int, int]:
    """(tokens, width) of embed_fn's output for one caption."""
    emb, mask = embed_fn(["a probe caption"])
    emb, mask = np.asarray(emb), np.asarray(mask)
    if emb.ndim != 3 or mask.shape != emb.shape[:2]:
        raise ValueError(
            f"embed_fn must return (emb [n, L, D], mask [n, L]); got {emb.shape} and {mask.shape}"
        )
    return emb.shape[1], emb.shape[2]
