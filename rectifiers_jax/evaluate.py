"""Evaluate a trained run with the paper's test protocols (PAPER.md section 5).

    python -m rectifiers_jax.evaluate --workdir=RUN [--protocol=center|10view|dense]
        [--scales=256,384,480] [--split=validation] [--step=N] [--batch_size=B]
        [--max_aspect=1.3333] [--data_dir=DIR]

Defaults come from the run's `config.eval.protocol`, its scales (`config.eval.scales` for dense,
the single `config.data.eval_resize` for centre and 10-view, as in the paper), `eval_split` and
`config.train.eval_batch_size`; the latest checkpoint is used unless `--step` is given. Prints a
table and writes `RUN/eval_<protocol>.json` (keys: `protocol`, `scales`, `split`, `step`,
`top1_error`, `top5_error` (percent), `loss` (NLL of the averaged softmax), `num_examples`, and
`per_scale` when several scales are given).

Protocols, each at every shorter side s in `scales` (`rectifiers_jax.evaluators`):
  * `center`: the centre image_size crop of the image resized to shorter side s.
  * `10view`: the four corner crops and the centre crop, and their horizontal flips; the
    softmax is averaged over the 10 views.
  * `dense`: the paper's multi-view testing on feature maps (`evaluators.dense`): every window
    of the last conv map of the whole image and of its flip.
With several scales the softmax of each example is averaged over the scales.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging as absl_logging

from rectifiers_jax import checkpoints, cli, models, parallel, run_files
from rectifiers_jax.data import mean, sources
from rectifiers_jax.evaluators import dense
from rectifiers_jax.evaluators.evaluator import PROTOCOLS, Evaluator

UsageError = cli.UsageError


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
    max_aspect: float = dense.DEFAULT_MAX_ASPECT,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Restores `workdir`'s run, evaluates it and writes `workdir/eval_<protocol>.json`.

    Arguments left None come from the run's config (see the module docstring). Returns the
    JSON's contents. Raises UsageError/FileNotFoundError/ValueError on bad input.
    """
    config = run_files.load_config(workdir)
    eval_config = config.get("eval") or {}
    protocol = protocol or eval_config.get("protocol", "center")
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    image_size = int(config.data.image_size)
    if scales is None:
        # Dense testing is multi-scale (config.eval.scales); the paper's centre and 10-view
        # tests are single-scale, at the evaluation resize.
        dense_scales = eval_config.get("scales", (config.data.eval_resize,))
        scales = dense_scales if protocol == "dense" else (config.data.eval_resize,)
    if not isinstance(scales, str):
        scales = ",".join(str(s) for s in scales)
    scales = parse_scales(scales, image_size)
    if not (math.isfinite(max_aspect) and max_aspect >= 1.0):
        raise UsageError(f"--max_aspect={max_aspect} must be a number >= 1")
    if batch_size is None:
        batch_size = parallel.eval_batch_size(int(config.train.eval_batch_size))
    elif batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be >= 1")
    elif protocol != "dense":
        parallel.check_batch_size(batch_size, "--batch_size")
    if data_dir is not None:
        config.data.data_dir = data_dir
    split = split or config.data.eval_split

    step = checkpoints.resolve_step(workdir, step)
    model, variables = checkpoints.load_model(workdir, step)
    info = sources.get_info(config.data)
    if model.num_classes != info.num_classes:
        raise ValueError(
            f"checkpoint step {step} has {model.num_classes} outputs but dataset "
            f"{info.name!r} has {info.num_classes} classes"
        )
    mesh = parallel.create_mesh()
    params = _replicate(variables["params"], mesh)
    absl_logging.info(
        "evaluating %s step %d: %s at scales %s on %r split %r, %d devices",
        workdir,
        step,
        protocol,
        scales,
        info.name,
        split,
        jax.device_count(),
    )
    evaluator = Evaluator(
        config.data,
        model,
        mesh,
        mean=mean.load_mean(config.data),
        protocol=protocol,
        scales=scales,
        split=split,
        batch_size=batch_size,
        max_aspect=max_aspect,
        log_progress=True,
    )
    metrics = evaluator(params)
    if metrics.get("cropped_images"):
        absl_logging.warning(
            "dense: %d images longer than the canvas (max_aspect %.4g) were centre-cropped",
            metrics["cropped_images"],
            max_aspect,
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
        result["canvas"] = {str(s): dense.canvas_side(s, max_aspect) for s in scales}
        result["window"] = models.feature_map_size(model.architecture, image_size)
    else:
        result["batch_size"] = batch_size
    if jax.process_index() == 0:
        path = run_files.eval_path(workdir, protocol)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(format_table(result), flush=True)
        print(f"wrote {path}", flush=True)
    return result


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
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
        default=dense.DEFAULT_MAX_ASPECT,
        help="Dense canvas side = ceil(scale * max_aspect); a longer side is centre-cropped.",
    )
    add("--data_dir", help="Override config.data.data_dir (TFDS data on this machine).")
    add("--coordinator_address", help="host:port of process 0 (multi-process GPU; else env).")
    add("--num_processes", type=int, help="Number of processes (else from env).")
    add("--process_id", type=int, help="This process's id (else from env).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default sys.argv[1:]) and evaluates; raises on bad input."""
    args = _parser().parse_args(argv)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    evaluate_run(
        args.workdir,
        protocol=args.protocol,
        scales=args.scales,
        split=args.split,
        step=args.step,
        batch_size=args.batch_size,
        max_aspect=args.max_aspect,
        data_dir=args.data_dir,
    )
    return cli.EXIT_DONE


if __name__ == "__main__":
    # orbax's read-only restore warns on every call.
    cli.run(main, library_level=logging.ERROR)
