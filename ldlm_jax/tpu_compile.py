"""Ahead-of-time compilation for a TPU slice from any machine (issue 10 core, model-agnostic).

With `libtpu` installed (PyPI, no TPU needed), `jax.experimental.topologies` describes the devices
of a TPU slice such as 'v5p:2x2x2'. A function lowered with abstract, sharded arguments over a mesh
of those devices compiles for the real chip: XLA's memory analysis then says how many bytes each
chip needs (checked against its HBM) and its cost analysis estimates the step time, from which we
derive tokens/s and MFU. Nothing runs; this answers "does this config fit on that slice, and how
fast could it go" before paying for the slice.

Typical use (see tests/test_tpu_compile.py):

    devices = topology_devices("v5p:2x2x2")
    mesh = make_target_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    args = (jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec)), ...)
    report = compile_for_target(train_step, args, tokens_per_step=B * L, model_flops_per_step=F)
    print(format_report(report))  # raises DoesNotFitError first if a chip's HBM is exceeded
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

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
    """A target topology cannot be described or compiled for (bad name, libtpu missing, ...)."""


class DoesNotFitError(TpuCompileError):
    """The compiled program needs more memory per chip than the chip's HBM."""


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


@dataclasses.dataclass
class CompileReport:
    """Per-device memory and estimated speed of one program compiled for a target."""

    target: str  # e.g. 'v5p x 8 (mesh data=8 fsdp=1 tensor=1)'
    chip: str | None  # 'v5p', or None for unknown devices (e.g. the CPU fallback)
    num_devices: int
    mesh_shape: dict[str, int]
    compile_seconds: float
    # Bytes per device, from compiled.memory_analysis().
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs that reuse donated argument buffers (counted once)
    generated_code_bytes: int
    total_bytes: int  # argument + output + temp + code - alias
    hbm_bytes: int | None
    # From compiled.cost_analysis(), per device.
    flops_per_device: float
    bytes_accessed_per_device: float
    xla_optimal_seconds: float | None  # XLA's own (optimistic) step-time estimate
    roofline_seconds: float | None  # max(flops / peak, bytes / HBM bandwidth)
    step_seconds: float | None  # the estimate used below: XLA's, else the roofline
    tokens_per_step: int | None
    tokens_per_second: float | None
    model_flops_per_step: float | None  # global, as given by the caller (6 N T style)
    mfu: float | None  # model FLOPs / (step_seconds * devices * peak): an upper bound
    hfu: float | None  # XLA FLOPs * devices / (step_seconds * devices * peak)
    largest_args: list[tuple[str, tuple[int, ...], str, int]]  # (path, shard shape, dtype, bytes)

    @property
    def fits(self) -> bool:
        return self.hbm_bytes is None or self.total_bytes <= self.hbm_bytes


