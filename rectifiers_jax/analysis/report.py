"""Every run's results beside the paper's numbers, as Markdown.

    python -m rectifiers_jax.analysis.report runs/net14_relu runs/net14_prelu --out report.md

Per run: config (model, activation, init, dataset), status, step, epoch, parameter count (from
the latest checkpoint), then one result line per evaluation: the training loop's last one
(metrics.jsonl, centre crop at `data.eval_resize`) and every `RUN/eval_<protocol>.json` written
by `python -m rectifiers_jax.evaluate`. Each sits beside the paper's row for the same model,
activation, init and protocol (`analysis.paper.find_result`); "same protocol" says whether the
protocol and scales match the paper's. The paper's numbers are ImageNet 2012 validation errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from rectifiers_jax import cli, run_files
from rectifiers_jax.analysis import paper, tables

# ----------------------------------------------------------------------------------------------
# The report.


def _metric(record: Mapping[str, Any], name: str) -> Any:
    """`name` or `eval/<name>` from an evaluation record."""
    return record.get(name, record.get(f"eval/{name}"))


def _scales(record: Mapping[str, Any]) -> tuple[int, ...] | None:
    for key in ("scales", "scale", "resize", "eval_resize"):
        value = record.get(key)
        if value is not None:
            return tuple(int(s) for s in (value if isinstance(value, list | tuple) else [value]))
    return None


def _evaluation(source: str, protocol: str, scales: Any, record: Mapping[str, Any]) -> dict:
    return {
        "source": source,
        "protocol": protocol,
        "scales": scales,
        **{k: _metric(record, k) for k in ("top1_error", "top5_error", "num_examples")},
    }


def evaluations(workdir: str | epath.PathLike, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's evaluations: the training loop's last one, then each `eval_<protocol>.json`
    (and, for several scales, each scale's own numbers from its `per_scale`).

    Each is {"source", "protocol", "scales", "top1_error", "top5_error", "num_examples"}.
    """
    found = []
    last = run_files.final_eval(workdir)
    if last:
        resize = int(config.get("data", {}).get("eval_resize", 0)) or None
        found.append(_evaluation(f"training (step {last.get('step')})", "center", (resize,), last))
    for path in sorted(epath.Path(workdir).glob("eval_*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        protocol = record.get("protocol", path.stem.removeprefix("eval_"))
        source = path.name + (f" (step {record['step']})" if "step" in record else "")
        if record.get("split") not in (None, config.get("data", {}).get("eval_split")):
            source += f" on {record['split']}"
        found.append(_evaluation(source, protocol, _scales(record), record))
        for scale, numbers in (record.get("per_scale") or {}).items():
            found.append(_evaluation(f"{source} s={scale}", protocol, (int(scale),), numbers))
    return found


def parameter_counts(workdir: str | epath.PathLike) -> tuple[int | None, int | None]:
    """(all parameters, PReLU slopes) in the latest checkpoint; (None, None) without one."""
    from rectifiers_jax import checkpoints  # JAX and orbax only when a report is made

    try:
        params = checkpoints.load_params(workdir)
    except (OSError, checkpoints.CheckpointError):
        return None, None
    sizes = dict(_flat_sizes(params))
    return sum(sizes.values()), sum(v for k, v in sizes.items() if k.endswith("act/a"))


def _flat_sizes(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, int]]:
    """("layer/.../name", element count) of every array in a nested dict."""
    found = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            found += _flat_sizes(value, f"{prefix}{key}/")
        else:
            found.append((f"{prefix}{key}", int(getattr(value, "size", 1))))
    return found


def _protocol_label(protocol: str, scales: tuple[int | None, ...] | None) -> str:
    named = [s for s in scales or () if s]
    return protocol + (f" s={','.join(map(str, named))}" if named else "")


def run_rows(
    workdir: str | epath.PathLike, label: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run's summary row, one result row per evaluation beside the paper's row)."""
    run_files.require_run_dir(workdir)
    config = run_files.read_config(workdir)
    model, data = config.get("model", {}), config.get("data", {})
    status = run_files.run_state(workdir)
    metrics = run_files.read_metrics(workdir)
    total, slopes = parameter_counts(workdir)
    dataset = data.get("name") if data.get("source", "tfds") == "tfds" else data.get("folder")
    summary = {
        "run": label,
        "model": model.get("name"),
        "activation": model.get("activation"),
        "init": model.get("init"),
        "dataset": dataset,
        "status": status.get("status", "not started"),
        "step": status.get("step", metrics[-1].get("step") if metrics else None),
        "epoch": metrics[-1].get("epoch") if metrics else None,
        "params": total,
        "PReLU params": slopes,
    }
    results = []
    for evaluation in evaluations(workdir, config):
        row, exact = paper.find_result(
            model.get("name", ""),
            model.get("activation", ""),
            model.get("init", ""),
            evaluation["protocol"],
            evaluation["scales"],
        )
        results.append(
            {
                "run": label,
                "evaluation": evaluation["source"],
                "protocol": _protocol_label(evaluation["protocol"], evaluation["scales"]),
                "examples": evaluation["num_examples"],
                "top-1 %": evaluation["top1_error"],
                "top-5 %": evaluation["top5_error"],
                "paper row": row.label if row else "(none in the paper)",
                "paper protocol": row.protocol_label if row else None,
                "paper top-1 %": row.top1_error if row else None,
                "paper top-5 %": row.top5_error if row else None,
                "same protocol": ("yes" if exact else "no") if row else None,
            }
        )
    if not results:
        results.append({"run": label, "evaluation": "(no evaluation yet)"})
    return summary, results


def build_report(workdirs: Sequence[str | epath.PathLike]) -> str:
    """The Markdown report of `workdirs` (module docstring)."""
    summaries, results = [], []
    for workdir in workdirs:
        summary, rows = run_rows(workdir, tables.run_label(workdir, workdirs))
        summaries.append(summary)
        results += rows
    header = list(max(results, key=len))
    results = [{key: row.get(key) for key in header} for row in results]
    return "\n".join(
        [
            "# Runs beside the paper",
            "",
            tables.markdown_table(summaries, ".2f"),
            "",
            "## Results (top-1 / top-5 error %)",
            "",
            "Paper: He et al. 2015, ImageNet 2012 validation (50,000 images); a run on another "
            "dataset compares in ordering, not in value.",
            "",
            tables.markdown_table(results, ".2f"),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs", nargs="+", help="run directories (workdirs)")
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    text = build_report(args.runs)
    if args.out:
        epath.Path(args.out).write_text(text)
    print(text, end="")
    if args.out:
        print(f"wrote {args.out}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
