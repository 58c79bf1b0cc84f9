"""CompileReport: per-device memory and estimated speed of one ahead-of-time compiled program.

Built by ldlm_jax.tpu_compile.compile_for_target from XLA's memory_analysis() and cost_analysis();
this module holds the report, the derived estimates (step time, tokens/s, sequences/s, MFU), the
correction for loops whose body XLA counts once (add_repeated), and the text and JSON forms.
Step times are compile-time estimates, not measurements: XLA's optimal_seconds where it gives a
positive one, else the roofline max(FLOPs / peak, bytes accessed / HBM bandwidth).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import jax
import numpy as np

GiB = 1024**3


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
    xla_optimal_seconds: float | None  # XLA's own (optimistic) estimate; None if not positive
    roofline_seconds: float | None  # max(flops / peak, bytes / HBM bandwidth)
    step_seconds: float | None  # the estimate used below: XLA's, else the roofline
    tokens_per_step: int | None
    tokens_per_second: float | None
    model_flops_per_step: float | None  # global, as given by the caller (6 N T style)
    mfu: float | None  # model FLOPs / (step_seconds * devices * peak): an upper bound
    hfu: float | None  # XLA FLOPs * devices / (step_seconds * devices * peak)
    largest_args: list[tuple[str, tuple[int, ...], str, int]]  # (path, shard shape, dtype, bytes)
    label: str = "program"  # e.g. 'train step', 'sampler euler_maruyama x 200'
    sequences_per_step: int | None = None
    sequences_per_second: float | None = None
    step_time_source: str | None = None  # 'xla' (optimal_seconds) or 'roofline'
    notes: list[str] = dataclasses.field(default_factory=list)
    _peak_flops: float | None = dataclasses.field(default=None, repr=False)
    _hbm_bandwidth: float | None = dataclasses.field(default=None, repr=False)

    @property
    def fits(self) -> bool:
        return self.hbm_bytes is None or self.total_bytes <= self.hbm_bytes

    def to_json(self) -> dict:
        """A JSON-friendly dict of the public fields."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}
        out["largest_args"] = [list(row) for row in self.largest_args]
        out["fits"] = self.fits
        return out


def format_bytes(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB (small test programs stay readable)."""
    return f"{n / GiB:.3f} GiB" if abs(n) >= GiB else f"{n / 2**20:.3f} MiB"


def largest_args(abstract_args: Sequence, k: int = 5) -> list[tuple[str, tuple, str, int]]:
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
HLO_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
HLO_ITEMSIZE.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})


def largest_hlo_values(hlo_text: str, k: int = 5) -> list[tuple[int, str, str]]:
    """The k largest array values in (per-device, post-partitioning) HLO text, as
    (bytes, 'dtype[shape]', op name); a hint to which op dominates temp memory."""
    found = {}
    for line in hlo_text.splitlines():
        match = _HLO_VALUE.search(line)
        if match is None:
            continue
        name, dtype, dims, op = match.groups()
        op_name = _HLO_OP_NAME.search(line)
        op_name = op_name.group(1) if op_name else None
        if dtype not in HLO_ITEMSIZE or op in ("parameter", "bitcast", "constant"):
            continue
        shape = [int(d) for d in dims.split(",") if d]
        size = math.prod(shape) * HLO_ITEMSIZE[dtype]
        key = (f"{dtype}[{dims}]", op_name or f"{op} {name}")
        found[key] = max(found.get(key, 0), size)
    rows = sorted(((size, *key) for key, size in found.items()), reverse=True)
    return rows[:k]


_XLA_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_XLA_OOM = (  # libtpu's compile-time OOM messages: (required, available)
    re.compile(rf"required for [^(]*\({_XLA_SIZE}\) exceeds available HBM \({_XLA_SIZE}\)"),
    re.compile(rf"Used {_XLA_SIZE} of {_XLA_SIZE} hbm"),
)


def parse_xla_oom(text: str) -> tuple[int | None, int | None]:
    """(required bytes, available bytes) from a libtpu RESOURCE_EXHAUSTED message, or Nones."""
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    for pattern in _XLA_OOM:
        match = pattern.search(text)
        if match:
            need, need_unit, have, have_unit = match.groups()
            return int(float(need) * scale[need_unit]), int(float(have) * scale[have_unit])
    return None, None


def derive_estimates(report: CompileReport) -> CompileReport:
    """Fill step_seconds, throughputs, MFU and HFU from the raw cost numbers."""
    peak, bandwidth = report._peak_flops, report._hbm_bandwidth
    roofline = None
    if peak and bandwidth:
        roofline = max(report.flops_per_device / peak, report.bytes_accessed_per_device / bandwidth)
    report.roofline_seconds = roofline or None
    step = report.xla_optimal_seconds or report.roofline_seconds
    report.step_seconds = step
    report.step_time_source = (
        None if step is None else ("xla" if report.xla_optimal_seconds else "roofline")
    )
    n = report.num_devices
    tokens, sequences = report.tokens_per_step, report.sequences_per_step
    report.tokens_per_second = tokens / step if (tokens and step) else None
    report.sequences_per_second = sequences / step if (sequences and step) else None
    total_peak = peak * n if peak else None
    model = report.model_flops_per_step
    report.mfu = model / (step * total_peak) if (model and step and total_peak) else None
    report.hfu = (
        report.flops_per_device * n / (step * total_peak) if (step and total_peak) else None
    )
    return report


def add_repeated(report: CompileReport, body: CompileReport, times: int, note: str = ""):
    """`report` plus `times` more runs of `body` (same target): for a loop whose body XLA's cost
    analysis counted once. Adds FLOPs, bytes, XLA's and the roofline estimate (model FLOPs
    too, where both have them); memory is the loop program's. Returns a new CompileReport."""
    out = dataclasses.replace(report, notes=list(report.notes))
    out.flops_per_device += times * body.flops_per_device
    out.bytes_accessed_per_device += times * body.bytes_accessed_per_device
    if report.xla_optimal_seconds and body.xla_optimal_seconds:
        out.xla_optimal_seconds = report.xla_optimal_seconds + times * body.xla_optimal_seconds
    else:
        out.xla_optimal_seconds = None
    if report.model_flops_per_step and body.model_flops_per_step:
        out.model_flops_per_step = report.model_flops_per_step + times * body.model_flops_per_step
    out.compile_seconds += body.compile_seconds
    out.notes.append(note or f"cost includes {times} more runs of '{body.label}'")
    return derive_estimates(out)


