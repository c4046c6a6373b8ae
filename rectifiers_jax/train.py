"""The training loop: one config in, a trained, checkpointed, evaluated run out.

`train_and_evaluate(config, workdir)` is what `python -m rectifiers_jax.main` calls and what a
notebook can call too. It runs unchanged on one CPU, 8 fake CPU devices, a GPU box or a TPU pod:
state replicated over a ('data',) mesh, batches sharded along it, one jitted, donated step.

Restarting with the same workdir resumes from the latest checkpoint: parameters, optimizer
state, data position (derived from the step) and dropout keys (folded from the step) all
continue exactly, so an interrupted run ends bit-identical to an uninterrupted one on the CPU.

Before anything is written, the whole config is checked (model, data, optimiser, batch sizes)
and the workdir is locked for this run; a resume refuses a config that changes what the
checkpoints were trained with (`run_files.config_drift`). A refused start leaves every file of
the workdir as it was. SIGTERM and Ctrl-C save and stop (`preemption`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from etils import epath

from rectifiers_jax import (
    checkpoints,
    layers,
    metrics,
    models,
    optim,
    parallel,
    preemption,
    run_files,
)
from rectifiers_jax.data import input_pipeline, mean, preprocessing, sources
from rectifiers_jax.evaluators.evaluator import PROTOCOLS, Evaluator

# Steps after the start (or resume) before a trace begins: the first ones compile.
PROFILE_AFTER_STEPS = 3
# Parameter init uses XLA's RngBitGenerator: it compiles an order of magnitude faster than
# threefry on the CPU (net14's init: ~45 s -> ~7 s here). The init is replicated, so every
# device and host computes the same parameters from the same seed.
PRNG_IMPL = "rbg"


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed."""

    step: jax.Array
    params: Any
    opt_state: Any


class DivergedError(RuntimeError):
    """The loss became non-finite at `step`; the run stops with status `diverged`."""

    def __init__(self, step: int):
        super().__init__(f"loss became non-finite at step {step}")
        self.step = step


