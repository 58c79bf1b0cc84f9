"""Multi-host bring-up: jax.distributed.initialize when the launch environment asks for it.

One process per host (or per group of devices). We initialise when:
- explicit arguments are given (ldlm-train --coordinator HOST:PORT --num-processes N
  --process-id I), or
- the environment sets JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or
- SLURM launched several tasks (SLURM_NTASKS > 1; jax reads the rest from SLURM_*), or
- a multi-worker TPU slice (TPU_WORKER_HOSTNAMES lists several hosts, or MEGASCALE_* is set).
Otherwise the run is single-process and nothing is initialised. On CPU the cross-process
collectives use gloo. A failure (coordinator unreachable, timeout) is re-raised as
DistributedInitError saying what was tried and how to fix it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time

import jax

log = logging.getLogger(__name__)


class DistributedInitError(RuntimeError):
    """jax.distributed.initialize failed; the message names the coordinator and process."""


@dataclasses.dataclass
class LaunchSpec:
    """What to pass to jax.distributed.initialize (None: let jax detect it)."""

    reason: str  # 'flags', 'env', 'slurm', 'tpu'
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def detect_launch(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> LaunchSpec | None:
    """The multi-process launch this process belongs to, or None for a single-process run."""
    if coordinator or num_processes is not None or process_id is not None:
        missing = [
            flag
            for flag, value in (
                ("--coordinator", coordinator),
                ("--num-processes", num_processes),
                ("--process-id", process_id),
            )
            if value is None
        ]
        if missing:
            raise DistributedInitError(
                f"multi-process launch needs --coordinator, --num-processes and --process-id "
                f"together; missing {', '.join(missing)}"
            )
        return LaunchSpec("flags", coordinator, int(num_processes), int(process_id))
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return LaunchSpec(
            "env",
            os.environ["JAX_COORDINATOR_ADDRESS"],
            _env_int("JAX_NUM_PROCESSES"),
            _env_int("JAX_PROCESS_ID"),
        )
    if (_env_int("SLURM_NTASKS") or 1) > 1 and os.environ.get("SLURM_JOB_ID"):
        return LaunchSpec("slurm")
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return LaunchSpec("tpu")
    return None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Block until HOST:PORT accepts TCP connections, or raise DistributedInitError.

    jax's distributed client aborts the whole process (no Python exception) when it cannot reach
    the coordinator, so processes other than 0 check reachability first and fail readably."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedInitError(f"coordinator address {address!r} must look like HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"jax.distributed.initialize failed: coordinator={address} did not accept "
                    f"connections within {timeout_s:.0f}s ({error}). Start process 0 (it hosts "
                    "the coordinator), check the address and port, or raise --init-timeout."
                ) from None
            time.sleep(0.5)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Call jax.distributed.initialize if the launch asks for it; True when it did.

    Must run before anything touches jax devices. Idempotent within a process.
    """
    spec = detect_launch(coordinator, num_processes, process_id)
    if spec is None:
        return False
    if jax.distributed.is_initialized():
        return True
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu") or "cpu" in platforms.split(","):
        # CPU devices of different processes talk through gloo (harmless on TPU/GPU runs).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"initialization_timeout": int(timeout_s)}
    if spec.coordinator_address is not None:
        kwargs["coordinator_address"] = spec.coordinator_address
    if spec.num_processes is not None:
        kwargs["num_processes"] = spec.num_processes
    if spec.process_id is not None:
        kwargs["process_id"] = spec.process_id
    local_ids = os.environ.get("JAX_LOCAL_DEVICE_IDS", "")  # e.g. set by launch/gpu_slurm.sbatch
    if local_ids.strip():
        kwargs["local_device_ids"] = [int(i) for i in local_ids.split(",") if i.strip()]
    log.info("jax.distributed.initialize (%s): %s", spec.reason, kwargs)
    if spec.coordinator_address and spec.process_id not in (None, 0):
        wait_for_coordinator(spec.coordinator_address, timeout_s)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as error:
        raise DistributedInitError(
            f"jax.distributed.initialize failed ({spec.reason} launch: coordinator="
            f"{spec.coordinator_address or 'auto'}, num_processes={spec.num_processes or 'auto'},"
            f" process_id={spec.process_id if spec.process_id is not None else 'auto'}, "
            f"timeout {timeout_s}s): {type(error).__name__}: {error}. Check that every process "
            "was started with the same coordinator address and process count, that process 0 "
            "runs and that its port is reachable."
        ) from error
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """True on process 0, the one that writes logs and samples."""
    return jax.process_index() == 0