def _gib(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB (small test programs stay readable)."""
    return f"{n / GiB:.3f} GiB" if abs(n) >= GiB else f"{n / 2**20:.3f} MiB"


def _largest_args(abstract_args: Sequence, k: int = 5) -> list[tuple[str, tuple, str, int]]:
    """The k biggest per-device argument shards (path, shard shape, dtype, bytes)."""
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tuple(abstract_args)):
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = np.dtype(getattr(leaf, "dtype", np.float32))
        sharding = getattr(leaf, "sharding", None)
        shard = tuple(sharding.shard_shape(shape)) if sharding is not None else shape
        rows.append(
            (jax.tree_util.keystr(path), shard, dtype.name, math.prod(shard) * dtype.itemsize)
        )
    return sorted(rows, key=lambda row: -row[3])[:k]


_HLO_VALUE = re.compile(r"%(\S+) = (\w+)\[([\d,]*)\]\S* (\w+)\(")
_HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')


def largest_hlo_values(hlo_text: str, k: int = 5) -> list[tuple[int, str, str]]:
    """The k largest array values in (per-device, post-partitioning) HLO text, as
    (bytes, 'dtype[shape]', op name); a hint to which op dominates temp memory."""
    itemsize = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
    itemsize.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
    found = {}
    for line in hlo_text.splitlines():
        match = _HLO_VALUE.search(line)
        if match is None:
            continue
        name, dtype, dims, op = match.groups()
        op_name = _HLO_OP_NAME.search(line)
        op_name = op_name.group(1) if op_name else None
        if dtype not in itemsize or op in ("parameter", "bitcast", "constant"):
            continue
        shape = [int(d) for d in dims.split(",") if d]
        size = math.prod(shape) * itemsize[dtype]
        key = (f"{dtype}[{dims}]", op_name or f"{op} {name}")
        found[key] = max(found.get(key, 0), size)
    rows = sorted(((size, *key) for key, size in found.items()), reverse=True)
    return rows[:k]


def _mesh_of(abstract_args: Sequence) -> Mesh | None:
    for leaf in jax.tree_util.tree_leaves(tuple(abstract_args)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _does_not_fit_message(headline: str, args: Sequence, extra: str = "") -> str:
    lines = [headline, "largest per-device arguments:"]
    lines += [f"  {p}: {d}{list(s)} {_gib(b)}" for p, s, d, b in _largest_args(args)]
    if extra:
        lines.append(extra)
    lines.append(
        "fix: shard more (raise mesh.fsdp / mesh.tensor), lower train.batch_size or raise "
        "train.microbatches, use a bigger slice, or a smaller model"
    )
    return "\n".join(lines)


def compile_for_target(
    fn: Callable,
    abstract_args: Sequence[Any],
    out_shardings: Any = None,
    donate_argnums: Sequence[int] | int = (),
    *,
    tokens_per_step: int | None = None,
    model_flops_per_step: float | None = None,
    chip: str | ChipSpec | None = None,
    mesh: Mesh | None = None,
    check_fits: bool = True,
) -> CompileReport:
    """Compile `fn` for the devices its arguments are sharded over and report memory and speed.

    Args:
      fn: the step function (e.g. train_step(state, batch) -> (state, metrics)).
      abstract_args: pytrees of jax.ShapeDtypeStruct with NamedSharding over a target mesh
        (make_target_mesh); nothing is allocated.
      out_shardings, donate_argnums: as for jax.jit (donated arguments alias outputs, which the
        memory analysis counts in alias_bytes).
      tokens_per_step: global tokens per step (batch * seq_len), for tokens/s.
      model_flops_per_step: global model FLOPs per step (e.g. 6 * params * tokens), for MFU.
      chip: 'v5p' etc. or a ChipSpec; default from the devices' device_kind (None for CPU).
      mesh: set as the ambient mesh while tracing (for bare-PartitionSpec sharding constraints);
        default: the mesh of the first NamedSharding argument.
      check_fits: raise DoesNotFitError when total bytes per device exceed the chip's HBM.
    Returns:
      A CompileReport. Raises DoesNotFitError (naming the largest arguments and HLO values) when
      XLA reports a compile-time HBM OOM or the memory analysis exceeds HBM.
    """
    mesh = mesh if mesh is not None else _mesh_of(abstract_args)
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
    spec = CHIPS[chip] if isinstance(chip, str) else chip
    spec = spec if spec is not None else chip_spec_for(devices)
    hbm = spec.hbm_bytes if spec else None
    jitted = jax.jit(fn, out_shardings=out_shardings, donate_argnums=donate_argnums)
    # Executables compiled for a topology without a client cannot be read back from the
    # persistent compilation cache (jax warns on every hit), so bypass it for TPU targets.
    use_cache = jax.config.jax_enable_compilation_cache
    if getattr(devices[0], "platform", "") == "tpu":
        jax.config.update("jax_enable_compilation_cache", False)
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            if mesh is not None:
                stack.enter_context(jax.set_mesh(mesh))
            compiled = jitted.lower(*abstract_args).compile()
    except Exception as error:
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
            where = spec.name if spec else "the target"
            headline = f"the program does not fit on {where}: XLA's compile-time HBM check failed"
            raise DoesNotFitError(_does_not_fit_message(headline, abstract_args, text)) from error
        raise
    finally:
        jax.config.update("jax_enable_compilation_cache", use_cache)
    compile_seconds = time.perf_counter() - start

    memory = compiled.memory_analysis()
    argument = int(getattr(memory, "argument_size_in_bytes", 0))
    output = int(getattr(memory, "output_size_in_bytes", 0))
    temp = int(getattr(memory, "temp_size_in_bytes", 0))
    alias = int(getattr(memory, "alias_size_in_bytes", 0))
    code = int(getattr(memory, "generated_code_size_in_bytes", 0))
    total = argument + output + temp + code - alias

    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: a list of dicts
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    optimal = float(cost.get("optimal_seconds", 0.0)) or None
    optimal = optimal if optimal and optimal > 0 else None
    roofline = None
    if spec is not None:
        roofline = max(flops / spec.peak_bf16_flops, bytes_accessed / spec.hbm_bandwidth) or None
    step = optimal or roofline
    n = len(devices)
    tokens_per_second = tokens_per_step / step if (tokens_per_step and step) else None
    peak = spec.peak_bf16_flops * n if spec else None
    mfu = model_flops_per_step / (step * peak) if (model_flops_per_step and step and peak) else None
    hfu = flops * n / (step * peak) if (step and peak) else None
    shape = dict(mesh.shape) if mesh is not None else {}
    kind = spec.name if spec else getattr(devices[0], "device_kind", "?")
    report = CompileReport(
        target=f"{kind} x {n} (mesh {' '.join(f'{a}={s}' for a, s in shape.items())})",
        chip=spec.name if spec else None,
        num_devices=n,
        mesh_shape=shape,
        compile_seconds=compile_seconds,
        argument_bytes=argument,
        output_bytes=output,
        temp_bytes=temp,
        alias_bytes=alias,
        generated_code_bytes=code,
        total_bytes=total,
        hbm_bytes=hbm,
        flops_per_device=flops,
        bytes_accessed_per_device=bytes_accessed,
        xla_optimal_seconds=optimal,
        roofline_seconds=roofline,
        step_seconds=step,
        tokens_per_step=tokens_per_step,
        tokens_per_second=tokens_per_second,
        model_flops_per_step=model_flops_per_step,
        mfu=mfu,
        hfu=hfu,
        largest_args=_largest_args(abstract_args),
    )
    if check_fits and not report.fits:
        hlo = largest_hlo_values(compiled.as_text() or "")
        extra = "largest HLO values per device:\n" + "\n".join(
            f"  {_gib(b)} {shape_text} ({op})" for b, shape_text, op in hlo
        )
        headline = (
            f"the program does not fit on {spec.name}: {_gib(total)} per device > "
            f"{_gib(hbm)} HBM per chip"
        )
        raise DoesNotFitError(_does_not_fit_message(headline, abstract_args, extra))
    return report


def format_report(report: CompileReport) -> str:
    """A human-readable, multi-line summary of a CompileReport."""

    def opt(value, fmt):
        return "n/a" if value is None else fmt(value)

    hbm = report.hbm_bytes
    share = f" ({100 * report.total_bytes / hbm:.1f}% of {_gib(hbm)} HBM)" if hbm else ""
    lines = [
        f"target: {report.target}; compiled in {report.compile_seconds:.1f} s",
        f"memory per device: total {_gib(report.total_bytes)}{share}"
        + (" FITS" if report.fits else " DOES NOT FIT"),
        f"  arguments {_gib(report.argument_bytes)}, outputs {_gib(report.output_bytes)}, "
        f"temporaries {_gib(report.temp_bytes)}, aliased (donated) {_gib(report.alias_bytes)}, "
        f"code {_gib(report.generated_code_bytes)}",
        f"XLA cost per device: {report.flops_per_device:.4g} FLOPs, "
        f"{report.bytes_accessed_per_device:.4g} bytes accessed",
        f"step time estimate: {opt(report.step_seconds, lambda s: f'{s * 1e3:.3f} ms')} "
        f"(XLA optimal_seconds {opt(report.xla_optimal_seconds, lambda s: f'{s * 1e3:.3f} ms')}, "
        f"roofline {opt(report.roofline_seconds, lambda s: f'{s * 1e3:.3f} ms')}; optimistic)",
        f"tokens/s: {opt(report.tokens_per_second, lambda v: f'{v:,.0f}')} "
        f"for {opt(report.tokens_per_step, lambda v: f'{v:,}')} tokens/step; "
        f"MFU {opt(report.mfu, lambda v: f'{100 * v:.1f}%')}, "
        f"HFU {opt(report.hfu, lambda v: f'{100 * v:.1f}%')} (upper bounds)",
        "largest per-device arguments:",
    ]
    lines += [f"  {p}: {d}{list(s)} {_gib(b)}" for p, s, d, b in report.largest_args]
    return "\n".join(lines)


__all__ = [
    "CHIPS",
    "LIBTPU_INSTALL_HINT",
    "MESH_AXES",
    "ChipSpec",
    "CompileReport",
    "DoesNotFitError",
    "TpuCompileError",
    "accelerator_type",
    "chip_spec_for",
    "compile_for_target",
    "format_report",
    "largest_hlo_values",
    "libtpu_available",
    "make_target_mesh",
    "parse_topology",
    "resolve_mesh_sizes",
    "topology_devices",
]
