"""Checks of VideoUNet hyper-parameters and call inputs, on static shapes before any compile.

Every mistake raises one ValueError naming the field or input, what was expected and what
was given.
"""

from __future__ import annotations

from typing import Any

TEMPORAL_MIXING = ("attention", "conv", "none")
REMAT_POLICIES = ("none", "block", "dots", "dots_spatial", "dots_attention")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas", "pallas_cudnn")
DTYPES = ("bfloat16", "float32", "float16")
PER_LEVEL_FIELDS = ("num_res_blocks", "spatial_attention", "cross_attention", "temporal_mixing")


def check_config(model: Any) -> None:
    """Validate the VideoUNet's fields (lengths, choices and divisibility)."""
    levels = len(model.channel_mult)
    for field in PER_LEVEL_FIELDS:
        value = getattr(model, field)
        if not isinstance(value, tuple) or len(value) != levels:
            raise ValueError(
                f"VideoUNet config {field!r} needs one entry per level ({levels}, like "
                f"channel_mult={model.channel_mult}); got {value!r}"
            )
    _check_choice("temporal_mixing", model.temporal_mixing, TEMPORAL_MIXING)
    _check_choice("remat", (model.remat,), REMAT_POLICIES)
    _check_choice("attention_impl", (model.attention_impl,), ATTENTION_IMPLS)
    _check_choice("dtype", (model.dtype,), DTYPES)
    if model.channels % 2:
        raise ValueError(f"VideoUNet config 'channels' must be even; got {model.channels}")
    if model.cond_augmentation and not model.cond_channels:
        raise ValueError("VideoUNet config 'cond_augmentation' needs cond_channels > 0; got 0")
    if model.use_text and model.text_dim <= 0:
        raise ValueError(
            f"VideoUNet config 'text_dim' must be positive with use_text; got {model.text_dim}"
        )
    for level, mult in enumerate(model.channel_mult):
        width = model.channels * mult
        if width % min(model.norm_groups, width):
            raise ValueError(
                f"VideoUNet level {level}: {width} channels not divisible into "
                f"norm_groups={model.norm_groups}"
            )
        attends = (
            model.spatial_attention[level]
            or model.cross_attention[level]
            or model.temporal_mixing[level] == "attention"
        )
        if attends and width % model.head_dim:
            raise ValueError(
                f"VideoUNet level {level}: {width} channels not divisible by "
                f"head_dim={model.head_dim}"
            )


def _check_choice(field: str, values: tuple, choices: tuple) -> None:
    for value in values:
        if value not in choices:
            raise ValueError(
                f"VideoUNet config {field!r}: expected one of {choices}; got {value!r}"
            )


def check_inputs(model: Any, inputs: dict[str, Any]) -> None:
    """Validate the call's inputs against the config: presence, ranks, shapes, channels."""
    z = inputs["z"]
    if getattr(z, "ndim", None) != 5 or z.shape[-1] != model.in_channels:
        raise ValueError(
            f"VideoUNet input 'z': expected [batch, frames, height, width, {model.in_channels}]; "
            f"got shape {_shape(z)}"
        )
    batch, frames, height, width, _ = z.shape
    factor = 2 ** (len(model.channel_mult) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"VideoUNet input 'z': height and width must be multiples of {factor} for "
            f"{len(model.channel_mult)} levels; got {height}x{width}"
        )
    _check_scalar(inputs, "logsnr", batch)
    _check_present(inputs, "text", model.use_text, "model.use_text")
    _check_present(inputs, "text_mask", model.use_text, "model.use_text")
    if model.use_text:
        _check_shape(inputs, "text", (batch, None, model.text_dim), "[batch, tokens, text_dim]")
        tokens = inputs["text"].shape[1]
        _check_shape(inputs, "text_mask", (batch, tokens), "[batch, tokens]")
    _check_present(inputs, "cond", bool(model.cond_channels), "model.cond_channels > 0")
    if model.cond_channels:
        _check_condition_video(inputs["cond"], model.cond_channels, batch, frames)
    needs_aug = bool(model.cond_channels) and model.cond_augmentation
    _check_present(inputs, "cond_logsnr", needs_aug, "model.cond_augmentation")
    if needs_aug:
        _check_scalar(inputs, "cond_logsnr", batch)
    if inputs["frame_mask"] is not None:
        _check_shape(inputs, "frame_mask", (batch, frames), "[batch, frames]")
    for name in ("known", "known_mask"):
        _check_present(inputs, name, model.mask_condition, "model.mask_condition")
    if model.mask_condition:
        _check_shape(
            inputs, "known", tuple(z.shape), "z's shape [batch, frames, height, width, channels]"
        )
        _check_shape(inputs, "known_mask", (batch, frames), "[batch, frames]")
    _check_present(inputs, "guidance", model.guidance_input, "model.guidance_input")
    if model.guidance_input:
        _check_scalar(inputs, "guidance", batch)


def _shape(x: Any) -> tuple | str:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_present(inputs: dict, name: str, needed: bool, reason: str) -> None:
    given = inputs[name] is not None
    if needed and not given:
        raise ValueError(
            f"VideoUNet input {name!r} is required by this config ({reason}); got None"
        )
    if given and not needed:
        raise ValueError(
            f"VideoUNet input {name!r} is not expected by this config ({reason} is off); "
            f"got an array of shape {_shape(inputs[name])}"
        )


def _check_shape(inputs: dict, name: str, expected: tuple, layout: str) -> None:
    shape = _shape(inputs[name])
    matches = (
        isinstance(shape, tuple)
        and len(shape) == len(expected)
        and all(e is None or e == s for e, s in zip(expected, shape))
    )
    if not matches:
        wanted = tuple("any" if e is None else e for e in expected)
        raise ValueError(
            f"VideoUNet input {name!r}: expected {layout} = {wanted}; got shape {shape}"
        )


def _check_scalar(inputs: dict, name: str, batch: int) -> None:
    shape = _shape(inputs[name]) if hasattr(inputs[name], "shape") else ()
    if shape not in ((), (batch,)):
        raise ValueError(f"VideoUNet input {name!r}: expected shape () or ({batch},); got {shape}")


def _check_condition_video(cond: Any, channels: int, batch: int, frames: int) -> None:
    shape = _shape(cond)
    if (
        not isinstance(shape, tuple)
        or len(shape) != 5
        or (shape[0], shape[-1]) != (batch, channels)
    ):
        raise ValueError(
            f"VideoUNet input 'cond': expected the low-resolution video [batch={batch}, frames, "
            f"height, width, {channels}]; got shape {shape}"
        )
    if frames % shape[1]:
        raise ValueError(
            f"VideoUNet input 'cond': its {shape[1]} frames must divide z's {frames} frames "
            "(frames are repeated to upsample in time)"
        )
