"""Init-variance ablation sweeps: a grid of config overrides, one workdir per trial.

    python -m launch.sweep configs/sweeps/init_variance.py --dry_run
    python -m launch.sweep configs/sweeps/init_variance.py --local
    python -m launch.sweep configs/sweeps/init_variance.py --tpu=ivsweep --sweep_dir=gs://B/iv
    python -m launch.sweep configs/sweeps/init_variance.py --slurm

A sweep config is a Python file whose `get_sweep()` returns a ConfigDict with
  base_config: "configs/FILE.py" or "configs/FILE.py:ARG", the config every trial starts from;
  sweep_dir:   where the trials go, one workdir `SWEEP_DIR/<trial name>` each;
  axes:        ordered {config key path: [values]}; the trials are the Cartesian product, first
               axis slowest (`ConfigDict(..., allow_dotted_keys=True, sort_keys=False)`);
  fixed:       optional {config key path: value} for every trial;
  variants:    optional ordered {name: {config key path: value, ...}}: a leading axis whose values
               set several keys at once (e.g. Table 2's rows: an activation and its init), named
               `variant=<name>` in trial names;
  claims:      optional claims to test with seeds as replicates, written before any run
               (rectifiers_jax.analysis.replicates; copied into sweep.json);
  tpu, slurm:  optional options of launch/tpu_pod.sh and launch/gpu_slurm.sh, e.g.
               {"zone": "us-central2-b", "queued": True} -> `--zone us-central2-b --queued`.

Every trial's workdir gets `trial.json` (its overrides and exact command) and `SWEEP_DIR/sweep.json`
lists all trials. Running the same sweep again picks up where it stopped: trials whose
status.json says done or diverged are skipped, and so are live ones (running, with a process
holding the workdir's lock or, for gs:// workdirs, a fresh status); the rest (re)run, dead ones
included, and the main job resumes from its own checkpoints.
Commands are run from the repository root; relative paths are relative to it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import json
import posixpath
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath

from rectifiers_jax import cli, run_files

LAUNCH_DIR = Path(__file__).resolve().parent
FINISHED = ("done", "diverged")
# Runs one command (argv) to completion and returns its exit status; tests inject a fake.
Runner = Callable[[list[str]], int]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep config (fields as in the module docstring); `source` is its file."""

    source: str
    base_config: str
    sweep_dir: str
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    tpu: dict[str, Any]
    slurm: dict[str, Any]
    claims: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One grid point: axis values, workdir, the `--config.*` arguments and the training command."""

    name: str
    index: int
    overrides: dict[str, Any]
    workdir: str
    config_args: list[str]
    command: list[str]


def format_value(value: Any) -> str:
    """Command-line text of a config value that ml_collections parses back to exactly `value`.

    Floats use `repr` (the shortest text that round-trips, e.g. 0.0625, 1e-05), bools the
    lower-case words absl expects, tuples and dicts their Python literal. None is refused: a
    tuple field would read "None" as the 1-tuple (None,).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Mapping):
        return repr(dict(value))
    raise ValueError(f"{value!r} ({type(value).__name__}) cannot be passed on the command line")


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`--config.KEY=VALUE` arguments of the main entry point, in order."""
    return [f"--config.{key}={format_value(value)}" for key, value in overrides.items()]


def load_python(spec: str, function: str) -> Any:
    """`function()` (or `function(ARG)`) of the Python file named by "path.py[:ARG]"."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ValueError(f"no such file: {path}")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise ValueError(f"{path} defines no {function}()")
    return getattr(module, function)(arg) if arg else getattr(module, function)()


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def load_sweep(path: str, sweep_dir: str | None = None) -> Sweep:
    """Reads a sweep config file; `sweep_dir` replaces the file's own."""
    config = load_python(path, "get_sweep")
    for field in ("base_config", "axes") + (() if sweep_dir else ("sweep_dir",)):
        if field not in config:
            raise ValueError(f"{path}: get_sweep() sets no {field!r}")
    axes = {key: [_plain(v) for v in values] for key, values in config.axes.items()}
    if not axes or not all(axes.values()):
        raise ValueError(f"{path}: `axes` needs at least one key, each with at least one value")
    fixed = {key: _plain(value) for key, value in (config.get("fixed") or {}).items()}
    variants = {name: _plain(keys) for name, keys in (config.get("variants") or {}).items()}
    varied = {key for keys in variants.values() for key in keys}
    both = sorted((set(axes) | varied) & set(fixed) | set(axes) & varied)
    if both:
        raise ValueError(f"{path}: {', '.join(both)} set by more than one of axes/variants/fixed")
    return Sweep(
        source=path,
        base_config=config.base_config,
        sweep_dir=sweep_dir or config.sweep_dir,
        axes=axes,
        fixed=fixed,
        tpu=_plain(config.get("tpu")) or {},
        slurm=_plain(config.get("slurm")) or {},
        claims=[_plain(claim) for claim in config.get("claims") or ()],
        variants=variants,
    )


