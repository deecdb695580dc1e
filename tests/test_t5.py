"""T5 v1.1 encoder: parity with transformers' T5EncoderModel, checkpoint formats, XXL size."""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.models.t5 import (
    T5_CONFIGS,
    T5Encoder,
    relative_position_buckets,
    t5_config_from_hf,
    t5_params_from_hf,
)
from imagen_video_jax.models.text_encoder import (
    load_text_encoder,
    read_safetensors,
    read_state_dict,
    read_torch_file,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=128,
    d_model=64,
    d_kv=16,
    num_heads=4,
    num_layers=2,
    d_ff=128,
    relative_attention_num_buckets=32,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A randomly initialised transformers T5EncoderModel saved as safetensors."""
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(**TINY)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:  # ones by default: make the norm scales matter
                param.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("t5")
    model.save_pretrained(folder)
    return model, folder


def padded_batch(length=20):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, TINY["vocab_size"], (3, length)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, 12:] = False
    mask[2, 5:] = False
    return np.where(mask, ids, 0), mask


def load_params(folder):
    config = t5_config_from_hf(json.loads((folder / "config.json").read_text()))
    return config, t5_params_from_hf(read_state_dict(folder), config)


def test_relative_position_buckets_match_transformers():
    length = 300  # beyond max_distance, so every kind of bucket occurs
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=True, num_buckets=32, max_distance=128
    ).numpy()
    got = relative_position_buckets(length, 32, 128)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 0 and got[0, 1] == 17 and got[1, 0] == 1
    assert got[0, 299] == 31 and got[299, 0] == 15


def test_hidden_states_match_transformers_with_padding(reference):
    model, folder = reference
    config, params = load_params(folder)
    ids, mask = padded_batch()
    got = T5Encoder(config, jnp.float32).apply({"params": params}, ids, mask)
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state.numpy()
    assert got.dtype == jnp.float32 and got.shape == (3, 20, TINY["d_model"])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_extra_padding_leaves_real_tokens_unchanged(reference):
    config, params = load_params(reference[1])
    ids, mask = padded_batch()
    encoder = T5Encoder(config, jnp.float32)
    short = encoder.apply({"params": params}, ids[2:, :5], mask[2:, :5])
    padded = encoder.apply({"params": params}, ids[2:], mask[2:])
    np.testing.assert_allclose(np.asarray(padded[:, :5]), np.asarray(short), atol=1e-5)


def test_pytorch_bin_and_sharded_safetensors_give_the_same_tensors(reference, tmp_path):
    model, folder = reference
    want = read_state_dict(folder)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(folder / "config.json", bin_folder)
    torch.save(model.state_dict(), bin_folder / "pytorch_model.bin")
    from safetensors.numpy import save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(want)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: np.ascontiguousarray(want[k]) for k in keys}, sharded / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for got in (read_state_dict(bin_folder), read_state_dict(sharded)):
        for name in names:
            np.testing.assert_array_equal(got[name], want[name])


def test_bfloat16_safetensors_are_read_exactly(tmp_path):
    from safetensors.torch import save_file

    tensor = torch.randn(3, 5).bfloat16()
    save_file({"w": tensor}, tmp_path / "x.safetensors")
    got = read_safetensors(tmp_path / "x.safetensors")["w"]
    np.testing.assert_array_equal(got.astype(np.float32), tensor.float().numpy())


def test_pytorch_file_without_torch_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch.*model.safetensors"):
        read_torch_file(tmp_path / "pytorch_model.bin")


def test_only_gated_gelu_checkpoints_are_accepted():
    with pytest.raises(ValueError, match="gated-gelu.*got feed_forward_proj 'relu'"):
        t5_config_from_hf({"feed_forward_proj": "relu", "d_model": 8})


def test_checkpoint_not_matching_config_is_named(reference, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(reference[1], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 96}))
    with pytest.raises(ValueError, match=r"wi_0.*expected shape \(64, 96\), got \(64, 128\)"):
        load_text_encoder(folder, max_length=8)
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ValueError, match="lacks the tensor 'encoder.block.2"):
        load_text_encoder(folder, max_length=8)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        load_text_encoder(folder, max_length=8)


def test_xxl_encoder_has_the_papers_4_6b_parameters():
    config = T5_CONFIGS["xxl"]
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), ids, ids)["params"]
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
    d, inner = config.d_model, config.num_heads * config.d_kv
    per_layer = 4 * d * inner + 3 * d * config.d_ff + 2 * d
    closed_form = (
        config.vocab_size * d
        + config.relative_attention_num_buckets * config.num_heads
        + config.num_layers * per_layer
        + d
    )
    assert count == closed_form
    assert abs(count - 4.6e9) / 4.6e9 < 0.10
