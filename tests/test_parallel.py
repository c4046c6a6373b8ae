"""XLA options of the models' jitted steps (`parallel.compiler_options`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from rectifiers_jax import parallel


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only options")
def test_cpu_options_keep_convolutions_off_ynnpack_and_dots_on_it():
    def conv_then_dot(x, kernel, w):
        dims = ("NHWC", "HWIO", "NHWC")
        y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims)
        return y.reshape(x.shape[0], -1) @ w

    args = (jnp.ones((4, 8, 8, 32)), jnp.ones((2, 2, 32, 32)), jnp.ones((7 * 7 * 32, 64)))

    def on_ynnpack(options) -> set[str]:
        """The ops (by their jax name) that XLA fused into YNNPACK calls."""
        hlo = jax.jit(conv_then_dot, compiler_options=options).lower(*args).compile().as_text()
        calls = [line for line in hlo.splitlines() if " = " in line and "ynn_fusion" in line]
        return {op for op in ("conv_general_dilated", "dot_general") for c in calls if op in c}

    assert on_ynnpack(None) == {"conv_general_dilated", "dot_general"}  # XLA's default
    assert on_ynnpack(parallel.compiler_options()) == {"dot_general"}