def _assign(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets `config.<key>` (`update_from_flattened_dict`, with ConfigDict's type checks); a one-
    line error naming the key and, for an unknown key, the fields that exist."""
    try:
        config.update_from_flattened_dict({key: value})
    except KeyError:
        *parents, field = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(
                    f"unknown config key {key!r}: no section {'.'.join(parents[: depth + 1])!r}"
                ) from None
            node = node[part]
        where = ".".join(parents) or "the config"
        raise ValueError(
            f"unknown config key {key!r}; fields of {where}: {', '.join(sorted(node))}"
        ) from None
    except TypeError as error:
        raise ValueError(f"{key}={format_value(value)}: {error}") from None


def check_overrides(sweep: Sweep) -> None:
    """Applies every fixed and swept value to the base config, so a typo fails before any run.

    The copy is locked, as the main entry point locks it: an unknown key is an error there.
    """
    config = copy.deepcopy(load_python(sweep.base_config, "get_config"))
    config.lock()
    for key, value in sweep.fixed.items():
        _assign(config, key, value)
    for keys in sweep.variants.values():
        for key, value in keys.items():
            format_value(value)
            _assign(config, key, value)
    for key, values in sweep.axes.items():
        for value in values:
            format_value(value)
            _assign(config, key, value)


def axis_labels(keys: Sequence[str]) -> dict[str, str]:
    """Short name of each axis in trial names: the last key component unless two share it."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {
        key: name if last.count(name) == 1 else key for key, name in zip(keys, last, strict=True)
    }


def _name_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "-".join(_name_value(v) for v in value)
    return format_value(value).replace("/", "_").replace(" ", "")


def expand(sweep: Sweep) -> list[Trial]:
    """The grid's trials in order (variants, then the first axis, slowest), named like
    `init=xavier,init_scale=0.25` or `variant=prelu,seed=0`."""
    labels = axis_labels(list(sweep.axes))
    variants = sweep.variants or {"": {}}
    grid = itertools.product(variants.items(), itertools.product(*sweep.axes.values()))
    trials = []
    for index, ((variant, variant_keys), values) in enumerate(grid):
        swept = dict(zip(sweep.axes, values, strict=True))
        overrides = {**variant_keys, **swept}
        name = ",".join(
            ([f"variant={variant}"] if variant else [])
            + [f"{labels[key]}={_name_value(v)}" for key, v in swept.items()]
        )
        workdir = posixpath.join(sweep.sweep_dir, name)
        config_args = override_args({**sweep.fixed, **overrides})
        command = ["python", "-m", "rectifiers_jax.main", f"--config={sweep.base_config}"]
        command += [f"--workdir={workdir}", *config_args]
        trials.append(Trial(name, index, overrides, workdir, config_args, command))
    names = [trial.name for trial in trials]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"{sweep.source}: values give the same trial name: {', '.join(duplicates)}"
        )
    return trials


def trial_status(trial: Trial) -> str:
    """The trial's status (`run_files.run_state`: "dead" for a "running" run that no live
    process backs), or "missing" before its first run."""
    try:
        return run_files.run_state(trial.workdir).get("status", "missing")
    except Exception as error:  # gfile raises its own error types for gs:// paths
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot read {trial.workdir}/status.json: {first_line}") from None


