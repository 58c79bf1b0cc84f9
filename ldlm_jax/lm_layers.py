"""Shared pieces of the frozen pretrained LMs (GPT-2, BERT, Llama family) in Flax Linen.

Every parameter is created with `nn.with_logical_partitioning` and these logical names:
attention kernels q/k/v [embed, heads, kv], out [heads, kv, embed]; FFN kernels
[embed, mlp] / [mlp, embed]; embeddings [vocab, embed] / [length, embed]; 1-D norms and biases
("norm",). Numerics follow the HF PyTorch models: converted weights agree to ~1e-5 in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ldlm_jax import attention_kernels, sharding

Dtype = Any
KERNEL_INIT = nn.initializers.normal(stddev=0.02)
# Large finite negative: a query whose keys are all pads gets uniform weights, never NaN.
MASK_VALUE = -1e30


@flax.struct.dataclass
class LMOutput:
    """hidden_states: tuple of [batch, length, embed] in the compute dtype, HF indexing
    (hidden_states[0] = embeddings output; the final norm, where the model has one, is applied to
    the last entry only). logits: [batch, length, vocab] or None (no LM head, or stop_at_layer)."""

    hidden_states: tuple
    logits: jax.Array | None = None


def partitioned(init, names: tuple):
    """An initializer boxed with logical axis names (see the module docstring)."""
    return nn.with_logical_partitioning(init, names)


def resolve_layer(layer: int, num_layers: int) -> int:
    """HF hidden_states index (negative allowed) -> index in [0, num_layers]; clear error if out."""
    n = num_layers + 1
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be a Python int, got {type(layer).__name__}")
    if not -n <= layer < n:
        raise IndexError(
            f"layer index {layer} is out of range: this model has {num_layers} blocks, so "
            f"hidden_states has {n} entries (valid indices {-n}..{n - 1})"
        )
    return layer % n


def check_length(length: int, max_positions: int) -> None:
    """Raise before any compile if a sequence is longer than the model's position table."""
    if length > max_positions:
        raise ValueError(
            f"sequence length {length} is longer than the model's max positions {max_positions}; "
            "truncate the input (e.g. a smaller data.seq_len)"
        )


def activation(name: str):
    """HF activation name -> function."""
    table = {
        "gelu": lambda x: nn.gelu(x, approximate=False),
        "gelu_new": lambda x: nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
        "gelu_fast": lambda x: nn.gelu(x, approximate=True),
        "relu": nn.relu,
        "silu": nn.silu,
        "swish": nn.silu,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(table)}")
    return table[name]


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query sees: attention_mask int [batch, length] (1 = token, 0 = pad), and
    future keys hidden when `causal`; `kernel` picks the attention kernel (attention_kernels:
    'xla', 'flash', 'auto'). The XLA kernel adds attention_bias(...); the flash kernel takes
    the mask as segment ids and the causal flag."""

    attention_mask: jax.Array
    causal: bool = flax.struct.field(pytree_node=False, default=False)
    kernel: str = flax.struct.field(pytree_node=False, default="xla")

    def bias(self) -> jax.Array:
        return attention_bias(self.attention_mask, self.causal)


def attention_bias(attention_mask: jax.Array, causal: bool) -> jax.Array:
    """attention_mask int [batch, length] (1 = token, 0 = pad) -> additive float32 bias
    [batch, 1, length, length]: keys at pad positions (and future keys if causal) get MASK_VALUE."""
    allowed = attention_mask[:, None, None, :].astype(bool)
    if causal:
        length = attention_mask.shape[1]
        allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None, None]
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with two-pass variance (GPT-2's residual stream has outliers ~1e3)."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=partitioned(nn.initializers.ones, ("norm",)),
        bias_init=partitioned(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class RMSNorm(nn.Module):
    """Llama RMSNorm: x * rsqrt(mean(x^2) + eps) in float32, cast back, times the scale."""

    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", partitioned(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


def dense(features, names, use_bias, dtype, param_dtype, name, axis=-1, bias_names=None):
    """DenseGeneral with a logically partitioned kernel (names cover [in..., out...])."""
    out_names = names[-1:] if isinstance(features, int) else names[-len(features) :]
    if bias_names is None:
        bias_names = ("norm",) if out_names == ("embed",) else out_names
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(KERNEL_INIT, names),
        bias_init=partitioned(nn.initializers.zeros, bias_names),
        name=name,
    )


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """HF rotate-half RoPE. x [batch, length, heads, kv]; cos/sin float32 [length, kv]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[None, :, None, :].astype(x.dtype)
    sin = sin[None, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head attention with grouped-query support (num_kv_heads divides num_heads).

    Call: x [batch, length, embed], mask (AttentionMask), optional rope = (cos, sin)
    [length, kv] -> [batch, length, embed]."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool
    out_bias: bool
    scale: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask: AttentionMask, rope=None):
        embed = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense(
            (self.num_heads, self.head_dim),
            ("embed", "heads", "kv"),
            self.qkv_bias,
            name="query",
            **kw,
        )(x)
        k = dense(
            (self.num_kv_heads, self.head_dim),
            ("embed", "heads", "kv"),
            self.qkv_bias,
            name="key",
            **kw,
        )(x)
        v = dense(
            (self.num_kv_heads, self.head_dim),
            ("embed", "heads", "kv"),
            self.qkv_bias,
            name="value",
            **kw,
        )(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        b, length, _, d = q.shape
        groups = self.num_heads // self.num_kv_heads
        if attention_kernels.use_flash(mask.kernel, length, length):
            k, v = (jnp.repeat(a, groups, axis=2) for a in (k, v))  # heads h*groups+g share kv h
            ctx = attention_kernels.flash_attention(
                q, k, v, mask.attention_mask, causal=mask.causal, scale=self.scale
            ).astype(self.dtype)
        else:
            q = q.reshape(b, length, self.num_kv_heads, groups, d)
            scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32)
            # the bias broadcasts over (kv heads, groups)
            scores = scores * self.scale + mask.bias()[:, :, None]
            probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            ctx = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v).reshape(b, length, self.num_heads, d)
        return dense(
            embed, ("heads", "kv", "embed"), self.out_bias, axis=(-2, -1), name="out", **kw
        )(ctx)


class Mlp(nn.Module):
    """fc -> activation -> proj (GPT-2, BERT). x [batch, length, embed] -> same shape."""

    hidden: int
    act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.hidden, ("embed", "mlp"), True, name="fc", **kw)(x)
        h = activation(self.act)(h)
        return dense(x.shape[-1], ("mlp", "embed"), True, name="proj", **kw)(h)


class GatedMlp(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)) (Llama family). x [batch, length, embed] -> same."""

    hidden: int
    act: str
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = dense(self.hidden, ("embed", "mlp"), self.use_bias, name="gate", **kw)(x)
        up = dense(self.hidden, ("embed", "mlp"), self.use_bias, name="up", **kw)(x)
        h = activation(self.act)(gate) * up
        return dense(x.shape[-1], ("mlp", "embed"), self.use_bias, name="down", **kw)(h)


def constrain(x: jax.Array) -> jax.Array:
    """Constrain a block-boundary activation [batch, length, embed] to its rules' sharding
    (sharding.constrain: x itself without active rules and a multi-device mesh)."""
    return sharding.constrain(x, ("batch", "length", "embed"))
