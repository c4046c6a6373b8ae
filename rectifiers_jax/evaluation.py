"""Classification metrics and the evaluation loop over a padded, masked validation split.

Every example is counted exactly once: the input pipeline pads the last batches and marks the
padding with `mask = False`, and all processes run the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rectifiers_jax import parallel


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, [B, K] logits and [B] int labels -> [B]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def topk_wrong(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """[B] float: 1 where the label is not among the k highest scores."""
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    # Rank = number of classes scoring strictly higher than the label; ties count as correct.
    rank = jnp.sum(scores > label_score, axis=-1)
    return (rank >= k).astype(jnp.float32)


def predict_probs(model: nn.Module, params, images: jax.Array) -> jax.Array:
    """Softmax [B, K] of [B, H, W, C] images, or averaged over views of [B, V, H, W, C] images."""
    if images.ndim == 5:
        batch, views = images.shape[:2]
        logits = model.apply({"params": params}, images.reshape(batch * views, *images.shape[2:]))
        return jax.nn.softmax(logits).reshape(batch, views, -1).mean(axis=1)
    return jax.nn.softmax(model.apply({"params": params}, images))


def metric_sums(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the unmasked rows of [B, K] probabilities: NLL loss, top-1/top-5 wrong, count."""
    mask = mask.astype(jnp.float32)
    loss = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
    return {
        "loss": jnp.sum(loss * mask),
        "top1_wrong": jnp.sum(topk_wrong(probs, labels, 1) * mask),
        "top5_wrong": jnp.sum(topk_wrong(probs, labels, min(5, probs.shape[-1])) * mask),
        "count": jnp.sum(mask),
    }


def make_eval_step(model: nn.Module) -> Callable:
    """(params, batch) -> sums of loss, top-1 and top-5 errors and the example count."""

    def eval_step(params, batch):
        probs = predict_probs(model, params, batch["image"])
        return metric_sums(probs, batch["label"], batch["mask"])

    return eval_step


def summarize(totals: dict[str, float]) -> dict[str, float]:
    """`metric_sums` totals -> loss per example, top-1/top-5 error in percent, example count."""
    count = totals.get("count", 0.0)
    if count == 0:
        raise ValueError("evaluation saw no examples: the evaluation split is empty")
    return {
        "loss": totals["loss"] / count,
        "top1_error": 100.0 * totals["top1_wrong"] / count,
        "top5_error": 100.0 * totals["top5_wrong"] / count,
        "num_examples": int(count),
    }


def evaluate(
    eval_step: Callable, params, batches: Iterable[dict[str, np.ndarray]], mesh: Mesh
) -> dict[str, float]:
    """Run a jitted `eval_step` over every batch; errors in percent, loss per example."""
    totals: dict[str, float] = {}
    for batch in batches:
        sums = jax.device_get(eval_step(params, parallel.global_batch(batch, mesh)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return summarize(totals)
