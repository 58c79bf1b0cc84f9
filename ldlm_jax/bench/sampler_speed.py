"""Sampler speed (a benchmark, not a test): wall-clock of the jitted reverse-time loop.

    python -m ldlm_jax.bench.sampler_speed                      # all samplers, dummy MLP denoiser
    python -m ldlm_jax.bench.sampler_speed --samplers euler_maruyama,ode_heun --steps 50 \
        --batches 1,64 --out sampler_speed.json

Each sampler of ldlm_jax.samplers runs through make_sampler (the whole time loop in one jit,
weights as arguments) on a dummy denoiser: a residual MLP (D -> hidden -> D, GELU) on each latent
plus additive time and self-conditioning embeddings, K latents of width D. Reported per setting:
the median seconds of --repeats timed calls after one warm-up (compile) call, the time per
denoiser call, and sequences per second. This measures the sampler's overhead around a cheap
network; the real demo-config denoiser (ldlm_jax.ldlm) can be timed with the same time_sampler.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp


def time_sampler(sample_fn, *args, repeats: int = 5) -> float:
    """Median wall-clock seconds of `repeats` calls sample_fn(*args), after one warm-up call
    (which compiles). Waits for the result of every call (block_until_ready)."""
    jax.block_until_ready(sample_fn(*args))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(sample_fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mlp_denoiser(rng, dim: int, hidden: int):
    """(apply_fn, params): apply_fn(params, z [B,K,D], t [B], self_cond [B,K,D]) -> [B,K,D]."""
    keys = jax.random.split(rng, 4)

    def dense(key, fan_in, fan_out):
        return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / jnp.sqrt(fan_in)

    params = {
        "w_in": dense(keys[0], dim, hidden),
        "w_out": dense(keys[1], hidden, dim),
        "w_sc": dense(keys[2], dim, dim),
        "w_t": dense(keys[3], 16, dim),
    }

    def apply_fn(p, z, t, self_cond):
        freqs = jnp.exp(jnp.linspace(0.0, 4.0, 8))
        t_emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
        x = z + (t_emb @ p["w_t"])[:, None, :] + self_cond @ p["w_sc"]
        return x + jax.nn.gelu(x @ p["w_in"]) @ p["w_out"]

    return apply_fn, params


def _calls_per_sample(sampler: str, steps: int) -> int:
    """Denoiser calls: one a step (Heun: two after its first), plus the final x0 estimate."""
    return (2 * steps if sampler == "ode_heun" else steps + 1) if steps else 0


def main(argv: list[str] | None = None) -> int:
    from ldlm_jax.config import SAMPLERS
    from ldlm_jax.samplers import make_sampler
    from ldlm_jax.schedule import get_schedule

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated samplers")
    p.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--steps", default="50,200", help="comma-separated step counts")
    p.add_argument("--latents", type=int, default=64, help="K, latents per sequence")
    p.add_argument("--dim", type=int, default=128, help="D, latent width")
    p.add_argument("--hidden", type=int, default=512, help="the dummy MLP's hidden width")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (median)")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)

    names = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown:
        p.error(f"unknown sampler(s) {unknown}: choose from {', '.join(SAMPLERS)}")
    batches = [int(b) for b in args.batches.split(",")]
    step_counts = [int(s) for s in args.steps.split(",")]
    schedule = get_schedule("tan_d", 3.0)
    apply_fn, params = mlp_denoiser(jax.random.PRNGKey(0), args.dim, args.hidden)
    rng = jax.random.PRNGKey(1)

    rows = []
    header = ("sampler", "batch", "steps", "median s", "ms/call", "seq/s")
    print("{:15s} {:>5s} {:>5s} {:>9s} {:>8s} {:>8s}".format(*header))
    for name in names:
        for steps in step_counts:
            for batch in batches:
                fn = make_sampler(
                    apply_fn,
                    schedule,
                    (batch, args.latents, args.dim),
                    sampler=name,
                    steps=steps,
                    t_min=0.05,
                )
                seconds = time_sampler(fn, params, rng, repeats=args.repeats)
                calls = _calls_per_sample(name, steps)
                row = dict(
                    sampler=name,
                    batch=batch,
                    steps=steps,
                    median_s=seconds,
                    ms_per_denoiser_call=1e3 * seconds / calls,
                    sequences_per_s=batch / seconds,
                )
                rows.append(row)
                print(
                    f"{name:15s} {batch:5d} {steps:5d} {seconds:9.4f} "
                    f"{row['ms_per_denoiser_call']:8.3f} {row['sequences_per_s']:8.1f}"
                )
    result = dict(
        benchmark="sampler wall-clock, dummy MLP denoiser, whole loop in one jit (median)",
        backend=jax.default_backend(),
        devices=jax.device_count(),
        machine=platform.machine(),
        latents=args.latents,
        dim=args.dim,
        hidden=args.hidden,
        repeats=args.repeats,
        rows=rows,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
