"""Ahead-of-time compilation for a TPU slice from any machine (issue 10 core, model-agnostic).

With `libtpu` installed (PyPI, no TPU needed), `jax.experimental.topologies` describes the devices
of a TPU slice such as 'v5p:2x2x2' (ldlm_jax.tpu_topology). A function lowered with abstract,
sharded arguments over a mesh of those devices compiles for the real chip: XLA's memory analysis
then says how many bytes each chip needs (checked against its HBM) and its cost analysis estimates
the step time, from which we derive tokens/s and MFU. Nothing runs; this answers "does this config
fit on that slice, and how fast could it go" before paying for the slice. The same code compiles
for a CPU mesh ('cpu:16'): memory per device is reported, with no HBM to check against.

Typical use (see tests/test_tpu_compile.py; ldlm_jax/aot.py does this for the LDLM programs):

    devices = topology_devices("v5p:2x2x2")
    mesh = make_target_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
    args = (jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec)), ...)
    report = compile_for_target(train_step, args, tokens_per_step=B * L, model_flops_per_step=F)
    print(format_report(report))  # compile_for_target raised DoesNotFitError if HBM is exceeded

The estimates are compile-time numbers, not measurements: XLA's cost model, or where it gives none
a roofline max(FLOPs / peak, bytes / HBM bandwidth), both optimistic (no collective time, perfect
overlap). XLA counts a while loop's body once, whatever its trip count: `add_repeated` adds the
remaining iterations of a loop (e.g. a sampler's steps) from a separately compiled body.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from ldlm_jax.attention_kernels import flash_cost_correction
from ldlm_jax.compile_report import (  # noqa: F401  (re-exported)
    CompileReport,
    add_repeated,
    derive_estimates,
    format_bytes,
    format_report,
    largest_args,
    largest_hlo_values,
    parse_xla_oom,
)
from ldlm_jax.tpu_topology import (  # noqa: F401  (re-exported: the public AOT API lives here)
    CHIPS,
    LIBTPU_INSTALL_HINT,
    MESH_AXES,
    ChipSpec,
    GiB,
    TpuCompileError,
    accelerator_type,
    chip_spec_for,
    is_tpu_target,
    libtpu_available,
    make_target_mesh,
    parse_topology,
    resolve_mesh_sizes,
    target_devices,
    topology_devices,
)


class DoesNotFitError(TpuCompileError):
    """The compiled program needs more memory per chip than the chip's HBM.

    required_bytes / hbm_bytes: what XLA or the memory analysis said (None where unknown)."""

    def __init__(self, message: str, required_bytes: int | None = None, hbm_bytes=None):
        super().__init__(message)
        self.required_bytes = required_bytes
        self.hbm_bytes = hbm_bytes


def _mesh_of(abstract_args: Sequence) -> Mesh | None:
    for leaf in jax.tree_util.tree_leaves(tuple(abstract_args)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


@contextlib.contextmanager
def _no_persistent_cache():
    """Bypass the persistent compilation cache: executables compiled for a topology without a
    client cannot be read back from it (jax warns on every hit). jax decides once per process
    whether the cache is used, so the decision is reset on the way in and out."""
    from jax.experimental.compilation_cache import compilation_cache

    enabled = jax.config.jax_enable_compilation_cache
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def _does_not_fit_message(headline: str, args: Sequence, extra: str = "") -> str:
    lines = [headline, "largest per-device arguments:"]
    lines += [f"  {p}: {d}{list(s)} {format_bytes(b)}" for p, s, d, b in largest_args(args)]
    if extra:
        lines.append(extra)
    lines.append(
        "fix: shard more (raise mesh.fsdp / mesh.tensor), lower train.batch_size or raise "
        "train.microbatches, set model.remat=full, use a bigger slice, or a smaller model"
    )
    return "\n".join(lines)


def compile_for_target(
    fn: Callable,
    abstract_args: Sequence[Any],
    out_shardings: Any = None,
    donate_argnums: Sequence[int] | int = (),
    *,
    tokens_per_step: int | None = None,
    sequences_per_step: int | None = None,
    model_flops_per_step: float | None = None,
    chip: str | ChipSpec | None = None,
    mesh: Mesh | None = None,
    check_fits: bool = True,
    label: str = "program",
) -> CompileReport:
    """Compile `fn` for the devices its arguments are sharded over and report memory and speed.

    Args:
      fn: the step function (e.g. train_step(state, batch) -> (state, metrics)).
      abstract_args: pytrees of jax.ShapeDtypeStruct with NamedSharding over a target mesh
        (make_target_mesh); nothing is allocated.
      out_shardings, donate_argnums: as for jax.jit (donated arguments alias outputs, which the
        memory analysis counts in alias_bytes).
      tokens_per_step / sequences_per_step: global tokens (batch * seq_len) / sequences per call.
      model_flops_per_step: global model FLOPs per step (e.g. 6 * params * tokens), for MFU.
      chip: 'v5p' etc. or a ChipSpec; default from the devices' device_kind (None for CPU).
      mesh: set as the ambient mesh while tracing (for bare-PartitionSpec sharding constraints);
        default: the mesh of the first NamedSharding argument.
      check_fits: raise DoesNotFitError when total bytes per device exceed the chip's HBM.
      label: names the program in the report.
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
    where = spec.name if spec else "the target"
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            if getattr(devices[0], "platform", "") == "tpu":
                stack.enter_context(_no_persistent_cache())
            if mesh is not None:
                stack.enter_context(jax.set_mesh(mesh))
            compiled = jitted.lower(*abstract_args).compile()
    except Exception as error:
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
            need, have = parse_xla_oom(text)
            size = f" (needs {format_bytes(need)} of {format_bytes(have)})" if need and have else ""
            headline = f"{label} does not fit on {where}: XLA's compile-time HBM check failed{size}"
            message = _does_not_fit_message(headline, abstract_args, text.strip()[:2000])
            raise DoesNotFitError(message, need, have or hbm) from error
        raise
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
    optimal = float(cost.get("optimal_seconds", 0.0))
    notes = []
    if "optimal_seconds" in cost and optimal <= 0:
        notes.append(f"XLA optimal_seconds is {optimal:.4g} (no estimate): roofline used")
    flops, bytes_accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    hlo_text = compiled.as_text() or ""
    extra_flops, extra_bytes, kernels = flash_cost_correction(hlo_text)
    if kernels:
        flops, bytes_accessed = flops + extra_flops, bytes_accessed + extra_bytes
        notes.append(
            f"{kernels} flash-attention kernels: added {extra_flops / 1e12:.3f} TFLOP (backward "
            f"kernels, no XLA estimate) and {extra_bytes / 1e9:.2f} GB (streamed re-reads) per "
            "device to XLA's counts"
        )
    shape = dict(mesh.shape) if mesh is not None else {}
    kind = spec.name if spec else getattr(devices[0], "device_kind", "?")
    report = CompileReport(
        target=f"{kind} x {len(devices)} (mesh {' '.join(f'{a}={s}' for a, s in shape.items())})",
        chip=spec.name if spec else None,
        num_devices=len(devices),
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
        xla_optimal_seconds=optimal if optimal > 0 else None,
        roofline_seconds=None,
        step_seconds=None,
        tokens_per_step=tokens_per_step,
        tokens_per_second=None,
        model_flops_per_step=model_flops_per_step,
        mfu=None,
        hfu=None,
        largest_args=largest_args(abstract_args),
        label=label,
        sequences_per_step=sequences_per_step,
        notes=notes,
        _peak_flops=spec.peak_bf16_flops if spec else None,
        _hbm_bandwidth=spec.hbm_bandwidth if spec else None,
    )
    derive_estimates(report)
    if check_fits and not report.fits:
        hlo = largest_hlo_values(hlo_text)
        extra = "largest HLO values per device:\n" + "\n".join(
            f"  {format_bytes(b)} {shape_text} ({op})" for b, shape_text, op in hlo
        )
        headline = (
            f"{label} does not fit on {spec.name}: {format_bytes(total)} per device > "
            f"{format_bytes(hbm)} HBM per chip"
        )
        message = _does_not_fit_message(headline, abstract_args, extra)
        raise DoesNotFitError(message, total, hbm)
    return report


__all__ = [
    "CHIPS",
    "LIBTPU_INSTALL_HINT",
    "MESH_AXES",
    "ChipSpec",
    "CompileReport",
    "DoesNotFitError",
    "TpuCompileError",
    "accelerator_type",
    "add_repeated",
    "chip_spec_for",
    "compile_for_target",
    "format_report",
    "is_tpu_target",
    "largest_hlo_values",
    "libtpu_available",
    "make_target_mesh",
    "parse_topology",
    "parse_xla_oom",
    "resolve_mesh_sizes",
    "target_devices",
    "topology_devices",
]
