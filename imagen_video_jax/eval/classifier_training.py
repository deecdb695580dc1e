"""Training the moving_digits caption classifier on rendered clips.

Training clips come from the 'train' split of the moving-digits renderer and held-out clips
from the 'test' split, whose source scans are disjoint. Clips are rendered at several sizes
(by default the mini cascade's base 4x16x16 and two larger ones) so that the classifier,
which resizes every input to its own size, judges all stages alike. Brightness gain and pixel
noise are randomized in training so that generated samples, which are never exactly clean, are
still read; random translations keep the classifier from learning where a scan tends to sit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.eval.caption_classifier import (
    CaptionClassifier,
    ClassifierConfig,
    TrainedClassifier,
    classifier_inputs,
)

# (frames, height, width, fps) of the rendered clips: about one second of motion each.
DEFAULT_RENDER_SHAPES = ((4, 16, 16, 3.0), (8, 32, 32, 6.0), (16, 64, 64, 12.0))


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How the caption classifier is trained."""

    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    clips_per_shape: int = 20000  # rendered once from the train split, reused every epoch
    eval_clips_per_shape: int = 2000  # from the test split
    render_shapes: tuple[tuple[int, int, int, float], ...] = DEFAULT_RENDER_SHAPES
    bounce_prob: float = 0.0  # as in the dataset the cascade is trained on
    max_noise: float = 0.1  # std of added pixel noise, in [-1, 1] units, drawn per clip
    max_shift: int = 2  # random translation of each clip, in classifier input pixels
    seed: int = 0


