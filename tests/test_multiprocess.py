"""Two real processes under jax.distributed (gloo CPU collectives on 127.0.0.1), as on a pod.

One scenario covers what a pod needs: SIGTERM to process 1 only stops both processes at the
same step with one consistent checkpoint (JAX's preemption service), the same command resumes
them, and the result equals one process on 4 devices fed the same global batches. Another
kills one process and checks that the survivor ends, with a message, instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from support import tiny_config

from rectifiers_jax import checkpoints, cli, models, optim, parallel, run_files, train
from rectifiers_jax.data import digits, input_pipeline, mean

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
DIGITS_TRAIN = 1437

pytestmark = pytest.mark.slow  # trains real runs in subprocesses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: Path, data_dir: Path) -> list[subprocess.Popen]:
    """The two processes of one run, each with two fake CPU devices (a 4-device mesh)."""
    port = free_port()
    common = [
        sys.executable, "-m", "rectifiers_jax.main", "--config=configs/default.py",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.model.width=0.0625", "--config.train.global_batch_size=16",
        "--config.train.eval_batch_size=64", f"--config.train.num_steps={STEPS}",
        "--config.train.log_every_steps=2", "--config.train.checkpoint_every_steps=100",
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
        "--heartbeat_timeout_seconds=20",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [
        subprocess.Popen(
            [*common, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]


def wait_for_metrics(workdir: Path, procs: list[subprocess.Popen]) -> None:
    deadline = time.time() + 600
    while not (workdir / "metrics.jsonl").exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)


def outputs(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    return [p.communicate(timeout=timeout)[0] for p in procs]


def one_process_reference(data_dir: Path) -> tuple[dict, dict]:
    """(initial, final) params of the same 12 steps in this process on 4 devices, fed each step
    host 0's and host 1's batches side by side: the global batches the two processes assemble."""
    config = tiny_config(data_dir, **{"train.num_steps": STEPS})
    mesh = jax.make_mesh((4,), ("data",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    model = models.from_config(config.model, 10)
    tx = optim.make_optimizer(config.optim, DIGITS_TRAIN / config.train.global_batch_size)
    state = train.create_train_state(model, tx, config.seed, config.data.image_size, mesh)
    initial = jax.device_get(state.params)
    step = jax.jit(train.make_train_step(model, tx, config.seed), donate_argnums=0)
    image_mean = mean.load_mean(config.data)
    hosts = [
        input_pipeline.train_iterator(
            config.data,
            global_batch_size=16,
            seed=config.seed,
            mean=image_mean,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    for _ in range(STEPS):
        parts = [next(host) for host in hosts]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, _ = step(state, parallel.global_batch(batch, mesh))
    return initial, jax.device_get(state.params)


def test_preemption_of_one_process_stops_both_then_they_resume_and_match_one_process(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    digits.prepare_digits(str(data_dir))  # once, so the two processes do not both write it
    procs = launch(workdir, data_dir)
    wait_for_metrics(workdir, procs)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one host only
    first = outputs(procs)
    for i, (p, out) in enumerate(zip(procs, first, strict=True)):
        assert p.returncode == cli.EXIT_PREEMPTED, f"process {i}:\n{out[-4000:]}"
    assert "process 1 of 2, 2 local / 4 global devices" in first[1]
    stopped = json.loads((workdir / "status.json").read_text())
    assert stopped["status"] == "preempted" and 2 <= stopped["step"] < STEPS
    saved = checkpoints.Checkpointer(str(workdir), save_every_steps=100, keep=2).all_steps()
    assert saved == [stopped["step"]]  # one consistent checkpoint, at the agreed step

    procs = launch(workdir, data_dir)
    second = outputs(procs)
    for i, (p, out) in enumerate(zip(procs, second, strict=True)):
        assert p.returncode == cli.EXIT_DONE, f"process {i}:\n{out[-4000:]}"
    assert f"resumed from step {stopped['step']}" in second[0]
    assert json.loads((workdir / "status.json").read_text())["status"] == "done"
    assert [r["step"] for r in run_files.read_metrics(workdir)] == list(range(2, STEPS + 1, 2))

    # Saved by 2 processes x 2 devices, read back here; equal to 1 process x 4 devices.
    params = checkpoints.load_params(workdir)
    initial, reference = one_process_reference(data_dir)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, reference
    )
    # The steps moved the parameters: the equality is not one of two no-ops.
    assert not np.allclose(initial["conv1"]["kernel"], params["conv1"]["kernel"])


def test_a_killed_process_ends_its_peer_with_a_message(tmp_path):
    """Two ways out, both bounded: a collective that reads from the dead peer fails at once
    (our one line, status "failed"); a process blocked elsewhere is ended by JAX's
    coordination service after the heartbeat timeout (20 s here) with its fatal message, and
    the status then reads "dead" (no live process holds the workdir)."""
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    digits.prepare_digits(str(data_dir))
    procs = launch(workdir, data_dir)
    wait_for_metrics(workdir, procs)
    procs[1].kill()
    killed_at = time.time()
    survivor = procs[0].communicate(timeout=120)[0]
    assert time.time() - killed_at < 60, "the surviving process hung"
    assert procs[0].returncode != 0, survivor[-4000:]
    state = run_files.run_state(workdir)["status"]
    if procs[0].returncode == cli.EXIT_FAILURE:
        last = survivor.strip().splitlines()[-1]
        assert last.startswith("error: process 0 stops: another process failed"), last
        assert state == "failed"
    else:
        assert "another task died" in survivor, survivor[-4000:]
        assert state == "dead"
