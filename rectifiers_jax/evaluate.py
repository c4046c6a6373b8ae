"""Evaluate a trained run with the paper's test protocols (PAPER.md section 5).

    python -m rectifiers_jax.evaluate --workdir=RUN [--protocol=center|10view|dense]
        [--scales=256,384,480] [--split=validation] [--step=N] [--batch_size=B]
        [--max_aspect=1.3333] [--data_dir=DIR]

Defaults come from the run's `config.eval` (protocol, scales), `config.data.eval_split` and
`config.train.eval_batch_size`; the latest checkpoint is used unless `--step` is given. Prints a
table and writes `RUN/eval_<protocol>.json` (keys: `protocol`, `scales`, `split`, `step`,
`top1_error`, `top5_error` (percent), `loss` (NLL of the averaged softmax), `num_examples`, and
`per_scale` when several scales are given).

Protocols, each at every shorter side s in `scales`:
  * `center`: the centre image_size crop of the image resized to shorter side s.
  * `10view`: the four corner crops and the centre crop, and their horizontal flips; the
    softmax is averaged over the 10 views.
  * `dense`: the paper's multi-view testing on feature maps. The whole image, resized to
    shorter side s, goes through the convolutions once; SPP and the fc layers run on every
    window of the last conv map that an image_size x image_size view gives
    (`models.feature_map_size(arch, image_size)`: 14 for models A/B/C at 224, 18 for net14);
    the softmax is averaged over all windows of the image and of its horizontal flip.
With several scales the softmax of each example is averaged over the scales.

Dense evaluation with one compiled program per scale: every resized image is placed in the
top-left corner of a fixed square canvas of side ceil(s * max_aspect) (zeros around it, i.e.
the mean after mean subtraction), and a side longer than the canvas is centre-cropped to it
(counted in the JSON as `cropped_images`; at the default max_aspect 4/3 this is every image
whose aspect ratio exceeds 4:3, e.g. ImageNet's 500x333 photos lose ~5% at each end). Inside
the jitted step every layer's input is zeroed outside the image's valid region (its size
computed on the host with `models.feature_map_size`), which is exactly the zero padding the
convolutions would see on the bare image, so the valid part of the last conv map equals that of
the image run alone; only windows lying fully inside it are averaged. Each step takes one image
per local device on every host (padded with masked dummies), so all hosts run the same steps.

Every example of the split is counted exactly once on any number of hosts: the input pipeline
gives each host a disjoint part, pads all hosts to the same step count, and the masks are kept
until the sums.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging as logging_std
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from etils import epath

from rectifiers_jax import checkpoints, cli, evaluation, input_pipeline, models, parallel

PROTOCOLS = input_pipeline.PROTOCOLS
DEFAULT_MAX_ASPECT = 4 / 3


class UsageError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_scales(text: str, image_size: int) -> tuple[int, ...]:
    """`"256,384,480"` -> (256, 384, 480): integer shorter sides >= image_size, no repeats."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"--scales={text!r}: give comma-separated shorter sides, e.g. 256,384,480")
    scales = []
    for item in items:
        try:
            scale = int(item)
        except ValueError:
            raise UsageError(
                f"--scales={text!r}: {item!r} is not an integer shorter side in pixels"
            ) from None
        if scale < image_size:
            raise UsageError(
                f"--scales={text!r}: scale {scale} is below config.data.image_size={image_size} "
                "(the shorter side must hold one image_size view)"
            )
        scales.append(scale)
    if len(set(scales)) != len(scales):
        raise UsageError(f"--scales={text!r} repeats a scale")
    return tuple(scales)


def _default_batch_size(config: ml_collections.ConfigDict) -> int:
    """config.train.eval_batch_size rounded up to a multiple of the device and process counts."""
    unit = math.lcm(jax.device_count(), jax.process_count())
    return max(unit, math.ceil(int(config.train.eval_batch_size) / unit) * unit)


# ---------------------------------------------------------------------------------------------
# Dense evaluation on a fixed canvas


def canvas_side(scale: int, max_aspect: float) -> int:
    """Side in pixels of the square canvas that holds images of shorter side `scale`."""
    return math.ceil(scale * max_aspect - 1e-9)  # - 1e-9: 3 * (4/3) must stay 4, not 5.


