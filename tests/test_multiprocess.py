"""Two real processes under jax.distributed (gloo CPU collectives on 127.0.0.1), as on a pod."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rectifiers_jax import checkpoints
from rectifiers_jax.data import digits

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # trains real runs in subprocesses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model_and_checkpoint_it(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    port = free_port()
    common = [
        sys.executable, "-m", "rectifiers_jax.main", "--config=configs/default.py",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        "--config.model.width=0.0625", "--config.train.global_batch_size=16",
        "--config.train.eval_batch_size=64", "--config.train.num_steps=6",
        "--config.train.log_every_steps=3", "--config.train.checkpoint_every_steps=3",
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
    ]  # fmt: skip
    # Two fake CPU devices per process: a 4-device ('data',) mesh over two hosts.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    # Prepare the dataset once, so the two processes do not both write it.
    digits.prepare_digits(str(data_dir))
    procs = [
        subprocess.Popen(
            [*common, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out[-4000:]}"
    assert "process 1 of 2, 2 local / 4 global devices" in outputs[1]
    assert json.loads((workdir / "status.json").read_text()) == {
        "status": "done", "step": 6, "message": ""
    }  # fmt: skip
    steps = [
        json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [3, 6], "only process 0 writes metrics, once per logged step"
    # The run saved by 2 processes x 2 devices reads back here on one process.
    params = checkpoints.load_params(workdir)
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 4)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