def should_run(status: str) -> bool:
    """Whether a trial with this status (re)runs: all but finished and live ones."""
    return status not in FINISHED and status != "running"


def _script_options(options: Mapping[str, Any]) -> list[str]:
    """{"gpus_per_node": 8, "queued": True} -> ["--gpus-per-node", "8", "--queued"]."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None, ""):
            args += [flag, str(value)]
    return args


def submission_command(
    sweep: Sweep, trial: Trial, backend: str, tpu_name: str = "", reuse: bool = False
) -> list[str]:
    """The launch-script command of one trial: "tpu" runs it to the end on the one slice NAME
    (created by the first trial, reused by the next), "slurm" submits it as a job."""
    if backend == "tpu":
        script = "tpu_pod.sh"
        options = {"name": tpu_name, **sweep.tpu, "reuse": reuse}
    elif backend == "slurm":
        script, options = "gpu_slurm.sh", {"job_name": trial.name, **sweep.slurm}
    else:
        raise ValueError(f"unknown backend {backend!r}; valid: tpu, slurm")
    options |= {"workdir": trial.workdir, "config": sweep.base_config}
    return ["bash", str(LAUNCH_DIR / script), *_script_options(options), "--", *trial.config_args]


def tpu_teardown_command(sweep: Sweep, tpu_name: str) -> list[str]:
    """Deletes the sweep's slice (its queued resource, when it was requested as one)."""
    zone = f"--zone={sweep.tpu.get('zone', '')}"
    if sweep.tpu.get("queued"):
        return [
            "gcloud", "compute", "tpus", "queued-resources", "delete", tpu_name, zone, "--force",
            "--quiet",
        ]  # fmt: skip
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", tpu_name, zone, "--quiet"]


def trial_record(sweep: Sweep, trial: Trial) -> dict[str, Any]:
    """Contents of `trial.json`."""
    return {
        "name": trial.name,
        "index": trial.index,
        "overrides": trial.overrides,
        "fixed": sweep.fixed,
        "base_config": sweep.base_config,
        "workdir": trial.workdir,
        "command": trial.command,
        "command_line": shlex.join(trial.command),
    }