def format_report(report: CompileReport) -> str:
    """A human-readable, multi-line summary of a CompileReport."""

    def opt(value, fmt):
        return "n/a" if value is None else fmt(value)

    def ms(s):
        return f"{s * 1e3:.3f} ms"

    gib = format_bytes

    hbm = report.hbm_bytes
    share = f" ({100 * report.total_bytes / hbm:.1f}% of {format_bytes(hbm)} HBM)" if hbm else ""
    source = f", from {report.step_time_source}" if report.step_time_source else ""
    throughput = []
    if report.tokens_per_step:
        throughput.append(
            f"tokens/s {opt(report.tokens_per_second, lambda v: f'{v:,.0f}')} "
            f"for {report.tokens_per_step:,} tokens/step"
        )
    if report.sequences_per_step:
        throughput.append(
            f"sequences/s {opt(report.sequences_per_second, lambda v: f'{v:,.2f}')} "
            f"for {report.sequences_per_step:,} sequences/call"
        )
    lines = [
        f"[{report.label}] target: {report.target}; compiled in {report.compile_seconds:.1f} s",
        f"memory per device: total {format_bytes(report.total_bytes)}{share}"
        + (" (no HBM size to check against)" if hbm is None else "")
        + ("" if hbm is None else " FITS" if report.fits else " DOES NOT FIT"),
        f"  arguments {gib(report.argument_bytes)}, outputs {gib(report.output_bytes)}, "
        f"temporaries {gib(report.temp_bytes)}, aliased (donated) {gib(report.alias_bytes)}, "
        f"code {gib(report.generated_code_bytes)}",
        f"XLA cost per device: {report.flops_per_device:.4g} FLOPs, "
        f"{report.bytes_accessed_per_device:.4g} bytes accessed",
        f"step time estimate: {opt(report.step_seconds, ms)}{source} "
        f"(XLA optimal_seconds {opt(report.xla_optimal_seconds, ms)}, "
        f"roofline {opt(report.roofline_seconds, ms)}; compile-time estimates, optimistic)",
        "; ".join(throughput or ["throughput n/a"])
        + f"; MFU {opt(report.mfu, lambda v: f'{100 * v:.1f}%')}, "
        f"HFU {opt(report.hfu, lambda v: f'{100 * v:.1f}%')} (upper bounds)",
    ]
    lines += [f"note: {n}" for n in report.notes]
    lines.append("largest per-device arguments:")
    lines += [f"  {p}: {d}{list(s)} {format_bytes(b)}" for p, s, d, b in report.largest_args]
    return "\n".join(lines)


__all__ = [
    "CompileReport",
    "add_repeated",
    "derive_estimates",
    "format_bytes",
    "format_report",
    "largest_args",
    "largest_hlo_values",
    "parse_xla_oom",
]
