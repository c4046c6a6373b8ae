"""Data parallelism over one ('data',) mesh of every device of every process (the modern pjit).

State is replicated (`P()`), batches are split along the batch axis (`P('data')`) and assembled
from each process's local rows with `jax.make_array_from_process_local_data`; losses are plain
means over the global batch, so no `pmean`/`axis_name` is needed.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# XLA:CPU (jaxlib 0.10) hands convolutions and dots to YNNPACK by default. On this project's
# layers its convolutions run up to 10x slower than XLA's Eigen ones (kernel gradient of net14's
# conv2_1 at batch 32: 0.40 s against 0.04 s) while its dots are as fast or faster, so on the CPU
# only dots go to YNNPACK: net14's train step ~1.5x and its eval ~1.6x the images/s.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}


# Cloud TPU chips are PCI devices of Google's vendor id with these device ids (as JAX's own
# detection, jax._src.hardware_utils); other Google PCI devices (gVNIC) are not TPUs.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
PCI_DEVICES = "/sys/bus/pci/devices"


def on_cloud_tpu_vm(pci_devices: str = PCI_DEVICES) -> bool:
    """Whether this machine has Cloud TPU chips attached (read from sysfs, no JAX backend)."""
    for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
        device = os.path.join(os.path.dirname(vendor), "device")
        with open(vendor) as v, open(device) as d:
            if v.read().strip() == _GOOGLE_PCI_VENDOR and d.read().strip() in _TPU_PCI_DEVICES:
                return True
    return False


def distributed_args(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    pci_devices: str = PCI_DEVICES,
) -> dict[str, Any] | None:
    """`jax.distributed.initialize` arguments for this process, or None for a single process.

    * Cloud TPU VMs (TPU chips on the PCI bus): always, with every argument auto-detected from
      the TPU metadata, as big_vision and maxtext do; a one-host slice is a cluster of one.
    * Slurm (`SLURM_NTASKS` > 1): one process per GPU (launch/gpu_slurm.sh starts one task
      per GPU). Process id and count come from Slurm; each process drives the GPU of its
      `SLURM_LOCALID` (or the single GPU Slurm made visible to it).
    * Open MPI: auto-detected by JAX.
    * Otherwise the arguments, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
      without a coordinator address, or with one process, nothing starts.
    """
    env = os.environ if environ is None else environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        local = None if len(visible) == 1 else [int(env["SLURM_LOCALID"])]
        return {
            "coordinator_address": coordinator_address,  # None: JAX reads Slurm's node list
            "num_processes": num_processes or int(env["SLURM_NTASKS"]),
            "process_id": int(env["SLURM_PROCID"]) if process_id is None else process_id,
            "local_device_ids": local,
        }
    if on_cloud_tpu_vm(pci_devices) or "OMPI_COMM_WORLD_SIZE" in env:
        return {}
    if coordinator_address is None or num_processes == 1:
        return None
    return {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_seconds: int | None = None,
) -> None:
    """Start `jax.distributed` when the run spans several processes (`distributed_args`).

    `heartbeat_timeout_seconds` (JAX's default when None: 100 s) bounds how long a process
    blocked on a dead peer waits: the coordination service then declares the peer dead and
    ends the other processes with a message.
    """
    args = distributed_args(coordinator_address, num_processes, process_id)
    if args is None:
        return
    if heartbeat_timeout_seconds is not None:
        args["heartbeat_timeout_seconds"] = heartbeat_timeout_seconds
    jax.distributed.initialize(**args)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def create_mesh() -> Mesh:
    """A 1-D ('data',) mesh over all devices of all processes.

    Auto axes: the compiler propagates shardings from the jit's in/out shardings (classic pjit),
    rather than the Explicit sharding-in-types mode that `make_mesh` defaults to in new JAX.
    """
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), (jax.sharding.AxisType.Auto,))


def compiler_options() -> dict[str, str] | None:
    """XLA options for the models' jitted steps on the default backend (None: XLA's own)."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(
    global_batch_size: int,
    what: str = "train.global_batch_size",
    *,
    devices: int | None = None,
    processes: int | None = None,
) -> int:
    """Rows per process; refuses a global batch that devices or processes cannot split evenly.

    `devices` and `processes` default to this run's (`jax.device_count()`, ...); the launch
    scripts pass a planned pod's or cluster's counts (`python -m rectifiers_jax.preflight`).
    """
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    for count, unit in ((devices, "devices"), (processes, "processes")):
        if global_batch_size % count:
            raise ValueError(
                f"{what}={global_batch_size} does not divide by the {count} {unit}; use a "
                f"multiple of {count} (e.g. {math.ceil(global_batch_size / count) * count})"
            )
    return global_batch_size // processes


def eval_batch_size(
    requested: int, *, devices: int | None = None, processes: int | None = None
) -> int:
    """`requested` rounded up to a multiple of the device and process counts: evaluation pads
    and masks its last batch, so any batch of at least that size counts every example once."""
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    unit = math.lcm(devices, processes)
    return max(unit, math.ceil(requested / unit) * unit)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows `[B_local, ...]` into global arrays `[B_global, ...]`."""
    sharding = batch_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local_batch.items()
    }
