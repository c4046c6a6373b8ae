"""Dead units per layer: the fraction of units never positive over the validation images.

    python -m rectifiers_jax.analysis.dead_units runs/net14_relu runs/net14_prelu [--num_batches=N]

A unit is a channel of a conv layer or a neuron of an fc layer; it is dead when its
pre-activation response y (paper Eq. 9) is <= 0 at every position of every evaluated image.
Computed from each run's latest checkpoint on centre crops of `config.data.eval_split`; printed
side by side for several runs (ReLU vs PReLU), with the last `dead/<layer>` value the training
loop logged (over one training batch) when metrics.jsonl has it. Writes WORKDIR/dead_units.csv
for every run, and the side-by-side table to `--out` when given.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from rectifiers_jax import checkpoints, cli, models, run_files
from rectifiers_jax.analysis import tables
from rectifiers_jax.data import input_pipeline, mean

CSV_NAME = "dead_units.csv"


@dataclasses.dataclass(frozen=True)
class DeadUnits:
    """Per layer (depth order): unit count and how many were never positive; images seen."""

    units: dict[str, int]
    dead: dict[str, int]
    num_images: int

    def fraction(self, layer: str) -> float:
        return self.dead[layer] / self.units[layer]


def ever_positive(response: jax.Array, mask: jax.Array) -> jax.Array:
    """[C] bool: whether each unit of a [B, ..., C] response is > 0 somewhere in a masked-in
    example (mask [B] bool; padding examples are False)."""
    per_example = jnp.max(response, axis=tuple(range(1, response.ndim - 1)))  # [B, C]
    return jnp.any((per_example > 0) & mask[:, None], axis=0)


@functools.lru_cache(maxsize=4)
def make_probe(model: models.SPPNet) -> Callable:
    """Jitted (params, images, mask) -> {layer: [C] bool ever positive} for one batch (one per
    model: runs of the same architecture share the compiled probe)."""

    def probe(params, images, mask):
        _, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
        return {
            layer: ever_positive(captured["response"][0], mask)
            for layer, captured in state["intermediates"].items()
        }

    return jax.jit(probe)


def count_dead(
    model: models.SPPNet,
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    num_batches: int | None = None,
) -> DeadUnits:
    """OR-accumulates "ever positive" over `batches` (at most `num_batches` of them)."""
    probe = make_probe(model)
    alive: dict[str, np.ndarray] = {}
    num_images = 0
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        positive = jax.device_get(probe(params, batch["image"], batch["mask"]))
        for layer, value in positive.items():
            alive[layer] = alive[layer] | value if layer in alive else value
        num_images += int(np.sum(batch["mask"]))
    if not num_images:
        raise ValueError("no validation images were evaluated")
    layers = models.activated_layers(model)
    return DeadUnits(
        units={layer: int(alive[layer].size) for layer in layers},
        dead={layer: int(np.sum(~alive[layer])) for layer in layers},
        num_images=num_images,
    )


def run_dead_units(
    run: checkpoints.Run,
    *,
    num_batches: int | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
) -> DeadUnits:
    """Dead units of a loaded run on its validation split (centre crops)."""
    data = run.config.data
    if data_dir is not None:
        data = data.copy_and_resolve_references()
        data.data_dir = data_dir
    batches, _ = input_pipeline.eval_iterator(
        data,
        global_batch_size=batch_size or run.config.train.eval_batch_size,
        mean=mean.load_mean(data),
    )
    return count_dead(run.model, run.params, batches, num_batches)


def logged_dead(workdir: str | epath.PathLike) -> dict[str, float]:
    """The last logged `dead/<layer>` values of metrics.jsonl ({} when none)."""
    for record in reversed(run_files.read_metrics(workdir)):
        logged = {k.removeprefix("dead/"): v for k, v in record.items() if k.startswith("dead/")}
        if logged:
            return logged
    return {}


def run_rows(result: DeadUnits, logged: dict[str, float]) -> list[dict[str, Any]]:
    """One run's table: layer, units, dead units, fraction dead, last logged fraction."""
    return [
        {
            "layer": layer,
            "units": result.units[layer],
            "dead": result.dead[layer],
            "fraction": result.fraction(layer),
            "logged": logged.get(layer),
        }
        for layer in result.units
    ]


def side_by_side(tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Runs' `run_rows` merged by layer: units (per run only when they differ), then each run's
    fraction dead and last logged fraction."""
    layers = list(dict.fromkeys(row["layer"] for rows in tables.values() for row in rows))
    by_layer = {label: {row["layer"]: row for row in rows} for label, rows in tables.items()}
    units = {
        label: [rows.get(layer, {}).get("units") for layer in layers]
        for label, rows in by_layer.items()
    }
    shared_units = len({tuple(u) for u in units.values()}) == 1
    merged = []
    for i, layer in enumerate(layers):
        row: dict[str, Any] = {"layer": layer}
        if shared_units:
            row["units"] = next(iter(units.values()))[i]
        for label, rows in by_layer.items():
            found = rows.get(layer, {})
            if not shared_units:
                row[f"{label} units"] = found.get("units")
            row[f"{label} dead"] = found.get("fraction")
            row[f"{label} logged"] = found.get("logged")
        merged.append(row)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.dead_units", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdirs", nargs="+", help="run directories (e.g. a ReLU and a PReLU run)")
    parser.add_argument("--num_batches", type=int, help="evaluate at most this many batches")
    parser.add_argument("--batch_size", type=int, help="default: the run's train.eval_batch_size")
    parser.add_argument(
        "--data_dir", help="override config.data.data_dir (e.g. on another machine)"
    )
    parser.add_argument("--out", help="also write the side-by-side table as CSV here")
    args = parser.parse_args(argv)
    if args.num_batches is not None and args.num_batches < 1:
        raise cli.UsageError(f"--num_batches must be >= 1, got {args.num_batches}")
    per_run, lines = {}, []
    for workdir in args.workdirs:
        run = checkpoints.load_run(workdir)
        result = run_dead_units(
            run,
            num_batches=args.num_batches,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
        )
        rows = run_rows(result, logged_dead(workdir))
        tables.write_csv(rows, epath.Path(workdir) / CSV_NAME)
        label = tables.run_label(workdir, args.workdirs)
        per_run[label] = rows
        lines.append(
            f"{label}: {run.config.model.name} {run.config.model.activation}, checkpoint step "
            f"{run.step}, {result.num_images} {run.config.data.eval_split} images "
            f"-> {epath.Path(workdir) / CSV_NAME}"
        )
    merged = side_by_side(per_run)
    if args.out:
        tables.write_csv(merged, args.out)
    print("\n".join(lines))
    print("fraction of units never positive ('dead'); 'logged': last training-batch value")
    print(tables.text_table(merged))
    if args.out:
        print(f"wrote {args.out}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
