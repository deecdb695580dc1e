"""Evaluating a text-to-video cascade on moving_digits, stage by stage.

Prompts are the captions of held-out clips (the 'test' split, whose digit scans no model was
trained on): one digit moving in one of the eight straight directions. Sample ``i`` shows
digit ``i % 10`` moving in direction ``(i % 8 + (i // 40) % 2) % 8``, so any 80 consecutive
samples hold each (digit, direction) pair once and the first 8 already show 8 digits in all 8
directions. Sample ``i`` is drawn with seed ``seed + i``.

For the output of every stage the evaluation reports, beside each other:

- the cascade's samples: caption accuracy (the bundled caption classifier reads the digit and
  the direction; both must match the prompt), FVD and KVD against held-out real clips with
  the same captions at the stage's frames x height x width and frame rate, and wall seconds
  per sample after compilation (compile time separately);
- real clips: caption accuracy of those held-out clips with their own captions, and FVD/KVD
  between them and a second, disjoint set of held-out clips with the same captions;
- noise: uniform random uint8 videos of the stage's shape, scored the same way.

I3D needs clips of at least :data:`~imagen_video_jax.eval.i3d.MIN_FRAMES` frames; shorter
stage outputs (the mini base stage has 4) are stretched by repeating every frame (each
stage's ``i3d_frames`` says to how many), for real clips, samples and noise alike. I3D
features of the real sets are cached (:func:`~imagen_video_jax.eval.distances.reference_features`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from imagen_video_jax.data.captions import DIRECTIONS, digits_caption
from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.eval import distances
from imagen_video_jax.eval.caption_classifier import (
    TrainedClassifier,
    load_classifier,
    prompt_labels,
)
from imagen_video_jax.eval.i3d import stretch_short_clips
from imagen_video_jax.stages import STAGE_ORDER

if TYPE_CHECKING:
    from imagen_video_jax.models.text_cache import EmbeddingCache

DATASETS = ("moving_digits",)
PAIRS = 10 * len(DIRECTIONS)  # (digit, direction) pairs of one-digit straight-line clips
SPLIT = "test"
# Fields of the base stage's data.moving_digits config that shape the real clips.
_RENDER_FIELDS = ("speed", "digit_scale", "seed")

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- prompts


def held_out_indices(count: int, start: int = 0) -> np.ndarray:
    """Test-split clip indices of samples ``start .. start + count - 1``.

    Clip ``j`` of the renderer shows digit ``j % 10`` moving in direction ``(j // 10) % 8``;
    sample ``i`` takes the clip of its (digit, direction) pair in its own block of 80 clips.
    """
    i = np.arange(start, start + count)
    direction = (i % 8 + (i // 40) % 2) % 8
    return i % 10 + 10 * direction + PAIRS * (i // PAIRS)


def held_out_prompts(count: int) -> list[str]:
    """The captions of the first ``count`` evaluation samples (see :func:`held_out_indices`)."""
    indices = held_out_indices(count)
    return [digits_caption([(int(j % 10), DIRECTIONS[(j // 10) % 8])]) for j in indices]


def second_set_start(count: int) -> int:
    """First sample of the disjoint real set with the same captions: the next whole block."""
    return PAIRS * math.ceil(count / PAIRS)


# ----------------------------------------------------------------------------- real clips


def render_spec(stage_config: Mapping[str, Any], spec: Any) -> MovingDigitsSpec:
    """One-digit straight-line clips at ``spec``'s shape and frame rate, with the speed, digit
    size and data seed of ``stage_config`` (the base stage's, which the prompts are about)."""
    settings = stage_config.get("data", {}).get("moving_digits", {})
    kept = {key: settings[key] for key in _RENDER_FIELDS if key in settings}
    return MovingDigitsSpec(
        frames=spec.frames,
        height=spec.height,
        width=spec.width,
        fps=spec.fps,
        two_digit_prob=0.0,
        bounce_prob=0.0,
        **kept,
    )


def render_real_clips(spec: MovingDigitsSpec, indices: Sequence[int]) -> tuple[np.ndarray, list]:
    """uint8 videos ``[N, T, H, W, 3]`` and captions of the test-split clips ``indices``."""
    records = [render_clip(spec, SPLIT, int(index)) for index in indices]
    return np.stack([r["video"] for r in records]), [r["caption"] for r in records]


def reference_name(dataset: str, spec: MovingDigitsSpec, which: str) -> str:
    """Cache name of a real set: the dataset, a digest of the renderer settings, the set."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(spec)).encode()).hexdigest()[:10]
    return f"{dataset}-{SPLIT}-{which}-{digest}"


def i3d_frames(frames: int) -> int:
    """How many frames I3D sees of a clip with ``frames`` frames (short clips are stretched)."""
    return stretch_short_clips(np.zeros((0, frames, 1, 1, 3), np.uint8)).shape[1]


# ----------------------------------------------------------------------------- text cache


class CachedTextEncoder:
    """A frozen text encoder answered from an embedding cache (``models.text_cache``): prompts
    are looked up, so sampling needs neither the encoder's weights nor its compute."""

    def __init__(self, cache: EmbeddingCache):
        self.cache = cache
        self.name = cache.encoder_name
        self.max_length = cache.max_length
        self.dim = int(cache.embeddings.shape[-1])

    def tokenize(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Placeholder ids and the cached mask ``[B, max_length]``."""
        _, mask = self.cache.lookup(texts)
        return np.zeros(mask.shape, np.int32), mask

    def encode(self, texts: str | Sequence[str]) -> tuple[jnp.ndarray, jnp.ndarray]:
        embeddings, mask = self.cache.lookup(texts)
        return jnp.asarray(embeddings), jnp.asarray(mask)


def with_text_cache(cascade: Any, path: str | Path, prompts: Sequence[str]) -> Any:
    """The same stages with a :class:`CachedTextEncoder` reading ``path``; checks that the
    cache was made by the stages' text encoder and holds every prompt."""
    from imagen_video_jax.cascade import Cascade
    from imagen_video_jax.models.text_cache import load_embedding_cache

    cache = load_embedding_cache(path)
    for stage in cascade.stages.values():
        encoder = stage.config.get("text_encoder", {})
        wanted = (encoder.get("name"), encoder.get("max_length"))
        if stage.uses_text and wanted != (cache.encoder_name, cache.max_length):
            raise ValueError(
                f"text cache {path} holds embeddings of {cache.encoder_name!r} at max_length "
                f"{cache.max_length}; stage {stage.name!r} takes {wanted[0]!r} at {wanted[1]}"
            )
    missing = sorted({prompt for prompt in prompts if prompt not in cache})
    if missing:
        raise ValueError(
            f"text cache {path} lacks {len(missing)} evaluation prompt(s), e.g. {missing[0]!r}; "
            "make it with `imagen-video embed --config <stage config> --set "
            "data.moving_digits.two_digit_prob=0 --out PATH` (every one-digit caption)"
        )
    return Cascade(list(cascade.stages.values()), text_encoder=CachedTextEncoder(cache))


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass
class StageTiming:
    """Wall seconds of one stage: the first batch (compiling) and the batches after it."""

    first: float = 0.0
    steady: list[float] = dataclasses.field(default_factory=list)

    def seconds_per_sample(self, batch_size: int) -> float:
        return float(np.mean(self.steady)) / batch_size

    def compile_seconds(self) -> float:
        return max(0.0, self.first - float(np.mean(self.steady)))


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sample_stages(
    cascade: Any,
    stage_names: Sequence[str],
    prompts: Sequence[str],
    *,
    batch_size: int,
    seed: int,
    options: Mapping[str, Mapping[str, Any]],
    log: Log,
    cond: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, StageTiming]]:
    """Every stage's uint8 videos of the prompts (prompt ``i`` with seed ``seed + i``) and its
    timing; the first stage starts from ``cond`` (one input video a prompt) when given. Batches
    are padded to ``batch_size`` so no stage compiles twice; the first batch pays the
    compilation, and with a single batch it is run again to time it compiled."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in stage_names}
    timings = {name: StageTiming() for name in stage_names}
    starts = range(0, len(prompts), batch_size)
    for number, start in enumerate(starts):
        chunk = list(prompts[start : start + batch_size])
        pad = batch_size - len(chunk)
        seeds = [seed + start + i for i in range(len(chunk))] + [seed] * pad
        batch_prompts = chunk + [chunk[-1]] * pad
        video = None if cond is None else cond[start : start + batch_size]
        if video is not None and pad:
            video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
        seconds = []
        for name in stage_names:
            run = functools.partial(
                cascade.sample_stage, name, batch_prompts, cond=video, seed=seeds, **options[name]
            )
            video, elapsed = _timed(run)
            if number == 0:
                timings[name].first = elapsed
                if len(starts) == 1:
                    timings[name].steady.append(_timed(run)[1])
            else:
                timings[name].steady.append(elapsed)
            outputs[name].append(video[: len(chunk)])
            seconds.append(f"{name} {elapsed:.2f} s")
        log(f"batch {number + 1}/{len(starts)} ({len(chunk)} samples): " + ", ".join(seconds))
    return {name: np.concatenate(videos) for name, videos in outputs.items()}, timings


# ----------------------------------------------------------------------------- scores


def caption_scores(
    classifier: TrainedClassifier, videos: np.ndarray, prompts: Sequence[str]
) -> dict[str, float]:
    """Caption accuracy (digit and direction both right) and the digit and motion shares."""
    digits, motions = prompt_labels(prompts)
    predicted_digits, predicted_motions = classifier.predict(videos)
    digit_right, motion_right = predicted_digits == digits, predicted_motions == motions
    return {
        "caption_accuracy": float(np.mean(digit_right & motion_right)),
        "digit_accuracy": float(np.mean(digit_right)),
        "motion_accuracy": float(np.mean(motion_right)),
    }


def feature_distances(real: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """FVD and KVD between two I3D feature sets."""
    return {
        "fvd": distances.frechet_distance_of_features(real, other),
        "kvd": distances.kernel_distance(real, other),
    }


def stage_scores(
    spec: Any,
    samples: np.ndarray,
    prompts: Sequence[str],
    *,
    render: MovingDigitsSpec,
    dataset: str,
    classifier: TrainedClassifier,
    fvd: bool,
    seed: int,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    """Scores of one stage's samples and of the real-clip and noise baselines at its shape."""
    count = len(prompts)
    real, real_captions = render_real_clips(render, held_out_indices(count))
    noise = np.random.default_rng(seed).integers(0, 256, samples.shape, dtype=np.uint8)
    scores = {
        "samples": caption_scores(classifier, samples, prompts),
        "real": caption_scores(classifier, real, real_captions),
        "noise": caption_scores(classifier, noise, prompts),
    }
    for part in scores.values():
        part.update(fvd=None, kvd=None)
    if fvd:
        shape = (spec.frames, spec.height, spec.width)
        second = held_out_indices(count, second_set_start(count))

        def reference(which: str, make: Callable[[], np.ndarray]) -> np.ndarray:
            name = reference_name(dataset, render, which)
            return distances.reference_features(name, count, shape, make, cache_dir)

        real_features = reference("a", lambda: real)
        second_features = reference("b", lambda: render_real_clips(render, second)[0])
        scores["samples"].update(feature_distances(real_features, distances.i3d_features(samples)))
        scores["real"].update(feature_distances(real_features, second_features))
        scores["noise"].update(feature_distances(real_features, distances.i3d_features(noise)))
    return scores


# ----------------------------------------------------------------------------- the evaluation


def check_settings(
    *, num_samples: int, batch_size: int, seed: int, dataset: str, fvd: bool
) -> None:
    """One clear ValueError for a setting the evaluation cannot use."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    for name, value, least in (("num_samples", num_samples, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an int >= {least}; got {value!r}")
    if fvd and num_samples < 2:
        raise ValueError(
            f"FVD and KVD need num_samples >= 2 (got {num_samples}); or evaluate without FVD"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")


def _for_stages(value: Any, names: Sequence[str]) -> Any:
    """A ``{stage: value}`` mapping without the cascade stages after the last one evaluated
    (so one setting serves any ``stop_after``); other values unchanged."""
    if not isinstance(value, Mapping):
        return value
    return {k: v for k, v in value.items() if k in names or k not in STAGE_ORDER}


def _stderr_log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def evaluate_cascade(
    cascade: Any,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    stop_after: str | None = None,
    dataset: str = "moving_digits",
    fvd: bool = True,
    num_steps: Any = None,
    guidance_weight: Any = None,
    sampler: Any = None,
    text_cache: str | Path | None = None,
    classifier: TrainedClassifier | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Caption accuracy, FVD, KVD and sampling time of every stage's output, with baselines.

    Returns ``{stage: scores}`` in sampling order (through ``stop_after``). ``scores`` holds
    ``shape`` [frames, height, width], ``fps``, ``caption_accuracy`` (with
    ``digit_accuracy`` and ``motion_accuracy``), ``fvd`` and ``kvd`` (None with
    ``fvd=False``), ``seconds_per_sample`` (wall time from the prompt through this stage, per
    video at ``batch_size``, compiled), ``stage_seconds_per_sample`` (this stage alone),
    ``compile_seconds`` (this stage's first call beyond a compiled one), ``i3d_frames``, and
    ``real`` and ``noise``: the same accuracies and distances of held-out real clips (FVD
    against a second, disjoint held-out set) and of uniform noise videos.

    ``num_steps``, ``guidance_weight`` and ``sampler``: one value or ``{stage: value}``, as
    ``Cascade.sample`` takes them. ``text_cache``: an embedding cache (.npz of
    ``imagen-video embed``) that replaces the text encoder. ``classifier``: default the bundled
    caption classifier. ``cache_dir``: where the real sets' I3D features are cached.
    """
    check_settings(
        num_samples=num_samples, batch_size=batch_size, seed=seed, dataset=dataset, fvd=fvd
    )
    log = _stderr_log if progress else (lambda message: None)
    from imagen_video_jax.cascade.specs import per_stage

    stages = cascade.stages_until(stop_after)
    names = [stage.name for stage in stages]
    prompts = held_out_prompts(num_samples)
    if text_cache is not None:
        cascade = with_text_cache(cascade, text_cache, prompts)
    given = {"num_steps": num_steps, "guidance_weight": guidance_weight, "sampler": sampler}
    overrides = {key: per_stage(_for_stages(v, names), names, key) for key, v in given.items()}
    options = {name: {key: value[name] for key, value in overrides.items()} for name in names}
    classifier = classifier or load_classifier()
    batch_size = min(batch_size, num_samples)
    log(f"sampling {num_samples} prompts through {', '.join(names)}, {batch_size} at a time")
    videos, timings = sample_stages(
        cascade, names, prompts, batch_size=batch_size, seed=seed, options=options, log=log
    )
    results = {}
    elapsed = 0.0
    for stage in stages:
        spec, timing = stage.spec, timings[stage.name]
        scores = stage_scores(
            spec,
            videos.pop(stage.name),
            prompts,
            render=render_spec(stages[0].config, spec),
            dataset=dataset,
            classifier=classifier,
            fvd=fvd,
            seed=seed,
            cache_dir=cache_dir,
        )
        stage_seconds = timing.seconds_per_sample(batch_size)
        elapsed += stage_seconds
        results[stage.name] = {
            "shape": [spec.frames, spec.height, spec.width],
            "fps": float(spec.fps),
            **scores["samples"],
            "seconds_per_sample": elapsed,
            "stage_seconds_per_sample": stage_seconds,
            "compile_seconds": timing.compile_seconds(),
            "i3d_frames": i3d_frames(spec.frames),
            "real": scores["real"],
            "noise": scores["noise"],
        }
        log(f"{stage.name}: {summary(results[stage.name])}")
    return results


def format_number(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` decimals for a table; "-" for a score not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def _kvd(value: float | None) -> str:
    """KVD to 4 significant digits (its scale varies by orders of magnitude)."""
    return "-" if value is None else f"{value:.4g}"


def summary(scores: Mapping[str, Any]) -> str:
    """One line of a stage's scores beside its baselines."""
    parts = []
    for label, part in (("samples", scores), ("real", scores["real"]), ("noise", scores["noise"])):
        parts.append(
            f"{label} caption {part['caption_accuracy']:.3f} "
            f"FVD {format_number(part['fvd'], 1)} KVD {_kvd(part['kvd'])}"
        )
    return "; ".join(parts)


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The scores as a markdown table: each stage's samples, then real clips and noise."""
    lines = [
        "| stage | shape (frames x H x W @ fps) | caption acc | FVD | KVD | s/sample | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, scores in results.items():
        frames, height, width = scores["shape"]
        shape = f"{frames} x {height} x {width} @ {scores['fps']:g}"
        rows = (
            (name, scores, format_number(scores["seconds_per_sample"], 4)),
            (f"{name}: real clips", scores["real"], "-"),
            (f"{name}: uniform noise", scores["noise"], "-"),
        )
        for label, part, seconds in rows:
            compile_seconds = format_number(scores["compile_seconds"], 1) if part is scores else "-"
            lines.append(
                f"| {label} | {shape} | {100 * part['caption_accuracy']:.1f} % | "
                f"{format_number(part['fvd'], 1)} | {_kvd(part['kvd'])} | {seconds} | "
                f"{compile_seconds} |"
            )
    stretched = [
        f"{name} {s['shape'][0]} -> {s['i3d_frames']}"
        for name, s in results.items()
        if s["i3d_frames"] != s["shape"][0]
    ]
    notes = [
        "",
        "Caption acc: the caption classifier reads digit and direction, both must match the "
        "prompt. FVD/KVD: I3D (Kinetics-400) features at 224 x 224 against held-out real clips "
        "with the same captions; real clips: a second, disjoint held-out set against the first; "
        "uniform noise: random videos. s/sample: wall seconds per video from the prompt through "
        "the stage, after compilation.",
    ]
    if stretched:
        notes.append(
            "Clips shorter than I3D's minimum are stretched by repeating each frame "
            f"(frames: {', '.join(stretched)})."
        )
    return "\n".join(lines + notes) + "\n"
