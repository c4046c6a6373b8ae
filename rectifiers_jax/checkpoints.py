"""Checkpoints: an orbax `CheckpointManager` for training, and one-call loaders for notebooks.

Layout (`docs/CONTRACTS.md`): `WORKDIR/checkpoints/<step>/` holds two orbax items,
  * `state`: the whole train state (step, params, opt_state) as an OCDBT PyTree, saved by every
    process from its shards (`ocp.args.StandardSave`);
  * `metadata`: a small JSON dict (epoch, data position, plateau tracker, ...).

Training (every process calls every method; orbax synchronises the hosts itself):

    ckpt = Checkpointer(workdir, save_every_steps=1000, keep=3, keep_steps=epoch_end_steps)
    if (step := ckpt.latest_step()) is not None:
        state, metadata = ckpt.restore(step, abstract_state)  # ShapeDtypeStructs with shardings
    ...
    ckpt.save(step, state, metadata)  # every step: saves on the interval or at a preemption
    ckpt.close()

Notebooks (any machine, any device count; the saving topology does not matter):

    config = load_config(workdir)
    params = load_params(workdir)          # nested dict of NumPy arrays, latest step
    model, variables = load_model(workdir)
    logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from rectifiers_jax import models, run_files
from rectifiers_jax.run_files import load_config

STATE_ITEM = "state"
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
METADATA_ITEM = "metadata"


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be restored (corrupt files, or a different state tree)."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (disk full, directory unwritable, ...): the run must stop."""


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
    """`WORKDIR/checkpoints` as an absolute path (orbax wants absolute local paths)."""
    path = epath.Path(workdir)
    if not path.is_absolute():
        path = path.absolute()
    return path / run_files.CHECKPOINT_DIR


def _one_line(error: BaseException) -> str:
    # orbax wraps tensorstore's reason (naming the array and the file) in a dump of its spec.
    while "See full TensorStore details" in str(error):
        cause = error.__cause__ or error.__context__
        if cause is None:
            break
        error = cause
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:300]}"


