"""Cost of PReLU against ReLU: train-step time of the same model with each activation.

    python -m benchmarks.activation_cost [--model net14] [--width 0.25] [--image_size 112]
        [--batch 32] [--steps 20] [--json activation_cost.json]

The paper says PReLU's cost is negligible in forward and backward (Sec. 2.1). Every activation is
timed in the same process, interleaved round by round, and reported as a ratio to ReLU, since
absolute times drift on shared machines. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np

from rectifiers_jax import cli, models, optim, parallel, train

ACTIVATIONS = ("relu", "lrelu", "prelu_shared", "prelu")


def main(argv: list[str] | None = None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="net14", choices=models.NAMES)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per activation per round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="activation_cost.json")
    args = parser.parse_args(argv)

    mesh = parallel.create_mesh()
    rng = np.random.default_rng(0)
    batch = parallel.global_batch(
        {
            "image": rng.normal(0, 60, (args.batch, args.image_size, args.image_size, 3)).astype(
                np.float32
            ),
            "label": rng.integers(0, 1000, args.batch).astype(np.int32),
        },
        mesh,
    )
    runners = {}
    for activation in ACTIVATIONS:
        model = models.build(
            args.model, activation=activation, width=args.width, fc_std=(0.01, 0.01, 0.001)
        )
        tx = optim.momentum_sgd(0.01, weight_decay=5e-4)
        step = train.jit_train_step(model, tx, 0, mesh)
        state = train.create_train_state(model, tx, 0, args.image_size, mesh)
        state, metrics = step(state, batch)  # compile outside the timing
        jax.block_until_ready(metrics)
        runners[activation] = [step, state]

    seconds = {a: [] for a in ACTIVATIONS}
    for _ in range(args.rounds):
        for activation in ACTIVATIONS:
            step, state = runners[activation]
            start = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            seconds[activation].append((time.perf_counter() - start) / args.steps)
            runners[activation][1] = state
    best = {a: min(s) for a, s in seconds.items()}
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "model": args.model,
        "width": args.width,
        "image_size": args.image_size,
        "batch": args.batch,
        "seconds_per_step": best,
        "ratio_to_relu": {a: best[a] / best["relu"] for a in ACTIVATIONS},
    }
    print(f"{args.model} width {args.width}, {args.image_size}px, batch {args.batch}")
    print(f"on {result['machine']}")
    print(f"{'activation':<14} {'ms/step':>10} {'vs relu':>9}")
    for a in ACTIVATIONS:
        print(f"{a:<14} {1e3 * best[a]:>10.1f} {result['ratio_to_relu'][a]:>9.3f}")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
