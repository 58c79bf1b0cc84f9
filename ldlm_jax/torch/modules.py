"""PyTorch twins of the LDLM networks (encoder, denoiser, latent decoder, token decoder).

Each module computes exactly what its Flax original computes (ldlm_jax/encoder.py, denoiser.py,
latent_decoder.py, token_decoder.py, layers.py): RMSNorm eps 1e-6 in float32, LayerNorm eps 1e-5,
per-head QK RMSNorm, rotate-half RoPE, tanh-approximated GELU (Flax's nn.gelu default), SwiGLU,
the U-Net skips and additive time / self-conditioning, the ALiBi-style Perceiver locality bias.
Parameter names follow the Flax tree (`layer_3` -> `layers.3`, `block_i` -> `blocks.i`); the
table in ldlm_jax/torch_export.py maps one to the other. Weights are float32; no jax import.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """RMSNorm over the last axis in float32 with a learned scale `weight` [dim]."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> [..., dim] float32."""
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight.float()


def apply_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE over positions 0..L-1. x [B, L, H, Dh] -> [B, L, H, Dh] float32."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = torch.arange(x.shape[1], dtype=torch.float32, device=x.device)[:, None] * freqs
    sin, cos = angles.sin()[None, :, None, :], angles.cos()[None, :, None, :]
    x = x.float()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    """Multi-head attention, queries from x_q and keys/values from x_kv (self if None).

    q/k/v/out are nn.Linear(width, width); heads are the contiguous chunks of head_dim.
    """

    def __init__(self, width, num_heads, qk_norm=False, rope_theta=0.0, bias=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.rope_theta = rope_theta
        self.query = nn.Linear(width, width, bias=bias)
        self.key = nn.Linear(width, width, bias=bias)
        self.value = nn.Linear(width, width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)
        self.query_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.key_norm = RMSNorm(self.head_dim) if qk_norm else None

    def forward(self, x_q, x_kv=None, key_mask=None, bias=None):
        """x_q [B, Lq, D], x_kv [B, Lk, D], key_mask [B, Lk] (nonzero = attend), bias float
        [H, Lq, Lk] added to the logits -> [B, Lq, D] float32."""
        x_kv = x_q if x_kv is None else x_kv
        b, lq, lk = x_q.shape[0], x_q.shape[1], x_kv.shape[1]
        q = self.query(x_q).view(b, lq, self.num_heads, self.head_dim)
        k = self.key(x_kv).view(b, lk, self.num_heads, self.head_dim)
        v = self.value(x_kv).view(b, lk, self.num_heads, self.head_dim)
        if self.query_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        if self.rope_theta > 0:
            q, k = apply_rope(q, self.rope_theta), apply_rope(k, self.rope_theta)
        q = q * (1.0 / math.sqrt(self.head_dim))
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k).float()
        if bias is not None:
            logits = logits + bias[None].float()
        if key_mask is not None:
            keep = key_mask[:, None, None, :].bool()
            logits = logits.masked_fill(~keep, torch.finfo(torch.float32).min)
        weights = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, lq, -1)
        return self.out(out)


class SwiGLU(nn.Module):
    """down(SiLU(gate x) * up x), no biases."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate = nn.Linear(width, mlp_dim, bias=False)
        self.up = nn.Linear(width, mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x):
        """x [B, L, D] -> [B, L, D]."""
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GeluMLP(nn.Module):
    """down(GELU_tanh(up x)); tanh approximation because Flax's nn.gelu defaults to it."""

    def __init__(self, width: int, mlp_dim: int, bias: bool = False):
        super().__init__()
        self.up = nn.Linear(width, mlp_dim, bias=bias)
        self.down = nn.Linear(mlp_dim, width, bias=bias)

    def forward(self, x):
        """x [B, L, D] -> [B, L, D]."""
        return self.down(F.gelu(self.up(x), approximate="tanh"))