def render_labelled_clips(
    spec: MovingDigitsSpec, split: str, count: int, start: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` one-digit clips of ``split``: uint8 videos, digit labels, motion labels."""
    one_digit = dataclasses.replace(spec, two_digit_prob=0.0)
    records = [render_clip(one_digit, split, index) for index in range(start, start + count)]
    videos = np.stack([r["video"] for r in records])
    digits = np.array([r["digits"][0] for r in records])
    motions = np.array([r["motions"][0] for r in records])
    return videos, digits, motions


def _spec(shape: tuple[int, int, int, float], settings: TrainingSettings) -> MovingDigitsSpec:
    frames, height, width, fps = shape
    return MovingDigitsSpec(
        frames=frames,
        height=height,
        width=width,
        fps=fps,
        bounce_prob=settings.bounce_prob,
        seed=settings.seed,
    )


def prepared_clips(
    spec: MovingDigitsSpec, split: str, count: int, config: ClassifierConfig, chunk: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rendered clips already brought to the classifier's input (a few KB each), with labels."""
    inputs, digits, motions = [], [], []
    for start in range(0, count, chunk):
        videos, chunk_digits, chunk_motions = render_labelled_clips(
            spec, split, min(chunk, count - start), start
        )
        inputs.append(np.asarray(classifier_inputs(videos, config.frames, config.size)))
        digits.append(chunk_digits)
        motions.append(chunk_motions)
    return np.concatenate(inputs), np.concatenate(digits), np.concatenate(motions)


def _augment(key: jax.Array, inputs: jax.Array, max_noise: float, max_shift: int) -> jax.Array:
    """Random translation, brightness gain and Gaussian pixel noise, per clip."""
    shift_key, gain_key, std_key, noise_key = jax.random.split(key, 4)
    batch = (inputs.shape[0],) + (1,) * (inputs.ndim - 1)
    gain = jax.random.uniform(gain_key, batch, minval=0.7, maxval=1.3)
    std = jax.random.uniform(std_key, batch, maxval=max_noise)
    brightened = (_translate(shift_key, inputs, max_shift) + 1.0) * gain - 1.0
    return brightened + std * jax.random.normal(noise_key, inputs.shape)


def _translate(key: jax.Array, inputs: jax.Array, max_shift: int) -> jax.Array:
    """Shift each clip ``[T, H, W, C]`` by up to ``max_shift`` pixels, filling with black."""
    m = max_shift
    padded = jnp.pad(inputs, ((0, 0), (0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (inputs.shape[0], 2), 0, 2 * m + 1)
    window = inputs.shape[1:]

    def crop(clip, offset):
        return jax.lax.dynamic_slice(clip, (0, offset[0], offset[1], 0), window)

    return jax.vmap(crop)(padded, offsets)


def _train_step_fn(model: CaptionClassifier, optimizer, settings: TrainingSettings):
    def loss_fn(params, key, inputs, digits, motions):
        augment_key, frame_key = jax.random.split(key)
        augmented = _augment(augment_key, inputs, settings.max_noise, settings.max_shift)
        # The digit branch learns from one random frame per clip: the same cost as one image.
        picks = jax.random.randint(frame_key, (len(inputs), 1, 1, 1, 1), 0, inputs.shape[1])
        one_frame = jnp.take_along_axis(augmented, picks, axis=1)
        variables = {"params": params}
        digit_logits = model.apply(variables, one_frame, method=CaptionClassifier.digit_logits)
        motion_logits = model.apply(variables, augmented, method=CaptionClassifier.motion_logits)
        digit_loss = optax.softmax_cross_entropy_with_integer_labels(digit_logits, digits)
        motion_loss = optax.softmax_cross_entropy_with_integer_labels(motion_logits, motions)
        return (digit_loss + motion_loss).mean()

    @jax.jit
    def train_step(params, opt_state, key, inputs, digits, motions):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, inputs, digits, motions)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def held_out_accuracy(
    classifier: TrainedClassifier,
    settings: TrainingSettings,
    shapes: Sequence[tuple[int, int, int, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Digit, motion and joint accuracy on test-split clips, per rendered shape."""
    results = {}
    for shape in shapes or settings.render_shapes:
        videos, digits, motions = render_labelled_clips(
            _spec(shape, settings), "test", settings.eval_clips_per_shape
        )
        predicted_digits, predicted_motions = classifier.predict(videos)
        name = "{}x{}x{}".format(*shape[:3])
        digit_right, motion_right = predicted_digits == digits, predicted_motions == motions
        results[name] = {
            "digit": float(np.mean(digit_right)),
            "motion": float(np.mean(motion_right)),
            "caption": float(np.mean(digit_right & motion_right)),
        }
    return results


def train_classifier(
    settings: TrainingSettings | None = None,
    config: ClassifierConfig | None = None,
    log: Callable[[str], None] = print,
) -> TrainedClassifier:
    """Render training clips, train the classifier, return it (evaluate with held_out_accuracy)."""
    settings, config = settings or TrainingSettings(), config or ClassifierConfig()
    started = time.time()
    parts = [
        prepared_clips(_spec(shape, settings), "train", settings.clips_per_shape, config)
        for shape in settings.render_shapes
    ]
    inputs, digits, motions = (np.concatenate(arrays) for arrays in zip(*parts))
    log(f"rendered {len(inputs)} clips in {time.time() - started:.0f}s")
    model = CaptionClassifier(config)
    key = jax.random.key(settings.seed)
    init_key, key = jax.random.split(key)
    dummy = jnp.zeros((1, config.frames, config.size, config.size, 1))
    params = model.init(init_key, dummy)["params"]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, min(100, settings.steps // 10), settings.steps
    )
    optimizer = optax.adamw(schedule, weight_decay=settings.weight_decay)
    opt_state = optimizer.init(params)
    train_step = _train_step_fn(model, optimizer, settings)
    rng = np.random.default_rng(settings.seed)
    for step in range(settings.steps):
        picks = rng.integers(0, len(inputs), settings.batch_size)
        key, step_key = jax.random.split(key)
        params, opt_state, loss = train_step(
            params, opt_state, step_key, inputs[picks], digits[picks], motions[picks]
        )
        if step % 200 == 0 or step == settings.steps - 1:
            log(f"step {step} loss {float(loss):.4f} ({time.time() - started:.0f}s)")
    return TrainedClassifier(config, jax.device_get(params))
