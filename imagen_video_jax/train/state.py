"""The train state: params, their EMA, optimizer state, step, RNG and non-finite counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util
from jax.sharding import Mesh

from imagen_video_jax.parallel import Rules, logical_shardings, unbox


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly; a pytree, saved whole in checkpoints.

    ``step`` counts batches consumed (skipped non-finite steps included), so it always matches
    the data iterator and the checkpoint step. ``nonfinite_run`` counts NaN/inf steps in a row
    (reset by a finite step), ``nonfinite_total`` all of them.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: optax.OptState
    rng: jax.Array
    nonfinite_run: jax.Array
    nonfinite_total: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A step-0 state: EMA starts equal to the params (works on flax-boxed params too)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=tx.init(params),
        rng=rng,
        nonfinite_run=zero,
        nonfinite_total=zero,
    )


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay at ``step``: min(decay, (1 + step) / (10 + step)), so early EMA follows params."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema: Any, params: Any, decay: jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def sharded_state_init(
    init_params: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules,
) -> tuple[Callable[[jax.Array], TrainState], Any, TrainState]:
    """``(init, shardings, abstract)`` for a train state sharded by its logical axes.

    ``init_params(key)`` returns flax-boxed params (``nn.with_logical_partitioning``); the
    optimizer state and EMA inherit the params' names. ``init(key)`` builds the state directly
    in its shardings; ``abstract`` holds ShapeDtypeStructs with shardings (restore targets).
    """

    def boxed_state(key: jax.Array) -> TrainState:
        params_key, rng = jax.random.split(key)
        return create_train_state(init_params(params_key), tx, rng)

    boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
    shardings = logical_shardings(boxed, mesh, rules)
    init = jax.jit(lambda key: unbox(boxed_state(key)), out_shardings=shardings)
    abstract = jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        unbox(boxed),
        shardings,
    )
    return init, shardings, abstract


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'a/b': shape}`` of a params tree of arrays, scalars or ``jax.ShapeDtypeStruct``s."""
    return {k: np.shape(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def params_mismatches(given: Any, model: Any, *, given_name: str, optional: str = "") -> list[str]:
    """How the params tree ``given`` differs from the ``model``'s (trees of arrays or shape
    structs): params the model lacks, model params ``given`` lacks (but those under the
    ``optional`` prefix), and shapes that differ. Empty when ``given`` fits the model."""
    given_shapes, model_shapes = _shapes(given), _shapes(model)
    unknown = sorted(given_shapes.keys() - model_shapes.keys())
    missing = sorted(
        k
        for k in model_shapes.keys() - given_shapes.keys()
        if not (optional and k.startswith(optional))
    )
    wrong = sorted(
        k for k in given_shapes.keys() & model_shapes.keys() if given_shapes[k] != model_shapes[k]
    )
    problems = [f"params the model lacks: {unknown[:3]}"] if unknown else []
    problems += [f"params the {given_name} lacks: {missing[:3]}"] if missing else []
    problems += [f"{k} has shape {given_shapes[k]}, the model's {model_shapes[k]}" for k in wrong]
    return problems
