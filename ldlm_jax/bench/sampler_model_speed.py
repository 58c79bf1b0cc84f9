"""Sampler speed: the LDLM denoiser's reverse-time loop, jitted JAX vs PyTorch eager (same weights).

    python -m ldlm_jax.bench.sampler_model_speed --config configs/demo.py --out sampler_speed.json

Both sides run the same algorithm: `steps` ancestral (DDPM-posterior) reverse steps on a uniform
grid from t = 1 to t_min (then one last step to 0), self-conditioned on the previous x0 estimate,
on the config's denoiser (demo: 4 blocks, 128 wide, K = 64 latents) with random weights copied from
the Flax params into a plain PyTorch port kept in this file (until the PyTorch export lands).
JAX runs the whole loop inside one jit (lax.fori_loop); PyTorch runs it eagerly under no_grad.
Reports latency at batch 1 and throughput (sequences/s) at batch 64, at 50 and 200 steps, plus a
parity check of one denoiser call. Target: JAX >= 2x PyTorch eager at batch 64.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np


def _median_seconds(fn, runs: int) -> float:
    fn()  # warmup (and compile, for JAX)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- PyTorch port


def torch_denoiser(params: dict, cfg, torch):
    """A plain PyTorch function (z_t [B,K,D], t [B], sc [B,K,D]) -> x0_hat, reading the Flax
    denoiser params (kernels [in, out], attention q/k/v [D, H, Dh], out [H, Dh, D])."""
    p = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in _flatten(params).items()}
    den = cfg.model.denoiser
    width, heads, layers = den.width, den.num_heads, den.num_layers
    head_dim = width // heads
    F = torch.nn.functional

    def lin(x, name, bias=True):
        y = x @ p[f"{name}/linear/kernel"]
        return y + p[f"{name}/linear/bias"] if bias and f"{name}/linear/bias" in p else y

    def rms(x, name, eps=1e-6):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * p[f"{name}/scale"]

    def rope(x):  # [B, L, H, Dh]
        half = head_dim // 2
        freqs = den.rope_theta ** (-torch.arange(half, dtype=torch.float32) / half)
        ang = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * freqs[None]
        sin, cos = ang.sin()[None, :, None], ang.cos()[None, :, None]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def attention(x, name):
        b, n, _ = x.shape
        q, k, v = (
            torch.einsum("bld,dhk->blhk", x, p[f"{name}/{w}/kernel"])
            for w in ("query", "key", "value")
        )
        q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=head_dim**-0.5
        ).transpose(1, 2)
        return torch.einsum("blhk,hkd->bld", out, p[f"{name}/out/kernel"])

    def block(x, i):
        name = f"block_{i}"
        x = x + attention(rms(x, f"{name}/attention_norm"), f"{name}/attention")
        y = rms(x, f"{name}/mlp_norm")
        mlp = f"{name}/mlp"
        return x + lin(F.silu(lin(y, f"{mlp}/gate")) * lin(y, f"{mlp}/up"), f"{mlp}/down")

    def time_embedding(t):
        half = width // 2
        freqs = torch.exp(-math.log(den.time_max_period) * torch.arange(half) / half)
        args = t[:, None] * freqs[None]
        emb = torch.cat([args.cos(), args.sin()], -1)
        return lin(F.silu(lin(emb, "time/fc1")), "time/fc2")

    def forward(z_t, t, self_cond):
        time_emb = F.silu(time_embedding(t))
        x, half, skips = z_t, layers // 2, []
        for i in range(layers):
            if den.unet_skips and i >= layers - half and skips:
                x = x + skips.pop()
            x = x + lin(time_emb, f"time_proj_{i}")[:, None] + lin(self_cond, f"self_cond_proj_{i}")
            if den.unet_skips and i < half:
                skips.append(x)
            x = block(x, i)
        return rms(x, "output_norm")

    return forward


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _grid(steps: int, t_min: float) -> np.ndarray:
    """steps + 1 times: 1 -> t_min uniformly, then 0 (the last step returns x0_hat)."""
    return np.concatenate([np.linspace(1.0, t_min, steps), [0.0]]).astype(np.float32)


def torch_sampler(forward, d: float, torch):
    def alpha_sigma(t):
        cos, sin = torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)
        norm = torch.sqrt(cos**2 + (d * sin) ** 2)
        return cos / norm, d * sin / norm

    @torch.no_grad()
    def sample(z, grid, noises):
        sc = torch.zeros_like(z)
        b = z.shape[0]
        for i in range(len(grid) - 1):
            t = torch.full((b,), float(grid[i]))
            s = torch.full((b,), float(grid[i + 1]))
            x0 = forward(z, t, sc)
            a_t, s_t = alpha_sigma(t)
            a_s, s_s = alpha_sigma(s)
            a_ts = a_t / a_s.clamp_min(1e-12)
            var = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0.0)
            st2 = (s_t**2).clamp_min(1e-12)
            cz, cx = a_ts * s_s**2 / st2, a_s * var / st2
            std = torch.sqrt(var * s_s**2 / st2)
            z = cz[:, None, None] * z + cx[:, None, None] * x0 + std[:, None, None] * noises[i]
            sc = x0
        return z

    return sample


# ----------------------------------------------------------------------------- JAX side


def jax_sampler(model, steps: int, t_min: float):
    import jax
    import jax.numpy as jnp

    grid = jnp.asarray(_grid(steps, t_min))

    @jax.jit
    def sample(params, z, noises):
        b = z.shape[0]

        def body(i, carry):
            z, sc = carry
            t, s = jnp.full((b,), grid[i]), jnp.full((b,), grid[i + 1])
            x0 = model.denoise(params, z, t, sc)
            a_t, s_t = model.schedule.alpha_sigma(t)
            a_s, s_s = model.schedule.alpha_sigma(s)
            a_ts = a_t / jnp.maximum(a_s, 1e-12)
            var = jnp.maximum(s_t**2 - a_ts**2 * s_s**2, 0.0)
            st2 = jnp.maximum(s_t**2, 1e-12)
            cz, cx = a_ts * s_s**2 / st2, a_s * var / st2
            std = jnp.sqrt(var * s_s**2 / st2)
            z = cz[:, None, None] * z + cx[:, None, None] * x0 + std[:, None, None] * noises[i]
            return z, x0

        return jax.lax.fori_loop(0, steps, body, (z, jnp.zeros_like(z)))[0]

    return sample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--steps", default="50,200")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--t-min", type=float, default=0.05)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import jax
    import torch

    from ldlm_jax.config import load_config
    from ldlm_jax.ldlm import LDLM

    torch.set_num_threads(os.cpu_count() or 1)
    config = load_config(args.config, ["model.dtype=float32"])
    model = LDLM(config, lm_dim=384, vocab_size=30522)  # the frozen LM plays no part here
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    den_params = jax.tree.map(np.asarray, params["denoiser"])
    forward = torch_denoiser(den_params, config, torch)
    k, d = model.num_latents, model.latent_dim
    tan_d = float(config.diffusion.tan_d)

    rng = np.random.default_rng(0)  # parity of one denoiser call
    z = rng.standard_normal((2, k, d)).astype(np.float32)
    sc = rng.standard_normal((2, k, d)).astype(np.float32)
    t = np.asarray([0.3, 0.8], np.float32)
    ours = np.asarray(jax.jit(model.denoise)(params, z, t, sc))
    with torch.no_grad():
        theirs = forward(*(torch.from_numpy(a) for a in (z, t, sc))).numpy()
    parity = float(np.max(np.abs(ours - theirs)))

    results = []
    for steps in [int(s) for s in args.steps.split(",")]:
        jax_fn = jax_sampler(model, steps, args.t_min)
        torch_fn = torch_sampler(forward, tan_d, torch)
        grid = _grid(steps, args.t_min)
        for batch in [int(b) for b in args.batches.split(",")]:
            z = rng.standard_normal((batch, k, d)).astype(np.float32)
            noises = rng.standard_normal((steps, batch, k, d)).astype(np.float32)
            zj, nj = jax.device_put(z), jax.device_put(noises)
            zt, nt = torch.from_numpy(z), torch.from_numpy(noises)
            run_jax = functools.partial(jax_fn, params, zj, nj)
            run_torch = functools.partial(torch_fn, zt, grid, nt)
            t_jax = _median_seconds(lambda f=run_jax: f().block_until_ready(), args.runs)
            t_torch = _median_seconds(run_torch, args.runs)
            same = np.max(
                np.abs(np.asarray(jax_fn(params, zj, nj)) - torch_fn(zt, grid, nt).numpy())
            )
            row = dict(
                steps=steps,
                batch=batch,
                jax_seconds=t_jax,
                torch_seconds=t_torch,
                jax_seq_per_s=batch / t_jax,
                torch_seq_per_s=batch / t_torch,
                speedup=t_torch / t_jax,
                max_abs_diff_z0=float(same),
            )
            results.append(row)
            print(json.dumps(row), flush=True)
    report = dict(
        config=args.config,
        denoiser=dict(config.model.denoiser),
        latents=[k, d],
        parity_max_abs_diff=parity,
        device=str(jax.devices()[0].platform),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        results=results,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
