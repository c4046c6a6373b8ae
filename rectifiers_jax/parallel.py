"""Data parallelism over one ('data',) mesh of every device of every process (the modern pjit).

State is replicated (`P()`), batches are split along the batch axis (`P('data')`) and assembled
from each process's local rows with `jax.make_array_from_process_local_data`; losses are plain
means over the global batch, so no `pmean`/`axis_name` is needed.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start `jax.distributed` when the run spans several processes.

    On TPU pods and under SLURM/Open MPI, JAX detects the cluster by itself. Otherwise the
    coordinator address, process count and id come from the arguments, or from the
    environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    A single process with no cluster in sight starts nothing.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    on_cluster = any(
        v in os.environ for v in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    )
    if coordinator_address is None and not on_cluster:
        return
    if num_processes == 1 and coordinator_address is None:
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
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


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = "train.global_batch_size") -> int:
    """Rows per process; refuses a global batch that devices or processes cannot split evenly."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices:
        raise ValueError(
            f"{what}={global_batch_size} does not divide by the {devices} devices; "
            f"use a multiple of {devices}"
        )
    if global_batch_size % processes:
        raise ValueError(
            f"{what}={global_batch_size} does not divide by the {processes} processes; "
            f"use a multiple of {processes}"
        )
    return global_batch_size // processes


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows `[B_local, ...]` into global arrays `[B_global, ...]`."""
    sharding = batch_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local_batch.items()
    }
