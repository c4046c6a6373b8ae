"""Classification metrics: the training loss, top-k errors, and masked sums for evaluation.

Errors are in percent. Evaluation sums over rows whose `mask` is True (the input pipeline pads
the last batches with masked dummies), so every example counts exactly once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (nats), [B, K] logits and [B] int labels -> [B]."""
    return optax.losses.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )


def topk_wrong(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """[B] float: 1 where the label is not among the k highest scores."""
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    # Rank = number of classes scoring strictly higher than the label; ties count as correct.
    rank = jnp.sum(scores > label_score, axis=-1)
    return (rank >= k).astype(jnp.float32)


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
