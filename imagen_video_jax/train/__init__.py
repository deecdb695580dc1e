"""Training: train state, sharded train step, loop, orbax checkpoints and logs."""

from imagen_video_jax.train.checkpoint import Checkpointer, load_config, load_params
from imagen_video_jax.train.loop import NonFiniteError, train
from imagen_video_jax.train.objective import (
    StageObjective,
    drop_text,
    null_text,
    stage_loss,
    video_to_float,
    video_to_uint8,
)
from imagen_video_jax.train.optimizer import learning_rate_schedule, make_optimizer
from imagen_video_jax.train.state import TrainState, create_train_state, sharded_state_init
from imagen_video_jax.train.step import jit_train_step, make_train_step

__all__ = [
    "Checkpointer",
    "NonFiniteError",
    "StageObjective",
    "TrainState",
    "create_train_state",
    "drop_text",
    "jit_train_step",
    "learning_rate_schedule",
    "load_config",
    "load_params",
    "make_optimizer",
    "make_train_step",
    "null_text",
    "sharded_state_init",
    "stage_loss",
    "train",
    "video_to_float",
    "video_to_uint8",
]
