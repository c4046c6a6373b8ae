"""Per-layer std of the responses y_l and the gradients dE/dy_l at initialisation (Eqs. 9, 13).

    python -m rectifiers_jax.analysis.variance --model net30 --init he_fan_in,xavier

Paper Sec. 2.2: with n_l Var[w_l] = 2 (He, Eq. 10) the response variance keeps its size through
depth; with n_l Var[w_l] = 1 ("Xavier") every layer halves it, so after l layers the std is
(1/sqrt(2))^l of He's, a log2 ratio slope of -0.5 per layer. Backward (Eq. 13) the gradient
dE/dy_l shrinks the same way from the top, (1/sqrt(2))^(L-l) for L weight layers. Expected for
net30 with ReLU: He keeps the last conv layer's response std within a factor of 2 of the first's
(the two max pools raise it somewhat); Xavier ends about 2^(-14) below He.

Set-up: unit Gaussian pixels `[B, N, N, 3]` and the loss sum(logits * g) with a fixed unit Gaussian
`g [B, num_classes]`, so dE/dlogits has unit variance; dropout is off (train=False). Every init
draws from the same key, so their weights differ only in scale (common random numbers). The stds
are over batch, positions and channels. The fc layers use the named init too (no fixed `fc_std`),
as in the paper's derivation. Writes OUT/variance_<model>_<activation>.csv and .png.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rectifiers_jax import cli, initializers, layers, models


@dataclasses.dataclass(frozen=True)
class VarianceResult:
    """Per-layer stds for each init; arrays are `[L]` over `layers` (the activated layers)."""

    model: str
    activation: str
    layers: list[str]
    response_std: dict[str, np.ndarray]
    gradient_std: dict[str, np.ndarray]


def _probe(model: models.SPPNet, params, perturbations, x: jax.Array, g: jax.Array):
    """(std of y_l, std of dE/dy_l), each `[L]`, for loss = sum(logits * g)."""

    def loss(perturbations):
        variables = {"params": params, "perturbations": perturbations}
        logits, state = model.apply(variables, x, mutable=["intermediates"])
        return jnp.sum(logits * g), state["intermediates"]

    # The zero perturbation added to each y_l has the same gradient as y_l itself.
    grads, intermediates = jax.grad(loss, has_aux=True)(perturbations)
    names = models.activated_layers(model)
    response = jnp.stack([jnp.std(intermediates[n]["response"][0]) for n in names])
    gradient = jnp.stack([jnp.std(grads[n]["response"]) for n in names])
    return response, gradient


def measure(
    model_name: str,
    inits: Sequence[str],
    *,
    activation: str = "relu",
    width: float = 0.25,
    image_size: int = 96,
    batch: int = 8,
    num_classes: int = 1000,
    seed: int = 0,
) -> VarianceResult:
    """Builds `model_name` once per init and measures every activated layer at initialisation."""
    unknown = [name for name in inits if name not in initializers.NAMES]
    if unknown or not inits:
        raise ValueError(
            f"unknown initializer(s) {', '.join(unknown) or '(none given)'}; "
            f"valid: {', '.join(initializers.NAMES)}"
        )
    nets = {
        init: models.build(
            model_name,
            activation=activation,
            width=width,
            init=init,
            num_classes=num_classes,
            probe_gradients=True,
        )
        for init in inits
    }
    first = nets[inits[0]]
    models.check_image_size(first.architecture, image_size, image_size, first.spp_bins)
    x_key, g_key = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(x_key, (batch, image_size, image_size, 3))
    g = jax.random.normal(g_key, (batch, num_classes))
    # The init scheme only matters when parameters are created, so one compiled probe serves all.
    probe = jax.jit(functools.partial(_probe, first))
    response, gradient = {}, {}
    for init, net in nets.items():
        # lazy_init creates the variables without running the network; rbg keys compile
        # several times faster than threefry on CPU. The same key for every init.
        key = jax.random.key(seed, impl="rbg")
        variables = net.lazy_init({"params": key}, jax.ShapeDtypeStruct(x.shape, x.dtype))
        r, d = probe(variables["params"], variables["perturbations"], x, g)
        response[init], gradient[init] = np.asarray(r), np.asarray(d)
    return VarianceResult(
        model_name, activation, models.activated_layers(first), response, gradient
    )


def log2_slope(ratio: np.ndarray) -> float:
    """Least-squares slope of log2(ratio) against the layer index 1..L (per layer)."""
    index = np.arange(1, len(ratio) + 1)
    return float(np.polyfit(index, np.log2(ratio), 1)[0])


def columns(result: VarianceResult) -> dict[str, list]:
    """The table as ordered columns: layer index, name, then per init response and gradient std."""
    table: dict[str, list] = {
        "index": list(range(1, len(result.layers) + 1)),
        "layer": list(result.layers),
    }
    for init in result.response_std:
        table[f"{init}/response_std"] = result.response_std[init].tolist()
        table[f"{init}/gradient_std"] = result.gradient_std[init].tolist()
    return table


def summary_lines(result: VarianceResult) -> list[str]:
    """Depth ratios per init and, against the first init, the per-layer log2 slopes."""
    lines = []
    convs = [i for i, name in enumerate(result.layers) if name.startswith("conv")]
    for init, std in result.response_std.items():
        grad = result.gradient_std[init]
        lines.append(
            f"{init}: last/first conv response std {std[convs[-1]] / std[convs[0]]:.3g}, "
            f"first/last gradient std {grad[0] / grad[-1]:.3g}"
        )
    base, *others = result.response_std
    for init in others:
        forward = log2_slope(result.response_std[init] / result.response_std[base])
        backward = log2_slope(result.gradient_std[init] / result.gradient_std[base])
        lines.append(
            f"{init}/{base}: log2 std ratio per layer {forward:+.3f} forward, {backward:+.3f} "
            f"backward (paper, xavier/he: -0.5, +0.5)"
        )
    return lines


def format_table(result: VarianceResult) -> str:
    """Plain-text table followed by the summary lines."""
    table = columns(result)
    header = list(table)
    widths = [max(len(h), 9) for h in header]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    for row in zip(*table.values(), strict=True):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines + summary_lines(result))


def write_csv(result: VarianceResult, path: Path) -> None:
    """The table as CSV, full float precision."""
    table = columns(result)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table)
        writer.writerows(zip(*table.values(), strict=True))


def plot(result: VarianceResult, path: Path) -> None:
    """PNG: response and gradient std against layer index, log scale, one line per init."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    index = np.arange(1, len(result.layers) + 1)
    for axis, (title, stds) in zip(
        figure.subplots(1, 2),
        [
            ("response y_l (Eq. 9)", result.response_std),
            ("gradient dE/dy_l (Eq. 13)", result.gradient_std),
        ],
        strict=True,
    ):
        for init, std in stds.items():
            axis.plot(index, std, marker="o", markersize=3, label=init)
        axis.set_yscale("log")
        axis.set_xlabel("layer index l")
        axis.set_ylabel("std")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(f"{result.model} ({result.activation}) at initialisation")
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.variance", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="net30", help=f"one of {', '.join(models.NAMES)}")
    parser.add_argument(
        "--init", default="he_fan_in,xavier", help="comma-separated initializer names"
    )
    parser.add_argument(
        "--activation", default="relu", help=f"one of {', '.join(layers.ACTIVATIONS)}"
    )
    parser.add_argument(
        "--width", type=float, default=0.25, help="width multiplier (1.0: the paper's)"
    )
    parser.add_argument("--image_size", type=int, default=96, help="square input side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/variance", help="folder for the CSV and PNG")
    args = parser.parse_args(argv)
    result = measure(
        args.model,
        [name for name in args.init.split(",") if name],
        activation=args.activation,
        width=args.width,
        image_size=args.image_size,
        batch=args.batch,
        num_classes=args.num_classes,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"variance_{args.model}_{args.activation}"
    size = f"{args.image_size}x{args.image_size}"
    print(f"{args.model} ({args.activation}), width {args.width}, {size}, batch {args.batch}")
    print(format_table(result))
    write_csv(result, stem.with_suffix(".csv"))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.csv and {stem}.png")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
