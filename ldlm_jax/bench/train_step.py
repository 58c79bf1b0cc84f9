"""Benchmark: train-step tokens/s and model FLOP utilisation (MFU) against a measured peak.

  python -m ldlm_jax.bench.train_step                      # configs/demo.py on this machine
  python -m ldlm_jax.bench.train_step --config configs/tiny.py --steps 10 \
      --config.train.batch_size=16

Builds the real train step of the config (frozen LM, LDLM networks, AdamW, EMA, adaptive
timesteps) on the default mesh, feeds it one fixed batch of real tokens (the data pipeline is not
timed), runs a few warm-up steps, then times --steps steps one by one (block_until_ready) and
reports the median. FLOPs per step: XLA's cost analysis of the whole unpartitioned step (frozen LM
forward + LDLM forward/backward, including the self-conditioning pass when its coin comes up);
peak: the float32 jnp.dot 2048x2048 rate, measured before every timed step (interleaved, so a
shared machine's load hits both alike; median); on TPU/GPU MFU is taken against the datasheet
peak (ldlm_jax.metrics_logging) and the measured matmul rate is reported beside it.
MFU = FLOPs/step / median step time / (peak x devices). `measure` is what the one-command suite
(python -m ldlm_jax.bench) calls for its train_step and scaling sections.
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

PROBE = 2048  # the peak probe: jnp.dot of two [PROBE, PROBE] float32 matrices


def random_batch(config, vocab_size: int, seed: int = 0) -> dict:
    """A fixed batch of random ids, no padding: {'input_ids', 'attention_mask'} int32 [B, L]."""
    rng = np.random.default_rng(seed)
    shape = (config.train.batch_size, config.data.seq_len)
    ids = rng.integers(1000, min(vocab_size, 30000), shape).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones(shape, np.int32)}


def measure(
    config, frozen_lm=None, batch=None, steps: int = 10, warmup: int = 3, note=None, devices=None
):
    """Time the config's jitted train step; peak probes interleaved with the timed steps.

    Args:
      config: a validated LDLM ConfigDict.
      frozen_lm: a FrozenLM to use (default: built from config.frozen_lm).
      batch: local {'input_ids', 'attention_mask'} int32 [B, L] (default: the config's data
        pipeline's first batch).
      steps / warmup: timed / untimed steps after compiling.
      note: optional callable(str) told what is being done (progress output).
      devices: the devices of the mesh (default: all, sized by config.mesh).
    Returns:
      A dict: step_seconds and peak_seconds (lists, one per timed step), median_step_s,
      tokens (B x L), tokens_per_sec, step_flops (XLA's count, or None), devices,
      measured_peak_flops (f32 matmul, per device, median), peak_flops / peak_source (what MFU
      uses), mfu, mfu_measured (vs the measured peak), init_s (the state's jitted init),
      lower_s (tracing, lowering, cost analysis) and compile_s (that and XLA's compile), loss
      and config facts.
    """
    from ldlm_jax import metrics_logging, train_feed
    from ldlm_jax import optimizer as optim
    from ldlm_jax import sharding as shd
    from ldlm_jax import train_state as ts
    from ldlm_jax import train_step as tstep
    from ldlm_jax.frozen_lm import frozen_lm_from_config
    from ldlm_jax.ldlm import LDLM

    note = note or (lambda _: None)
    rules = shd.rules_table(config.logical_axis_rules)
    mesh = shd.make_mesh(dict(config.mesh), devices)
    peak, peak_source = metrics_logging.peak_flops_per_device()
    frozen_lm = frozen_lm if frozen_lm is not None else frozen_lm_from_config(config)
    model = LDLM(config, frozen_lm)
    optimizer, schedule = optim.make_optimizer(config)
    init_fn = ts.make_init_fn(functools.partial(model.init_params, unbox=False), optimizer, config)
    note("init train state")
    start = time.perf_counter()
    # The init program is run once and never timed: compile it with XLA's optimisations off
    # (several seconds less per measured config on 2 cores).
    fast = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        state, state_sh = ts.create_train_state(
            init_fn, jax.random.PRNGKey(config.train.seed), mesh, rules
        )
        jax.block_until_ready(state)
    finally:
        jax.config.update("jax_disable_most_optimizations", fast)
    init_s = time.perf_counter() - start
    if batch is None:
        batch = next(train_feed.make_iterator(config, frozen_lm.tokenizer, 0, 1))
    batch_sh = shd.batch_sharding(mesh, rules)
    batch = train_feed.to_global(batch, batch_sh, config.train.batch_size)
    dim = frozen_lm.hidden_size
    stats = jax.device_put(
        {"mean": np.zeros(dim, np.float32), "std": np.ones(dim, np.float32)},
        shd.replicated(mesh),
    )
    frozen = jax.device_put(frozen_lm.params, shd.replicated(mesh))
    step_fn = tstep.make_train_step(model.loss, optimizer, schedule, config, mesh)
    jitted = tstep.jit_train_step(
        step_fn, state_sh, batch_sh, jax.tree.map(lambda x: x.sharding, frozen), mesh
    )
    with jax.set_mesh(mesh):
        note("compile train step")
        start = time.perf_counter()
        lowered = jitted.lower(state, batch, frozen, stats)
        flops = metrics_logging.step_flops(lowered)  # the unpartitioned program's count
        lower_s = time.perf_counter() - start
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        note("warm-up steps")
        for _ in range(warmup):
            state, metrics = compiled(state, batch, frozen, stats)
            jax.block_until_ready(metrics)
        # Interleave the peak probe with the steps so both see the same machine load (the CPU
        # here is shared); MFU uses the medians of both.
        a = jnp.ones((PROBE, PROBE), jnp.float32)
        matmul = jax.jit(jnp.dot, out_shardings=shd.replicated(mesh))
        matmul(a, a).block_until_ready()
        times, probes = [], []
        for i in range(max(1, steps)):
            note(f"timed step {i + 1}/{steps}")
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            probes.append(time.perf_counter() - start)
            start = time.perf_counter()
            state, metrics = compiled(state, batch, frozen, stats)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    measured_peak = 2.0 * PROBE**3 / float(np.median(probes))
    if peak_source.startswith("measured"):
        peak = measured_peak
    devices = int(mesh.devices.size)
    tokens = config.train.batch_size * config.data.seq_len
    return {
        "config": config.get("name", ""),
        "devices": devices,
        "device_kind": jax.devices()[0].device_kind,
        "mesh": shd.describe_mesh(mesh),
        "batch": int(config.train.batch_size),
        "seq_len": int(config.data.seq_len),
        "num_latents": int(config.model.latent_count or config.data.seq_len),
        "init_s": round(init_s, 2),
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "step_seconds": times,
        "peak_seconds": probes,
        "probe_flops": 2.0 * PROBE**3,
        "median_step_s": median,
        "tokens": tokens,
        "tokens_per_sec": tokens / median,
        "step_flops": flops,
        "measured_peak_flops": measured_peak,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": flops / median / (peak * devices) if flops else None,
        "mfu_measured": flops / median / (measured_peak * devices) if flops else None,
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    from ldlm_jax.cli.train import resolve_config_path, split_overrides
    from ldlm_jax.config import load_config

    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="python -m ldlm_jax.bench.train_step", description=__doc__
    )
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    args = parser.parse_args(rest)
    config = load_config(resolve_config_path(args.config), overrides)
    r = measure(config, steps=args.steps, warmup=args.warmup)
    report = {
        "config": args.config,
        "devices": f"{r['devices']} x {r['device_kind']}",
        "mesh": r["mesh"],
        "batch": r["batch"],
        "seq_len": r["seq_len"],
        "compile_s": r["compile_s"],
        "median_step_s": round(r["median_step_s"], 4),
        "tokens_per_sec": round(r["tokens_per_sec"], 1),
        "step_gflops": round(r["step_flops"] / 1e9, 3) if r["step_flops"] else None,
        "peak_gflops_per_device": round(r["peak_flops"] / 1e9, 1),
        "peak_source": r["peak_source"],
        "mfu": round(r["mfu"], 4) if r["mfu"] else None,
        "loss": r["loss"],
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
