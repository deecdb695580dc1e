"""Multi-host start: ``jax.distributed.initialize`` from flags, SLURM or a Cloud TPU pod.

Call :func:`initialize_distributed` first thing in a process, before any JAX computation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax

MODES = ("auto", "on", "off")


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """Which multi-process launcher started this process: 'explicit', 'slurm', 'tpu' or None.

    'explicit' when JAX_COORDINATOR_ADDRESS is set; 'slurm' for a SLURM step of more than one
    task; 'tpu' for a Cloud TPU slice of more than one host (TPU_WORKER_HOSTNAMES lists them).
    """
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
    if all(v in env for v in slurm_vars) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return None


def initialize_distributed(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Join the other processes of this job; returns whether the process is now distributed.

    mode 'auto' initializes when a coordinator address is given or :func:`detect_cluster` finds
    a multi-process launcher; 'on' always initializes, letting JAX read the cluster's settings
    (TPU metadata, SLURM, Open MPI) for whatever was not given; 'off' never does.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode {mode!r} is not one of {MODES}")
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(
            "a coordinator address needs --num-processes and --process-id as well "
            f"(got num_processes={num_processes}, process_id={process_id})"
        )
    if mode == "off" or (mode == "auto" and not explicit and detect_cluster(env) is None):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return True
