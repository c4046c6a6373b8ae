"""What reproducing the paper at full scale costs: training FLOPs, chip-hours and dollars.

    python -m rectifiers_jax.analysis.cost [--utilisation=0.4] [--price=tpu_v4:3.22 ...]

For each table and figure: the runs it needs, each run's training FLOPs from the model's
multiply-adds at 224x224 (measured from the model itself by `summary.summarize`: a training
image costs 3 forward passes, forward plus a twice-as-costly backward, at 2 FLOPs per
multiply-add) times the ImageNet images of its epochs, and the chip-hours and cost of that on
each accelerator at `utilisation` of its dense bf16 peak. Evaluation is ignored (under 1%).

Assumptions, all flags: the utilisation (0.4 by default, what the paper's own timing implies:
model A at 2.6 s per 128 images on 4 K20s is 40% of their fp32 peak, printed by the command; not
measured on a TPU or GPU here, as no accelerator was lent to this project's runs) and the prices
per chip-hour (round on-demand figures; they differ by region, commitment and year).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from rectifiers_jax import cli, models, summary
from rectifiers_jax.analysis import tables

IMAGENET_TRAIN = 1_281_167
# The paper (Sec. 3.3): model A trains at 2.6 s per mini-batch of 128 on 4 Nvidia K20 GPUs,
# each 3.52 TFLOP/s fp32 at its peak.
PAPER_SECONDS_PER_BATCH, PAPER_BATCH, PAPER_PEAK = 2.6, 128, 4 * 3.52e12
# Dense bf16 peak TFLOP/s per chip, and an on-demand price in USD per chip-hour (assumptions).
ACCELERATORS = {
    "tpu_v4": (275.0, 3.22),
    "tpu_v5e": (197.0, 1.20),
    "tpu_v5p": (459.0, 4.20),
    "h100": (989.0, 3.00),
    "h200": (989.0, 3.50),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One table or figure: the runs (model, count, epochs) it needs, and what the paper used."""

    name: str
    runs: tuple[tuple[str, int, int], ...]
    paper: str


PLANS = (
    Plan("Table 2 (six net14 rows)", (("net14", 6, 75),), "each 3-4 days on one GPU (model E)"),
    Plan("Fig. 3 (net30, He and Xavier)", (("net30", 2, 75),), "not stated"),
    Plan("Fig. 2 (model B, He and Xavier)", (("model_b", 2, 80),), "as model B below"),
    Plan(
        "Tables 4-6 (A ReLU, A PReLU, B PReLU, C PReLU)",
        (("model_a", 2, 80), ("model_b", 1, 80), ("model_c", 1, 80)),
        "A/B: 3-4 weeks on 4 K20s; C: 3-4 weeks on 8 K40s; A: 2.6 s per 128 images on 4 K20s",
    ),
    Plan(
        "Table 7 (ensemble of 6: one more A, B, C each)",
        (("model_a", 1, 80), ("model_b", 1, 80), ("model_c", 1, 80)),
        "the models above plus these, about 3-4 weeks each",
    ),
)


def training_flops(name: str, epochs: int) -> float:
    """FLOPs of one full-width 1000-class training run of `epochs` ImageNet epochs."""
    rows = summary.summarize(models.build(name, num_classes=1000), 224)
    multiply_adds = sum(row.multiply_adds for row in rows)
    return 3 * 2 * multiply_adds * IMAGENET_TRAIN * epochs


def plan_rows(
    plans: Sequence[Plan], accelerators: dict[str, tuple[float, float]], utilisation: float
) -> list[dict[str, object]]:
    """One row per plan: its runs, exaFLOPs and per accelerator chip-hours and dollars."""
    flops = {}
    found = []
    for plan in plans:
        total = 0.0
        for name, count, epochs in plan.runs:
            key = (name, epochs)
            if key not in flops:
                flops[key] = training_flops(name, epochs)
            total += count * flops[key]
        row: dict[str, object] = {
            "table / figure": plan.name,
            "runs": ", ".join(f"{c} x {n} ({e} ep.)" for n, c, e in plan.runs),
            "EFLOP": total / 1e18,
        }
        for accelerator, (peak, price) in accelerators.items():
            hours = total / (peak * 1e12 * utilisation) / 3600
            row[f"{accelerator} chip-h"] = round(hours)
            row[f"{accelerator} $"] = round(hours * price)
        row["paper's hardware"] = plan.paper
        found.append(row)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--utilisation", type=float, default=0.4, help="fraction of bf16 peak (default 0.4)"
    )
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        help="NAME:USD_PER_CHIP_HOUR, e.g. h100:2.10 (repeatable); names: "
        + ", ".join(ACCELERATORS),
    )
    args = parser.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        raise cli.UsageError(f"--utilisation={args.utilisation} must be in (0, 1]")
    accelerators = dict(ACCELERATORS)
    for item in args.price:
        name, _, price = item.partition(":")
        if name not in accelerators:
            raise cli.UsageError(
                f"--price={item!r}: unknown accelerator; valid: {', '.join(ACCELERATORS)}"
            )
        try:
            accelerators[name] = (accelerators[name][0], float(price))
        except ValueError:
            raise cli.UsageError(f"--price={item!r}: the price must be a number") from None
    rows = plan_rows(PLANS, accelerators, args.utilisation)
    per_image = training_flops("model_a", 1) / IMAGENET_TRAIN
    paper = per_image * PAPER_BATCH / PAPER_SECONDS_PER_BATCH / PAPER_PEAK
    print(
        f"the paper's model A: {per_image * PAPER_BATCH / 1e12:.1f} TFLOP per batch of 128 in "
        f"{PAPER_SECONDS_PER_BATCH} s on 4 K20s = {paper:.0%} of their fp32 peak"
    )
    print(
        f"utilisation {args.utilisation:.0%} of dense bf16 peak; prices per chip-hour: "
        + ", ".join(f"{n} ${p:.2f}" for n, (_, p) in accelerators.items())
    )
    print(tables.markdown_table(rows, ".2f"))
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
