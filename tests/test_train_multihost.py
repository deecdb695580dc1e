"""Two processes on localhost (jax.distributed, CPU collectives) train like one process.

Run as a script, this file is one of the two worker processes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS = 5


def _config():
    from test_train_support import make_config

    return make_config("base", num_steps=STEPS, log_every=1, checkpoint_every=STEPS)


def _worker(workdir: str, process_id: int, port: int) -> None:
    import jax

    from imagen_video_jax.parallel import initialize_distributed

    initialize_distributed(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
    )
    from test_train_support import FakeVideoData, tiny_model

    from imagen_video_jax.train import train

    config = _config()
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    data = FakeVideoData(config, process_index=process_id, process_count=2)
    train(config, workdir, model=tiny_model(config), data_iterator=data, progress_bar=False)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    import jax
    from test_train_support import FakeVideoData, tiny_model

    from imagen_video_jax.train import load_params, train

    port = _free_port()
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path / "two"), str(pid), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    config = _config()
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    single = train(config, tmp_path / "one", model=tiny_model(config), devices=jax.devices()[:4],
                   data_iterator=FakeVideoData(config), progress_bar=False)  # fmt: skip

    def losses(workdir: Path) -> np.ndarray:
        lines = (workdir / "base/logs/metrics.jsonl").read_text().splitlines()
        return np.array([json.loads(line)["loss"] for line in lines])

    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    params, _, step = load_params(tmp_path / "two" / "base", ema=False)
    assert step == STEPS
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
