"""Benchmark: train-step tokens/s and model FLOP utilisation (MFU) against a measured peak.

  python -m ldlm_jax.bench.train_step                      # configs/demo.py on this machine
  python -m ldlm_jax.bench.train_step --config configs/tiny.py --steps 10 \
      --config.train.batch_size=16

Builds the real train step of the config (frozen LM, LDLM networks, AdamW, EMA, adaptive
timesteps) on the default mesh, feeds it one fixed batch of real tokens (the data pipeline is not
timed), runs a few warm-up steps, then times --steps steps one by one (block_until_ready) and
reports the median. FLOPs per step: XLA's cost analysis of the whole unpartitioned step (frozen LM
forward + LDLM forward/backward, including the self-conditioning pass when its coin comes up);
peak: on CPU the float32 jnp.dot 2048x2048 rate, measured before every timed step (interleaved,
so a shared machine's load hits both alike; median), or the datasheet peak on TPU/GPU
(ldlm_jax.metrics_logging). MFU = FLOPs/step / median step time / (peak x devices).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv: list[str] | None = None) -> int:
    from ldlm_jax import metrics_logging, train_feed
    from ldlm_jax import optimizer as optim
    from ldlm_jax import sharding as shd
    from ldlm_jax import train_state as ts
    from ldlm_jax import train_step as tstep
    from ldlm_jax.cli.train import resolve_config_path, split_overrides
    from ldlm_jax.config import load_config
    from ldlm_jax.frozen_lm import frozen_lm_from_config
    from ldlm_jax.ldlm import LDLM

    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="python -m ldlm_jax.bench.train_step", description=__doc__
    )
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    args = parser.parse_args(rest)
    config = load_config(resolve_config_path(args.config), overrides)

    rules = shd.rules_table(config.logical_axis_rules)
    mesh = shd.make_mesh(dict(config.mesh))
    peak, peak_source = metrics_logging.peak_flops_per_device()
    frozen_lm = frozen_lm_from_config(config)
    model = LDLM(config, frozen_lm)
    optimizer, schedule = optim.make_optimizer(config)
    init_fn = ts.make_init_fn(functools.partial(model.init_params, unbox=False), optimizer, config)
    state, state_sh = ts.create_train_state(
        init_fn, jax.random.PRNGKey(config.train.seed), mesh, rules
    )
    iterator = train_feed.make_iterator(config, frozen_lm.tokenizer, 0, 1)
    local = next(iterator)
    batch_sh = shd.batch_sharding(mesh, rules)
    batch = train_feed.to_global(local, batch_sh, config.train.batch_size)
    dim = frozen_lm.hidden_size
    stats = jax.device_put(
        {"mean": np.zeros(dim, np.float32), "std": np.ones(dim, np.float32)},
        shd.replicated(mesh),
    )
    frozen = jax.device_put(frozen_lm.params, shd.replicated(mesh))
    step_fn = tstep.make_train_step(model.loss, optimizer, schedule, config, mesh)
    flops = metrics_logging.step_flops(jax.jit(step_fn).lower(state, batch, frozen, stats))
    jitted = tstep.jit_train_step(
        step_fn, state_sh, batch_sh, jax.tree.map(lambda x: x.sharding, frozen), mesh
    )
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = jitted.lower(state, batch, frozen, stats).compile()
        compile_s = time.perf_counter() - start
        for _ in range(args.warmup):
            state, metrics = compiled(state, batch, frozen, stats)
        jax.block_until_ready(metrics)
        # Interleave the peak probe with the steps so both see the same machine load (the CPU
        # here is shared); MFU uses the medians of both.
        a = jnp.ones((2048, 2048), jnp.float32)
        matmul = jax.jit(jnp.dot, out_shardings=shd.replicated(mesh))
        matmul(a, a).block_until_ready()
        times, peaks = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            peaks.append(2.0 * 2048**3 / (time.perf_counter() - start))
            start = time.perf_counter()
            state, metrics = compiled(state, batch, frozen, stats)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    if peak_source.startswith("measured"):
        peak = float(np.median(peaks))
    tokens = config.train.batch_size * config.data.seq_len
    report = {
        "config": args.config,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": shd.describe_mesh(mesh),
        "batch": config.train.batch_size,
        "seq_len": config.data.seq_len,
        "compile_s": round(compile_s, 2),
        "median_step_s": round(median, 4),
        "tokens_per_sec": round(tokens / median, 1),
        "step_gflops": round(flops / 1e9, 3) if flops else None,
        "peak_gflops_per_device": round(peak / 1e9, 1),
        "peak_source": peak_source,
        "mfu": round(flops / median / (peak * mesh.devices.size), 4) if flops else None,
        "loss": float(metrics["loss"]),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
