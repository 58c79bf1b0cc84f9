"""Targets for ahead-of-time compilation: TPU slices described by libtpu, or CPU meshes.

A target is named by a string:
  'v5p:2x2x2', 'v5e:4x4', 'v4:2x2x2', 'v6e:2x2', ...  a TPU slice (needs the libtpu wheel, not a
      TPU): jax.experimental.topologies describes its chips, one JAX device per chip;
  'cpu:16' (or 'cpu')  the first 16 (all) host CPU devices; more than one needs
      XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is imported;
  ''  the local devices of this process, whatever they are (e.g. a real TPU VM).

`target_devices` returns the devices, `make_target_mesh` lays a (data, fsdp, tensor) mesh over
them, and CHIPS holds the per-chip HBM and peak numbers the reports are checked against.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")

LIBTPU_INSTALL_HINT = (
    "TPU ahead-of-time compilation needs libtpu (no TPU required): "
    "pip install 'libtpu==0.0.42.1' (the version jax[tpu]==0.10.2 pins, so AOT uses the "
    "compiler a real TPU VM gets), "
    "or pip install -e '.[test]'"
)

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Per-chip numbers of one TPU generation (one JAX device per chip, megacore on v4/v5p)."""

    name: str  # 'v5p'
    hbm_bytes: int  # high-bandwidth memory per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip
    hbm_bandwidth: float  # bytes/s per chip, for the roofline fallback
    device_kinds: tuple[str, ...]  # jax Device.device_kind strings of this generation
    accelerator_prefix: str  # Cloud TPU accelerator-type prefix, e.g. 'v5p' in 'v5p-16'
    cores_in_accelerator_name: bool  # v4/v5p names count TensorCores (2 per chip), v5e/v6e chips


# Sources: Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e),
# "Specifications" tables, per chip. v5p's 95 GiB is what the docs list; libtpu's compile-time
# OOM check reports 95.73G available, so our check is slightly conservative there.
CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * GiB, 275e12, 1228e9, ("TPU v4",), "v4", True),
    "v5e": ChipSpec("v5e", 16 * GiB, 197e12, 819e9, ("TPU v5 lite", "TPU v5e"), "v5litepod", False),
    "v5p": ChipSpec("v5p", 95 * GiB, 459e12, 2765e9, ("TPU v5", "TPU v5p"), "v5p", True),
    "v6e": ChipSpec("v6e", 32 * GiB, 918e12, 1640e9, ("TPU v6 lite", "TPU v6e"), "v6e", False),
}
_GENERATION_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


class TpuCompileError(RuntimeError):
    """A target cannot be described or compiled for (bad name, libtpu missing, too few CPUs)."""


def libtpu_available() -> bool:
    """True when the libtpu wheel is importable (needed for TPU AOT, not for CPU runs)."""
    return importlib.util.find_spec("libtpu") is not None


def parse_topology(name: str) -> tuple[ChipSpec, tuple[int, ...]]:
    """'v5p:2x2x2' -> (CHIPS['v5p'], (2, 2, 2)); raises TpuCompileError on a malformed name."""
    generation, sep, dims = name.strip().partition(":")
    generation = _GENERATION_ALIASES.get(generation.lower(), generation.lower())
    if not sep or generation not in CHIPS or not re.fullmatch(r"\d+(x\d+)*", dims):
        raise TpuCompileError(
            f"unknown TPU topology {name!r}: use GENERATION:DIMS with GENERATION one of "
            f"{sorted(CHIPS)}, e.g. 'v5p:2x2x2', 'v5e:4x4', 'v4:2x2x2', 'v6e:2x2'"
        )
    return CHIPS[generation], tuple(int(d) for d in dims.split("x"))


def accelerator_type(name: str) -> str:
    """The Cloud TPU accelerator type of a topology: 'v5p:2x2x2' -> 'v5p-16', 'v5e:4x4' ->
    'v5litepod-16' (v4/v5p names count TensorCores, two per chip; v5e/v6e count chips)."""
    chip, dims = parse_topology(name)
    chips = math.prod(dims)
    return f"{chip.accelerator_prefix}-{chips * (2 if chip.cores_in_accelerator_name else 1)}"