class Checkpointer:
    """Saves and restores the train state under `WORKDIR/checkpoints` with orbax.

    A checkpoint is written when `step` is a multiple of `save_every_steps`, when all hosts have
    reached JAX's preemption sync point (multi-host runs with the preemption service), or on
    `force=True`. Kept: the last `keep` checkpoints, plus every checkpoint at one of
    `keep_steps` (e.g. the epoch ends). With `async_save` the arrays are copied to host memory
    before `save` returns (the caller may donate them right after) and written in a background
    thread; a failed write raises `CheckpointSaveError` from the next `save` or from
    `wait_until_finished`.
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        save_every_steps: int,
        keep: int,
        keep_steps: Collection[int] = (),
        async_save: bool = True,
    ):
        if save_every_steps < 1:
            raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}")
        if keep < 1:
            raise ValueError(f"keep (checkpoints to keep) must be >= 1, got {keep}")
        self.directory = checkpoint_dir(workdir)
        # Policies instead of the deprecated save_interval_steps/max_to_keep/keep_period
        # options; orbax's default policy would also add InitialSavePolicy, which saves at
        # whatever step comes first in a fresh run.
        save_policies = [
            checkpoint_managers.FixedIntervalPolicy(save_every_steps),
            checkpoint_managers.PreemptionCheckpointingPolicy(),
        ]
        keep_policies = [checkpoint_managers.LatestN(keep)]
        if keep_steps:
            keep_policies.append(checkpoint_managers.CustomSteps(sorted(keep_steps)))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.AnySavePolicy(save_policies),
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(keep_policies),
            enable_async_checkpointing=async_save,
            # Half-written steps from a killed run are removed, not left to confuse readers.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=_handler_registry(standard=True)
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints kept, ascending."""
        return sorted(self._manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True when all hosts reached JAX's preemption sync point at `step` (save and stop).

        JAX asks for this to be called at every step by every process; without the
        distributed preemption service (single process) it is always False.
        """
        return self._manager.reached_preemption(step)

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without `force` would write a checkpoint."""
        return self._manager.should_save(step)

    def save(
        self, step: int, state: Any, metadata: Mapping[str, Any], *, force: bool = False
    ) -> bool:
        """Saves `state` (a pytree of jax.Arrays) and `metadata` (JSON-able) if due; True if saved.

        A step that already has a checkpoint is not written again (returns False), so a
        forced save right after the periodic one at the same step is harmless.
        """
        try:
            json.dumps(metadata)
        except TypeError as error:
            raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                METADATA_ITEM: ocp.args.JsonSave(dict(metadata)),
            }
        )
        try:
            return self._manager.save(step, args=args, force=force)
        except Exception as error:  # an earlier asynchronous write may fail here too
            raise self._save_error(error) from error

    def _save_error(self, error: BaseException) -> CheckpointSaveError:
        """One line naming the checkpoint directory and the OS error behind a failed write."""
        if isinstance(error, OSError) and error.strerror:
            reason = f"{error.strerror} ({error.filename})" if error.filename else error.strerror
        else:
            reason = str(error).strip().splitlines()[-1].rsplit(": ", 1)[-1]
        return CheckpointSaveError(f"writing a checkpoint to {self.directory} failed: {reason}")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """(state, metadata) of checkpoint `step`, placed with `abstract_state`'s shardings.

        `abstract_state` is the state's pytree of `jax.ShapeDtypeStruct`s with `sharding` set
        (e.g. `jax.eval_shape` + `NamedSharding`); the device count may differ from the one
        that saved. Raises `CheckpointError` naming the step and path if the step is missing or
        cannot be read into that tree.
        """
        _check_abstract_state(abstract_state)
        path = self.directory / str(step)
        if step not in self._manager.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (steps: {self.all_steps()})"
            )
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                METADATA_ITEM: ocp.args.JsonRestore(),
            }
        )
        _check_complete(path, step)
        try:
            stored = self._manager.item_metadata(step)[STATE_ITEM]
            mismatch = _tree_mismatch(abstract_state, stored.tree if stored is not None else None)
            if mismatch is None:
                restored = self._manager.restore(step, args=args)
                state, metadata = restored[STATE_ITEM], restored[METADATA_ITEM]
        except Exception as error:  # orbax/tensorstore raise many types for a bad checkpoint
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {path}: {_one_line(error)}"
            ) from error
        if mismatch is not None:
            raise CheckpointError(f"cannot restore checkpoint step {step} from {path}: {mismatch}")
        if metadata is None:
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {path}: no metadata item"
            )
        return state, metadata

    def wait_until_finished(self) -> None:
        """Blocks until any asynchronous save has been written (and old steps deleted)."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._save_error(error) from error

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads (a failed save was reported by
        `save` or `wait_until_finished` already, so it is only logged here)."""
        try:
            self._manager.close()
        except Exception as error:  # noqa: BLE001  (reported where it happened)
            logging.warning("closing the checkpoint manager: %s", self._save_error(error))

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _check_complete(path: epath.Path, step: int) -> None:
    """A step whose save never finished lacks orbax's step metadata (written last)."""
    if not (path / STEP_METADATA_FILE).exists():
        raise CheckpointError(
            f"cannot restore checkpoint step {step} from {path}: no {STEP_METADATA_FILE} "
            "(its save did not finish, or files were removed)"
        )


