"""`Evaluator`: a protocol at one or more scales over a split, as collective jitted steps.

With several scales the softmax of each example is averaged over the scales (the paper's
multi-scale testing). Every example of the split counts exactly once on any number of hosts:
the input pipeline gives each host a disjoint part, pads all hosts to the same step count, and
the masks are kept until the sums. Totals stay on the devices (no per-step host sync).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rectifiers_jax import metrics, models, parallel
from rectifiers_jax.data import input_pipeline
from rectifiers_jax.evaluators import dense, views

PROTOCOLS = input_pipeline.PROTOCOLS


@dataclasses.dataclass(frozen=True)
class ScaleInput:
    """One scale's host batches (re-iterable) and their number."""

    scale: int
    batches: Iterable[dict[str, np.ndarray]]
    num_steps: int


@functools.lru_cache(maxsize=16)
def _jitted_probs(
    model: models.SPPNet, protocol: str, window: int, mesh: jax.sharding.Mesh
) -> Callable:
    """The jitted (params, batch) -> [B, K] softmax of a protocol, sharded over the batch.

    Shared by every scale (a scale with another batch shape compiles once more) and cached
    across calls in one process (the tests evaluate one run several times).
    """
    if protocol == "dense":
        probs_fn = dense.make_dense_probs(model, window)
    else:
        probs_fn = lambda params, batch: views.predict_probs(model, params, batch["image"])
    sharded = parallel.batch_sharded(mesh)
    return jax.jit(
        probs_fn,
        in_shardings=(parallel.replicated(mesh), sharded),
        out_shardings=sharded,
        compiler_options=parallel.compiler_options(),
    )


