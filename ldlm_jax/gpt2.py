"""GPT-2 in Flax Linen, built from an HF GPT2Config: the paper's representation source and the
generative-perplexity scorer (LM head tied to wte).

Pre-LN causal blocks. HF indexing: hidden_states[0] = wte + wpe, hidden_states[i] = residual stream
after block i (no LayerNorm), except hidden_states[-1] = ln_f(output of the last block). So for
GPT-2 small hidden_states[-3] is the residual after block 10 of 12, the paper's representation.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ldlm_jax import lm_layers as L


@dataclasses.dataclass(frozen=True)
class GPT2Spec:
    """The GPT-2 hyper-parameters our module needs (hashable, so a Flax module attribute)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    hidden_act: str
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False

    @classmethod
    def from_hf(cls, cfg) -> GPT2Spec:
        if cfg.n_embd % cfg.n_head:
            raise ValueError("GPT-2 n_embd must be a multiple of n_head")
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.n_embd,
            num_layers=cfg.n_layer,
            num_heads=cfg.n_head,
            intermediate_size=cfg.n_inner or 4 * cfg.n_embd,
            max_positions=cfg.n_positions,
            layer_norm_eps=cfg.layer_norm_epsilon,
            hidden_act=cfg.activation_function,
            scale_attn_weights=bool(getattr(cfg, "scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(
                getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            ),
        )


class GPT2Block(nn.Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). [batch, length, embed]."""

    spec: GPT2Spec
    index: int
    dtype: L.Dtype = jnp.float32
    param_dtype: L.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = s.hidden_size // s.num_heads
        scale = head_dim**-0.5 if s.scale_attn_weights else 1.0
        if s.scale_attn_by_inverse_layer_idx:
            scale /= self.index + 1
        h = L.layer_norm(s.layer_norm_eps, name="ln_1", **kw)(x)
        x = x + L.Attention(
            s.num_heads, s.num_heads, head_dim, True, True, scale, name="attn", **kw
        )(h, bias)
        h = L.layer_norm(s.layer_norm_eps, name="ln_2", **kw)(x)
        return x + L.Mlp(s.intermediate_size, s.hidden_act, name="mlp", **kw)(h)


class GPT2LM(nn.Module):
    """GPT-2 with its tied LM head. Call (input_ids int [batch, length], attention_mask int
    [batch, length] or None, stop_at_layer=None) -> LMOutput with logits [batch, length, vocab]
    (None when stop_at_layer is given: then only the blocks needed run)."""

    spec: GPT2Spec
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
        wte = nn.Embed(
            s.vocab_size,
            s.hidden_size,
            name="wte",
            embedding_init=L.partitioned(L.KERNEL_INIT, ("vocab", "embed")),
            **kw,
        )
        wpe = nn.Embed(
            s.max_positions,
            s.hidden_size,
            name="wpe",
            embedding_init=L.partitioned(L.KERNEL_INIT, ("length", "embed")),
            **kw,
        )
        x = L.constrain(wte(input_ids) + wpe(jnp.arange(length))[None])
        bias = L.AttentionMask(attention_mask, True, self.attention_kernel)
        hidden = [x]
        for i in range(min(last, s.num_layers - 1)):
            x = L.constrain(GPT2Block(s, i, name=f"h_{i}", **kw)(x, bias))
            hidden.append(x)
        if last < s.num_layers:
            return L.LMOutput(hidden_states=tuple(hidden), logits=None)
        # HF records the last block's output only after ln_f.
        x = GPT2Block(s, s.num_layers - 1, name=f"h_{s.num_layers - 1}", **kw)(x, bias)
        x = L.constrain(L.layer_norm(s.layer_norm_eps, name="ln_f", **kw)(x))
        hidden.append(x)
        logits = wte.attend(x).astype(jnp.float32) if full else None
        return L.LMOutput(hidden_states=tuple(hidden), logits=logits)
