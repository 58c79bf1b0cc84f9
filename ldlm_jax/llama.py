"""The Llama family (Llama, SmolLM, Qwen2-style) in Flax Linen, built from an HF config.

Pre-RMSNorm causal blocks, rotate-half RoPE (rope_theta; 'default', 'linear' and 'llama3' rope
types), grouped-query attention, SwiGLU, optional q/k/v biases (Qwen2) and tied or untied LM head.
HF indexing: hidden_states[0] = embeddings, hidden_states[i] = output of block i, except the last
entry, which is norm(output of the last block).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ldlm_jax import lm_layers as L


@dataclasses.dataclass(frozen=True)
class LlamaSpec:
    """The hyper-parameters our module needs (hashable, so a Flax module attribute)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    rope: tuple  # sorted (key, value) pairs of the HF rope parameters

    @classmethod
    def from_hf(cls, cfg) -> LlamaSpec:
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            raise ValueError(
                f"num_attention_heads {heads} is not a multiple of kv heads {kv_heads}"
            )
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        qwen2 = cfg.model_type == "qwen2"
        attn_bias = bool(getattr(cfg, "attention_bias", False))
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        rope.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        rope.setdefault("rope_type", "default")
        if rope["rope_type"] not in ("default", "linear", "llama3"):
            raise ValueError(
                f"rope_type {rope['rope_type']!r} unsupported; supported: default, linear, llama3"
            )
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=cfg.intermediate_size,
            max_positions=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps,
            hidden_act=cfg.hidden_act,
            tie_word_embeddings=bool(cfg.tie_word_embeddings),
            qkv_bias=qwen2 or attn_bias,
            out_bias=attn_bias and not qwen2,
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
            rope=tuple(sorted((k, v) for k, v in rope.items() if not isinstance(v, list | dict))),
        )


def rope_tables(spec: LlamaSpec, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin float32 [length, head_dim] for positions 0..length-1 (computed in float64)."""
    r, d = dict(spec.rope), spec.head_dim
    inv_freq = 1.0 / (r["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if r["rope_type"] == "linear":
        inv_freq = inv_freq / r["factor"]
    elif r["rope_type"] == "llama3":
        factor, old = r["factor"], r["original_max_position_embeddings"]
        low, high = r["low_freq_factor"], r["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv_freq = np.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    # HF computes the angles in float32.
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


class LlamaBlock(nn.Module):
    """x = x + attn(norm(x)); x = x + swiglu(norm(x)). [batch, length, embed]."""

    spec: LlamaSpec
    dtype: L.Dtype = jnp.float32
    param_dtype: L.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias, rope):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = L.RMSNorm(s.rms_norm_eps, name="input_norm", **kw)(x)
        x = x + L.Attention(
            s.num_heads,
            s.num_kv_heads,
            s.head_dim,
            s.qkv_bias,
            s.out_bias,
            s.head_dim**-0.5,
            name="attn",
            **kw,
        )(h, bias, rope)
        h = L.RMSNorm(s.rms_norm_eps, name="post_attention_norm", **kw)(x)
        return x + L.GatedMlp(s.intermediate_size, s.hidden_act, s.mlp_bias, name="mlp", **kw)(h)


class LlamaLM(nn.Module):
    """Llama-family LM. Call (input_ids int [batch, length], attention_mask int [batch, length] or
    None, stop_at_layer=None) -> LMOutput with float32 logits [batch, length, vocab] (None when
    stop_at_layer is given: then only the blocks needed run)."""

    spec: LlamaSpec
    dtype: L.Dtype = jnp.float32
    param_dtype: L.Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, stop_at_layer=None):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[1]
        L.check_length(length, s.max_positions)
        full = stop_at_layer is None
        last = s.num_layers if full else L.resolve_layer(stop_at_layer, s.num_layers)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        embed = nn.Embed(
            s.vocab_size,
            s.hidden_size,
            name="embed_tokens",
            embedding_init=L.partitioned(L.KERNEL_INIT, ("vocab", "embed")),
            **kw,
        )
        x = L.constrain(embed(input_ids))
        bias = L.AttentionMask(attention_mask, True, self.attention_kernel)
        rope = tuple(jnp.asarray(t) for t in rope_tables(s, length))
        hidden = [x]
        for i in range(min(last, s.num_layers - 1)):
            x = L.constrain(LlamaBlock(s, name=f"layers_{i}", **kw)(x, bias, rope))
            hidden.append(x)
        if last < s.num_layers:
            return L.LMOutput(hidden_states=tuple(hidden), logits=None)
        x = LlamaBlock(s, name=f"layers_{s.num_layers - 1}", **kw)(x, bias, rope)
        x = L.constrain(L.RMSNorm(s.rms_norm_eps, name="norm", **kw)(x))
        hidden.append(x)
        logits = None
        if full:
            if s.tie_word_embeddings:
                logits = embed.attend(x)
            else:
                logits = L.dense(s.vocab_size, ("embed", "vocab"), False, name="lm_head", **kw)(x)
            logits = logits.astype(jnp.float32)
        return L.LMOutput(hidden_states=tuple(hidden), logits=logits)
