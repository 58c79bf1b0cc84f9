"""Building blocks shared by the LDLM networks: norms, attention, feed-forward nets, time embedding.

Every parameter is created through `nn.with_logical_partitioning` with the logical axis names
(`embed`, `mlp`, `heads`, `kv`, `vocab`, `length`, `latent`, `norm`), so the
sharding is decided by `config.logical_axis_rules`, not here. A matrix whose two axes would both
be `embed` (a width->width projection) names its input axis `mlp`: Flax forbids one name twice.

Compute runs in `dtype` (bfloat16 at paper scale) with float32 master weights (`param_dtype`);
norms, RoPE and the attention softmax are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import attention_kernels, sharding
from ldlm_jax.projections import DenseKernel, head_linear

Dtype = Any

DEFAULT_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
EMBED_INIT = nn.initializers.normal(stddev=0.02)


def as_dtype(name: str | Dtype) -> Dtype:
    """'float32' / 'bfloat16' -> the jnp dtype (dtypes pass through)."""
    return jnp.dtype(name) if isinstance(name, str) else name


def param_with_axes(module: nn.Module, name: str, init, shape: Sequence[int], axes, dtype):
    """A parameter carrying logical axis names (boxed as nn.LogicallyPartitioned)."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class Dense(nn.Module):
    """y = x @ W (+ b) over the last axis. W has logical names `axes` = (in_name, out_name).

    head=True (a vocabulary-wide output with a bias): the same parameters, created by
    projections.DenseKernel, applied by projections.head_linear (its hand-written gradient).
    """

    features: int
    axes: tuple[str, str] = ("embed", "mlp")
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = DEFAULT_INIT
    head: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., in] -> [..., features] in self.dtype."""
        if self.head and self.use_bias:
            weights = DenseKernel(
                (self.features,),
                self.axes,
                self.kernel_init,
                use_bias=True,
                param_dtype=self.param_dtype,
                name="linear",
            )
            kernel, bias = weights((x.shape[-1],))
            return head_linear(*(a.astype(self.dtype) for a in (x, kernel, bias)))
        return nn.DenseGeneral(
            self.features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, self.axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
            name="linear",
        )(x)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis, in float32, with a learned scale (axis name `norm`)."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., d] -> [..., d] in self.dtype."""
        scale = param_with_axes(
            self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32**2, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, in float32, with learned scale and bias (axis name `norm`)."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., d] -> [..., d] in self.dtype."""
        d = x.shape[-1]
        scale = param_with_axes(
            self, "scale", nn.initializers.ones, (d,), ("norm",), self.param_dtype
        )
        bias = param_with_axes(
            self, "bias", nn.initializers.zeros, (d,), ("norm",), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean((x32 - mean) ** 2, axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def apply_rope(
    x: jax.Array, positions: jax.Array, theta: float, rotate_by_matmul: bool = False
) -> jax.Array:
    """Rotary position embedding (rotate-half form) in float32.

    With rotate_by_matmul, rotate_half(x) = [-x2, x1] is taken as x @ R with a fixed signed
    permutation R instead of by slicing the head dimension in halves: the same numbers (each
    output is one input times +-1, exact at HIGHEST precision). On TPU the half-width slices of a
    64-wide head dimension pad to the 128-lane tile (4.7x the HBM traffic of the matmul form,
    `python -m ldlm_jax.bench.attention_aot`); on CPU the slices are ~5% faster. Attention picks
    the matmul with the TPU attention kernels.

    Args:
      x: [batch, length, heads, head_dim].
      positions: [length] int32.
      rotate_by_matmul: see above.
    Returns:
      [batch, length, heads, head_dim] float32.
    """
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [L, half]
    if not rotate_by_matmul:
        sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
        x = x.astype(jnp.float32)
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, L, 1, head_dim]
    eye, zeros = np.eye(half, dtype=np.float32), np.zeros((half, half), np.float32)
    rotate_half = jnp.asarray(np.block([[zeros, eye], [-eye, zeros]]), x.dtype)
    x_rotated = jnp.einsum(
        "blhd,de->blhe",
        x,
        rotate_half,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return x.astype(jnp.float32) * jnp.cos(angles) + x_rotated * jnp.sin(angles)


class Attention(nn.Module):
    """Multi-head attention; queries from `x_q`, keys/values from `x_kv` (self-attention if None).

    Options: per-head QK RMSNorm (`qk_norm`), RoPE on queries and keys (`rope_theta` > 0), biases.
    Kernels: q/k/v [embed, heads, kv], out [heads, kv, embed]. `kernel` picks the attention
    kernel (ldlm_jax.attention_kernels): XLA (logits in float32 straight out of the matmul, float32
    softmax) or Pallas flash attention on TPU; the params are the same.
    """

    num_heads: int
    qk_norm: bool = False
    rope_theta: float = 0.0
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(
        self,
        x_q: jax.Array,
        x_kv: jax.Array | None = None,
        key_mask: jax.Array | None = None,
        bias: jax.Array | None = None,
    ) -> jax.Array:
        """x_q [B, Lq, D], x_kv [B, Lk, D], key_mask [B, Lk] (1/True = attend), bias: float
        [heads, Lq, Lk] added to the attention logits, or None -> [B, Lq, D]."""
        x_kv = x_q if x_kv is None else x_kv
        width = x_q.shape[-1]
        head_dim = width // self.num_heads

        def proj(name):
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(DEFAULT_INIT, ("embed", "heads", "kv")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                name=name,
            )

        q, k, v = proj("query")(x_q), proj("key")(x_kv), proj("value")(x_kv)  # [B, L, H, Dh]
        if self.qk_norm:
            q = RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="query_norm")(q)
            k = RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="key_norm")(k)
        if self.rope_theta > 0:  # the TPU kernels ('auto', 'flash') go with TPU-friendly RoPE
            on_tpu = self.kernel != "xla"
            q = apply_rope(q, jnp.arange(q.shape[1]), self.rope_theta, on_tpu)
            k = apply_rope(k, jnp.arange(k.shape[1]), self.rope_theta, on_tpu)
        q = q.astype(self.dtype) * jnp.asarray(1.0 / math.sqrt(head_dim), self.dtype)
        k, v = k.astype(self.dtype), v.astype(self.dtype)
        out = attention_kernels.attention(q, k, v, key_mask, bias, kernel=self.kernel)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(DEFAULT_INIT, ("heads", "kv", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
            name="out",
        )(out)


class SwiGLU(nn.Module):
    """LLaMA feed-forward: W_out(SiLU(W_gate x) * W_up x), no biases."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, D] -> [B, L, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x)
        up = Dense(self.mlp_dim, ("embed", "mlp"), name="up", **kw)(x)
        return Dense(x.shape[-1], ("mlp", "embed"), name="down", **kw)(nn.silu(gate) * up)


class GeluMLP(nn.Module):
    """Transformer feed-forward: W_out(GELU(W_in x)), biases optional."""

    mlp_dim: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, D] -> [B, L, D]."""
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = nn.gelu(Dense(self.mlp_dim, ("embed", "mlp"), name="up", **kw)(x))
        return Dense(x.shape[-1], ("mlp", "embed"), name="down", **kw)(hidden)


class LearnedEmbedding(nn.Module):
    """A learned table [num, dim] (positions, latents or queries) returned whole."""

    num: int
    dim: int
    axes: tuple[str, str] = ("length", "embed")
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        """-> [num, dim] in param_dtype."""
        return param_with_axes(
            self, "embedding", EMBED_INIT, (self.num, self.dim), self.axes, self.param_dtype
        )


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10.0) -> jax.Array:
    """Sinusoidal embedding of diffusion time t in [0, 1].

    Frequencies run geometrically from 1 to 1/max_period (max_period 10 as in the spec, so the
    features are smooth over t in [0, 1]; the MLP after it sharpens them).

    Args:
      t: [batch] float.
    Returns:
      [batch, dim] float32 ([cos | sin]).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def remat_layer(module_cls: type[nn.Module], mode: str = "none") -> type[nn.Module]:
    """`module_cls`, or it under nn.remat (activation checkpointing, config.model.remat).

    mode: 'none' (unchanged); 'full' (only the layer's inputs are kept for the backward pass);
    'dots' (matmuls against weights are kept too: jax.checkpoint_policies.
    dots_with_no_batch_dims_saveable, so attention logits/probabilities are recomputed).
    The parameter tree is unchanged, so checkpoints work with any mode.
    """
    if mode == "none":
        return module_cls
    if mode not in ("full", "dots"):
        raise ValueError(f"remat mode {mode!r}: use 'none', 'full' or 'dots'")
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if mode == "dots" else None
    return nn.remat(module_cls, policy=policy)


def constrain(x: jax.Array, names: tuple[str, ...] = ("batch", "length", "embed")) -> jax.Array:
    """Constrain an activation (one logical name per dim, default [batch, length, embed]) to
    the sharding config.logical_axis_rules gives it (sharding.constrain: x itself without
    active rules and a multi-device mesh)."""
    return sharding.constrain(x, names)
