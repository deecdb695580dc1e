"""AdamW with linear warm-up, a cosine or constant schedule and global-norm clipping."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import optax

LR_SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(train: Mapping) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate``, then constant or cosine decay to
    ``end_lr_factor * learning_rate`` at ``num_steps``."""
    kind = train["lr_schedule"]
    if kind not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule {kind!r} is not one of {LR_SCHEDULES}")
    peak, warmup = float(train["learning_rate"]), int(train["warmup_steps"])
    if kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(
            peak, max(int(train["num_steps"]) - warmup, 1), alpha=float(train["end_lr_factor"])
        )
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _kernels_only(params):
    """Weight decay applies to kernels and embeddings (ndim >= 2), not to biases and norms."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(train: Mapping) -> optax.GradientTransformation:
    """The optimizer of ``config.train``: [clip by global norm] -> AdamW on the schedule."""
    adamw = optax.adamw(
        learning_rate_schedule(train),
        b1=float(train["adam_b1"]),
        b2=float(train["adam_b2"]),
        eps=float(train["adam_eps"]),
        weight_decay=float(train["weight_decay"]),
        mask=_kernels_only,
    )
    clip = float(train["grad_clip_norm"])
    if clip > 0:
        return optax.chain(optax.clip_by_global_norm(clip), adamw)
    return adamw
