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

import pytest  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """scikit-learn's digits prepared once per session as a TFDS dataset."""
    from rectifiers_jax import datasets  # imports TensorFlow: only when a test needs the data

    data_dir = str(tmp_path_factory.getbasetemp() / "digits_tfds")
    datasets.prepare_digits(data_dir)
    return data_dir
