"""The training loop: sharded steps, compile-once, resume after preemption, divergence, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import tiny_config

from rectifiers_jax import checkpoints, models, optim, parallel, train

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sharded_step_equals_single_device_and_compiles_once():
    model = models.build(
        "net14", activation="prelu", width=0.0625, num_classes=10, fc_std=(0.01, 0.01, 0.001)
    )
    tx = optim.momentum_sgd(0.01, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.normal(0, 60, (16, 80, 80, 3)).astype(np.float32),
            "label": rng.integers(0, 10, 16).astype(np.int32),
        }
        for _ in range(3)
    ]
    assert jax.device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
    results = {}
    for devices in (1, 8):
        mesh = jax.make_mesh(
            (devices,), ("data",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices]
        )
        # assert_max_traces fails the test if the step is traced (compiled) more than once.
        step_fn = chex.assert_max_traces(train.make_train_step(model, tx, seed=0), n=1)
        step = jax.jit(
            step_fn,
            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
            out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
            donate_argnums=0,
        )
        state = train.create_train_state(model, tx, 0, 80, mesh)
        for batch in batches:
            state, metrics = step(state, parallel.global_batch(batch, mesh))
        assert state.params["conv1"]["kernel"].sharding.mesh.size == devices
        results[devices] = (jax.device_get(state.params), jax.device_get(metrics))
        chex.clear_trace_counter()
    params_1, metrics_1 = results[1]
    params_8, metrics_8 = results[8]
    assert int(jax.device_get(state.step)) == 3
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_1, params_8
    )
    np.testing.assert_allclose(metrics_1["loss"], metrics_8["loss"], rtol=1e-5)
    # The steps moved the parameters (a test of equality between two no-ops would prove nothing).
    initial = jax.device_get(
        train.create_train_state(model, tx, 0, 80, parallel.create_mesh()).params
    )
    assert not np.allclose(initial["conv1"]["kernel"], params_8["conv1"]["kernel"])


@pytest.mark.slow
def test_preempted_run_resumes_bit_identical(digits_dir, tmp_path):
    straight = tmp_path / "straight"
    result = train.train_and_evaluate(tiny_config(digits_dir), str(straight))
    assert result["status"] == "done" and result["step"] == 12

    interrupted = tmp_path / "interrupted"

    def preempt_after_first_log():
        deadline = time.time() + 300
        while not (interrupted / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt_after_first_log, daemon=True).start()
    first = train.train_and_evaluate(tiny_config(digits_dir), str(interrupted))
    assert first["status"] == "preempted" and 2 <= first["step"] < 12
    status = json.loads((interrupted / "status.json").read_text())
    assert {k: status[k] for k in ("status", "step", "message", "pid")} == {
        "status": "preempted",
        "step": first["step"],
        "message": f"stopped at step {first['step']} by SIGTERM",
        "pid": os.getpid(),
    }
    assert (
        checkpoints.Checkpointer(str(interrupted), save_every_steps=4, keep=2).latest_step()
        == first["step"]
    )

    second = train.train_and_evaluate(tiny_config(digits_dir), str(interrupted))
    assert second["status"] == "done" and second["step"] == 12
    a = checkpoints.load_params(straight)
    b = checkpoints.load_params(interrupted)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert second["eval/top1_error"] == result["eval/top1_error"]

    records = read_jsonl(straight / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    last = records[-1]
    for key in ("train/loss", "train/top1_error", "learning_rate", "steps_per_sec", "epoch"):
        assert key in last
    layers = models.activated_layers(models.from_config(tiny_config(digits_dir).model, 10))
    assert {f"slope/{layer}" for layer in layers} <= set(last)
    assert {f"dead/{layer}" for layer in layers} <= set(last)
    assert last["eval/num_examples"] == 360
    assert 0 <= last["eval/top5_error"] <= last["eval/top1_error"] <= 100
    assert last["learning_rate"] == pytest.approx(tiny_config(digits_dir).optim.learning_rate)
    config = json.loads((straight / "config.json").read_text())
    assert config["model"]["width"] == 0.0625
    assert json.loads((straight / "status.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_non_finite_loss_stops_with_diverged_and_keeps_last_finite_checkpoint(digits_dir, tmp_path):
    # He-initialised fc layers on [-128, 128] pixels start with huge logits and blow up at lr 0.01
    # (the reason the paper gives the large models fixed small fc stds).
    config = tiny_config(digits_dir, **{"train.checkpoint_every_steps": 1})
    config.model.fc_std = None
    config.optim.learning_rate = 0.5
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "diverged"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "diverged"
    bad_step = status["step"]
    assert f"non-finite at step {bad_step};" in status["message"] and 1 <= bad_step <= 12
    last_saved = checkpoints.Checkpointer(str(tmp_path), save_every_steps=1, keep=2).latest_step()
    if last_saved is None:
        assert "no checkpoint in" in status["message"]
    else:
        assert f"the last finite checkpoint is step {last_saved} in" in status["message"]
        assert last_saved < bad_step
        params = checkpoints.load_params(tmp_path, last_saved)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_global_batch_that_does_not_divide_by_devices_is_refused(digits_dir, tmp_path):
    config = tiny_config(digits_dir, **{"train.global_batch_size": 12})
    with pytest.raises(
        ValueError, match=r"train.global_batch_size=12 does not divide by the 8 devices"
    ):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_default_config_end_to_end_through_the_cli(digits_dir, tmp_path):
    """The README's main job, shortened: the real entry point, flags and overrides."""
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "rectifiers_jax.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={digits_dir}",
        "--config.train.num_steps=60",
        "--config.train.log_every_steps=20",
    ]
    env = {**os.environ, "XLA_FLAGS": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 60/60" in done.stderr
    records = read_jsonl(workdir / "metrics.jsonl")
    # Chance is 90% top-1 error on ten digits; 60 steps of batch 64 are ~2.7 epochs.
    assert records[-1]["eval/top1_error"] < 50
    assert json.loads((workdir / "status.json").read_text())["status"] == "done"

    bad = subprocess.run(
        [*command[:4], f"--workdir={tmp_path / 'bad'}", "--config.model.name=net15"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip().splitlines()[-1].startswith("error: unknown model 'net15'; valid: net14")
    )


@pytest.mark.slow
def test_config_drift_and_restore_mismatch_are_refused_and_change_nothing(digits_dir, tmp_path):
    train.train_and_evaluate(tiny_config(digits_dir, **{"train.num_steps": 4}), str(tmp_path))

    def files() -> dict[str, bytes]:  # the run's record; run.lock names its latest holder
        return {
            p.name: p.read_bytes()
            for p in tmp_path.iterdir()
            if p.is_file() and p.name != "run.lock"
        }

    before = files()
    wider = tiny_config(digits_dir, **{"train.num_steps": 8})
    wider.model.width = 0.125
    wider.seed = 3
    with pytest.raises(ValueError, match=r"changed: model.width: 0.0625 -> 0.125; seed: 0 -> 3"):
        train.train_and_evaluate(wider, str(tmp_path))
    # Allowed, the change reaches the checkpoint, which names its step and path.
    wider.train.allow_config_change = "model.width,seed"
    with pytest.raises(checkpoints.CheckpointError, match=r"step 4 .*checkpoints"):
        train.train_and_evaluate(wider, str(tmp_path))
    # Nothing of the run was overwritten by the refused resumes.
    assert files() == before


@pytest.mark.slow
def test_plateau_schedule_drops_the_rate_when_the_eval_error_stops_improving(digits_dir, tmp_path):
    config = tiny_config(digits_dir)
    config.optim.schedule = "plateau"
    config.optim.plateau_patience = 1
    config.optim.plateau_min_delta = 100.0  # no evaluation can improve by 100 points
    config.optim.learning_rate = 0.01
    config.train.eval_every_epochs = 4 * 16 / 1437  # every 4 steps
    train.train_and_evaluate(config, str(tmp_path))
    rates = {r["step"]: r["learning_rate"] for r in read_jsonl(tmp_path / "metrics.jsonl")}
    # Evaluations at steps 4, 8, 12: the first sets the best, the second drops 0.01 -> 0.001.
    assert rates == pytest.approx({2: 0.01, 4: 0.01, 6: 0.01, 8: 0.01, 10: 0.001, 12: 0.001})


@pytest.mark.slow
def test_profile_hparams_and_slope_histograms_for_tensorboard(digits_dir, tmp_path):
    config = tiny_config(digits_dir, **{"train.num_steps": 8, "train.profile_steps": 2})
    train.train_and_evaluate(config, str(tmp_path))
    # A trace of steps 3..5 for TensorBoard's profile plugin.
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert "_hparams_/session_start_info" in tags  # the config, for the hparams dashboard
    layers = models.activated_layers(models.from_config(config.model, 10))
    assert {f"slope/{layer}" for layer in layers} <= tags  # a histogram per PReLU layer
    histogram = events.Tensors("slope/conv1")[-1]
    assert histogram.step == 8


def test_compiled_step_has_one_gradient_all_reduce_and_no_host_transfer():
    """Data parallelism as it should lower: the gradients of every layer are summed across the 8
    devices by one (combined) all-reduce, or one reduce-scatter + all-gather, per step; nothing
    leaves the devices inside the step."""
    mesh = parallel.create_mesh()
    model = models.build("net14", width=0.0625, num_classes=10, activation="prelu")
    tx = optim.momentum_sgd(0.01, weight_decay=5e-4)
    state = train.abstract_train_state(model, tx, 0, 80, mesh)
    sharded = parallel.batch_sharded(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((16, 80, 80, 3), jnp.float32, sharding=sharded),
        "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=sharded),
    }
    hlo = train.jit_train_step(model, tx, 0, mesh).lower(state, batch).compile().as_text()
    pattern = re.compile(r" (all-reduce|reduce-scatter|all-gather)(-start)?\(")
    collectives = [line for line in hlo.splitlines() if pattern.search(line)]
    # Operands are named, so a shape on a collective's line is its result's: any kernel's shape
    # marks a collective that carries gradients.
    kernels = {
        f"f32[{','.join(map(str, leaf.shape))}]"
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
        if path[-1].key == "kernel"
    }
    gradient = [line for line in collectives if any(k in line for k in kernels)]
    kinds = sorted(pattern.search(line).group(1) for line in gradient)
    assert kinds in (["all-reduce"], ["all-gather", "reduce-scatter"]), "\n".join(collectives)
    for op in ("infeed", "outfeed", " send(", " recv(", "host_callback", "xla_python"):
        assert op not in hlo, op