def _handler_registry(*, standard: bool) -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Item handlers: Standard for training; PyTree (which allows partial restore) for reading.

    Both write and read the same on-disk format (StandardCheckpointHandler wraps the PyTree one).
    """
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    if standard:
        state_handler = ocp.StandardCheckpointHandler()
        registry.add(STATE_ITEM, ocp.args.StandardSave, state_handler)
        registry.add(STATE_ITEM, ocp.args.StandardRestore, state_handler)
    else:
        state_handler = ocp.PyTreeCheckpointHandler()
        registry.add(STATE_ITEM, ocp.args.PyTreeSave, state_handler)
        registry.add(STATE_ITEM, ocp.args.PyTreeRestore, state_handler)
    json_handler = ocp.JsonCheckpointHandler()
    registry.add(METADATA_ITEM, ocp.args.JsonSave, json_handler)
    registry.add(METADATA_ITEM, ocp.args.JsonRestore, json_handler)
    return registry


def _check_abstract_state(abstract_state: Any) -> None:
    # A ShapeDtypeStruct without sharding would silently come back as a host NumPy array.
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state):
        if getattr(leaf, "sharding", None) is None:
            raise ValueError(
                f"restore target leaf {jax.tree_util.keystr(path)} has no sharding; pass "
                "jax.ShapeDtypeStruct(shape, dtype, sharding=...) for every leaf"
            )


def _tree_mismatch(abstract_state: Any, stored_tree: Any) -> str | None:
    """How the restore target differs from the saved tree (names, shapes, dtypes), or None.

    Checked before restoring: orbax's own errors for these cases are multi-line, and a failed
    shape check leaves its other reads to die noisily when the event loop closes.
    """
    if stored_tree is None:
        return "no state item (missing or unreadable _METADATA)"
    stored = {leaf.name: leaf for leaf in jax.tree.leaves(stored_tree) if hasattr(leaf, "name")}
    names = jax.tree.leaves(ocp.tree.get_param_names(abstract_state, include_empty_nodes=False))
    wanted = dict(zip(names, jax.tree.leaves(abstract_state), strict=True))
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
        return (
            f"the state tree differs from the checkpoint's: target-only leaves {missing[:3]}, "
            f"checkpoint-only leaves {extra[:3]} ({len(missing)} and {len(extra)} in all)"
        )
    for name, leaf in wanted.items():
        have = stored[name]
        if tuple(have.shape) != tuple(leaf.shape) or np.dtype(have.dtype) != np.dtype(leaf.dtype):
            return (
                f"{name} is {tuple(have.shape)} {np.dtype(have.dtype)} in the checkpoint but "
                f"{tuple(leaf.shape)} {np.dtype(leaf.dtype)} in the target"
            )
    return None


# ----------------------------------------------------------------------------------------------
# Notebook API: read a run directory without knowing how it was trained.


def set_aside_newer(workdir: str | epath.PathLike, step: int) -> list[int]:
    """Moves the checkpoints after `step` to `WORKDIR/checkpoints_set_aside/<step>/` (nothing is
    deleted), so a run resumed from `step` neither counts them for retention nor finds their
    steps taken. Returns the steps moved. Process 0 only; the others wait for it."""
    directory = checkpoint_dir(workdir)
    moved = []
    if jax.process_index() == 0 and directory.exists():
        aside = epath.Path(workdir).absolute() / run_files.SET_ASIDE_DIR
        for entry in sorted(directory.iterdir()):
            if entry.name.isdigit() and int(entry.name) > step:
                aside.mkdir(parents=True, exist_ok=True)
                target = aside / entry.name
                if target.exists():
                    target = aside / f"{entry.name}.{int(time.time())}"
                entry.rename(target)
                moved.append(int(entry.name))
        if moved:
            logging.warning("resuming from step %d: moved checkpoints %s to %s", step, moved, aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("set_aside_newer")
    return moved


def _no_checkpoints(workdir: str | epath.PathLike) -> FileNotFoundError:
    status = run_files.read_status(workdir)
    state = f"{status['status']} at step {status['step']}" if status else "not started"
    return FileNotFoundError(f"{workdir} has no checkpoints yet (status: {state})")


def _reader(workdir: str | epath.PathLike) -> tuple[ocp.CheckpointManager, epath.Path]:
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise _no_checkpoints(workdir)
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, save_root_metadata=False
    )
    manager = ocp.CheckpointManager(
        directory, options=options, handler_registry=_handler_registry(standard=False)
    )
    return manager, directory


def _resolve_step(manager: ocp.CheckpointManager, directory: epath.Path, step: int | None) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise _no_checkpoints(directory.parent)
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (steps: {steps})")
    return step


def resolve_step(workdir: str | epath.PathLike, step: int | None = None) -> int:
    """The checkpoint step `step` names (None: the latest); FileNotFoundError if there is none."""
    manager, directory = _reader(workdir)
    try:
        return _resolve_step(manager, directory, step)
    finally:
        manager.close()


def load_params(workdir: str | epath.PathLike, step: int | None = None) -> dict[str, Any]:
    """Parameters of checkpoint `step` (None: the latest) as a nested dict of NumPy arrays.

    Reads only the `params` subtree, through the host CPU: the caller gives no shardings or
    target, so a run saved on 8 devices (or many hosts) loads on a laptop.
    """
    manager, directory = _reader(workdir)
    try:
        step = _resolve_step(manager, directory, step)
        path = directory / str(step)
        _check_complete(path, step)
        try:
            stored = manager.item_metadata(step)[STATE_ITEM]
            if stored is None:
                raise ValueError("no state item (missing or unreadable _METADATA)")
            # The target comes from the checkpoint itself, on one CPU device whatever the
            # saving topology. (Orbax's direct-to-NumPy restore works too, but when a read
            # fails it leaves callbacks to a closed event loop that print tracebacks later.)
            cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
            target = {
                "params": jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
                    stored.tree["params"],
                )
            }
            restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=cpu), target)
            args = ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.PyTreeRestore(
                        item=target, restore_args=restore_args, partial_restore=True
                    )
                }
            )
            restored = manager.restore(step, args=args)[STATE_ITEM]["params"]
        except Exception as error:  # orbax/tensorstore raise many types for a bad checkpoint
            raise CheckpointError(
                f"cannot read params of checkpoint step {step} from {path}: {_one_line(error)}"
            ) from error
    finally:
        manager.close()
    # Host copies, so the CPU device buffers are freed and the arrays are writable.
    return jax.tree.map(np.array, restored)


def _output_width(params: Mapping[str, Any]) -> int:
    """Width of the last fc layer (the class count) from the parameter tree."""
    fc_layers = [name for name in params if name.startswith("fc") and name[2:].isdigit()]
    if not fc_layers:
        raise ValueError(f"no fc layers in params (top-level keys: {sorted(params)})")
    last = max(fc_layers, key=lambda name: int(name[2:]))
    return int(params[last]["bias"].shape[-1])


def load_model(
    workdir: str | epath.PathLike, step: int | None = None
) -> tuple[models.SPPNet, dict[str, Any]]:
    """(module, variables) of a run: `module.apply(variables, images, train=False)` is ready.

    The module is built from `WORKDIR/config.json`; without `config.model.num_classes` the
    class count is read from the checkpoint's last fc layer (no dataset needed).
    """
    config = load_config(workdir)
    params = load_params(workdir, step)
    model = models.from_config(config.model, _output_width(params))
    return model, {"params": params}


@dataclasses.dataclass(frozen=True)
class Run:
    """A run loaded from its workdir: config, model, parameters of checkpoint `step`."""

    workdir: str
    config: ml_collections.ConfigDict
    model: models.SPPNet
    params: dict[str, Any]
    step: int


def load_run(workdir: str | epath.PathLike, step: int | None = None) -> Run:
    """Config, model and NumPy parameters of checkpoint `step` (None: the latest).

    Raises FileNotFoundError (one line) for a missing workdir, a run without checkpoints or a
    step that was not kept.
    """
    run_files.require_run_dir(workdir)
    step = resolve_step(workdir, step)
    model, variables = load_model(workdir, step)
    return Run(str(workdir), load_config(workdir), model, variables["params"], step)
