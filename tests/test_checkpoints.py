"""Tests for rectifiers_jax.checkpoints: a state saved from 8 fake CPU devices restores on 8 and on
1 device bit for bit, notebooks read it back as NumPy, damage raises CheckpointError, and the
retention and save policies keep and write the steps they should.
"""

import os

# The device-count flag only works before JAX initialises its backends. pytest imports every
# test module into one process, so when another module has already imported jax this line comes
# too late; tests that need 8 devices then skip (the test run sets XLA_FLAGS for all modules).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import glob  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from typing import Any  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from configs.default import get_config  # noqa: E402
from rectifiers_jax import checkpoints, models  # noqa: E402

IMAGE_SIZE = 77  # the smallest input net14 accepts: keeps the forward pass cheap
NUM_CLASSES = 10
STEP = 10
METADATA = {"epoch": 1.5, "data": {"position": 640, "seed": 0}, "plateau": None, "hist": [3.0, 2.5]}


@flax.struct.dataclass
class TrainState:
    """Same fields as rectifiers_jax.train.TrainState."""

    step: jax.Array
    params: Any
    opt_state: Any


@pytest.fixture(scope="module")
def mesh8():
    if jax.device_count() != 8:
        pytest.skip(
            f"needs 8 devices, found {jax.device_count()}: set XLA_FLAGS="
            "--xla_force_host_platform_device_count=8 before jax is first imported"
        )
    return jax.make_mesh((8,), ("data",))


def run_config() -> ml_collections.ConfigDict:
    config = get_config()
    config.model.width = 0.0625
    config.model.fc_std = None  # a None field must survive the JSON round trip
    return config


@pytest.fixture(scope="module")
def model():
    return models.build("net14", activation="prelu", width=0.0625, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def abstract_state(model):
    """Shapes of a net14 train state with an inject_hyperparams momentum-SGD state."""
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9)

    def init(key):
        params = models.init_params(model, key, IMAGE_SIZE)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    # eval_shape + random fill: compiling the real init takes tens of seconds on 2 CPU cores,
    # and random momentum/hyperparameters make the round trip check every leaf's bytes.
    return jax.eval_shape(init, jax.random.key(0))


@pytest.fixture(scope="module")
def host_state(abstract_state):
    rng = np.random.default_rng(0)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            return rng.integers(0, 1000, leaf.shape).astype(leaf.dtype)
        return rng.standard_normal(leaf.shape).astype(leaf.dtype)

    return jax.tree.map(fill, abstract_state)


def target(abstract_state, sharding):
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract_state
    )


def assert_bitwise_equal(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        got = np.asarray(got)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, mesh8, host_state):
    """A run directory: config.json and one checkpoint saved from replicated 8-device arrays."""
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "config.json").write_text(run_config().to_json(indent=2))
    state = jax.device_put(host_state, NamedSharding(mesh8, P()))
    with checkpoints.Checkpointer(workdir, save_every_steps=STEP, keep=2) as ckpt:
        assert ckpt.save(STEP, state, METADATA)
    return workdir


@pytest.mark.parametrize("num_devices", [8, 1])
def test_restore_is_bit_identical_on_any_device_count(
    saved_run, mesh8, abstract_state, host_state, num_devices
):
    mesh = jax.make_mesh((num_devices,), ("data",), devices=jax.devices()[:num_devices])
    sharding = NamedSharding(mesh, P())
    with checkpoints.Checkpointer(saved_run, save_every_steps=STEP, keep=2) as ckpt:
        assert ckpt.latest_step() == STEP
        state, metadata = ckpt.restore(STEP, target(abstract_state, sharding))
    assert isinstance(state, TrainState)
    assert all(leaf.sharding == sharding for leaf in jax.tree.leaves(state))
    assert_bitwise_equal(state, host_state)
    assert metadata == METADATA


def test_async_save_copies_before_returning(tmp_path, mesh8, abstract_state, host_state):
    sharding = NamedSharding(mesh8, P())
    state = jax.device_put(host_state, sharding)
    with checkpoints.Checkpointer(tmp_path, save_every_steps=5, keep=1, async_save=True) as ckpt:
        assert ckpt.save(5, state, {"epoch": 0})
        # The training loop donates the state right after saving; the save must not need it.
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        ckpt.wait_until_finished()
        restored, _ = ckpt.restore(5, target(abstract_state, sharding))
    assert_bitwise_equal(restored, host_state)


def test_load_params_reads_a_sharded_run_as_numpy(saved_run, host_state):
    params = checkpoints.load_params(saved_run)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(params))
    assert_bitwise_equal(params, host_state.params)
    assert_bitwise_equal(checkpoints.load_params(str(saved_run), step=STEP), host_state.params)
    with pytest.raises(FileNotFoundError, match=re.escape(f"step 3 in {saved_run}")):
        checkpoints.load_params(saved_run, step=3)


def test_load_model_applies_like_the_trained_model(saved_run, model, host_state):
    module, variables = checkpoints.load_model(saved_run)
    # num_classes is not in the config: it comes from the checkpoint's fc3.
    assert module == model
    images = jax.random.normal(jax.random.key(1), (2, IMAGE_SIZE, IMAGE_SIZE, 3)) * 50.0
    got = module.apply(variables, images, train=False)
    want = model.apply({"params": host_state.params}, images, train=False)
    assert got.shape == (2, NUM_CLASSES)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_load_config_round_trips_tuples_and_none(saved_run):
    config = checkpoints.load_config(saved_run)
    assert config.to_dict() == run_config().to_dict()
    assert config.model.spp_levels == (6, 3, 2, 1) and config.model.fc_std is None
    with pytest.raises(AttributeError):
        config.model.widht = 1.0  # locked: a typo fails instead of adding a field


