"""The train loop: exact resume after SIGTERM, restore onto other device counts, the
non-finite stop, logs, and clear errors before anything compiles."""

import json
import os
import signal

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from test_train_support import FakeVideoData, compilation_cache, make_config, tiny_model

from imagen_video_jax.parallel import axis_rules, make_mesh
from imagen_video_jax.train import Checkpointer, NonFiniteError, load_params, train
from imagen_video_jax.train.logs import TrainLogger, side_by_side, video_grid
from imagen_video_jax.train.loop import example_inputs
from imagen_video_jax.train.optimizer import make_optimizer
from imagen_video_jax.train.state import TrainState, sharded_state_init

pytestmark = pytest.mark.usefixtures(compilation_cache.__name__)
ONE_DEVICE = jax.devices()[:1]


class SigtermAt(FakeVideoData):
    """Sends SIGTERM to this process while handing out batch ``index``."""

    def __init__(self, config, index, **kwargs):
        super().__init__(config, **kwargs)
        self.kill_at = index

    def __next__(self):
        if self.index == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_resume_after_sigterm_is_exact(tmp_path):
    config = make_config("base", num_steps=20, checkpoint_every=20)
    with_samples = make_config("base", num_steps=20, checkpoint_every=20, sample_every=10,
                               num_samples=3, sample_steps=2)  # fmt: skip
    straight_data = FakeVideoData(config)
    straight = train(with_samples, tmp_path / "a", model=tiny_model(config), devices=ONE_DEVICE,
                     data_iterator=straight_data, progress_bar=False)  # fmt: skip

    first_data = SigtermAt(config, index=9)
    stopped = train(config, tmp_path / "b", model=tiny_model(config), devices=ONE_DEVICE,
                    data_iterator=first_data, progress_bar=False)  # fmt: skip
    assert int(stopped.step) == 10  # SIGTERM during batch 10: that step finishes, then saves
    assert Checkpointer(tmp_path / "b" / "base").latest_step() == 10
    resumed_data = FakeVideoData(config)
    resumed = train(config, tmp_path / "b", model=tiny_model(config), devices=ONE_DEVICE,
                    data_iterator=resumed_data, progress_bar=False)  # fmt: skip

    assert int(resumed.step) == 20
    assert first_data.drawn + resumed_data.drawn == straight_data.drawn == list(range(20))
    for a, b in zip(_leaves(straight.params), _leaves(resumed.params)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(_leaves(straight.ema_params), _leaves(resumed.ema_params)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    jsonl = (tmp_path / "a/base/logs/metrics.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in jsonl]
    assert [line["step"] for line in lines] == [5, 10, 15, 20]
    assert all(np.isfinite(line["loss"]) for line in lines)
    assert any(
        p.name.startswith("events.out.tfevents") for p in (tmp_path / "a/base/logs").iterdir()
    )
    for step in (10, 20):  # 3 samples x 2 frames of 8 x 8
        grid = iio.imread(tmp_path / f"a/base/samples/step_{step:08d}.png")
        assert grid.shape == (24, 16, 3) and grid.dtype == np.uint8
        assert iio.imread(tmp_path / f"a/base/samples/step_{step:08d}.gif", index=None).shape[
            :3
        ] == (2, 8, 24)
    params, saved_config, step = load_params(tmp_path / "a" / "base")
    assert step == 20 and saved_config["train"]["sample_every"] == 10
    for a, b in zip(_leaves(straight.ema_params), _leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_from_8_devices_restores_on_2_and_1(tmp_path):
    """8 devices (data=4 x fsdp=2) stop at step 6; 2 devices restore, check and go on to
    step 8; 1 device restores and finishes the 20 steps."""
    config = make_config("base", num_steps=20, checkpoint_every=20)
    model = tiny_model(config)
    config.mesh.update(data=4, fsdp=2, tensor=1)
    data = SigtermAt(config, index=5)
    on_eight = train(config, tmp_path, model=model, data_iterator=data, progress_bar=False)
    assert int(on_eight.step) == 6
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(on_eight.params)} == {8}

    config.mesh.update(data=-1, fsdp=1, tensor=1)
    two = jax.devices()[:2]
    _, _, abstract = sharded_state_init(
        lambda k: model.init(k, **example_inputs(config))["params"],
        make_optimizer(config.train),
        make_mesh(config.mesh, two),
        axis_rules(config.mesh),
    )
    checkpointer = Checkpointer(tmp_path / "base")
    restored, data_state = checkpointer.restore(abstract)
    checkpointer.close()
    assert data_state == {"index": 6}
    assert {frozenset(x.sharding.device_set) for x in jax.tree.leaves(restored)} == {frozenset(two)}
    for a, b in zip(_leaves(on_eight), _leaves(restored)):
        np.testing.assert_array_equal(a, b)

    data = SigtermAt(config, index=7)
    on_two = train(config, tmp_path, model=model, devices=two, data_iterator=data,
                   progress_bar=False)  # fmt: skip
    assert int(on_two.step) == 8 and data.drawn == [6, 7]
    data = FakeVideoData(config)
    on_one = train(config, tmp_path, model=model, devices=ONE_DEVICE, data_iterator=data,
                   progress_bar=False)  # fmt: skip
    assert int(on_one.step) == 20 and data.drawn == list(range(8, 20))
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "base/logs/metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_a_run_of_nonfinite_steps_stops_with_a_message(tmp_path):
    config = make_config("base", num_steps=20, max_nonfinite_steps=3)
    data = FakeVideoData(config, poison={3: np.inf, 4: np.nan, 5: np.inf, 6: np.inf})
    with pytest.raises(NonFiniteError) as error:
        train(config, tmp_path, model=tiny_model(config), devices=ONE_DEVICE,
              data_iterator=data, progress_bar=False)  # fmt: skip
    message = str(error.value)
    assert "training stopped at step 6" in message and "steps 4-6" in message
    assert "parameters are those after step 3" in message and "learning_rate" in message


def test_logger_writes_grid_png_gif_and_jsonl(tmp_path):
    videos = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5, 3), dtype=np.uint8)
    grid = video_grid(videos)
    assert grid.shape == (8, 15, 3)
    np.testing.assert_array_equal(grid[4:8, 5:10], videos[1, 1])
    np.testing.assert_array_equal(side_by_side(videos)[2, :, 5:10], videos[1, 2])
    logger = TrainLogger(tmp_path / "logs", start_step=0, total_steps=10, progress_bar=False)
    logger.scalars(3, {"loss": 0.5, "grad_norm": float("nan")})
    stem = logger.samples(3, videos, fps=4.0)
    logger.close()
    np.testing.assert_array_equal(iio.imread(str(stem) + ".png"), grid)
    gif = iio.imread(str(stem) + ".gif", index=None)
    assert gif.shape[:3] == (3, 4, 10)
    record = json.loads((tmp_path / "logs/metrics.jsonl").read_text())
    assert record["step"] == 3 and record["loss"] == 0.5 and record["grad_norm"] == "nan"


class NeverInit:
    def init(self, *args, **kwargs):
        raise AssertionError("the model was initialized before the config was checked")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: c.stage.update(name="ssr9"), "unknown stage 'ssr9'"),
        (lambda c: c.mesh.update(data=3, fsdp=1, tensor=1), "needs 3 devices but 8"),
        (lambda c: c.data.update(batch_size=6), "batch size 6 must be a multiple of 8"),
        (lambda c: c.train.update(grad_accum_steps=3), "must be >= 1 and divide"),
    ],
)
def test_config_mistakes_fail_before_anything_is_built(tmp_path, change, match):
    config = make_config("base")
    change(config)
    with pytest.raises(ValueError, match=match):
        train(config, tmp_path, model=NeverInit(), data_iterator=iter([]))


