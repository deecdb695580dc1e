"""Grain pipelines: per-stage training pairs, joint image-video batches, sharded checkpointable
iterators, and evaluation clips.

A stage's example is made from one source clip at the stage's output shape (frames, height,
width, fps): the target ``video``, and for super-resolution stages its conditioning ``cond``
(what the previous stage makes): a TSR stage's is the target with every
``temporal_factor``-th frame, an SSR stage's the target box-downsampled by
``spatial_factor``. Stored clips may be longer, faster or larger than the stage needs: the
stage takes every k-th frame from a random start and downsamples space.

Joint image-video training (base and SSR stages): 'vdm' appends ``num_appended_images``
images to every clip (VDM), 'pack' replaces a share ``image_ratio`` of the clips with
clip-length packs of images (Imagen Video). Images always match their example's caption
subject (the same digit, photo, or caption), and ``frame_mask`` marks them True.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain.python as grain
import numpy as np

from imagen_video_jax.data import moving_digits, photo_motion
from imagen_video_jax.data.storage import ProceduralSource, open_prepared, shape_name
from imagen_video_jax.data.video_ops import (
    clip_start_range,
    conditioning_video,
    fit_clip,
    fit_frames,
)

DATASETS = ("moving_digits", "photo_motion", "video_folder")
SYNTHETIC = {"moving_digits": moving_digits, "photo_motion": photo_motion}
JOINT_MODES = ("none", "vdm", "pack")
TEXT_KEYS = ("text_emb", "text_mask")


@dataclasses.dataclass(frozen=True)
class StageShape:
    """What one cascade stage learns to make, read from ``config.stage``."""

    role: str
    frames: int
    height: int
    width: int
    fps: float
    temporal_factor: int = 1
    spatial_factor: int = 1

    @classmethod
    def from_config(cls, stage: Any) -> StageShape:
        return cls(
            role=stage.role,
            frames=int(stage.frames),
            height=int(stage.height),
            width=int(stage.width),
            fps=float(stage.fps),
            temporal_factor=int(stage.temporal_factor),
            spatial_factor=int(stage.spatial_factor),
        )


class SubjectIndex:
    """Which records share a caption subject (digit, photo or caption), to draw matching images."""

    def __init__(self, labels: np.ndarray):
        self.labels = np.asarray(labels, np.int64)
        order = np.argsort(self.labels, kind="stable")
        bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
        self.groups = {int(self.labels[g[0]]): g for g in np.split(order, bounds)}

    @classmethod
    def cyclic(cls, length: int, num_subjects: int) -> SubjectIndex:
        """Record ``i`` is about subject ``i % num_subjects``."""
        return cls(np.arange(length) % num_subjects)

    def sample(self, subject: int, count: int, rng: np.random.Generator) -> np.ndarray:
        group = self.groups.get(subject)
        if group is None:
            raise ValueError(
                f"no image records about subject {subject}: the image split is too small "
                "(raise data.num_images, or prepare more images)"
            )
        return group[rng.integers(len(group), size=count)]


class Records:
    """A source whose records are normalized: video, caption (str), fps, index (+ text)."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int) -> dict[str, Any]:
        record = self.source[key]
        caption = record["caption"]
        out = {
            "video": np.asarray(record["video"]),
            "caption": caption.decode() if isinstance(caption, bytes) else str(caption),
            "fps": float(record["fps"]),
            "index": np.int64(key),
        }
        out.update({k: np.asarray(record[k]) for k in TEXT_KEYS if k in record})
        return out

    def __repr__(self) -> str:
        return f"Records({self.source!r})"


@dataclasses.dataclass
class Sources:
    """The clips of one split and, for joint training, where matching images come from.

    Without an image split, images are single frames of clips with the same caption subject.
    """

    clips: Records
    clip_subjects: SubjectIndex
    images: Records | None
    image_subjects: SubjectIndex | None


def open_sources(config: Any, split: str, data_dir: str | None = None) -> Sources:
    """The clips of ``split`` of ``config.data.dataset``, made or read for ``config.stage``."""
    data = config.data
    stage = StageShape.from_config(config.stage)
    if data.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {data.dataset!r}; expected one of {list(DATASETS)}")
    if data.source not in ("procedural", "tfds"):
        raise ValueError(f"data.source must be 'procedural' or 'tfds', got {data.source!r}")
    if data.dataset == "video_folder":
        return _prepared_video_folder(data, split, data_dir)
    module = SYNTHETIC[data.dataset]
    if data.source == "procedural":
        spec = _render_spec(data, stage)
        clips = ProceduralSource(
            functools.partial(module.render, spec, split), _split_length(data, split)
        )
        images = ProceduralSource(functools.partial(module.render, spec, "images"), data.num_images)
    else:
        name = data.tfds_config or shape_name(stage.frames, stage.height, stage.width, stage.fps)
        clips, _ = open_prepared(data.dataset, name, split, data_dir or data.data_dir)
        images, _ = open_prepared(data.dataset, name, "images", data_dir or data.data_dir)
    return Sources(
        clips=Records(clips),
        clip_subjects=SubjectIndex.cyclic(len(clips), module.num_subjects(split)),
        images=Records(images),
        image_subjects=SubjectIndex.cyclic(len(images), module.num_subjects("images")),
    )


