"""The jitted train step: loss and gradients (optionally over micro-batches), the non-finite
guard, the AdamW update and the EMA, with the state donated and sharded by logical axes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_video_jax.models import cast_kernels
from imagen_video_jax.parallel import Rules, batch_sharding
from imagen_video_jax.train.objective import ApplyFn, StageObjective, stage_loss
from imagen_video_jax.train.optimizer import global_norm, learning_rate_schedule
from imagen_video_jax.train.state import TrainState, ema_decay_at, update_ema

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
StepFn = Callable[..., tuple[TrainState, Metrics]]


def embed_text(batch: Batch, text_encoder: Any, encoder_params: Any) -> dict[str, jax.Array]:
    """Token ids ('text_ids') -> frozen encoder embeddings ('text'); other fields unchanged."""
    batch = dict(batch)
    if "text_ids" in batch:
        ids = batch.pop("text_ids")
        text = text_encoder.embed_tokens(ids, batch["text_mask"], encoder_params)
        batch["text"] = jax.lax.stop_gradient(text)
    return batch


def split_microbatches(batch: Batch, count: int) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...], micro-batch i holding rows i, i + count, ...

    Interleaving keeps every micro-batch spread over all batch shards (no data movement).
    """

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        names = (None, "batch") + (None,) * (x.ndim - 2)
        return nn.with_logical_constraint(x, names)

    return {key: split(value) for key, value in batch.items()}


def _loss_and_grads(
    loss_fn: Callable[[Any, Batch, jax.Array], jax.Array],
    params: Any,
    batch: Batch,
    key: jax.Array,
    accum_steps: int,
    kernel_dtype: Any = None,
) -> tuple[jax.Array, Any]:
    """Mean loss and gradient over the batch, in ``accum_steps`` sequential micro-batches.

    With ``kernel_dtype`` the loss takes the kernels cast to it (:func:`cast_kernels`); the
    gradients are returned, and summed over micro-batches, in the params' own dtypes.
    """
    inputs = params if kernel_dtype is None else cast_kernels(params, kernel_dtype)
    value_and_grad = jax.value_and_grad(loss_fn)

    def grad_fn(micro: Batch, micro_key: jax.Array) -> tuple[jax.Array, Any]:
        loss, grads = value_and_grad(inputs, micro, micro_key)
        return loss, jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)

    if accum_steps == 1:
        return grad_fn(batch, key)

    def accumulate(carry, micro_inputs):
        loss_sum, grad_sum = carry
        index, micro = micro_inputs
        loss, grads = grad_fn(micro, jax.random.fold_in(key, index))
        return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    micro = split_microbatches(batch, accum_steps)
    (loss, grads), _ = jax.lax.scan(
        accumulate, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accum_steps), micro)
    )
    return loss / accum_steps, jax.tree_util.tree_map(lambda g: g / accum_steps, grads)


LossFn = Callable[..., jax.Array]


def make_update_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    config: Mapping,
    rules: Rules,
    *,
    text_encoder: Any = None,
) -> StepFn:
    """``step(state, batch, encoder_params, *extra) -> (state, metrics)`` minimising
    ``loss_fn(params, batch, key, *extra)`` under the stage ``config``'s train settings.

    ``extra`` are further step inputs the loss reads (a distillation teacher's params); the
    text of the batch is embedded first. Where ``config.model`` names a compute dtype, the
    loss takes the kernels cast to it once, before the forward pass, rather than each module
    casting its own, again in every rematerialised block (:func:`cast_kernels`; on an H200
    about 0.4 ms of bench-base-train's step, docs/PERFORMANCE.md).

    A step whose loss or gradient is NaN/inf leaves params, EMA and optimizer state unchanged,
    counts itself in ``nonfinite_run``/``nonfinite_total`` and still advances ``step``.
    """
    train = config["train"]
    kernel_dtype = config["model"].get("dtype")
    accum_steps = int(train["grad_accum_steps"])
    ema_decay = float(train["ema_decay"])
    schedule = learning_rate_schedule(train)

    def step(
        state: TrainState, batch: Batch, encoder_params: Any, *extra: Any
    ) -> tuple[TrainState, Metrics]:
        def loss_with_extra(params: Any, batch: Batch, key: jax.Array) -> jax.Array:
            return loss_fn(params, batch, key, *extra)

        with nn.logical_axis_rules(rules):
            batch = embed_text(batch, text_encoder, encoder_params)
            key = jax.random.fold_in(state.rng, state.step)
            loss, grads = _loss_and_grads(
                loss_with_extra, state.params, batch, key, accum_steps, kernel_dtype
            )
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # A skipped step leaves params and EMA as they were through their own arithmetic: a
        # zero update (selected in the kernel that adds it) and an EMA decay of 1. Selecting
        # between the old and the new trees instead costs a pass over each (on an H200,
        # dropping those two passes took bench-base-train's step from 105.2 to 102.6 ms;
        # docs/PERFORMANCE.md). Adam's moments are still selected.
        updates = _keep_where(finite, updates, jax.tree_util.tree_map(jnp.zeros_like, updates))
        params = optax.apply_updates(state.params, updates)
        decay = jnp.where(finite, ema_decay_at(state.step - state.nonfinite_total, ema_decay), 1.0)
        updates_applied = state.step - state.nonfinite_total
        state = state.replace(
            params=params,
            opt_state=_keep_where(finite, opt_state, state.opt_state),
            ema_params=update_ema(state.ema_params, params, decay),
            nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
            nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(updates_applied),
            "nonfinite_run": state.nonfinite_run,
            "nonfinite_total": state.nonfinite_total,
        }
        return state.replace(step=state.step + 1), metrics

    return step


def _keep_where(condition: jax.Array, if_true: Any, if_false: Any) -> Any:
    """``if_true`` where the scalar ``condition`` holds, else ``if_false``, leaf by leaf.

    An elementwise select rather than ``lax.cond``: on a GPU a conditional waits for its
    predicate on the host before launching the branch, which would stall the step (and end
    its CUDA graph) just before the optimizer update.
    """
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    config: Mapping,
    rules: Rules,
    *,
    text_encoder: Any = None,
) -> StepFn:
    """``step(state, batch, encoder_params) -> (state, metrics)``: the diffusion loss of
    ``config``'s stage under :func:`make_update_step`."""
    objective = StageObjective.from_config(config)

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> jax.Array:
        return stage_loss(apply_fn, params, batch, key, objective)

    return make_update_step(loss_fn, tx, config, rules, text_encoder=text_encoder)


def jit_train_step(
    step: StepFn,
    state_shardings: Any,
    encoder_shardings: Any,
    mesh: Mesh,
    rules: Rules,
    extra_shardings: tuple = (),
) -> StepFn:
    """``step`` compiled with the state sharded by its logical axes (and donated), the batch
    split over the batch mesh axes, the metrics replicated and the ``extra`` step inputs
    placed by ``extra_shardings``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(
            state_shardings,
            batch_sharding(mesh, rules),
            encoder_shardings,
            *extra_shardings,
        ),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
