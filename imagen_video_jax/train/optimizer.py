"""AdamW with linear warm-up, a cosine or constant schedule, global-norm clipping and
per-module learning-rate multipliers."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ("cosine", "constant")
# Leaves of at most this many values have their squares summed as one vector by global_norm.
SMALL_LEAF_SIZE = 65536


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


def global_norm(tree) -> jax.Array:
    """The L2 norm of all values of ``tree`` (float32), as ``optax.tree.norm``, with the
    leaves of at most ``SMALL_LEAF_SIZE`` values concatenated and reduced as one vector.

    On a GPU every leaf's sum of squares is a kernel of its own. A U-Net's hundreds of biases
    and norm scales each take a launch and its latency for a few thousand values; the
    concatenation reads them all in a few kernels.
    """
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
    small = [x for x in leaves if x.size <= SMALL_LEAF_SIZE]
    parts = [x for x in leaves if x.size > SMALL_LEAF_SIZE]
    parts += [jnp.concatenate(small)] if small else []
    return jnp.sqrt(sum((jnp.sum(jnp.square(x)) for x in parts), jnp.float32(0.0)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the updates by ``min(1, max_norm / global_norm(updates))``, as
    ``optax.clip_by_global_norm`` does, with :func:`global_norm`: the train step's own
    ``grad_norm`` metric is then the same computation, which XLA computes once."""

    def update(updates, state, params=None):
        del params
        factor = jnp.minimum(1.0, max_norm / global_norm(updates))
        return jax.tree_util.tree_map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _kernels_only(params):
    """Weight decay applies to kernels and embeddings (ndim >= 2), not to biases and norms."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(key, "key", key)) for key in path)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def scale_by_module(multipliers: Mapping[str, float]) -> optax.GradientTransformation:
    """Multiplies the updates of the params under each path prefix (``"guidance_embedding"``,
    ``"encoder/block_0"``) by its factor: a learning-rate multiplier for those modules. A
    prefix that names no param is an error (a typo would otherwise change nothing)."""
    factors = {str(prefix): float(factor) for prefix, factor in multipliers.items()}

    def factor_of(name: str) -> float:
        return next((f for prefix, f in factors.items() if _under(name, prefix)), 1.0)

    def init(params):
        names = [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        unknown = [p for p in factors if not any(_under(name, p) for name in names)]
        if unknown:
            raise ValueError(
                f"train.lr_multipliers names no params: {unknown} (params are e.g. {names[:3]})"
            )
        return optax.EmptyState()

    def update(updates, state, params=None):
        def scaled(path, update):
            factor = factor_of(_path_name(path))
            return update if factor == 1.0 else update * factor

        return jax.tree_util.tree_map_with_path(scaled, updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(train: Mapping) -> optax.GradientTransformation:
    """The optimizer of ``config.train``: [clip by global norm] -> AdamW on the schedule ->
    [the learning-rate multipliers of ``train.lr_multipliers``]."""
    adamw = optax.adamw(
        learning_rate_schedule(train),
        b1=float(train["adam_b1"]),
        b2=float(train["adam_b2"]),
        eps=float(train["adam_eps"]),
        weight_decay=float(train["weight_decay"]),
        mask=_kernels_only,
    )
    clip = float(train["grad_clip_norm"])
    multipliers = dict(train.get("lr_multipliers") or {})
    parts = [clip_by_global_norm(clip)] if clip > 0 else []
    parts += [adamw] + ([scale_by_module(multipliers)] if multipliers else [])
    return parts[0] if len(parts) == 1 else optax.chain(*parts)
