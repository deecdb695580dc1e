"""Small single-host training of the T-KLVAE (image phase, then video phase) and of the MTD
model, for the bundled data; AdamW with warm-up and clipping as in imagen_video_jax.train.

The MTD step uses :func:`~imagen_video_jax.long_video.mtd.mtd_loss`, the diffusion loss over the
unknown frames with the known frames and their mask as model inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from imagen_video_jax.long_video.data import MTDExamples, to_float
from imagen_video_jax.long_video.mtd import mtd_loss
from imagen_video_jax.models.tklvae import TKLVAE, vae_loss
from imagen_video_jax.models.unet import VideoUNet
from imagen_video_jax.train.objective import diffusion_schedule
from imagen_video_jax.train.optimizer import global_norm, make_optimizer
from imagen_video_jax.train.state import TrainState, create_train_state, ema_decay_at, update_ema

Log = Callable[[dict[str, float]], None]
LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def optimizer_settings(learning_rate: float, steps: int, warmup: int) -> dict[str, Any]:
    """An imagen_video_jax.train optimizer config: AdamW, cosine decay, clipping at 1."""
    return {
        "learning_rate": learning_rate,
        "lr_schedule": "cosine",
        "warmup_steps": warmup,
        "num_steps": steps,
        "end_lr_factor": 0.1,
        "adam_b1": 0.9,
        "adam_b2": 0.99,
        "adam_eps": 1e-8,
        "weight_decay": 0.0,
        "grad_clip_norm": 1.0,
    }


def initial_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A step-0 train state built by one jitted call (every leaf its own buffer, as donation
    needs)."""
    init = jax.jit(lambda params, key: create_train_state(params, tx, key))
    return init(nn.meta.unbox(params), jax.random.key(seed))


def make_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, ema_decay: float
) -> Callable[[TrainState, dict], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted step (state donated): gradient of ``loss_fn(params, batch, key)``, AdamW, EMA."""

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = update_ema(state.ema_params, params, ema_decay_at(state.step, ema_decay))
        state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
        )
        return state, {"loss": loss, "grad_norm": global_norm(grads), **metrics}

    return jax.jit(step, donate_argnums=(0,))


def run_steps(
    step: Callable,
    state: TrainState,
    batches: Callable[[], dict],
    steps: int,
    log: Log | None,
    log_every: int,
    name: str,
) -> TrainState:
    """``steps`` steps on ``batches()``; metrics averaged over each ``log_every`` steps."""
    window: list[dict[str, float]] = []
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batches())
        window.append(metrics)
        if log is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
            means = {k: float(np.mean([float(m[k]) for m in window])) for k in window[0]}
            elapsed = time.perf_counter() - start
            log({"phase": name, "step": i + 1, **means, "seconds": round(elapsed, 2)})
            window = []
    return state


def train_vae(
    vae: TKLVAE,
    clips: Callable[[], np.ndarray],
    settings: Mapping[str, Any],
    steps: int,
    *,
    init_params: Any = None,
    seed: int = 0,
    log: Log | None = None,
    name: str = "vae",
) -> Any:
    """Train ``vae`` on uint8 clips from ``clips()`` for ``steps`` steps; returns EMA params.

    ``settings``: learning_rate, warmup_steps, kl_weight, ema_decay, log_every (config.vae_train).
    ``init_params`` (e.g. inflated image-VAE params) replaces the fresh initialisation.
    """
    params = init_params
    if params is None:
        first = to_float(clips())
        params = jax.jit(lambda key: vae.init(key, first)["params"])(jax.random.key(seed))
    kl_weight = float(settings["kl_weight"])

    def loss_fn(params, batch, key):
        recon, mean, logvar = vae.apply({"params": params}, batch, key)
        return vae_loss(batch, recon, mean, logvar, kl_weight)

    tx = make_optimizer(
        optimizer_settings(float(settings["learning_rate"]), steps, int(settings["warmup_steps"]))
    )
    state = initial_state(params, tx, seed + 1)
    step = make_step(loss_fn, tx, float(settings["ema_decay"]))
    state = run_steps(
        step, state, lambda: to_float(clips()), steps, log, int(settings["log_every"]), name
    )
    return state.ema_params


def train_mtd(
    model: VideoUNet,
    examples: MTDExamples,
    config: Mapping[str, Any],
    *,
    seed: int = 0,
    log: Log | None = None,
) -> Any:
    """Train the MTD model on ``examples`` with ``config.mtd_train`` and ``config.diffusion``;
    returns the EMA params."""
    settings, diffusion = config["mtd_train"], config["diffusion"]
    schedule = diffusion_schedule(diffusion)
    prediction, drop = str(diffusion["prediction"]), float(diffusion["text_drop_prob"])
    batch_size, steps = int(settings["batch_size"]), int(settings["num_steps"])
    first = examples.batch(1)
    mask = first["known_mask"]
    text_inputs = {k: first[k] for k in ("text", "text_mask") if k in first}
    init = jax.jit(
        lambda key: model.init(
            key,
            first["video"],
            np.zeros((1,), np.float32),
            known=first["video"] * mask[:, :, None, None, None],
            known_mask=mask,
            **text_inputs,
        )["params"]
    )
    params = init(jax.random.key(seed))

    def loss_fn(params, batch, key):
        options = {"prediction": prediction, "schedule": schedule, "text_drop_prob": drop}
        loss = mtd_loss(model.apply, params, batch, key, **options)
        return loss, {}

    tx = make_optimizer(
        optimizer_settings(float(settings["learning_rate"]), steps, int(settings["warmup_steps"]))
    )
    state = initial_state(params, tx, seed + 1)
    step = make_step(loss_fn, tx, float(settings["ema_decay"]))
    state = run_steps(
        step,
        state,
        lambda: examples.batch(batch_size),
        steps,
        log,
        int(settings["log_every"]),
        "mtd",
    )
    return state.ema_params