def test_missing_files_raise_file_not_found_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + ".*not a run directory"):
        checkpoints.load_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no checkpoints yet")):
        checkpoints.load_params(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no checkpoints yet")):
        checkpoints.load_params(tmp_path)


def truncate_data_files(step_dir: str) -> None:
    files = glob.glob(f"{step_dir}/state/ocdbt.process_*/d/*")
    assert files, f"no OCDBT data files under {step_dir}/state"
    for path in files:
        # Keep only a few bytes: a file cut in half can still hold every array of the params
        # subtree (the layout varies from save to save), which load_params alone reads.
        os.truncate(path, min(8, os.path.getsize(path) // 2))


def delete_tree_metadata(step_dir: str) -> None:
    os.remove(f"{step_dir}/state/_METADATA")


def delete_step_metadata(step_dir: str) -> None:
    os.remove(f"{step_dir}/_CHECKPOINT_METADATA")  # written last: the save never finished


@pytest.mark.parametrize(
    "damage", [truncate_data_files, delete_tree_metadata, delete_step_metadata]
)
def test_damaged_checkpoint_raises_checkpoint_error(
    saved_run, mesh8, abstract_state, tmp_path, damage
):
    workdir = tmp_path / "run"
    shutil.copytree(saved_run, workdir)
    step_dir = workdir / "checkpoints" / str(STEP)
    damage(str(step_dir))
    message = re.escape(f"step {STEP} from {step_dir}")
    with (
        checkpoints.Checkpointer(workdir, save_every_steps=STEP, keep=2) as ckpt,
        pytest.raises(checkpoints.CheckpointError, match=message) as error,
    ):
        ckpt.restore(STEP, target(abstract_state, NamedSharding(mesh8, P())))
    assert "\n" not in str(error.value)
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.load_params(workdir)


def test_restore_into_a_different_tree_names_the_leaf(saved_run, mesh8, abstract_state):
    sharding = NamedSharding(mesh8, P())
    wider = models.build("net14", activation="prelu", width=0.125, num_classes=NUM_CLASSES)
    wrong_shapes = abstract_state.replace(
        params=jax.eval_shape(
            lambda key: models.init_params(wider, key, IMAGE_SIZE), jax.random.key(0)
        )
    )
    plain_sgd = abstract_state.replace(opt_state=optax.sgd(0.01).init(abstract_state.params))
    with checkpoints.Checkpointer(saved_run, save_every_steps=STEP, keep=2) as ckpt:
        with pytest.raises(checkpoints.CheckpointError, match=r"step 10 .*params\.conv1\.act\.a"):
            ckpt.restore(STEP, target(wrong_shapes, sharding))
        with pytest.raises(checkpoints.CheckpointError, match="opt_state.count"):
            ckpt.restore(STEP, target(plain_sgd, sharding))
        with pytest.raises(checkpoints.CheckpointError, match="no checkpoint for step 11"):
            ckpt.restore(11, target(abstract_state, sharding))
        with pytest.raises(ValueError, match="no sharding"):
            ckpt.restore(STEP, abstract_state)


def test_retention_keeps_the_last_and_every_period(tmp_path):
    state = {"w": jnp.arange(4.0)}
    with checkpoints.Checkpointer(
        tmp_path, save_every_steps=1, keep=2, keep_steps=range(5, 100, 5)
    ) as ckpt:
        for step in range(1, 11):
            assert ckpt.save(step, state, {"step": step})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [5, 9, 10]
    on_disk = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
    assert on_disk == [5, 9, 10]


def test_save_policy_interval_force_and_existing_steps(tmp_path, monkeypatch):
    state = {"w": jnp.arange(4.0)}
    monkeypatch.chdir(tmp_path)  # a relative workdir, as on the command line
    with checkpoints.Checkpointer("run", save_every_steps=3, keep=5, async_save=False) as ckpt:
        assert str(ckpt.directory) == str(tmp_path / "run" / "checkpoints")
        assert ckpt.latest_step() is None
        assert not ckpt.should_save(1)  # no save at the first step of a fresh run
        assert not ckpt.save(1, state, {})
        assert ckpt.save(2, state, {}, force=True)
        assert not ckpt.save(
            2, state, {}, force=True
        )  # e.g. a preemption save after a periodic one
        assert ckpt.should_save(3) and ckpt.save(3, state, {})
        assert not ckpt.should_save(3)
        assert not ckpt.reached_preemption(4)  # single process: no preemption service
        assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(6, state, {"loss": np.float32(1.0)})


def test_model_from_config_converts_json_types():
    config = run_config()
    config.model.spp_levels = [4, 2, 1]
    config.model.layer_scales = ml_collections.ConfigDict({"conv1": 2.0})
    config.model.fc_std = [0.01, 0.01, 0.001]
    config.model.dtype = "bfloat16"
    model = models.from_config(ml_collections.ConfigDict(config.to_dict()).model, 7)
    assert model.architecture.spp_levels == (4, 2, 1)
    assert model.layer_scales == (("conv1", 2.0),)
    assert model.fc_std == (0.01, 0.01, 0.001)
    assert model.dtype == jnp.bfloat16 and model.num_classes == 7

    config.model.num_classes = 5
    assert models.from_config(config.model).num_classes == 5
    assert models.from_config(config.model, 5).num_classes == 5
    with pytest.raises(ValueError, match="num_classes=5 disagrees with num_classes=7"):
        models.from_config(config.model, 7)
    with pytest.raises(ValueError, match="number of classes unknown"):
        models.from_config(run_config().model)
