"""Classify image files with a trained run: the top classes of each, with their probabilities.

    python -m rectifiers_jax.predict --workdir=runs/default IMAGE [IMAGE ...] [--top_k=5]
        [--step=N]

Uses `inference.Predictor` (the run's evaluation centre protocol; no dataset, no TensorFlow).
Prints one block per image: its path, then `rank. class  probability` lines.
"""

from __future__ import annotations

from collections.abc import Sequence

from rectifiers_jax import cli, inference


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--workdir", required=True, help="the run directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown per image")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise cli.UsageError(f"--top_k must be >= 1, got {args.top_k}")
    predictor = inference.Predictor.from_workdir(args.workdir, args.step)
    images = [inference.load_image(path) for path in args.images]
    for path, probs in zip(args.images, predictor(images), strict=True):
        print(path)
        for rank, (name, p) in enumerate(predictor.top_k(probs, args.top_k), start=1):
            print(f"  {rank}. {name:<24} {p:.4f}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main)