@functools.lru_cache(maxsize=16)
def _jitted_sums(num_scales: int, mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    """(jitted `_make_step_sums(num_scales)`, jitted totals + sums donating the totals)."""
    replicated = parallel.replicated(mesh)
    step_sums = jax.jit(_make_step_sums(num_scales), out_shardings=replicated)
    add = jax.jit(
        lambda a, b: jax.tree.map(jnp.add, a, b), out_shardings=replicated, donate_argnums=0
    )
    return step_sums, add


def _make_step_sums(num_scales: int) -> Callable:
    """(probs per scale, labels, mask, cropped per scale | None) -> one step's sums.

    Sums: `metric_sums` of the scale-averaged softmax under "all" (plus `cropped`: examples
    cropped at any scale) and of each scale's softmax under "scale<i>" when there are several.
    """

    def step_sums(probs, labels, mask, cropped):
        sums = {"all": metrics.metric_sums(sum(probs) / num_scales, labels, mask)}
        if cropped is not None:
            any_cropped = functools.reduce(jnp.logical_or, cropped) & mask
            sums["all"]["cropped"] = jnp.sum(any_cropped.astype(jnp.float32))
        if num_scales > 1:
            for i, p in enumerate(probs):
                sums[f"scale{i}"] = metrics.metric_sums(p, labels, mask)
                if cropped is not None:
                    sums[f"scale{i}"]["cropped"] = jnp.sum((cropped[i] & mask).astype(jnp.float32))
        return sums

    return step_sums


class Evaluator:
    """Evaluates replicated parameters with one protocol over `scales` of `split`.

    The input pipelines and compiled steps are built once; each call runs the whole split.
    Every process must call it (the steps are collective).
    """

    def __init__(
        self,
        data_config: Any,
        model: models.SPPNet,
        mesh: jax.sharding.Mesh,
        *,
        mean: np.ndarray | None,
        protocol: str = "center",
        scales: Sequence[int] | None = None,
        split: str | None = None,
        batch_size: int,
        max_aspect: float = dense.DEFAULT_MAX_ASPECT,
        log_progress: bool = False,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"eval protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.scales = tuple(scales or (int(data_config.eval_resize),))
        self.split = split or data_config.eval_split
        self.mesh = mesh
        self.log_progress = log_progress
        self.inputs = []
        for scale in self.scales:
            # Dense takes one image per host per step; the global batch size is then unused.
            batches, steps = input_pipeline.eval_iterator(
                data_config,
                global_batch_size=jax.process_count() if protocol == "dense" else batch_size,
                mean=mean,
                split=self.split,
                protocol=protocol,
                resize=scale,
            )
            if protocol == "dense":
                group = jax.local_device_count()
                canvas = dense.canvas_side(scale, max_aspect)
                batches = dense.Regroup(batches, group, canvas, model.architecture)
                steps = math.ceil(steps / group)
            self.inputs.append(ScaleInput(scale, batches, steps))
        # One compiled program per batch shape (per scale for dense), reused for every batch.
        window = models.feature_map_size(model.architecture, int(data_config.image_size))
        self.probs_fn = _jitted_probs(model, protocol, window, mesh)
        self.step_sums, self.add = _jitted_sums(len(self.scales), mesh)

    def _steps(self, params: Any) -> Iterator[tuple[list[jax.Array], dict, list | None]]:
        """Per step: (softmax per scale [B, K], {"label", "mask"} [B], dense crops or None), all
        global arrays sharded over the batch."""
        mesh, scales = self.mesh, self.scales
        inputs_keys = ("image", "sizes") if self.protocol == "dense" else ("image",)
        num_steps = self.inputs[0].num_steps
        log_every = max(1, num_steps // 10)
        start = time.perf_counter()
        steps = zip(*(s.batches for s in self.inputs), strict=True)
        for step, batches in enumerate(steps, start=1):
            first = batches[0]
            for scale, other in zip(scales[1:], batches[1:], strict=True):
                # The per-scale pipelines read the same records in the same order.
                if not (
                    np.array_equal(other["label"], first["label"])
                    and np.array_equal(other["mask"], first["mask"])
                ):
                    raise RuntimeError(
                        f"scale {scale}'s batches do not line up with scale {scales[0]}"
                    )
            probs = [
                self.probs_fn(params, parallel.global_batch({k: b[k] for k in inputs_keys}, mesh))
                for b in batches
            ]
            labels = parallel.global_batch({"label": first["label"], "mask": first["mask"]}, mesh)
            cropped = None
            if self.protocol == "dense":
                cropped = [parallel.global_batch({"c": b["cropped"]}, mesh)["c"] for b in batches]
            yield probs, labels, cropped
            if self.log_progress and (step % log_every == 0 or step == num_steps):
                elapsed = time.perf_counter() - start
                logging.info(
                    "%s evaluation: step %d/%d (%.1f s)", self.protocol, step, num_steps, elapsed
                )

    def __call__(self, params: Any) -> dict[str, Any]:
        """`loss`, `top1_error`, `top5_error` (percent), `num_examples`, for dense
        `cropped_images`; with several scales also `per_scale` {str(scale): the same keys}."""
        totals = None
        for probs, labels, cropped in self._steps(params):
            sums = self.step_sums(probs, labels["label"], labels["mask"], cropped)
            totals = sums if totals is None else self.add(totals, sums)
        if totals is None:
            raise ValueError(f"split {self.split!r} gave no evaluation steps")
        totals = jax.tree.map(float, jax.device_get(totals))

        def summary(sums: dict[str, float]) -> dict[str, Any]:
            result = metrics.summarize(sums)
            if "cropped" in sums:
                result["cropped_images"] = int(sums["cropped"])
            return result

        result = summary(totals["all"])
        if len(self.scales) > 1:
            result["per_scale"] = {
                str(scale): summary(totals[f"scale{i}"]) for i, scale in enumerate(self.scales)
            }
        return result

    def probabilities(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """(softmax float32 [N, K] averaged over the scales, labels int32 [N]) of every example
        of the split, in its storage order, on every process (for combining models)."""
        processes = jax.process_count()
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(processes)]
        for probs, labels, _ in self._steps(params):
            mean = sum(probs) / len(probs)
            rows = [
                multihost_utils.process_allgather(x, tiled=True) for x in (mean, *labels.values())
            ]
            p, label, mask = (np.asarray(r) for r in rows)
            # Global rows are each process's local rows in process order; every process's part
            # of the split is contiguous in storage order.
            per = len(label) // processes
            for i in range(processes):
                keep = mask[i * per : (i + 1) * per]
                parts[i].append(
                    (p[i * per : (i + 1) * per][keep], label[i * per : (i + 1) * per][keep])
                )
        pairs = [pair for process in parts for pair in process]
        return np.concatenate([q for q, _ in pairs]), np.concatenate([y for _, y in pairs])
