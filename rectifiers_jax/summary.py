"""Per-layer table of a paper model: output shape, parameters and multiply-adds.

    python -m rectifiers_jax.summary net14 --activation=prelu --image_size=224

Multiply-adds count conv and fc products only (the paper's "complexity", Table 3): a conv layer
costs H_out * W_out * k * k * C_in * C_out, an fc layer C_in * C_out.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from rectifiers_jax import cli, layers, models


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One row of the summary: layer name, output shape (without batch), counts."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    multiply_adds: int


def summarize(model: models.SPPNet, image_size: int = 224) -> list[LayerRow]:
    """Rows in depth order for one `image_size` x `image_size` image; no FLOP is run."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

    def forward(x):
        variables = model.init({"params": jax.random.key(0)}, x)
        _, state = model.apply(
            {"params": variables["params"]},
            x,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        return variables["params"], state["intermediates"]

    params, captured = jax.eval_shape(forward, x)
    names = [layer.name for layer in model.architecture.layers] + ["spp"]
    names += [f"fc{i + 1}" for i in range(len(model.architecture.fc_features) + 1)]
    rows = []
    for name in names:
        out_shape = tuple(captured[name]["__call__"][0].shape[1:])
        layer_params = jax.tree.leaves(params.get(name, {}))
        count = sum(math.prod(p.shape) for p in layer_params)
        kernel = params.get(name, {}).get("kernel")
        macs = 0 if kernel is None else math.prod(out_shape[:-1]) * math.prod(kernel.shape)
        rows.append(LayerRow(name, out_shape, int(count), int(macs)))
    return rows


def format_table(rows: list[LayerRow]) -> str:
    """Plain-text table with totals."""
    lines = [f"{'layer':<10} {'output':>18} {'params':>14} {'mult-adds':>16}"]
    for r in rows:
        shape = "x".join(str(d) for d in r.output_shape)
        lines.append(f"{r.name:<10} {shape:>18} {r.params:>14,} {r.multiply_adds:>16,}")
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.multiply_adds for r in rows)
    lines.append(f"{'total':<10} {'':>18} {total_params:>14,} {total_macs:>16,}")
    lines.append(f"multiply-adds: {total_macs / 1e10:.3f} x 10^10")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.summary", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", help=f"one of {', '.join(models.NAMES)}")
    parser.add_argument(
        "--activation", default="relu", help=f"one of {', '.join(layers.ACTIVATIONS)}"
    )
    parser.add_argument("--image_size", type=int, default=224, help="square input side in pixels")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--num_classes", type=int, default=1000)
    args = parser.parse_args(argv)
    model = models.build(
        args.model, activation=args.activation, width=args.width, num_classes=args.num_classes
    )
    rows = summarize(model, args.image_size)
    print(f"{args.model} ({args.activation}) at {args.image_size}x{args.image_size}")
    print(format_table(rows))
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main)
