"""BERT encoder in Flax Linen (all-MiniLM-L6-v2, bert-base-uncased lineage), from an HF config.

Post-LN blocks, learned absolute positions, token type 0 everywhere, bidirectional attention with
pad keys masked. No LM head (the MiniLM checkpoint has none): logits are None.
hidden_states[0] = embeddings output (after the embedding LayerNorm), hidden_states[i] = output of
block i; there is no final norm.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ldlm_jax import lm_layers as L


@dataclasses.dataclass(frozen=True)
class BertSpec:
    """The BERT hyper-parameters our module needs (hashable, so a Flax module attribute)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str

    @classmethod
    def from_hf(cls, cfg) -> BertSpec:
        pos_type = getattr(cfg, "position_embedding_type", "absolute") or "absolute"
        if pos_type != "absolute":
            raise ValueError(
                f"BERT position_embedding_type {pos_type!r} unsupported (absolute only)"
            )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("BERT hidden_size must be a multiple of num_attention_heads")
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            max_positions=cfg.max_position_embeddings,
            type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act=cfg.hidden_act,
        )


class BertBlock(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x)). [batch, length, embed]."""

    spec: BertSpec
    dtype: L.Dtype = jnp.float32
    param_dtype: L.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = s.hidden_size // s.num_heads
        attn = L.Attention(
            s.num_heads, s.num_heads, head_dim, True, True, head_dim**-0.5, name="attention", **kw
        )(x, bias)
        x = L.layer_norm(s.layer_norm_eps, name="attention_ln", **kw)(x + attn)
        mlp = L.Mlp(s.intermediate_size, s.hidden_act, name="mlp", **kw)(x)
        return L.layer_norm(s.layer_norm_eps, name="output_ln", **kw)(x + mlp)


class BertLM(nn.Module):
    """BERT encoder. Call (input_ids int [batch, length], attention_mask int [batch, length] or
    None, stop_at_layer=None) -> LMOutput; stop_at_layer (HF index) runs only the blocks needed."""

    spec: BertSpec
    dtype: L.Dtype = jnp.float32
    param_dtype: L.Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, stop_at_layer=None):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = input_ids.shape[1]
        L.check_length(length, s.max_positions)
        last = (
            s.num_layers if stop_at_layer is None else L.resolve_layer(stop_at_layer, s.num_layers)
        )
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)

        def embed(num, names, name):
            init = L.partitioned(L.KERNEL_INIT, names)
            return nn.Embed(num, s.hidden_size, embedding_init=init, name=name, **kw)

        x = embed(s.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
        x = x + embed(s.max_positions, ("length", "embed"), "position_embeddings")(
            jnp.arange(length)
        )
        # Token type 0 everywhere (single-segment inputs).
        x = x + embed(s.type_vocab_size, (None, "embed"), "token_type_embeddings")(
            jnp.zeros((1, length), jnp.int32)
        )
        x = L.constrain(L.layer_norm(s.layer_norm_eps, name="embeddings_ln", **kw)(x))
        bias = L.AttentionMask(attention_mask, False, self.attention_kernel)
        hidden = [x]
        for i in range(last):
            x = L.constrain(BertBlock(s, name=f"layer_{i}", **kw)(x, bias))
            hidden.append(x)
        return L.LMOutput(hidden_states=tuple(hidden), logits=None)