def place_on_canvas(image: np.ndarray, canvas: int) -> tuple[np.ndarray, int, int, bool]:
    """(float32 [canvas, canvas, 3] with `image` top-left and zeros elsewhere, rows, cols,
    cropped): a side longer than the canvas is centre-cropped to it first."""
    height, width = image.shape[:2]
    top, left = max(0, (height - canvas) // 2), max(0, (width - canvas) // 2)
    rows, cols = min(height, canvas), min(width, canvas)
    out = np.zeros((canvas, canvas, image.shape[2]), np.float32)
    out[:rows, :cols] = image[top : top + rows, left : left + cols]
    return out, rows, cols, rows < height or cols < width


def dense_groups(
    batches: Iterable[dict[str, np.ndarray]],
    *,
    group_size: int,
    canvas: int,
    architecture: models.Architecture,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches of `group_size` images from the dense pipeline's one-image batches.

    Yields `{"image": float32 [G, C, C, 3], "sizes": int32 [G, L + 1, 2] (models.map_sizes),
    "label": int32 [G], "mask": bool [G], "cropped": bool [G]}` with C = `canvas`. The last
    group is padded with masked dummies, so a host with n one-image batches yields
    ceil(n / G) groups (the pipeline gives every host the same n).
    """
    full = models.map_sizes(architecture, canvas, canvas)
    rows: list[tuple[np.ndarray, np.ndarray, int, bool, bool]] = []

    def stack() -> dict[str, np.ndarray]:
        while len(rows) < group_size:  # Masked dummies: a blank canvas, every window valid.
            rows.append((np.zeros((canvas, canvas, 3), np.float32), full, 0, False, False))
        image, sizes, label, mask, cropped = zip(*rows, strict=True)
        rows.clear()
        return {
            "image": np.stack(image),
            "sizes": np.stack(sizes),
            "label": np.array(label, np.int32),
            "mask": np.array(mask, bool),
            "cropped": np.array(cropped, bool),
        }

    for batch in batches:
        if batch["image"].shape[0] != 1:
            raise ValueError(f"dense batches hold one image, got {batch['image'].shape}")
        image, height, width, cropped = place_on_canvas(batch["image"][0], canvas)
        mask = bool(batch["mask"][0])
        sizes = models.map_sizes(architecture, height, width) if mask else full
        rows.append((image, sizes, int(batch["label"][0]), mask, cropped and mask))
        if len(rows) == group_size:
            yield stack()
    if rows:
        yield stack()


def _flip_valid(image: jax.Array, width: jax.Array) -> jax.Array:
    """[B, H, C, 3] canvases flipped within their valid width `width` [B] (top-left aligned).

    Column j takes column (w - 1 - j) mod C: the mirror image for j < w, and for j >= w a column
    in [w, C), which is padding (zeros), so the flip stays top-left aligned on zeros.
    """
    cols = (width[:, None] - 1 - jnp.arange(image.shape[2])[None, :]) % image.shape[2]
    return jax.vmap(lambda im, idx: jnp.take(im, idx, axis=1))(image, cols)


def make_dense_probs(model: models.SPPNet, window: int) -> Callable:
    """(params, batch) -> [B, K] softmax averaged over the valid windows of image and flip.

    `batch` as `dense_groups` yields it (image [B, C, C, 3], sizes [B, L + 1, 2]); `window` is
    the last-conv-map side of one image_size view.
    """

    def probs_fn(params, batch):
        image, sizes = batch["image"], batch["sizes"]
        # Stack image and flip on a new axis 1 so each device keeps its own rows (no reshuffle).
        both = jnp.stack([image, _flip_valid(image, sizes[:, 0, 1])], axis=1)
        both = both.reshape(-1, *image.shape[1:])  # [2B, C, C, 3]
        sizes2 = jnp.repeat(sizes, 2, axis=0)
        logits = model.apply(
            {"params": params}, both, window=window, valid_sizes=sizes2
        )  # [2B, R, S, K]
        probs = jax.nn.softmax(logits)
        # Windows lying fully inside the valid last conv map: top-left corner r <= rows - window.
        last = sizes2[:, -1]
        rows = jnp.arange(probs.shape[1])[None, :, None] <= last[:, 0, None, None] - window
        cols = jnp.arange(probs.shape[2])[None, None, :] <= last[:, 1, None, None] - window
        inside = rows & cols  # [2B, R, S]
        total = jnp.sum(jnp.where(inside[..., None], probs, 0.0), axis=(1, 2))
        mean = total / jnp.maximum(jnp.sum(inside, axis=(1, 2)), 1)[:, None]
        return mean.reshape(image.shape[0], 2, -1).mean(axis=1)

    return probs_fn


# ---------------------------------------------------------------------------------------------
# The evaluation loop


@dataclasses.dataclass(frozen=True)
class ScaleInput:
    """One scale's host batches (re-iterable) and their number."""

    scale: int
    batches: Iterable[dict[str, np.ndarray]]
    num_steps: int


def _scale_inputs(
    config: ml_collections.ConfigDict,
    model: models.SPPNet,
    *,
    protocol: str,
    scales: Sequence[int],
    split: str,
    batch_size: int,
    max_aspect: float,
) -> list[ScaleInput]:
    inputs = []
    for scale in scales:
        if protocol == "dense":
            batches, steps = input_pipeline.eval_iterator(
                config.data,
                global_batch_size=jax.process_count(),  # Unused: dense is one image per step.
                split=split,
                protocol="dense",
                resize=scale,
            )
            group = jax.local_device_count()
            canvas = canvas_side(scale, max_aspect)
            grouped = _Regroup(batches, group, canvas, model.architecture)
            inputs.append(ScaleInput(scale, grouped, math.ceil(steps / group)))
        else:
            batches, steps = input_pipeline.eval_iterator(
                config.data,
                global_batch_size=batch_size,
                split=split,
                protocol=protocol,
                resize=scale,
            )
            inputs.append(ScaleInput(scale, batches, steps))
    return inputs


@dataclasses.dataclass(frozen=True)
class _Regroup:
    """Re-iterable `dense_groups` over re-iterable one-image batches."""

    batches: Iterable[dict[str, np.ndarray]]
    group_size: int
    canvas: int
    architecture: models.Architecture

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return dense_groups(
            self.batches,
            group_size=self.group_size,
            canvas=self.canvas,
            architecture=self.architecture,
        )


@functools.lru_cache(maxsize=16)
def _jitted_probs(
    model: models.SPPNet, protocol: str, window: int, mesh: jax.sharding.Mesh
) -> Callable:
    """The jitted (params, batch) -> [B, K] softmax of a protocol, sharded over the batch.

    Shared by every scale (a scale with another batch shape compiles once more) and cached
    across calls in one process (the tests evaluate one run several times).
    """
    if protocol == "dense":
        probs_fn = make_dense_probs(model, window)
    else:
        probs_fn = lambda params, batch: evaluation.predict_probs(model, params, batch["image"])
    sharded = parallel.batch_sharded(mesh)
    return jax.jit(
        probs_fn, in_shardings=(parallel.replicated(mesh), sharded), out_shardings=sharded
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
        sums = {"all": evaluation.metric_sums(sum(probs) / num_scales, labels, mask)}
        if cropped is not None:
            any_cropped = functools.reduce(jnp.logical_or, cropped) & mask
            sums["all"]["cropped"] = jnp.sum(any_cropped.astype(jnp.float32))
        if num_scales > 1:
            for i, p in enumerate(probs):
                sums[f"scale{i}"] = evaluation.metric_sums(p, labels, mask)
                if cropped is not None:
                    sums[f"scale{i}"]["cropped"] = jnp.sum((cropped[i] & mask).astype(jnp.float32))
        return sums

    return step_sums


def evaluate_params(
    config: ml_collections.ConfigDict,
    model: models.SPPNet,
    params: Any,
    mesh: jax.sharding.Mesh,
    *,
    protocol: str,
    scales: Sequence[int],
    split: str,
    batch_size: int,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> dict[str, Any]:
    """Evaluates replicated `params` with one protocol over `scales` (softmax averaged).

    Returns `loss`, `top1_error`, `top5_error` (percent), `num_examples`, and for dense
    `cropped_images`; with several scales also `per_scale` {str(scale): the same keys}.
    Every process must call it (the steps are collective).
    """
    inputs = _scale_inputs(
        config,
        model,
        protocol=protocol,
        scales=scales,
        split=split,
        batch_size=batch_size,
        max_aspect=max_aspect,
    )
    # One compiled program per batch shape (per scale for dense), reused for every batch.
    window = models.feature_map_size(model.architecture, int(config.data.image_size))
    probs_fn = _jitted_probs(model, protocol, window, mesh)
    # Totals stay on the devices (no per-step host sync); `add` donates the old totals.
    step_sums, add = _jitted_sums(len(scales), mesh)
    inputs_keys = ("image", "sizes") if protocol == "dense" else ("image",)
    num_steps = inputs[0].num_steps
    log_every = max(1, num_steps // 10)
    totals = None
    start = time.perf_counter()
    for step, batches in enumerate(zip(*(s.batches for s in inputs), strict=True), start=1):
        first = batches[0]
        for scale, other in zip(scales[1:], batches[1:], strict=True):
            # The per-scale pipelines read the same records in the same order.
            if not (
                np.array_equal(other["label"], first["label"])
                and np.array_equal(other["mask"], first["mask"])
            ):
                raise RuntimeError(f"scale {scale}'s batches do not line up with scale {scales[0]}")
        probs = [
            probs_fn(params, parallel.global_batch({k: b[k] for k in inputs_keys}, mesh))
            for b in batches
        ]
        labels = parallel.global_batch({"label": first["label"], "mask": first["mask"]}, mesh)
        cropped = None
        if protocol == "dense":
            cropped = [parallel.global_batch({"c": b["cropped"]}, mesh)["c"] for b in batches]
        sums = step_sums(probs, labels["label"], labels["mask"], cropped)
        totals = sums if totals is None else add(totals, sums)
        if step % log_every == 0 or step == num_steps:
            logging.info(
                "%s evaluation: step %d/%d (%.1f s)",
                protocol,
                step,
                num_steps,
                time.perf_counter() - start,
            )
    if totals is None:
        raise ValueError(f"split {split!r} gave no evaluation steps")
    totals = jax.tree.map(float, jax.device_get(totals))

    def summary(sums: dict[str, float]) -> dict[str, Any]:
        result = evaluation.summarize(sums)
        if "cropped" in sums:
            result["cropped_images"] = int(sums["cropped"])
        return result

    result = summary(totals["all"])
    if len(scales) > 1:
        result["per_scale"] = {
            str(scale): summary(totals[f"scale{i}"]) for i, scale in enumerate(scales)
        }
    return result


# ---------------------------------------------------------------------------------------------
# The command


def _replicate(params: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host NumPy params -> arrays replicated on every device of every process."""
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), params
    )


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one row per scale (when several) and one for the combination."""
    header = (
        f"{'protocol':<9} {'scales':<16} {'top-1 err %':>11} {'top-5 err %':>11} {'examples':>9}"
    )
    lines = [header, "-" * len(header)]

    def row(scales: str, r: dict[str, Any]) -> str:
        return (
            f"{result['protocol']:<9} {scales:<16} {r['top1_error']:>11.2f} "
            f"{r['top5_error']:>11.2f} {r['num_examples']:>9d}"
        )

    for scale, per in result.get("per_scale", {}).items():
        lines.append(row(scale, per))
    lines.append(row(",".join(str(s) for s in result["scales"]), result))
    return "\n".join(lines)


def evaluate_run(
    workdir: str,
    *,
    protocol: str | None = None,
    scales: str | Sequence[int] | None = None,
    split: str | None = None,
    step: int | None = None,
    batch_size: int | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Restores `workdir`'s run, evaluates it and writes `workdir/eval_<protocol>.json`.

    Arguments left None come from the run's config (see the module docstring). Returns the
    JSON's contents. Raises UsageError/FileNotFoundError/ValueError on bad input.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise UsageError(f"--protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not epath.Path(workdir).exists():
        raise FileNotFoundError(f"run directory {workdir} does not exist")
    config = checkpoints.load_config(workdir)
    eval_config = config.get("eval") or {}
    protocol = protocol or eval_config.get("protocol", "center")
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    image_size = int(config.data.image_size)
    if scales is None:
        scales = eval_config.get("scales", (config.data.eval_resize,))
    if not isinstance(scales, str):
        scales = ",".join(str(s) for s in scales)
    scales = parse_scales(scales, image_size)
    if not (math.isfinite(max_aspect) and max_aspect >= 1.0):
        raise UsageError(f"--max_aspect={max_aspect} must be a number >= 1")
    if batch_size is None:
        batch_size = _default_batch_size(config)
    elif batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be >= 1")
    elif protocol != "dense":
        parallel.check_batch_size(batch_size, "--batch_size")
    if data_dir is not None:
        config.data.data_dir = data_dir
    split = split or config.data.eval_split

    step = checkpoints.resolve_step(workdir, step)
    model, variables = checkpoints.load_model(workdir, step)
    info = input_pipeline.get_info(config.data)
    if model.num_classes != info.num_classes:
        raise ValueError(
            f"checkpoint step {step} has {model.num_classes} outputs but dataset "
            f"{info.name!r} has {info.num_classes} classes"
        )
    mesh = parallel.create_mesh()
    params = _replicate(variables["params"], mesh)
    logging.info(
        "evaluating %s step %d: %s at scales %s on %r split %r, %d devices",
        workdir,
        step,
        protocol,
        scales,
        info.name,
        split,
        jax.device_count(),
    )
    metrics = evaluate_params(
        config,
        model,
        params,
        mesh,
        protocol=protocol,
        scales=scales,
        split=split,
        batch_size=batch_size,
        max_aspect=max_aspect,
    )
    result: dict[str, Any] = {
        "protocol": protocol,
        "scales": list(scales),
        "split": split,
        "step": int(step),
        "model": config.model.name,
        "dataset": info.name,
        **metrics,
    }
    if protocol == "dense":
        result["max_aspect"] = max_aspect
        result["canvas"] = {str(s): canvas_side(s, max_aspect) for s in scales}
        result["window"] = models.feature_map_size(model.architecture, image_size)
    else:
        result["batch_size"] = batch_size
    if jax.process_index() == 0:
        path = epath.Path(workdir) / f"eval_{protocol}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(format_table(result), flush=True)
        print(f"wrote {path}", flush=True)
    return result


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # One line instead of usage + message.
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="python -m rectifiers_jax.evaluate",
        description="Evaluate a run with the paper's test protocols; writes "
        "RUN/eval_<protocol>.json.",
    )
    add = parser.add_argument
    add("--workdir", required=True, help="The run directory (config.json, checkpoints/).")
    add("--protocol", help=f"One of {', '.join(PROTOCOLS)} (default: config.eval.protocol).")
    add("--scales", help="Shorter sides, e.g. 256,384,480 (default: config.eval.scales).")
    add("--split", help="Split to evaluate (default: config.data.eval_split).")
    add("--step", type=int, help="Checkpoint step (default: the latest).")
    add(
        "--batch_size",
        type=int,
        help="Global batch for center/10view (default: config.train.eval_batch_size, rounded up "
        "to a multiple of the devices); dense takes one image per device per step.",
    )
    add(
        "--max_aspect",
        type=float,
        default=DEFAULT_MAX_ASPECT,
        help="Dense canvas side = ceil(scale * max_aspect); a longer side is centre-cropped.",
    )
    add("--data_dir", help="Override config.data.data_dir (TFDS data on this machine).")
    add("--coordinator_address", help="host:port of process 0 (multi-process GPU; else env).")
    add("--num_processes", type=int, help="Number of processes (else from env).")
    add("--process_id", type=int, help="This process's id (else from env).")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses `argv` (default sys.argv[1:]), evaluates, returns the JSON's contents."""
    args = _parser().parse_args(argv)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    return evaluate_run(
        args.workdir,
        protocol=args.protocol,
        scales=args.scales,
        split=args.split,
        step=args.step,
        batch_size=args.batch_size,
        max_aspect=args.max_aspect,
        data_dir=args.data_dir,
    )


def run(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: bad input ends with one `error: ...` line and exit code 2."""
    logging.set_verbosity(logging.INFO)
    # No app.run here: install absl's handler, and say the (absl) flags are parsed, which
    # stops absl's "logging before flag parsing" warning.
    logging.use_absl_handler()
    flags.FLAGS.mark_as_parsed()
    # orbax's read-only restore warns on every call.
    cli.quiet_library_logs(logging_std.ERROR)
    try:
        main(argv)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        sys.exit(cli.fail(error))


if __name__ == "__main__":
    run()
