"""Centre-crop and 10-view testing: the softmax of each view, averaged over an example's views."""

from __future__ import annotations

import flax.linen as nn
import jax


def predict_probs(model: nn.Module, params, images: jax.Array) -> jax.Array:
    """Softmax [B, K] of [B, H, W, C] images, or averaged over views of [B, V, H, W, C] images."""
    if images.ndim == 5:
        batch, views = images.shape[:2]
        logits = model.apply({"params": params}, images.reshape(batch * views, *images.shape[2:]))
        return jax.nn.softmax(logits).reshape(batch, views, -1).mean(axis=1)
    return jax.nn.softmax(model.apply({"params": params}, images))
