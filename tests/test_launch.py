"""launch/tpu_pod.sh and launch/gpu_slurm.sh: dry-run output, the generated Slurm job run with
stand-ins for scontrol/srun/python, and one-line errors. No gcloud or Slurm is needed: stubs on
PATH record any call, and dry runs must make none."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rectifiers_jax import parallel

REPO = Path(__file__).resolve().parents[1]
TPU = str(REPO / "launch" / "tpu_pod.sh")
SLURM = str(REPO / "launch" / "gpu_slurm.sh")
OVERRIDES = ["--config.model.init=xavier", "--config.model.spp_levels=(4, 2, 1)"]

STUBS = {
    # Records its arguments; answers the queued-resource poll with ACTIVE.
    "gcloud": 'printf "%s\\n" "$*" >> "$STUB_LOG"; [[ "$*" == *describe* ]] && echo ACTIVE; exit 0',
    "sbatch": 'printf "sbatch %s\\n" "$*" >> "$STUB_LOG"; echo "Submitted batch job 7"',
    "scontrol": 'printf "node-a\\nnode-b\\n"',
    # Runs the task command once per task, as Slurm would on each node (drops srun's options).
    "srun": 'while [[ "$1" == --* ]]; do shift; done\n'
    'for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@"; done',
    "python": 'printf "%q " "$@"; echo',
}


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/usr/bin/env bash\n{body}\n")
        stub.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "TMPDIR": str(tmp_path),
        "PYTHON": "python",  # the stub: the config check is tested on its own below
    }


def run(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script, *args], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )


def calls(env: dict) -> list[str]:
    log = Path(env["STUB_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def tpu_args(*extra: str) -> list[str]:
    return [
        "--name", "rect-a", "--zone", "us-central2-b", "--accelerator", "v4-32",
        "--workdir", "gs://bucket/runs/a", "--config", "configs/default.py",
        "--data-dir", "gs://bucket/tfds", *extra, "--", *OVERRIDES,
    ]  # fmt: skip


def test_scripts_parse():
    for script in (TPU, SLURM):
        subprocess.run(["bash", "-n", script], check=True)


def test_tpu_dry_run_prints_create_copy_install_and_run_on_all_workers(env):
    result = run(TPU, *tpu_args("--dry-run"), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "gcloud compute tpus tpu-vm create rect-a --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base" in lines
    )
    scp = next(line for line in lines if "tpu-vm scp" in line)
    assert "rectifiers_jax.tar.gz" in scp and "rect-a:" in scp and "--worker=all" in scp
    ssh = [shlex.split(line) for line in lines if "tpu-vm ssh" in line]
    assert len(ssh) == 2 and all("--worker=all" in command for command in ssh)
    install, start = (command[-1] for command in ssh)
    assert 'pip install -q -c constraints.txt -e ".[tpu]"' in install
    assert start == "--command=bash ~/rectifiers_jax_job.sh"
    # The job script every worker runs: data and workdir on the bucket, overrides intact.
    job = next(line for line in lines if "-m rectifiers_jax.main" in line)
    assert shlex.split(job.lstrip("# "))[1:] == [
        ".venv/bin/python", "-m", "rectifiers_jax.main", "--config=configs/default.py",
        "--workdir=gs://bucket/runs/a", "--config.data.data_dir=gs://bucket/tfds", *OVERRIDES,
    ]  # fmt: skip
    assert calls(env) == []


def test_tpu_queued_dry_run_waits_for_the_resource(env):
    result = run(TPU, *tpu_args("--queued", "--detach", "--dry-run"), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "gcloud compute tpus queued-resources create rect-a --node-id=rect-a "
        "--zone=us-central2-b --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base" in out
    )
    assert "gcloud compute tpus queued-resources describe rect-a" in out
    assert "tpu-vm create" not in out
    assert "setsid nohup bash ~/rectifiers_jax_job.sh" in out
    assert calls(env) == []


def test_tpu_real_run_calls_gcloud_in_order(env, tmp_path):
    result = run(TPU, *tpu_args("--queued"), env=env)
    assert result.returncode == 0, result.stderr
    made = calls(env)
    assert [c.split()[3] for c in made] == ["create", "describe", "scp", "ssh", "ssh"]
    assert (tmp_path / "tpu_pod-rect-a" / "rectifiers_jax.tar.gz").stat().st_size > 0
    job = (tmp_path / "tpu_pod-rect-a" / "rectifiers_jax_job.sh").read_text()
    assert "--workdir=gs://bucket/runs/a" in job and "'--config.model.spp_levels=(4, 2, 1)'" in job


def slurm_args(workdir: Path, *extra: str) -> list[str]:
    return [
        "--nodes", "2", "--gpus-per-node", "8", "--workdir", str(workdir),
        "--config", "configs/default.py", "--partition", "gpu", *extra, "--", *OVERRIDES,
    ]  # fmt: skip


def test_slurm_dry_run_prints_the_job_and_submits_nothing(env, tmp_path):
    workdir = tmp_path / "run"
    result = run(SLURM, *slurm_args(workdir, "--dry-run"), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "#SBATCH --nodes=2",
        "# 2 nodes x 8 GPUs: 16 processes, 1 GPU each",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        f"#SBATCH --chdir={REPO}",
        'mapfile -t NODE_LIST < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        f"sbatch {workdir}/job.sbatch",
    ):
        assert line in out.splitlines(), line
    assert "srun" in out and "python -m rectifiers_jax.main" in out
    assert '--process_id="$SLURM_PROCID"' in out and '--num_processes="$SLURM_NTASKS"' in out
    assert 'if (( status == 75 )); then scontrol requeue "$SLURM_JOB_ID"; fi' in out
    assert not workdir.exists() and calls(env) == []
    # The config was checked for the 16 processes first (here by the python stub).
    assert "-m rectifiers_jax.preflight --config=configs/default.py --devices=16" in result.stderr


def test_slurm_job_gives_every_process_the_coordinator_count_and_id(env, tmp_path):
    workdir = tmp_path / "run"
    result = run(SLURM, *slurm_args(workdir), env=env)
    assert result.returncode == 0, result.stderr
    assert calls(env) == [f"sbatch {workdir}/job.sbatch"]
    slurm_env = {
        **env,
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": "12345",
    }
    job = subprocess.run(
        ["bash", str(workdir / "job.sbatch")], capture_output=True, text=True, env=slurm_env
    )
    assert job.returncode == 0, job.stderr
    processes = [shlex.split(line) for line in job.stdout.splitlines()]
    for process_id, argv in enumerate(processes):
        assert argv == [
            "-m", "rectifiers_jax.main", "--config=configs/default.py", f"--workdir={workdir}",
            *OVERRIDES, "--coordinator_address=node-a:32345", "--num_processes=2",
            f"--process_id={process_id}",
        ]  # fmt: skip
    assert len(processes) == 2


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (TPU, ["--name", "x", "--zone", "z", "--accelerator", "v4-8", "--config",
               "configs/default.py"], "--workdir is required"),
        (TPU, tpu_args()[:7] + ["runs/a", "--config", "configs/default.py"],
         "--workdir must be a gs:// bucket path, got runs/a"),
        (TPU, ["--bogus"], "unknown option --bogus"),
        (TPU, ["--name", "x", "--zone", "z", "--accelerator", "v4-8", "--workdir", "gs://b/a",
               "--config", "configs/nope.py"], "no config file configs/nope.py"),
        (SLURM, ["--nodes", "2", "--workdir", "w", "--config", "configs/default.py"],
         "--gpus-per-node is required"),
        (SLURM, ["--nodes", "two", "--gpus-per-node", "8", "--workdir", "w", "--config",
                 "configs/default.py"], "--nodes must be a positive integer, got two"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_line_error(env, script, args, message):
    result = run(script, *args, "--dry-run", env=env)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args"),
    [
        (TPU, tpu_args()[:5] + ["v4-512"] + tpu_args()[6:]),
        (SLURM, ["--nodes", "32", "--gpus-per-node", "8", "--workdir", "w", "--config",
                 "configs/default.py"]),
    ],
)  # fmt: skip
def test_a_config_that_does_not_fit_is_refused_before_anything_is_created(env, script, args):
    # 256 chips (v4-512) or GPUs for a global batch of 64: the real check, then nothing else.
    result = run(script, *args, env={**env, "PYTHON": sys.executable})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: train.global_batch_size=64 does not divide by the 256 devices; use a multiple "
        "of 256 (e.g. 256)"
    )
    assert calls(env) == []


@pytest.mark.parametrize(
    ("accelerator", "devices", "hosts"),
    [("v3-8", 8, 1), ("v4-8", 4, 1), ("v4-32", 16, 4), ("v5p-128", 64, 16),
     ("v5litepod-8", 8, 1), ("v5litepod-16", 16, 4), ("v6e-256", 256, 64)],
)  # fmt: skip
def test_tpu_slices_are_checked_with_their_devices_and_hosts(env, accelerator, devices, hosts):
    args = tpu_args()
    args[args.index("v4-32")] = accelerator
    result = run(TPU, *args, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert f"# {accelerator}: {devices} JAX devices on {hosts} hosts" in result.stdout
    assert f"--devices={devices} --processes={hosts}" in result.stderr


def test_help(env):
    for script in (TPU, SLURM):
        result = run(script, "--help", env=env)
        assert result.returncode == 0 and result.stdout.startswith("usage:")


# ----------------------------------------------------------------------------------------------
# Which devices each process drives (rectifiers_jax.parallel.distributed_args)


def test_slurm_2_nodes_x_4_gpus_give_8_processes_one_gpu_each(tmp_path):
    """The environment srun gives each task of `gpu_slurm.sh --nodes 2 --gpus-per-node 4`."""
    seen = []
    for node in range(2):
        for local in range(4):
            task = {
                "SLURM_JOB_ID": "7",
                "SLURM_NTASKS": "8",
                "SLURM_PROCID": str(node * 4 + local),
                "SLURM_LOCALID": str(local),
                "CUDA_VISIBLE_DEVICES": "0,1,2,3",  # --gpus-per-node: every task sees all four
            }
            args = parallel.distributed_args(
                "node-a:20007", 8, None, environ=task, pci_devices=str(tmp_path)
            )
            seen.append((node, args["process_id"], args["local_device_ids"]))
            assert args["coordinator_address"] == "node-a:20007" and args["num_processes"] == 8
    assert seen == [(n, 4 * n + g, [g]) for n in range(2) for g in range(4)]
    # A cluster that binds one GPU per task (CUDA_VISIBLE_DEVICES=<one>): that one, whatever id.
    bound = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
    args = parallel.distributed_args(
        None, None, None, environ={**bound, "CUDA_VISIBLE_DEVICES": "1"}, pci_devices=str(tmp_path)
    )
    assert args == {
        "coordinator_address": None, "num_processes": 8, "process_id": 5, "local_device_ids": None
    }  # fmt: skip


def _pci_device(root: Path, slot: str, vendor: str, device: str) -> None:
    (root / slot).mkdir(parents=True)
    (root / slot / "vendor").write_text(vendor + "\n")
    (root / slot / "device").write_text(device + "\n")


def test_cloud_tpu_vms_always_start_jax_distributed(tmp_path):
    tpu_vm, gpu_vm = tmp_path / "tpu", tmp_path / "gpu"
    _pci_device(tpu_vm, "0000:00:05.0", "0x1ae0", "0x0042")  # gVNIC, Google's NIC
    _pci_device(tpu_vm, "0000:00:06.0", "0x1ae0", "0x005e")  # a TPU v4 chip
    _pci_device(gpu_vm, "0000:00:05.0", "0x1ae0", "0x0042")
    _pci_device(gpu_vm, "0000:00:06.0", "0x10de", "0x2335")  # an NVIDIA H200
    # A TPU VM, even one host alone: started, every argument auto-detected from its metadata.
    assert parallel.distributed_args(environ={}, pci_devices=str(tpu_vm)) == {}
    # A GPU VM or a laptop, one process: nothing starts.
    assert parallel.distributed_args(environ={}, pci_devices=str(gpu_vm)) is None
    assert parallel.distributed_args(environ={}, pci_devices=str(tmp_path / "none")) is None
    # Several processes by hand: the flags, or JAX_* variables.
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert parallel.distributed_args(environ=env, pci_devices=str(gpu_vm)) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1
    }  # fmt: skip