def locality_bias(num_queries: int, num_context: int, num_heads: int, slope: float, device=None):
    """ALiBi-style bias -slope_h |p_q - p_k| over keys [queries; context] (see encoder.py), as
    float32 [H, Q, Q + C], or None when slope <= 0."""
    if slope <= 0:
        return None
    pq = (torch.arange(num_queries, device=device) + 0.5) / num_queries
    pc = (torch.arange(num_context, device=device) + 0.5) / num_context
    pk = torch.cat([pq, pc])
    dist = (pq[:, None] - pk[None, :]).abs()
    powers = 2.0 ** -torch.arange(num_heads, dtype=torch.float32, device=device)
    slopes = slope * max(num_queries, num_context) * powers
    return -(slopes[:, None, None] * dist[None]).float()


class PerceiverLayer(nn.Module):
    """x += Attn(q = RMSNorm(x), kv = [RMSNorm(x); RMSNorm'(context)]); x += FFN(RMSNorm(x))."""

    def __init__(self, width, num_heads, mlp_dim, local_bias=0.0):
        super().__init__()
        self.num_heads, self.local_bias = num_heads, local_bias
        self.query_input_norm = RMSNorm(width)
        self.context_input_norm = RMSNorm(width)
        self.attention = Attention(width, num_heads, qk_norm=True)
        self.mlp_norm = RMSNorm(width)
        self.mlp = GeluMLP(width, mlp_dim)

    def forward(self, x, context, context_mask=None):
        """x [B, Q, D], context [B, C, D], context_mask [B, C] or None -> [B, Q, D]."""
        x_norm = self.query_input_norm(x)
        kv = torch.cat([x_norm, self.context_input_norm(context)], dim=1)
        key_mask = None
        if context_mask is not None:
            own = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([own, context_mask.bool()], dim=1)
        bias = locality_bias(
            x.shape[1], context.shape[1], self.num_heads, self.local_bias, x.device
        )
        x = x + self.attention(x_norm, kv, key_mask, bias)
        return x + self.mlp(self.mlp_norm(x))


class Encoder(nn.Module):
    """E: h_norm [B, L, lm_dim], mask [B, L] -> z0 [B, K, latent_dim] float32."""

    def __init__(
        self,
        lm_dim,
        num_latents,
        max_length,
        latent_dim,
        num_layers,
        num_heads,
        mlp_dim,
        local_bias=0.0,
    ):
        super().__init__()
        self.max_length = max_length
        self.token_positions = nn.Parameter(torch.zeros(max_length, latent_dim))
        self.token_proj = nn.Linear(lm_dim, latent_dim, bias=False)
        self.initial_latents = nn.Parameter(torch.zeros(num_latents, latent_dim))
        self.layers = nn.ModuleList(
            PerceiverLayer(latent_dim, num_heads, mlp_dim, local_bias) for _ in range(num_layers)
        )
        self.output_norm = RMSNorm(latent_dim)

    def forward(self, h, mask):
        length = h.shape[1]
        if length > self.max_length:
            raise ValueError(f"encoder got {length} tokens but has {self.max_length} positions")
        features = self.token_proj(h.float()) + self.token_positions[None, :length]
        x = self.initial_latents[None].expand(h.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, features, mask)
        return self.output_norm(x)


class LlamaBlock(nn.Module):
    """x += Attn_RoPE(RMSNorm(x)); x += SwiGLU(RMSNorm(x)) (bidirectional)."""

    def __init__(self, width, num_heads, mlp_dim, rope_theta):
        super().__init__()
        self.attention_norm = RMSNorm(width)
        self.attention = Attention(width, num_heads, rope_theta=rope_theta)
        self.mlp_norm = RMSNorm(width)
        self.mlp = SwiGLU(width, mlp_dim)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of t [B] -> [B, dim] float32 (as layers.py)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimeEmbedding(nn.Module):
    """t [B] -> fc2(SiLU(fc1(sinusoidal(t)))) [B, width]."""

    def __init__(self, width, hidden_dim, max_period=10.0):
        super().__init__()
        self.width, self.max_period = width, max_period
        self.fc1 = nn.Linear(width, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, width)

    def forward(self, t):
        emb = timestep_embedding(t, self.width, self.max_period)
        return self.fc2(F.silu(self.fc1(emb)))


