"""The LDLM denoiser: a bidirectional LLaMA-style transformer predicting x0 from (z_t, t, sc).

12 blocks at paper scale, each RMSNorm -> attention (RoPE theta 1e4, no biases) and
RMSNorm -> SwiGLU, both residual. Before every block i the conditioning is added:
  x += Linear_i^time(SiLU(time_emb)) + Linear_i^sc(self_cond)
with time_emb = MLP(sinusoidal(t, max_period 10)) (width -> time_mlp_dim -> width, SiLU).
U-Net skips: the inputs of the first half of the blocks (after their conditioning) are kept and
added, last in first out, to the inputs of the second half. The output RMSNorm is read directly
as the x0 prediction.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldlm_jax.layers import (
    Attention,
    Dense,
    RMSNorm,
    SwiGLU,
    constrain,
    remat_layer,
    timestep_embedding,
)

Dtype = Any


class LlamaBlock(nn.Module):
    """Pre-norm bidirectional block: x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))."""

    num_heads: int
    mlp_dim: int
    rope_theta: float = 1e4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, K, D] -> [B, K, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = RMSNorm(name="attention_norm", **kw)(x)
        attention = Attention(
            self.num_heads,
            rope_theta=self.rope_theta,
            kernel=self.attention_kernel,
            name="attention",
            **kw,
        )
        x = x + attention(y)
        x = x + SwiGLU(self.mlp_dim, name="mlp", **kw)(RMSNorm(name="mlp_norm", **kw)(x))
        return constrain(x, ("batch", "latent", "embed"))


class TimeEmbedding(nn.Module):
    """t [B] -> MLP(sinusoidal(t)) [B, width]: width -> time_mlp_dim -> width with SiLU."""

    width: int
    hidden_dim: int
    max_period: float = 10.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        emb = timestep_embedding(t, self.width, self.max_period)
        emb = nn.silu(Dense(self.hidden_dim, ("embed", "mlp"), name="fc1", **kw)(emb))
        return Dense(self.width, ("mlp", "embed"), name="fc2", **kw)(emb)


class Denoiser(nn.Module):
    """x0_hat = D(z_t, t, self_cond), all latents at width = latent_dim."""

    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    rope_theta: float = 1e4
    time_max_period: float = 10.0
    time_mlp_dim: int = 1536
    unet_skips: bool = True
    remat: str = "none"  # activation checkpointing per block (layers.remat_layer)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, z_t: jax.Array, t: jax.Array, self_cond: jax.Array) -> jax.Array:
        """z_t [B, K, D] float, t [B] float in [0, 1], self_cond [B, K, D] float (zeros = none)
        -> x0_hat [B, K, D] float32."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if z_t.shape[-1] != self.width:
            raise ValueError(f"denoiser width {self.width} != latent width {z_t.shape[-1]}")
        time_emb = nn.silu(
            TimeEmbedding(self.width, self.time_mlp_dim, self.time_max_period, name="time", **kw)(t)
        )
        self_cond = self_cond.astype(self.dtype)
        x = z_t.astype(self.dtype)
        half = self.num_layers // 2
        skips = []
        block_cls = remat_layer(LlamaBlock, self.remat)
        for i in range(self.num_layers):
            if self.unet_skips and i >= self.num_layers - half and skips:
                x = x + skips.pop()
            cond_t = Dense(self.width, ("mlp", "embed"), True, name=f"time_proj_{i}", **kw)(
                time_emb
            )
            cond_sc = Dense(self.width, ("mlp", "embed"), True, name=f"self_cond_proj_{i}", **kw)(
                self_cond
            )
            x = x + cond_t[:, None, :] + cond_sc
            if self.unet_skips and i < half:
                skips.append(x)
            block = block_cls(
                self.num_heads,
                self.mlp_dim,
                self.rope_theta,
                attention_kernel=self.attention_kernel,
                name=f"block_{i}",
                **kw,
            )
            x = block(x)
        x0_hat = RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="output_norm")(x)
        return constrain(x0_hat, ("batch", "latent", "embed"))
