"""CPU cores as XLA devices: on a CPU machine the samplers shard their batch over host devices.

XLA's CPU backend runs each device's program on its own, and splits every op of it over the
cores. The demo denoiser at batch 64 is made of small ops (per-head [64, 32] x [32, 64]
attention matmuls, norms, softmax over 64 keys) that gain little from being split, so two host
devices running half the batch each, start to finish, beat one device using both cores' threads:
1.2-1.5x the sequences/s at batch 64 on 2 cores over six measurements
(`python -m ldlm_jax.bench.sampler_model_speed` times both in the same turns). The samples are
the same: the sampler's noise does not depend on the sharding.

The count must be set before JAX starts its backends (the first JAX operation), so the CLIs call
`configure_cpu_devices` right after parsing their flags. It only adds CPU devices: on a GPU/TPU
machine the accelerators stay the default devices and nothing changes. An explicit
XLA_FLAGS=--xla_force_host_platform_device_count=N (the tests' 8 devices) is left in charge.
"""

from __future__ import annotations

import os
import re

MAX_AUTO_DEVICES = 8  # 'auto' never makes more (measured on 2 cores only, so no more is claimed)
_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def even_split(batch: int, limit: int) -> int:
    """The most devices, at most `limit`, that split `batch` sequences evenly (1 for batch 1)."""
    return max(d for d in range(1, max(1, limit) + 1) if int(batch) % d == 0)


def auto_count(batch: int | None = None, cores: int | None = None) -> int:
    """'auto': even_split(batch) over at most one device per core (and MAX_AUTO_DEVICES); 1 for
    batch 1 (a lone sequence gains nothing from more devices, and padding it to two cost ~25%
    latency on 2 cores)."""
    limit = max(1, min(cores or cpu_cores(), MAX_AUTO_DEVICES))
    return limit if batch is None else even_split(batch, limit)


def parse_choice(text: str) -> str | int:
    """The --cpu-devices value: 'auto' or an int >= 1 (ValueError naming the value otherwise)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--cpu-devices must be 'auto' or an integer >= 1, got {text!r}")
    return count


def flag_count() -> int | None:
    """N of --xla_force_host_platform_device_count=N in XLA_FLAGS, or None."""
    found = _FLAG.findall(os.environ.get("XLA_FLAGS", ""))
    return int(found[-1]) if found else None


def configure_cpu_devices(choice: str | int = "auto", batch: int | None = None) -> int | None:
    """Make the CPU backend start with `choice` devices ('auto': auto_count(batch)).

    Returns the count set, or None where it is not ours to set: XLA_FLAGS already names a
    count, or JAX has started (then an explicit count must match the devices it has).
    Raises ValueError for a bad choice, or an explicit count that cannot be had.
    """
    import jax

    choice = parse_choice(str(choice))
    count = auto_count(batch) if choice == "auto" else choice
    from_flag = flag_count()
    if from_flag is not None:
        if choice != "auto" and choice != from_flag:
            raise ValueError(
                f"--cpu-devices {choice} conflicts with XLA_FLAGS="
                f"--xla_force_host_platform_device_count={from_flag}: drop one of them"
            )
        return None
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started: its CPU device count is fixed now
        have = len(jax.devices("cpu"))
        if choice != "auto" and choice != have:
            raise ValueError(
                f"--cpu-devices {choice}: JAX already started with {have} CPU device(s); the "
                "count is set before the first JAX operation (run in a fresh process)"
            ) from None
        return None
    return count