def make_train_step(model: models.SPPNet, tx: optax.GradientTransformation, seed: int) -> Callable:
    """(state, batch) -> (state, metrics): one SGD step on the mean loss over the global batch.

    Metrics: `loss`, `top1_error` (percent) and `dead/<layer>`, the fraction of a layer's units
    (channels of a conv, neurons of an fc layer) never positive over the batch.
    """
    # threefry (the default) for dropout: its bits do not depend on how the batch is sharded.
    dropout_base = jax.random.key(seed + 1)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        # Folding in the step gives every step its own dropout key, identical after a resume.
        dropout_key = jax.random.fold_in(dropout_base, state.step)

        def loss_fn(params):
            logits, captured = model.apply(
                {"params": params},
                batch["image"],
                train=True,
                rngs={"dropout": dropout_key},
                mutable=["intermediates"],
            )
            loss = jnp.mean(metrics.cross_entropy(logits, batch["label"]))
            return loss, (logits, captured["intermediates"])

        (loss, (logits, responses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step_metrics = {
            "loss": loss,
            "top1_error": 100.0 * jnp.mean(metrics.topk_wrong(logits, batch["label"], 1)),
        }
        for layer, captured in responses.items():
            response = captured["response"][0]
            never_positive = layers.reduce_over_positions(response, "max") <= 0
            step_metrics[f"dead/{layer}"] = jnp.mean(never_positive.astype(jnp.float32))
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


def jit_train_step(
    model: models.SPPNet, tx: optax.GradientTransformation, seed: int, mesh: jax.sharding.Mesh
) -> Callable:
    """`make_train_step` jitted as training runs it: the state replicated over `mesh` and
    donated (updated in place), the batch split along 'data', the CPU compiler options."""
    return jax.jit(
        make_train_step(model, tx, seed),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
        out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
        donate_argnums=0,
        compiler_options=parallel.compiler_options(),
    )


def _train_state_init(
    model: models.SPPNet, tx: optax.GradientTransformation, seed: int, image_size: int
) -> Callable[[], TrainState]:
    def init() -> TrainState:
        params = models.init_params(model, jax.random.key(seed, impl=PRNG_IMPL), image_size)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    return init


def abstract_train_state(
    model: models.SPPNet, tx: optax.GradientTransformation, seed: int, image_size: int, mesh
) -> TrainState:
    """Shape, dtype and (replicated) sharding of every leaf, computing nothing: a restore target."""
    abstract = jax.eval_shape(_train_state_init(model, tx, seed, image_size))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )


def create_train_state(
    model: models.SPPNet, tx: optax.GradientTransformation, seed: int, image_size: int, mesh
) -> TrainState:
    """Replicated initial state, built by one jitted init with output shardings (no host copy)."""
    abstract = abstract_train_state(model, tx, seed, image_size, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    return jax.jit(_train_state_init(model, tx, seed, image_size), out_shardings=shardings)()


def prelu_slopes(params) -> dict[str, np.ndarray]:
    """Learned `a` of each PReLU layer, flattened ([1] channel-shared, [C] channel-wise);
    their means are the columns of the paper's Table 1."""
    slopes = {
        layer: leaves["act"]["a"]
        for layer, leaves in params.items()
        if isinstance(leaves, dict) and "a" in leaves.get("act", {})
    }
    return {layer: np.asarray(a).reshape(-1) for layer, a in jax.device_get(slopes).items()}


def hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """The config as TensorBoard's hparams plugin takes it: flat, scalar values."""
    flat = {}
    for key, value in run_files.flat_config(config.to_dict()).items():
        flat[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def _resolved(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """The config as run: with the dataset's class count, so readers need not open the data."""
    resolved = copy.deepcopy(config)
    with resolved.unlocked():
        resolved.model.num_classes = num_classes
    return resolved


def check_train_config(train_config: ml_collections.ConfigDict) -> None:
    """One-line ValueError naming the first `config.train` field out of its valid range."""
    t = train_config
    rules = [
        ("global_batch_size", t.global_batch_size >= 1, "an integer >= 1"),
        ("eval_batch_size", t.eval_batch_size >= 1, "an integer >= 1"),
        ("num_steps", t.num_steps >= 0, "an integer >= 0 (0: use num_epochs)"),
        ("num_epochs", t.num_steps > 0 or t.num_epochs > 0, "> 0 when num_steps is 0"),
        ("log_every_steps", t.log_every_steps >= 1, "an integer >= 1"),
        ("eval_every_epochs", t.eval_every_epochs >= 0, "a number >= 0 (0: at the end only)"),
        ("checkpoint_every_steps", t.checkpoint_every_steps >= 1, "an integer >= 1"),
        ("keep_checkpoints", t.keep_checkpoints >= 1, "an integer >= 1"),
        ("restore_step", t.restore_step >= 0, "an integer >= 0 (0: the latest checkpoint)"),
        ("profile_steps", t.profile_steps >= 0, "an integer >= 0 (0: no trace)"),
    ]
    for field, valid, expected in rules:
        if not valid:
            raise ValueError(f"config.train.{field}={t[field]!r} is not valid; use {expected}")


def check_config(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    num_train_examples: int | None,
    devices: int | None = None,
    processes: int | None = None,
) -> models.SPPNet:
    """Every check of `config` that needs neither the data files nor the workdir; returns the
    model. One-line ValueErrors name the field.

    `devices` and `processes` default to this run's; the launch scripts pass a planned pod's
    (`python -m rectifiers_jax.preflight`) before they create a VM or submit a job, without the
    dataset (`num_train_examples` None: epoch-based fields are checked at a nominal 1,000 steps
    per epoch).
    """
    check_train_config(config.train)
    batch = config.train.global_batch_size
    steps_per_epoch = num_train_examples / batch if num_train_examples else 1000.0
    parallel.check_batch_size(batch, devices=devices, processes=processes)
    model = models.from_config(config.model, num_classes)
    size = config.data.image_size
    models.check_image_size(model.architecture, size, size, model.spp_bins)
    optim.make_optimizer(config.optim, steps_per_epoch)
    optim.make_plateau_tracker(config.optim)
    sources.check_source(config.data)
    mean.check_kind(config.data)
    preprocessing.PreprocessConfig.from_config(config.data)
    if config.eval.protocol not in PROTOCOLS:
        raise ValueError(
            f"config.eval.protocol={config.eval.protocol!r}; valid: {', '.join(PROTOCOLS)}"
        )
    if min(config.eval.scales) < size:
        raise ValueError(
            f"config.eval.scales={tuple(config.eval.scales)}: every scale must be >= "
            f"config.data.image_size={size}"
        )
    return model


class Schedule:
    """Step arithmetic of a run. An epoch is exactly `num_train_examples` examples, so
    `steps_per_epoch` = examples / global batch may be fractional; epoch e ends at step
    ceil(e * steps_per_epoch)."""

    def __init__(self, train_config: ml_collections.ConfigDict, num_train_examples: int):
        batch = train_config.global_batch_size
        if num_train_examples < batch:
            raise ValueError(
                f"the train split has {num_train_examples} examples, fewer than one global "
                f"batch of config.train.global_batch_size={batch}"
            )
        self.steps_per_epoch = num_train_examples / batch
        if train_config.num_steps > 0:
            self.num_steps = int(train_config.num_steps)
        else:
            self.num_steps = math.ceil(train_config.num_epochs * self.steps_per_epoch - 1e-9)
        every = train_config.eval_every_epochs
        evals = {self.step_of_epoch(every * k) for k in range(1, self._epochs_in(every) + 1)}
        self.eval_steps = {s for s in evals if 0 < s <= self.num_steps} | {self.num_steps}
        self.epoch_end_steps = {
            self.step_of_epoch(e) for e in range(1, self._epochs_in(1.0) + 1)
        } & set(range(1, self.num_steps + 1))

    def _epochs_in(self, every: float) -> int:
        return int(self.num_steps / self.steps_per_epoch / every) + 1 if every > 0 else 0

    def step_of_epoch(self, epoch: float) -> int:
        """The step after which `epoch` epochs of examples have been seen (rounded up)."""
        return math.ceil(epoch * self.steps_per_epoch - 1e-9)

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


def _train_record(
    train_metrics: dict[str, float],
    slopes: dict[str, np.ndarray],
    state: TrainState,
    steps_per_sec: float,
) -> dict[str, Any]:
    """metrics.jsonl keys of a logged step (run_files docstring): train/*, dead/*, slope/*."""
    record = {f"train/{k}": v for k, v in train_metrics.items() if "/" not in k}
    record.update({k: v for k, v in train_metrics.items() if "/" in k})
    record.update({f"slope/{k}": float(np.mean(a)) for k, a in slopes.items()})
    record["learning_rate"] = float(optim.get_learning_rate(state.opt_state))
    record["steps_per_sec"] = steps_per_sec
    return record


def _log_progress(record: dict[str, Any], step: int, num_steps: int, epoch: float) -> None:
    """One progress line: step, epoch, loss, error, rate, speed and time left."""
    left = (num_steps - step) / max(record["steps_per_sec"], 1e-9)
    logging.info(
        "step %d/%d (epoch %.2f): loss %.4f, top-1 error %.2f%%, lr %.3g | %.2f steps/s, %s left",
        step,
        num_steps,
        epoch,
        record["train/loss"],
        record["train/top1_error"],
        record["learning_rate"],
        record["steps_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(left)),
    )


def _check_resume(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
    """Refuses, naming every field, a config that changes what the workdir's run trained with."""
    saved = run_files.read_config(workdir)
    if not saved:
        return
    drift = run_files.config_drift(saved, config.to_dict(), config.train.allow_config_change)
    if drift:
        raise ValueError(
            f"workdir {workdir} holds a run with another config; changed: {'; '.join(drift)} "
            "(use another --workdir, or allow the change with "
            "--config.train.allow_config_change=FIELD,...)"
        )


def _restore_step(ckpt: checkpoints.Checkpointer, workdir: epath.Path, wanted: int) -> int:
    """The step to resume from: `train.restore_step` when set, else the latest (0: none)."""
    steps = ckpt.all_steps()
    if not wanted:
        return steps[-1] if steps else 0
    if wanted not in steps:
        raise ValueError(
            f"config.train.restore_step={wanted}: no such checkpoint in "
            f"{checkpoints.checkpoint_dir(workdir)} (steps: {steps})"
        )
    return wanted


def _unreadable(
    error: checkpoints.CheckpointError, step: int, steps: list[int]
) -> checkpoints.CheckpointError:
    """The restore error, pointing at the newest older checkpoint when there is one."""
    older = [s for s in steps if s < step]
    hint = (
        f"; resume from the older checkpoint with --config.train.restore_step={older[-1]}"
        if older
        else ""
    )
    return checkpoints.CheckpointError(f"{error}{hint}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming if it holds checkpoints; returns the final metrics.

    Returns a dict with `status` ("done", "preempted" or "diverged"), `step` and the last
    evaluation's `eval/...` values. Bad input (config, data, workdir, checkpoints) raises
    ValueError or FileNotFoundError before the workdir is changed; a failed checkpoint write
    raises `checkpoints.CheckpointSaveError` after recording status "failed".
    """
    workdir = epath.Path(workdir)
    # 1. Everything that can be wrong with the config and the data, before the workdir is touched.
    info = sources.get_info(config.data)
    model = check_config(
        config, num_classes=info.num_classes, num_train_examples=info.num_train_examples
    )
    plan = Schedule(config.train, info.num_train_examples)
    tx = optim.make_optimizer(config.optim, plan.steps_per_epoch)
    plateau = optim.make_plateau_tracker(config.optim)
    mesh = parallel.create_mesh()
    # The mean image is read once here and handed to both pipelines.
    mean_image = mean.load_mean(config.data)
    evaluate = Evaluator(
        config.data,
        model,
        mesh,
        mean=mean_image,
        batch_size=parallel.eval_batch_size(config.train.eval_batch_size),
    )
    resolved = _resolved(config, info.num_classes)
    # 2. The workdir: usable, this run's alone, and trained with this config.
    run_files.check_workdir(workdir)
    if config.train.restore_step and not checkpoints.checkpoint_dir(workdir).exists():
        raise ValueError(
            f"config.train.restore_step={config.train.restore_step}: no such checkpoint "
            f"({workdir} has no checkpoints)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    with run_files.workdir_lock(workdir), preemption.StopRequests() as stop:
        _check_resume(workdir, resolved)
        if config.train.restore_step and jax.process_index() == 0:
            checkpoints.set_aside_newer(workdir, int(config.train.restore_step))
        keep_steps = plan.epoch_end_steps if config.train.keep_every_epoch else ()
        ckpt = checkpoints.Checkpointer(
            str(workdir),
            save_every_steps=config.train.checkpoint_every_steps,
            keep=config.train.keep_checkpoints,
            keep_steps=keep_steps,
        )
        try:
            start_step = _restore_step(ckpt, workdir, int(config.train.restore_step))
            if start_step:
                # A resume never runs the init: the restore target is shapes and shardings.
                target = abstract_train_state(model, tx, config.seed, config.data.image_size, mesh)
                try:
                    state, metadata = ckpt.restore(start_step, target)
                except checkpoints.CheckpointError as error:
                    raise _unreadable(error, start_step, ckpt.all_steps()) from error
                if plateau is not None and metadata.get("plateau"):
                    plateau.load_state_dict(metadata["plateau"])
                logging.info("resumed from step %d in %s", start_step, workdir)
            else:
                state = create_train_state(model, tx, config.seed, config.data.image_size, mesh)
        except BaseException:
            ckpt.close()
            raise
        # 3. The run starts (or resumes): from here on its files are written.
        files = run_files.RunWriter(workdir)
        files.write_config(resolved)
        files.write_inputs(mean_image, info.class_names)
        files.write_status("running", start_step)
        progress = {"step": start_step}
        try:
            result = _train_loop(
                config, plan, model, tx, plateau, mesh, mean_image, evaluate, ckpt, stop, files,
                state, progress,
            )  # fmt: skip
        except BaseException as error:  # recorded, then re-raised: status never stays "running"
            files.write_status("failed", progress["step"], _one_line(error))
            raise
    files.write_status(result["status"], result["step"], result.get("message", ""))
    logging.info("run %s at step %d", result["status"], result["step"])
    return result


def _one_line(error: BaseException) -> str:
    if isinstance(error, checkpoints.CheckpointSaveError | KeyboardInterrupt):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _train_loop(
    config: ml_collections.ConfigDict,
    plan: Schedule,
    model: models.SPPNet,
    tx: optax.GradientTransformation,
    plateau: optim.PlateauTracker | None,
    mesh: jax.sharding.Mesh,
    mean_image: np.ndarray | None,
    evaluate: Evaluator,
    ckpt: checkpoints.Checkpointer,
    stop: preemption.StopRequests,
    files: run_files.RunWriter,
    state: TrainState,
    progress: dict[str, int],
) -> dict[str, Any]:
    """Steps from `progress["step"]` to the end, a stop request or divergence, counting in
    `progress` (read by the caller if this raises); closes `ckpt`."""
    start_step = progress["step"]
    train_step = jit_train_step(model, tx, config.seed, mesh)
    batches = input_pipeline.train_iterator(
        config.data,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        mean=mean_image,
        start_step=start_step,
    )
    # TensorBoard events from process 0 (scalars, PReLU slope histograms, the config as
    # hparams, so runs and sweep trials compare side by side); progress lines come from the
    # loop's own log line.
    writer = metric_writers.MultiWriter(
        [metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(files.workdir)))]
        if files.is_writer
        else []
    )
    writer.write_hparams(hparams(config))
    # A trace of `train.profile_steps` steps, after the first (compiling) ones, for TensorBoard's
    # profile plugin: WORKDIR/plugins/profile/<time>/.
    profile = (
        periodic_actions.Profile(
            logdir=str(files.workdir),
            num_profile_steps=config.train.profile_steps,
            profile_duration_ms=None,
            first_profile=start_step + PROFILE_AFTER_STEPS,
            every_steps=None,
            every_secs=None,
        )
        if config.train.profile_steps and files.is_writer
        else None
    )
    num_steps = plan.num_steps
    logging.info(
        "training %s for %d steps (%.4g per epoch) on %d devices, %d processes",
        config.model.name,
        num_steps,
        plan.steps_per_epoch,
        jax.device_count(),
        jax.process_count(),
    )

    def metadata() -> dict[str, Any]:
        return {"plateau": plateau.state_dict() if plateau is not None else None}

    pending: list[dict[str, jax.Array]] = []
    last_eval: dict[str, float] = {}
    step = start_step
    timer = (time.perf_counter(), step)

    def flush_metrics() -> dict[str, float]:
        """Average pending per-step metrics on the host; DivergedError on a non-finite loss."""
        fetched = jax.device_get(pending)
        for offset, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                raise DivergedError(step - len(fetched) + offset + 1)
        pending.clear()
        return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}

    status, message = "done", ""
    try:
        while step < num_steps:
            if stop.should_stop(step, ckpt.reached_preemption):
                status = "preempted"
                message = f"stopped at step {step} by {stop.requested or 'a preemption notice'}"
                break
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = parallel.global_batch(next(batches), mesh)
                state, step_metrics = train_step(state, batch)
            pending.append(step_metrics)
            step += 1
            progress["step"] = step
            if profile is not None:
                profile(step)
            record: dict[str, Any] = {}
            # Every checkpoint is preceded by a finiteness check of the steps since the last.
            epoch_end = step in plan.epoch_end_steps
            saving = ckpt.should_save(step) or epoch_end or step == num_steps
            if step % config.train.log_every_steps == 0 or step in plan.eval_steps or saving:
                train_metrics = flush_metrics()
                if step % config.train.log_every_steps == 0:
                    now = time.perf_counter()
                    steps_per_sec = (step - timer[1]) / max(now - timer[0], 1e-9)
                    timer = (now, step)
                    slopes = prelu_slopes(state.params)
                    record = _train_record(train_metrics, slopes, state, steps_per_sec)
                    _log_progress(record, step, num_steps, plan.epoch(step))
                    writer.write_histograms(step, {f"slope/{k}": a for k, a in slopes.items()})
                    files.write_status("running", step)  # the heartbeat
            if step in plan.eval_steps:
                result = evaluate(state.params)
                last_eval = {f"eval/{k}": v for k, v in result.items()}
                record.update(last_eval)
                logging.info(
                    "eval at step %d: top-1 error %.2f%%, top-5 error %.2f%% on %d examples",
                    step,
                    result["top1_error"],
                    result["top5_error"],
                    result["num_examples"],
                )
                if plateau is not None and plateau.update(result["top1_error"]):
                    new_rate = optim.get_learning_rate(state.opt_state) * config.optim.decay_factor
                    state = state.replace(
                        opt_state=optim.set_learning_rate(state.opt_state, new_rate)
                    )
                    logging.info("validation error plateaued: learning rate now %.3g", new_rate)
            if record:
                record = {"step": step, "epoch": plan.epoch(step), **record}
                files.append_metrics(record)
                writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
            # keep_every_epoch keeps one checkpoint per epoch, so one must be written there.
            force = step == num_steps or (epoch_end and config.train.keep_every_epoch)
            ckpt.save(step, state, metadata(), force=force)
        if status == "preempted":
            if pending:
                flush_metrics()  # never checkpoint a state whose loss went non-finite
            ckpt.save(step, state, metadata(), force=True)
            logging.warning("%s; run the same command again to resume", message)
        ckpt.wait_until_finished()
    except DivergedError as error:
        status = "diverged"
        ckpt.wait_until_finished()
        saved = ckpt.all_steps()
        kept = f"the last finite checkpoint is step {saved[-1]}" if saved else "no checkpoint"
        message = f"{error}; {kept} in {ckpt.directory}"
        step = error.step
        logging.error("%s", message)
    finally:
        ckpt.close()
        writer.flush()
    return {"status": status, "step": step, "message": message, **last_eval}
