"""Test-wide set-up: 8 fake CPU devices, so the sharded code paths run in CI, and a persistent
compilation cache, so the many small models the tests compile are built once per machine.

Both must be set before JAX initialises its backends, hence here, before any test imports jax.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "rectifiers_jax_test_jit_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import json  # noqa: E402  (after the environment above)
import pathlib  # noqa: E402

import pytest  # noqa: E402
import support  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: trains, spawns processes or compiles big models (-m 'not slow' skips)"
    )


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """scikit-learn's digits prepared once per session as a TFDS dataset."""
    from rectifiers_jax.data import digits  # imports TensorFlow: only when a test needs the data

    data_dir = str(tmp_path_factory.getbasetemp() / "digits_tfds")
    digits.prepare_digits(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> pathlib.Path:
    """`support.FOLDER_LAYOUT` written once per session: photographs in class folders."""
    root = tmp_path_factory.getbasetemp() / "photo_folder"
    return root if root.exists() else support.make_photo_folder(root)


@pytest.fixture(scope="session")
def tiny_photos_dir(tmp_path_factory) -> str:
    """`support.TinyPhotos` prepared once per session (an unregistered TFDS dataset)."""
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.getbasetemp() / "tiny_photos_tfds")
    builder = support.tiny_photos_builder()(data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return data_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> pathlib.Path:
    """A real PReLU run of 4 steps, trained once per session (reused if already done)."""
    from rectifiers_jax import train

    workdir = tmp_path_factory.getbasetemp() / "tiny_run"
    status = workdir / "status.json"
    if not (status.exists() and json.loads(status.read_text())["status"] == "done"):
        config = support.tiny_config(digits_dir, **{"train.num_steps": 4})
        result = train.train_and_evaluate(config, str(workdir))
        assert result["status"] == "done"
    return workdir