def _render_spec(data: Any, stage: StageShape):
    """The renderer's parameters: the stage's output shape plus the dataset's settings."""
    shape = {"frames": stage.frames, "height": stage.height, "width": stage.width, "fps": stage.fps}
    if data.dataset == "moving_digits":
        return moving_digits.MovingDigitsSpec(**shape, **data.moving_digits.to_dict())
    return photo_motion.PhotoMotionSpec(**shape, **data.photo_motion.to_dict())


def _split_length(data: Any, split: str) -> int:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return data.num_train_clips if split == "train" else data.num_test_clips


def _prepared_video_folder(data: Any, split: str, data_dir: str | None) -> Sources:
    if data.source != "tfds" or not data.tfds_config:
        raise ValueError(
            "video_folder is read from a prepared dataset: set data.source='tfds' and "
            "data.tfds_config to the name given to `imagen-video prepare video_folder`"
        )
    clips, metadata = open_prepared(
        "video_folder", data.tfds_config, split, data_dir or data.data_dir
    )
    labels = metadata.get(f"{split}_caption_ids", np.arange(len(clips)))
    return Sources(
        clips=Records(clips), clip_subjects=SubjectIndex(labels), images=None, image_subjects=None
    )


class StageExamples(grain.RandomMapTransform):
    """Source record -> one training example of a stage (target, conditioning, frame mask)."""

    def __init__(
        self,
        stage: StageShape,
        sources: Sources,
        joint: str,
        image_ratio: float,
        num_appended_images: int,
        crop: tuple[int, int] | None,
    ):
        self.stage = stage
        self.sources = sources
        self.joint = joint
        self.image_ratio = image_ratio
        self.num_appended_images = num_appended_images
        self.crop = crop

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        stage = self.stage
        caption = record["caption"]
        video = stage_target(record, stage, rng)
        images = 0
        subject = int(self.sources.clip_subjects.labels[record["index"]])
        if self.joint == "pack" and rng.random() < self.image_ratio:
            video, caption = self._images(subject, stage.frames, rng)
            images = stage.frames
        elif self.joint == "vdm" and self.num_appended_images:
            appended, _ = self._images(subject, self.num_appended_images, rng)
            video = np.concatenate([video, appended])
            images = self.num_appended_images
        if self.crop:
            video = _crop(video, self.crop, stage.spatial_factor, rng)
        example = {
            "video": video,
            "frame_mask": np.arange(len(video)) >= len(video) - images,
            "caption": caption,
            "index": record["index"],
        }
        if stage.role != "base":
            example["cond"] = conditioning_video(video, stage.temporal_factor, stage.spatial_factor)
        example.update({k: record[k] for k in TEXT_KEYS if k in record})
        return example

    def _images(self, subject: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``count`` images about ``subject`` at the stage's size, and their caption."""
        sources = self.sources
        if sources.images is None:
            keys = sources.clip_subjects.sample(subject, count, rng)
            records = [sources.clips[int(k)] for k in keys]
            frames = [r["video"][rng.integers(len(r["video"]))] for r in records]
        else:
            keys = sources.image_subjects.sample(subject, count, rng)
            records = [sources.images[int(k)] for k in keys]
            frames = [r["video"][0] for r in records]
        images = fit_frames(np.stack(frames), self.stage.height, self.stage.width)
        return images, records[0]["caption"]


def stage_target(
    record: dict[str, Any], stage: StageShape, rng: np.random.Generator | None
) -> np.ndarray:
    """The stage's target from a stored clip: a random start (the first when ``rng`` is None)."""
    video, fps = record["video"], record["fps"]
    starts = clip_start_range(len(video), fps, stage.frames, stage.fps)
    start = 0 if rng is None else int(rng.integers(starts))
    return fit_clip(video, fps, stage.frames, stage.height, stage.width, stage.fps, start)


def _crop(
    video: np.ndarray, crop: tuple[int, int], align: int, rng: np.random.Generator
) -> np.ndarray:
    """A random spatial crop at offsets that are multiples of ``align``."""
    height, width = crop
    top = align * int(rng.integers((video.shape[1] - height) // align + 1))
    left = align * int(rng.integers((video.shape[2] - width) // align + 1))
    return video[:, top : top + height, left : left + width]


def _check_data_config(
    data: Any, stage: StageShape, process_count: int
) -> tuple[int, tuple | None]:
    """Per-process batch size and crop, after checking the config; clear errors otherwise."""
    if data.joint not in JOINT_MODES:
        raise ValueError(f"data.joint must be one of {list(JOINT_MODES)}, got {data.joint!r}")
    if data.joint != "none" and stage.role == "tsr":
        raise ValueError(
            "joint image-video training needs a base or SSR stage: a TSR stage's input is "
            "the target's frames in time; set data.joint='none'"
        )
    if not 0.0 <= data.image_ratio <= 1.0:
        raise ValueError(f"data.image_ratio must be in [0, 1], got {data.image_ratio}")
    if data.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {data.batch_size} is not divisible by {process_count} processes"
        )
    crop = None
    if data.crop_height or data.crop_width:
        crop = (data.crop_height or stage.height, data.crop_width or stage.width)
        sf = stage.spatial_factor
        if crop[0] > stage.height or crop[1] > stage.width or crop[0] % sf or crop[1] % sf:
            raise ValueError(
                f"crop {crop[0]}x{crop[1]} must fit in {stage.height}x{stage.width} and be "
                f"divisible by the spatial factor {sf}"
            )
    return data.batch_size // process_count, crop


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def make_train_iterator(
    config: Any,
    *,
    data_dir: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    seed: int | None = None,
):
    """This process's share of every global training batch of ``config.stage``, forever.

    ``next()`` gives a dict of numpy arrays, b = config.data.batch_size / process_count:
    'video' uint8 [b, T, H, W, 3], 'cond' uint8 [b, T/tf, H/sf, W/sf, 3] (SR stages),
    'frame_mask' bool [b, T] (True = image frame), 'caption' str [b], 'index' int64 [b] (the
    record each example came from), and 'text_emb' / 'text_mask' when the records carry them.
    Each process reads only its shard of the records. The iterator has grain's
    ``get_state()`` / ``set_state()`` for checkpoints.
    """
    data = config.data
    stage = StageShape.from_config(config.stage)
    process_index, process_count = _process_layout(process_index, process_count)
    per_process, crop = _check_data_config(data, stage, process_count)
    sources = open_sources(config, "train", data_dir)
    shard = grain.ShardOptions(process_index, process_count, drop_remainder=True)
    sampler = grain.IndexSampler(
        num_records=len(sources.clips),
        shard_options=shard,
        shuffle=data.shuffle,
        num_epochs=None,
        seed=int(data.seed if seed is None else seed),
    )
    if data.num_workers:
        _allow_grain_workers()
    examples = StageExamples(
        stage, sources, data.joint, data.image_ratio, data.num_appended_images, crop
    )
    loader = grain.DataLoader(
        data_source=sources.clips,
        sampler=sampler,
        operations=[examples, grain.Batch(per_process, drop_remainder=True)],
        worker_count=data.num_workers,
        worker_buffer_size=data.prefetch,
        shard_options=shard,
        read_options=grain.ReadOptions(
            num_threads=data.read_threads, prefetch_buffer_size=per_process
        ),
    )
    return iter(loader)


def _allow_grain_workers() -> None:
    """Mark absl flags parsed (keeping their defaults) if the program has not parsed them.

    grain 0.2's worker start-up reads an absl flag, which fails in programs not started
    through absl.app (google/grain#1355).
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class EvalSource:
    """Real clips of a split at a stage's output shape, with captions, for evaluation.

    ``source[i]`` is ``{'video': uint8 [T, H, W, 3], 'caption': str, 'fps': float}``; the
    same clip every time (first frames of a stored clip).
    """

    def __init__(self, clips: Records, stage: StageShape):
        self.clips = clips
        self.stage = stage

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.clips[index]
        return {
            "video": stage_target(record, self.stage, None),
            "caption": record["caption"],
            "fps": self.stage.fps,
        }

    def batch(self, indices) -> dict[str, np.ndarray]:
        """Clips ``indices`` stacked: 'video' [n, T, H, W, 3] and 'caption' [n]."""
        items = [self[int(i)] for i in indices]
        return {
            "video": np.stack([item["video"] for item in items]),
            "caption": np.array([item["caption"] for item in items]),
        }


def make_eval_source(
    config: Any, split: str = "test", *, data_dir: str | None = None
) -> EvalSource:
    """Clips of ``split`` of ``config.data.dataset`` at ``config.stage``'s output shape."""
    return EvalSource(
        open_sources(config, split, data_dir).clips, StageShape.from_config(config.stage)
    )
