"""The training loop: one config in, a trained, checkpointed, evaluated run out.

`train_and_evaluate(config, workdir)` is what `python -m rectifiers_jax.main` calls and what a
notebook can call too. It runs unchanged on one CPU, 8 fake CPU devices, a GPU box or a TPU pod:
state replicated over a ('data',) mesh, batches sharded along it, one jitted, donated step.

Restarting with the same workdir resumes from the latest checkpoint: parameters, optimizer
state, data position (derived from the step) and dropout keys (folded from the step) all
continue exactly, so an interrupted run ends bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers
from etils import epath

from rectifiers_jax import checkpoints, metrics, models, optim, parallel, run_files
from rectifiers_jax.data import input_pipeline, mean, sources
from rectifiers_jax.evaluators.evaluator import Evaluator

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
    """The loss became non-finite; the run stops with status `diverged`."""


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
            never_positive = jnp.max(response, axis=tuple(range(response.ndim - 1))) <= 0
            step_metrics[f"dead/{layer}"] = jnp.mean(never_positive.astype(jnp.float32))
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


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


def prelu_slopes(params) -> dict[str, float]:
    """Mean learned `a` per PReLU layer (the columns of the paper's Table 1)."""
    return {
        layer: float(np.mean(jax.device_get(leaves["act"]["a"])))
        for layer, leaves in params.items()
        if isinstance(leaves, dict) and "a" in leaves.get("act", {})
    }


def _resolved(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """The config as run: with the dataset's class count, so readers need not open the data."""
    resolved = copy.deepcopy(config)
    with resolved.unlocked():
        resolved.model.num_classes = num_classes
    return resolved


def _num_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    if config.train.num_epochs <= 0:
        raise ValueError(
            f"train.num_epochs={config.train.num_epochs} and "
            f"train.num_steps={config.train.num_steps}: set one of them > 0"
        )
    return int(math.ceil(config.train.num_epochs * steps_per_epoch))


def _eval_steps(
    config: ml_collections.ConfigDict, steps_per_epoch: int, num_steps: int
) -> set[int]:
    """Steps after which to evaluate: every `eval_every_epochs` epochs, and the last step."""
    every = int(round(config.train.eval_every_epochs * steps_per_epoch))
    return (set(range(every, num_steps + 1, every)) if every > 0 else set()) | {num_steps}


def _train_record(
    train_metrics: dict[str, float], state: TrainState, steps_per_sec: float
) -> dict[str, Any]:
    """metrics.jsonl keys of a logged step (docs/CONTRACTS.md): train/*, dead/*, slope/*, rate."""
    record = {f"train/{k}": v for k, v in train_metrics.items() if "/" not in k}
    record.update({k: v for k, v in train_metrics.items() if "/" in k})
    record.update({f"slope/{k}": v for k, v in prelu_slopes(state.params).items()})
    record["learning_rate"] = float(optim.get_learning_rate(state.opt_state))
    record["steps_per_sec"] = steps_per_sec
    return record


def _log_progress(record: dict[str, Any], step: int, num_steps: int, steps_per_epoch: int) -> None:
    """One progress line: step, epoch, loss, error, rate, speed and time left."""
    left = (num_steps - step) / max(record["steps_per_sec"], 1e-9)
    logging.info(
        "step %d/%d (epoch %.2f): loss %.4f, top-1 error %.2f%%, lr %.3g | %.2f steps/s, %s left",
        step,
        num_steps,
        step / steps_per_epoch,
        record["train/loss"],
        record["train/top1_error"],
        record["learning_rate"],
        record["steps_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(left)),
    )


class _StopSignal:
    """Records SIGTERM (a preemption notice) so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming if it holds checkpoints; returns the final metrics.

    Returns a dict with `status` ("done", "preempted" or "diverged"), `step` and the last
    evaluation's `eval/...` values.
    """
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = run_files.RunWriter(workdir)
    info = sources.get_info(config.data)
    steps_per_epoch = input_pipeline.steps_per_epoch(info, config.train.global_batch_size)
    num_steps = _num_steps(config, steps_per_epoch)
    parallel.check_batch_size(config.train.global_batch_size)
    parallel.check_batch_size(config.train.eval_batch_size, "train.eval_batch_size")

    model = models.from_config(config.model, info.num_classes)
    tx = optim.make_optimizer(config.optim, steps_per_epoch)
    mesh = parallel.create_mesh()
    plateau = optim.make_plateau_tracker(config.optim)

    keep_period = steps_per_epoch if config.train.keep_every_epoch else None
    ckpt = checkpoints.Checkpointer(
        str(workdir),
        save_every_steps=config.train.checkpoint_every_steps,
        keep=config.train.keep_checkpoints,
        keep_period=keep_period,
    )
    start_step = ckpt.latest_step() or 0
    if start_step:
        # A resume never runs the init: the restore target is shapes and shardings alone.
        target = abstract_train_state(model, tx, config.seed, config.data.image_size, mesh)
        state, metadata = ckpt.restore(start_step, target)
        if plateau is not None and "plateau" in metadata:
            plateau.load_state_dict(metadata["plateau"])
        logging.info("resumed from step %d in %s", start_step, workdir)
    else:
        state = create_train_state(model, tx, config.seed, config.data.image_size, mesh)
    # Written once the run is known to start or resume: a refused resume leaves the old file.
    files.write_config(_resolved(config, info.num_classes))

    train_step = jax.jit(
        make_train_step(model, tx, config.seed),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
        out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
        donate_argnums=0,
    )
    # The mean image is read once here and handed to both pipelines.
    mean_image = mean.load_mean(config.data)
    evaluate = Evaluator(
        config.data, model, mesh, mean=mean_image, batch_size=config.train.eval_batch_size
    )
    batches = input_pipeline.train_iterator(
        config.data,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        mean=mean_image,
        start_step=start_step,
    )
    # TensorBoard events from process 0; progress lines come from the loop's own log line.
    writer = metric_writers.MultiWriter(
        [metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))]
        if files.is_writer
        else []
    )
    eval_at = _eval_steps(config, steps_per_epoch, num_steps)
    stop = _StopSignal()
    files.write_status("running", start_step)
    logging.info(
        "training %s for %d steps (%d per epoch) on %d devices, %d processes",
        config.model.name,
        num_steps,
        steps_per_epoch,
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
                bad_step = step - len(fetched) + offset + 1
                raise DivergedError(f"loss became non-finite at step {bad_step}")
        pending.clear()
        return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}

    status, message = "done", ""
    try:
        while step < num_steps:
            if stop.received or ckpt.reached_preemption(step):
                status, message = "preempted", f"preempted at step {step}"
                break
            state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
            pending.append(metrics)
            step += 1
            record: dict[str, Any] = {}
            # Every checkpoint is preceded by a finiteness check of the steps since the last.
            saving = ckpt.should_save(step) or step % steps_per_epoch == 0
            if step % config.train.log_every_steps == 0 or step in eval_at or saving:
                train_metrics = flush_metrics()
                if step % config.train.log_every_steps == 0:
                    now = time.perf_counter()
                    steps_per_sec = (step - timer[1]) / max(now - timer[0], 1e-9)
                    timer = (now, step)
                    record = _train_record(train_metrics, state, steps_per_sec)
                    _log_progress(record, step, num_steps, steps_per_epoch)
            if step in eval_at:
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
                record = {"step": step, "epoch": step / steps_per_epoch, **record}
                files.append_metrics(record)
                writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
            # keep_every_epoch keeps one checkpoint per epoch, so one must be written there.
            epoch_end = config.train.keep_every_epoch and step % steps_per_epoch == 0
            ckpt.save(step, state, metadata(), force=step == num_steps or epoch_end)
        if status == "preempted":
            if pending:
                flush_metrics()  # never checkpoint a state whose loss went non-finite
            ckpt.save(step, state, metadata(), force=True)
    except DivergedError as error:
        status, message = "diverged", str(error)
        logging.error(
            "%s; the last finite checkpoint stays in %s", message, workdir / "checkpoints"
        )
    finally:
        stop.restore()
        ckpt.wait_until_finished()
        ckpt.close()
        writer.flush()
    files.write_status(status, step, message)
    logging.info("run %s at step %d", status, step)
    return {"status": status, "step": step, **last_eval}