def topology_devices(name: str) -> list:
    """The TPU devices (one per chip) of slice `name`, e.g. 'v5p:2x2x2' (8 chips, 2 hosts).

    Sets TPU_ACCELERATOR_TYPE (if unset), TPU_WORKER_HOSTNAMES=localhost and TPU_SKIP_MDS_QUERY=1
    so that libtpu does not probe for a real TPU VM, and ALLOW_MULTIPLE_LIBTPU_LOAD=1. libtpu
    reads them once per process, so compile for one generation per process for quiet logs.
    Raises TpuCompileError with an install hint when libtpu is missing or the name is malformed.
    """
    chip, _ = parse_topology(name)
    if not libtpu_available():
        raise TpuCompileError(f"libtpu is not installed. {LIBTPU_INSTALL_HINT}")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(name))
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # No chip is touched, so skip libtpu's one-process-per-host lock (/tmp/libtpu_lockfile):
    # any other jax process on the machine that probed the TPU plugin would otherwise block us.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kwargs = {"chip_config_name": "megacore"} if chip.name == "v4" else {}  # one device per chip
    libtpu_name = f"{chip.name}:{name.strip().partition(':')[2]}"  # aliases -> libtpu's names
    try:
        topology = topologies.get_topology_desc(topology_name=libtpu_name, platform="tpu", **kwargs)
    except Exception as error:  # libtpu raises JaxRuntimeError with its own message
        raise TpuCompileError(f"libtpu cannot describe topology {name!r}: {error}") from error
    return list(topology.devices)


def chip_spec_for(devices: Sequence) -> ChipSpec | None:
    """The ChipSpec matching the devices' device_kind, or None (e.g. CPU devices)."""
    kind = getattr(devices[0], "device_kind", "")
    for chip in CHIPS.values():
        if kind in chip.device_kinds:
            return chip
    return None


def resolve_mesh_sizes(config_mesh_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """{data, fsdp, tensor} sizes with at most one -1 (fill) -> concrete sizes whose product is
    num_devices; raises TpuCompileError naming the sizes when they do not tile the devices."""
    sizes = [int(config_mesh_sizes.get(axis, 1)) for axis in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes, strict=True))
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise TpuCompileError(f"mesh sizes {named}: each must be positive, at most one -1 (fill)")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known or (-1 not in sizes and known != num_devices):
        raise TpuCompileError(
            f"mesh {named} does not tile {num_devices} devices: make the "
            "product of mesh.data/fsdp/tensor equal the device count, or set one of them to -1"
        )
    return tuple(num_devices // known if s == -1 else s for s in sizes)


def make_target_mesh(config_mesh_sizes: Mapping[str, int], devices: Sequence) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over `devices` (TPU topology or CPU devices).

    Args:
      config_mesh_sizes: config.mesh-like mapping {data, fsdp, tensor}; one may be -1 (fill).
      devices: e.g. topology_devices('v5p:2x2x2'). TPU devices are laid out by
        mesh_utils.create_device_mesh so that the inner axes (tensor) use the nearest chips.
    Returns:
      A Mesh with Auto axis types (classic GSPMD sharding propagation).
    """
    shape = resolve_mesh_sizes(config_mesh_sizes, len(devices))
    array = None
    if getattr(devices[0], "platform", "") == "tpu":
        from jax.experimental import mesh_utils

        try:
            array = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):
            array = None  # an odd shape for the physical torus: fall back to plain order
    if array is None:
        array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def target_devices(name: str) -> list:
    """The devices of target `name` (see the module docstring): a TPU topology, 'cpu[:N]', or ''
    for the local devices. Raises TpuCompileError naming the fix when there are too few CPUs."""
    name = (name or "").strip()
    if not name:
        return list(jax.devices())
    kind, _, count = name.partition(":")
    if kind.lower() != "cpu":
        return topology_devices(name)
    devices = list(jax.devices("cpu"))
    if not count:
        return devices
    if not count.isdigit() or int(count) < 1:
        raise TpuCompileError(f"bad CPU target {name!r}: use 'cpu:N' with N >= 1, e.g. 'cpu:16'")
    if len(devices) < int(count):
        raise TpuCompileError(
            f"target {name!r} needs {count} CPU devices but this process has {len(devices)}: "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting "
            "(jax reads it once, at import)"
        )
    return devices[: int(count)]


def is_tpu_target(name: str) -> bool:
    """True for a TPU topology name ('v5p:2x2x2'), False for 'cpu[:N]' and '' (local devices)."""
    name = (name or "").strip().lower()
    return bool(name) and not name.startswith("cpu")


__all__ = [
    "CHIPS",
    "GiB",
    "LIBTPU_INSTALL_HINT",
    "MESH_AXES",
    "ChipSpec",
    "TpuCompileError",
    "accelerator_type",
    "chip_spec_for",
    "is_tpu_target",
    "libtpu_available",
    "make_target_mesh",
    "parse_topology",
    "resolve_mesh_sizes",
    "target_devices",
    "topology_devices",
]
