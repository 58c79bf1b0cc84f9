"""Attention kernels: the XLA einsum-softmax path, and Pallas flash attention on TPU.

Both compute softmax(q k^T + mask) v for queries that are already scaled by 1/sqrt(head_dim).
The XLA path materialises the [B, H, Lq, Lk] float32 logits and probabilities in HBM, several
times per layer in training (forward, remat recompute, backward); at L = 1024 that makes the OWT
train step memory-bound on TPU (see README, "Compile for TPU"). The flash path
(jax.experimental.pallas.ops.tpu.flash_attention, shipped with jax) keeps each [block, block]
tile in VMEM and writes only q-sized tensors and per-row softmax statistics.

config.model.attention picks the kernel: 'auto' (flash on TPU for keys of >= 512 positions where
the shapes allow it, else XLA), 'xla', or 'flash' (TPU only; an error names any shape it cannot
take). The kernels differ only in
float rounding: tests run the flash path in the Pallas TPU interpreter on CPU against XLA.

XLA's cost analysis counts no FLOPs for the flash backward kernels (they carry no cost estimate)
and each kernel operand once, although a kernel streams some operands once per block of the other
sequence. `flash_cost_correction` adds both from the kernels found in compiled HLO.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ldlm_jax import sharding
from ldlm_jax.compile_report import HLO_ITEMSIZE
from ldlm_jax.config_validation import ATTENTION_KERNELS as KERNELS

FLASH_BLOCKS = (512, 256, 128)  # tile sizes tried, largest first; 128 is the TPU lane width
# 'auto' takes the flash kernel from this key length up. Below it the XLA kernel moves fewer bytes:
# a [*, L, L] probability matrix is small there, while the kernel's per-row softmax statistics
# are padded to 128 lanes. Compiled for v5e, attention forward + backward over 8192 tokens of 12
# heads x 64: L = 128 / 256 / 512 / 1024 take 0.76 / 1.05 / 1.85 / 3.51 ms with XLA and
# 0.94 / 1.19 / 1.31 / 1.59 ms with flash (roofline; python -m ldlm_jax.bench.attention_aot).
FLASH_AUTO_MIN_LENGTH = 512


def resolve_kernel(name: str, platform: str) -> str:
    """config.model.attention for the backend `platform` ('tpu', 'cpu', 'gpu') -> the kernel the
    Attention layers use: 'xla', 'flash', or 'auto' (flash where the shapes allow it)."""
    if name not in KERNELS:
        raise ValueError(f"model.attention must be one of {KERNELS}, got {name!r}")
    if name == "auto":
        return "auto" if platform == "tpu" else "xla"
    if name == "flash" and platform != "tpu":
        raise ValueError(
            f"model.attention='flash' is the Pallas TPU kernel; this program runs on {platform}. "
            "Use model.attention='auto' (flash on TPU, XLA elsewhere) or 'xla'"
        )
    return name


def flash_block(length: int) -> int:
    """The largest of FLASH_BLOCKS that divides `length`, or 0 when none does."""
    return next((b for b in FLASH_BLOCKS if length % b == 0), 0)


def flash_unsupported(q_len: int, kv_len: int, has_bias: bool) -> str | None:
    """Why the flash kernel cannot take these shapes, or None when it can."""
    if has_bias:
        return "an additive attention bias (model.perceiver_local_bias > 0)"
    for what, n in (("query", q_len), ("key", kv_len)):
        if not flash_block(n):
            return f"a {what} length of {n} (it must be a multiple of 128)"
    return None


def xla_attention(q, k, v, key_mask=None, bias=None):
    """q [B, Lq, H, Dh], k/v [B, Lk, H, Dh] (compute dtype, q pre-scaled), key_mask [B, Lk]
    (1 = attend) or None, bias float [H, Lq, Lk] or None -> [B, Lq, H, Dh] in v's dtype.
    The logits leave the matmul in float32 and the softmax runs in float32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias[None].astype(jnp.float32)
    if key_mask is not None:
        big_neg = jnp.finfo(jnp.float32).min
        logits = jnp.where(key_mask[:, None, None, :].astype(bool), logits, big_neg)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _flash_bhld(q, k, v, key_mask, causal, scale):
    """The Pallas kernel on [B, H, L, Dh] arrays (one shard of them under shard_map)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    q_block, kv_block = flash_block(q.shape[2]), flash_block(k.shape[2])
    blocks = pallas_flash.BlockSizes(
        block_q=q_block,
        block_k_major=kv_block,
        block_k=kv_block,
        block_b=1,
        block_q_major_dkv=q_block,
        block_k_major_dkv=kv_block,
        block_k_dkv=kv_block,
        block_q_dkv=q_block,
        block_k_major_dq=kv_block,
        block_k_dq=kv_block,
        block_q_dq=q_block,
    )
    segments = None
    if key_mask is not None:  # padded keys get segment 0, which no query (segment 1) matches
        query_segments = jnp.ones(q.shape[:1] + q.shape[2:3], jnp.int32)
        segments = pallas_flash.SegmentIds(query_segments, key_mask.astype(jnp.int32))
    return pallas_flash.flash_attention(
        q, k, v, segment_ids=segments, causal=causal, sm_scale=scale, block_sizes=blocks
    )


def flash_attention(q, k, v, key_mask=None, *, causal: bool = False, scale: float = 1.0):
    """Pallas TPU flash attention with the layout and contract of xla_attention (no bias).

    q [B, Lq, H, Dh], k/v [B, Lk, H, Dh], key_mask [B, Lk] or None -> [B, Lq, H, Dh]; `causal`
    masks keys after the query's position, `scale` multiplies the float32 logits. Under an
    ambient multi-device mesh the kernel runs per shard (shard_map): batch split as the active
    activation rules split 'batch', heads as they split 'heads' (replicated without rules)."""
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # -> [B, H, L, Dh]
    mesh = jax.sharding.get_abstract_mesh()
    kernel = functools.partial(_flash_bhld, causal=causal, scale=scale)
    if mesh.empty or mesh.size == 1:
        out = kernel(q, k, v, key_mask)
    else:
        if mesh.are_all_axes_auto:  # the project's meshes: the split the rules give activations
            spec = sharding.activation_spec(("batch", "heads", None, None), q.shape)
            spec = spec if spec is not None else PartitionSpec()
        else:  # an Explicit mesh: the arrays carry their split in their types
            spec = jax.typeof(q).sharding.spec
        args, in_specs = (q, k, v), (spec, spec, spec)
        if key_mask is not None:
            args, in_specs = (*args, key_mask), (*in_specs, PartitionSpec(spec[0]))
        out = jax.shard_map(
            lambda *a: kernel(*a[:3], a[3] if len(a) > 3 else None),
            in_specs=in_specs,
            out_specs=spec,
            check_vma=False,
        )(*args)
    return jnp.swapaxes(out, 1, 2)


def attention(q, k, v, key_mask=None, bias=None, kernel: str = "xla"):
    """softmax(q k^T + bias + mask) v with the kernel `kernel` ('xla', 'flash' or 'auto'; see
    resolve_kernel). Shapes as in xla_attention; 'flash' raises ValueError naming a shape or
    bias it cannot take (at trace time, before any compile), 'auto' then uses XLA."""
    if use_flash(kernel, q.shape[1], k.shape[1], bias is not None):
        return flash_attention(q, k, v, key_mask)
    return xla_attention(q, k, v, key_mask, bias)


def use_flash(kernel: str, q_len: int, kv_len: int, has_bias: bool = False) -> bool:
    """Whether `kernel` ('xla', 'flash', 'auto') runs the flash kernel for these shapes; ValueError
    for 'flash' with shapes it cannot take, naming them and the fix."""
    if kernel == "xla" or (kernel == "auto" and kv_len < FLASH_AUTO_MIN_LENGTH):
        return False
    reason = flash_unsupported(q_len, kv_len, has_bias)
    if reason is None:
        return True
    if kernel == "flash":
        raise ValueError(
            f"model.attention='flash' cannot take {reason}; use model.attention='auto', which "
            "falls back to the XLA kernel for such layers"
        )
    return False


_TPU_KERNEL = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*custom_call_target=\"tpu_custom_call\"")
_OPERAND_SHAPES = re.compile(r"operand_layout_constraints=\{(.*?\})\}")
_SHAPE = re.compile(rf"\b({'|'.join(HLO_ITEMSIZE)})\[([\d,]*)\]")


def _operands(line: str) -> list[tuple[int, tuple[int, ...]]]:
    """(itemsize, shape) of each operand of one HLO custom-call line."""
    match = _OPERAND_SHAPES.search(line)
    found = _SHAPE.findall(match.group(1)) if match else []
    return [(HLO_ITEMSIZE[t], tuple(int(d) for d in dims.split(",") if d)) for t, dims in found]


def _size(operand) -> int:
    itemsize, shape = operand
    return itemsize * math.prod(shape)


def flash_cost_correction(hlo_text: str) -> tuple[float, float, int]:
    """(FLOPs, bytes, kernels) to add to XLA's per-device cost analysis for the flash kernels in
    optimised HLO text: the backward kernels' matmul FLOPs (dq: q k^T, dO v^T, dS k; dkv: those
    two, P^T dO and dS^T q; 2 B H Lq Lk Dh each), and the re-reads of streamed operands (forward
    and dq kernels stream k and v once per query block, the dkv kernel streams q, dO and the
    row statistics once per key block) beyond the one read XLA counts."""
    flops = extra_bytes = 0.0
    kernels = 0
    for line in hlo_text.splitlines():
        match = _TPU_KERNEL.match(line)
        if match is None or "flash" not in match.group(1):
            continue
        operands = _operands(line)
        if len(operands) < 3 or len(operands[0][1]) != 4:
            continue
        kernels += 1
        (b, h, q_len, head_dim), kv_len = operands[0][1], operands[1][1][2]
        q_passes = q_len // (flash_block(q_len) or q_len)
        kv_passes = kv_len // (flash_block(kv_len) or kv_len)
        matmul = 2.0 * b * h * q_len * kv_len * head_dim
        name = match.group(1)
        if "bwd_dkv" in name:  # operands q, k, v, [ab], [segments], l, m, dO, di
            flops += 4 * matmul
            streamed = [operands[0]] + [op for op in operands[3:] if op[1][2:3] == (q_len,)]
            extra_bytes += (kv_passes - 1) * sum(_size(op) for op in streamed)
        elif "bwd_dq" in name:
            flops += 3 * matmul
            extra_bytes += (q_passes - 1) * (_size(operands[1]) + _size(operands[2]))
        else:  # the forward kernel: XLA already counts its estimate's FLOPs
            extra_bytes += (q_passes - 1) * (_size(operands[1]) + _size(operands[2]))
    return flops, extra_bytes, kernels


__all__ = [
    "FLASH_AUTO_MIN_LENGTH",
    "FLASH_BLOCKS",
    "KERNELS",
    "attention",
    "flash_attention",
    "flash_block",
    "flash_cost_correction",
    "flash_unsupported",
    "resolve_kernel",
    "use_flash",
    "xla_attention",
]