def test_checkpointer_keeps_the_newest_and_saves_iterator_bytes(tmp_path):
    state = TrainState(
        step=np.int32(0), params={"w": np.ones(3, np.float32)}, ema_params={"w": np.zeros(3)},
        opt_state={"mu": np.zeros(3)}, rng=np.zeros(2, np.uint32), nonfinite_run=np.int32(0),
        nonfinite_total=np.int32(0),
    )  # fmt: skip
    checkpointer = Checkpointer(tmp_path, keep=2, async_save=True)
    for step in (1, 2, 3, 4):
        state = state.replace(step=np.int32(step), params={"w": np.full(3, step, np.float32)})
        checkpointer.save(state, config={"step": step}, data_state=f"grain {step}".encode())
    checkpointer.wait()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [3, 4]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
    restored, data_state = checkpointer.restore(abstract, step=3)
    checkpointer.close()
    assert data_state == b"grain 3" and int(restored.step) == 3
    np.testing.assert_array_equal(restored.params["w"], [3, 3, 3])


def test_a_new_run_starts_from_given_params_and_refuses_ones_that_do_not_fit(tmp_path):
    """--init-from: params and EMA start as given (a stage trained further), not at random."""
    config = make_config("base", num_steps=3, checkpoint_every=3)
    first = train(config, tmp_path / "a", model=tiny_model(config), devices=ONE_DEVICE,
                  data_iterator=FakeVideoData(config), progress_bar=False)  # fmt: skip
    given = jax.device_get(first.ema_params)
    zero_steps = make_config("base", num_steps=0)
    started = train(zero_steps, tmp_path / "b", model=tiny_model(config), devices=ONE_DEVICE,
                    data_iterator=FakeVideoData(config), progress_bar=False,
                    init_params=given)  # fmt: skip
    assert int(started.step) == 0
    for got in (started.params, started.ema_params):
        for a, b in zip(_leaves(got), _leaves(given), strict=True):
            np.testing.assert_array_equal(a, b)
    fresh = train(zero_steps, tmp_path / "c", model=tiny_model(config), devices=ONE_DEVICE,
                  data_iterator=FakeVideoData(config), progress_bar=False)  # fmt: skip
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(fresh.params), _leaves(given)))

    wider = make_config("base", num_steps=0)
    wider.model.channels = 24
    with pytest.raises(ValueError, match="do not fit this stage's model: .*shape"):
        train(wider, tmp_path / "d", model=tiny_model(wider), devices=ONE_DEVICE,
              data_iterator=FakeVideoData(wider), progress_bar=False,
              init_params=given)  # fmt: skip