def write_records(sweep: Sweep, trials: Sequence[Trial]) -> None:
    """Writes `sweep.json` and each `trial.json`; refuses a sweep dir made with other commands."""
    for trial in trials:
        path = epath.Path(trial.workdir) / "trial.json"
        record = trial_record(sweep, trial)
        if path.exists():
            if json.loads(path.read_text())["command"] != record["command"]:
                raise ValueError(
                    f"{path} was made with a different command; use another --sweep_dir or "
                    f"delete the old trials"
                )
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    summary = {
        "sweep_config": sweep.source,
        "base_config": sweep.base_config,
        "sweep_dir": sweep.sweep_dir,
        "axes": sweep.axes,
        "labels": axis_labels(list(sweep.axes)),
        "fixed": sweep.fixed,
        "trials": [{"name": t.name, "index": t.index, "overrides": t.overrides} for t in trials],
        "variants": sweep.variants,
        "claims": sweep.claims,
    }
    (epath.Path(sweep.sweep_dir) / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")


def _record_attempt(trial: Trial, command: list[str], exit_code: int) -> None:
    path = epath.Path(trial.workdir) / "trial.json"
    record = json.loads(path.read_text())
    record["last_attempt"] = {"command": command, "exit_code": exit_code}
    path.write_text(json.dumps(record, indent=2) + "\n")


def _subprocess_runner(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode


def run_sweep(
    sweep: Sweep,
    backend: str,
    *,
    tpu_name: str = "",
    dry_run: bool = False,
    runner: Runner = _subprocess_runner,
) -> int:
    """Runs (local, tpu) or submits (slurm) every trial that is not finished; 0 if all went well.

    Trials run one after another, "tpu" ones on one slice that the first creates and that is
    deleted at the end whatever happened; each exit status is recorded in its trial.json. A
    trial that exits non-zero without a finished status.json counts as failed, one that exits 0
    unfinished (e.g. preempted) as unfinished; the sweep goes on and lists both at the end.
    A dry run reads no status from a bucket (it needs no cloud access): it lists every trial.
    """
    trials = expand(sweep)
    submitted = backend == "slurm"
    if dry_run and "://" in sweep.sweep_dir:
        print("# dry run: statuses on the bucket are not read; every trial is listed")
        plan = [(trial, "missing") for trial in trials]
    else:
        plan = [(trial, trial_status(trial)) for trial in trials]
    pending = [trial for trial, status in plan if should_run(status)]
    print(f"# {sweep.source}: {len(trials)} trials in {sweep.sweep_dir}, {len(pending)} to run")
    for trial, status in plan:
        if not should_run(status):
            print(f"# skip {trial.name} ({status})")
    if not dry_run:
        write_records(sweep, trials)
    failed, unfinished = [], []
    try:
        for number, trial in enumerate(pending, start=1):
            if backend != "local":
                reuse = backend == "tpu" and number > 1
                command = submission_command(sweep, trial, backend, tpu_name, reuse)
            elif dry_run:
                command = trial.command
            else:
                # the interpreter running the sweep, so the trials see the same environment
                command = [sys.executable, *trial.command[1:]]
            if dry_run:
                print(shlex.join(command))
                continue
            print(f"# [{number}/{len(pending)}] {trial.name}: {shlex.join(command)}", flush=True)
            exit_code = runner(command)
            _record_attempt(trial, command, exit_code)
            # The main job exits non-zero for a diverged run too: its status.json is the outcome.
            status = "submitted" if submitted else trial_status(trial)
            if status in FINISHED:
                continue
            if exit_code != 0:
                failed.append(f"{trial.name} (exit {exit_code}, status {status})")
            elif not submitted:
                unfinished.append(f"{trial.name} ({status})")
    finally:
        if backend == "tpu" and pending:
            teardown = tpu_teardown_command(sweep, tpu_name)
            print(f"# delete the slice: {shlex.join(teardown)}", flush=True)
            if not dry_run:
                runner(teardown)
    if dry_run:
        return 0
    verb = "submitted" if submitted else "ran"
    print(f"# {verb} {len(pending)}: {len(failed)} failed, {len(unfinished)} unfinished")
    for line in failed:
        print(f"# failed: {line}")
    for line in unfinished:
        print(f"# unfinished (rerun the sweep to resume): {line}")
    return 1 if failed or unfinished else 0


def main(argv: Sequence[str] | None = None, runner: Runner = _subprocess_runner) -> int:
    parser = cli.ArgumentParser(prog="python -m launch.sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_config", help="Python file with get_sweep(), e.g. configs/sweeps/init_variance.py"
    )
    parser.add_argument(
        "--dry_run", action="store_true", help="print the commands; write and run nothing"
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument(
        "--local", action="store_true", help="run the trials here, one after another"
    )
    backend.add_argument(
        "--tpu",
        metavar="NAME",
        help="run the trials one after another on one TPU slice NAME, deleted at the end",
    )
    backend.add_argument("--slurm", action="store_true", help="submit each trial as a Slurm job")
    parser.add_argument(
        "--sweep_dir", help="where the trial workdirs go (default: the config's sweep_dir)"
    )
    args = parser.parse_args(argv)
    if not (args.local or args.tpu or args.slurm or args.dry_run):
        raise cli.UsageError(
            "choose --local, --tpu=NAME or --slurm (or --dry_run to list the trials)"
        )
    sweep = load_sweep(args.sweep_config, args.sweep_dir)
    if args.tpu and not sweep.sweep_dir.startswith("gs://"):
        raise ValueError(
            f"--tpu needs the sweep dir on a bucket (TPU workers share no disk), got "
            f"{sweep.sweep_dir!r}; pass --sweep_dir=gs://BUCKET/..."
        )
    check_overrides(sweep)
    name = "tpu" if args.tpu else "slurm" if args.slurm else "local"
    return run_sweep(sweep, name, tpu_name=args.tpu or "", dry_run=args.dry_run, runner=runner)


if __name__ == "__main__":
    cli.run(main)