class Denoiser(nn.Module):
    """x0_hat = D(z_t [B, K, D], t [B], self_cond [B, K, D]) -> [B, K, D] float32."""

    def __init__(
        self,
        width,
        num_layers,
        num_heads,
        mlp_dim,
        rope_theta=1e4,
        time_max_period=10.0,
        time_mlp_dim=1536,
        unet_skips=True,
    ):
        super().__init__()
        self.num_layers, self.unet_skips = num_layers, unet_skips
        self.time = TimeEmbedding(width, time_mlp_dim, time_max_period)
        self.time_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.self_cond_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.blocks = nn.ModuleList(
            LlamaBlock(width, num_heads, mlp_dim, rope_theta) for _ in range(num_layers)
        )
        self.output_norm = RMSNorm(width)

    def forward(self, z_t, t, self_cond):
        time_emb = F.silu(self.time(t))
        x, self_cond = z_t.float(), self_cond.float()
        half, skips = self.num_layers // 2, []
        for i in range(self.num_layers):
            if self.unet_skips and i >= self.num_layers - half and skips:
                x = x + skips.pop()
            x = x + self.time_proj[i](time_emb)[:, None, :] + self.self_cond_proj[i](self_cond)
            if self.unet_skips and i < half:
                skips.append(x)
            x = self.blocks[i](x)
        return self.output_norm(x)


class LatentDecoder(nn.Module):
    """D_lat: z [B, K, latent_dim] -> h_hat [B, L, lm_dim] float32."""

    def __init__(
        self,
        length,
        num_latents,
        latent_dim,
        lm_dim,
        width,
        num_layers,
        num_heads,
        mlp_dim,
        local_bias=0.0,
    ):
        super().__init__()
        self.num_latents = num_latents
        self.latent_positions = nn.Parameter(torch.zeros(num_latents, width))
        self.latent_proj = nn.Linear(latent_dim, width, bias=False)
        self.queries = nn.Parameter(torch.zeros(length, width))
        self.layers = nn.ModuleList(
            PerceiverLayer(width, num_heads, mlp_dim, local_bias) for _ in range(num_layers)
        )
        self.output_norm = RMSNorm(width)
        self.output_proj = nn.Linear(width, lm_dim, bias=False)

    def forward(self, z):
        if z.shape[1] != self.num_latents:
            raise ValueError(f"latent decoder built for K={self.num_latents}, got {z.shape[1]}")
        context = self.latent_proj(z.float()) + self.latent_positions[None]
        x = self.queries[None].expand(z.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, context)
        return self.output_proj(self.output_norm(x))


class PreLNBlock(nn.Module):
    """x += Attn(LN(x), key_mask); x += GELU-FFN(LN(x)), with biases (BERT/GPT-2 style)."""

    def __init__(self, width, num_heads, mlp_dim):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width, eps=1e-5)
        self.attention = Attention(width, num_heads, bias=True)
        self.mlp_norm = nn.LayerNorm(width, eps=1e-5)
        self.mlp = GeluMLP(width, mlp_dim, bias=True)

    def forward(self, x, mask=None):
        x = x + self.attention(self.attention_norm(x), key_mask=mask)
        return x + self.mlp(self.mlp_norm(x))


class TokenDecoder(nn.Module):
    """D_tok: h_hat [B, L, lm_dim], mask [B, L] or None -> logits [B, L, vocab] float32."""

    def __init__(self, lm_dim, vocab_size, max_length, width, num_layers, num_heads, mlp_dim):
        super().__init__()
        self.positions = nn.Parameter(torch.zeros(max_length, width))
        self.input_proj = nn.Linear(lm_dim, width)
        self.layers = nn.ModuleList(
            PreLNBlock(width, num_heads, mlp_dim) for _ in range(num_layers)
        )
        self.output_norm = nn.LayerNorm(width, eps=1e-5)
        self.lm_head = nn.Linear(width, vocab_size)

    def forward(self, h_hat, mask=None):
        x = self.input_proj(h_hat.float()) + self.positions[None, : h_hat.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        return self.lm_head(self.output_norm(x))
