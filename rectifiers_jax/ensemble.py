"""Combine trained runs as the paper's Table 7 does: average the members' softmax per example.

    python -m rectifiers_jax.ensemble --workdirs=RUN_A,RUN_B,... --out=DIR
        [--protocol=center|10view|dense] [--scales=256,384,480]

Each member is evaluated with its own model, parameters (latest checkpoint), input size and
mean, on its own config's evaluation split, by the chosen protocol (`evaluators`; the scales
default to each member's: its eval_resize for centre and 10-view, config.eval.scales for
dense); members may differ in architecture and activation but must see the same examples (the
same dataset and split, checked label by label). The combined softmax is the plain mean of the
members'. Writes DIR/eval_<protocol>.json: `protocol`, `top1_error`, `top5_error` (percent),
`loss`, `num_examples`, and `members` (each member's workdir, model, activation, step, scales
and its own errors).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from rectifiers_jax import checkpoints, cli, metrics, parallel, run_files
from rectifiers_jax.data import mean
from rectifiers_jax.evaluators.evaluator import PROTOCOLS, Evaluator


def summarize(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Loss, top-1/top-5 error (percent) and count of [N, K] probabilities (metrics.summarize)."""
    sums = metrics.metric_sums(jnp.asarray(probs), jnp.asarray(labels), jnp.ones(len(labels)))
    return metrics.summarize(jax.tree.map(float, jax.device_get(sums)))


def member_probabilities(
    workdir: str, protocol: str, scales: Sequence[int] | None, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(softmax [N, K], labels [N], description) of one run by `protocol`."""
    run = checkpoints.load_run(workdir)
    config = run.config
    if scales is None:
        scales = tuple(config.eval.scales) if protocol == "dense" else (config.data.eval_resize,)
    params = jax.device_put(run.params, parallel.replicated(mesh))
    evaluator = Evaluator(
        config.data,
        run.model,
        mesh,
        mean=mean.load_mean(config.data),
        protocol=protocol,
        scales=scales,
        batch_size=parallel.eval_batch_size(config.train.eval_batch_size),
    )
    probs, labels = evaluator.probabilities(params)
    description = {
        "workdir": str(workdir),
        "model": config.model.name,
        "activation": config.model.activation,
        "step": run.step,
        "scales": list(scales),
        **{k: v for k, v in summarize(probs, labels).items() if k != "num_examples"},
    }
    return probs, labels, description


def combine(
    workdirs: Sequence[str], protocol: str, scales: Sequence[int] | None = None
) -> dict[str, Any]:
    """The members' softmax averaged per example, and every member's own errors."""
    if len(workdirs) < 2:
        raise ValueError(f"an ensemble needs at least 2 runs, got {len(workdirs)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    mesh = parallel.create_mesh()
    total, labels, members = None, None, []
    for workdir in workdirs:
        probs, member_labels, description = member_probabilities(workdir, protocol, scales, mesh)
        if labels is not None and not np.array_equal(member_labels, labels):
            raise ValueError(
                f"{workdir} was evaluated on other examples than {workdirs[0]} "
                f"({len(member_labels)} against {len(labels)}): members must share a dataset"
            )
        if total is not None and probs.shape != total.shape:
            raise ValueError(
                f"{workdir} has {probs.shape[1]} classes, {workdirs[0]} {total.shape[1]}"
            )
        labels = member_labels
        total = probs if total is None else total + probs
        members.append(description)
        logging.info("%s: top-1 error %.2f%%", workdir, description["top1_error"])
    return {"protocol": protocol, **summarize(total / len(workdirs), labels), "members": members}


def split_workdirs(text: str) -> list[str]:
    """Run directories from a comma-separated list whose names may hold commas themselves
    (the sweep tool's `variant=prelu,seed=0`): pieces are joined until they name a run."""
    workdirs, pending = [], ""
    for piece in text.split(","):
        pending = f"{pending},{piece}" if pending else piece
        if pending and epath.Path(pending).is_dir():
            workdirs.append(pending)
            pending = ""
    if pending:
        run_files.require_run_dir(pending)  # names the first piece that is no run directory
    for workdir in workdirs:
        run_files.require_run_dir(workdir)
    return workdirs


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.ensemble", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workdirs", required=True, help="comma-separated run directories")
    parser.add_argument("--out", required=True, help="directory for eval_<protocol>.json")
    parser.add_argument("--protocol", default="center", help=f"one of {', '.join(PROTOCOLS)}")
    parser.add_argument("--scales", help="shorter sides, e.g. 256,384,480 (default: each run's)")
    args = parser.parse_args(argv)
    workdirs = split_workdirs(args.workdirs)
    scales = None
    if args.scales:
        try:
            scales = tuple(int(s) for s in args.scales.split(","))
        except ValueError:
            raise cli.UsageError(f"--scales={args.scales!r}: give integers, e.g. 256,384") from None
    result = combine(workdirs, args.protocol, scales)
    if jax.process_index() == 0:
        out = epath.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"eval_{args.protocol}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        for member in result["members"]:
            print(
                f"{member['workdir']:<48} top-1 {member['top1_error']:6.2f}%  top-5 "
                f"{member['top5_error']:6.2f}%"
            )
        print(
            f"{'ensemble of ' + str(len(workdirs)):<48} top-1 {result['top1_error']:6.2f}%  "
            f"top-5 {result['top5_error']:6.2f}%  ({result['num_examples']} examples)"
        )
        print(f"wrote {path}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
