"""Data parallel, FSDP and tensor parallel on 8 fake CPU devices train exactly like 1 device
(same global batch and seed), with parameters sharded as the logical-axis rules say."""

import json

import jax
import numpy as np
import pytest
from test_train_support import FakeVideoData, compilation_cache, make_config, tiny_model

from imagen_video_jax.train import train

pytestmark = pytest.mark.usefixtures(compilation_cache.__name__)

MESHES = [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 4, "fsdp": 2, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
]


def _run(config, workdir, devices=None):
    state = train(config, workdir, model=tiny_model(config), devices=devices,
                  data_iterator=FakeVideoData(config), progress_bar=False)  # fmt: skip
    lines = (workdir / "base/logs/metrics.jsonl").read_text().splitlines()
    return state, np.array([json.loads(line)["loss"] for line in lines])


def _expected_shard_shape(shape, names, mesh):
    """Shard shape from the rules written out: embed -> fsdp, mlp -> tensor (when divisible)."""
    axis_of = {"embed": "fsdp", "mlp": "tensor", "text_embed": None}
    out = []
    for size, name in zip(shape, names):
        ways = mesh[axis_of[name]] if axis_of.get(name) else 1
        out.append(size // ways if size % ways == 0 else size)
    return tuple(out)


PARAM_NAMES = {
    "dense_in/kernel": ("embed", "mlp"),
    "dense_mid/kernel": ("embed", "mlp"),
    "dense_out/kernel": ("mlp", "embed"),
    "dense_mid/bias": ("mlp",),
    "text_pool/kernel": ("text_embed", "mlp"),
}


def test_meshes_match_one_device_and_shard_params_by_the_rules(tmp_path):
    config = make_config("base", num_steps=20, log_every=1, checkpoint_every=20)
    reference, reference_losses = _run(config, tmp_path / "one", jax.devices()[:1])
    assert (
        len(reference_losses) == 20 and reference_losses[-5:].mean() < reference_losses[:5].mean()
    )
    for index, mesh in enumerate(MESHES):
        config.mesh.update(mesh)
        state, losses = _run(config, tmp_path / f"mesh{index}")
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
        for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)
        for path, names in PARAM_NAMES.items():
            layer, kind = path.split("/")
            for tree in (state.params, state.ema_params, state.opt_state[1][0].mu):
                array = tree[layer][kind]
                expected = _expected_shard_shape(array.shape, names, mesh)
                shapes = {shard.data.shape for shard in array.addressable_shards}
                assert shapes == {expected}, (mesh, path, shapes, expected)
