"""The benchmark suite's sections: each (settings, ctx) -> rows (ldlm_jax.bench.suite.make_row).

lm_forward  frozen LM forward, our Flax port vs transformers PyTorch (bench/lm_forward.py).
train_step  the demo config's train step: tokens/s, and MFU against the f32 matmul peak
            measured in turns with the steps (and the datasheet peak on TPU/GPU)
            (bench/train_step.py).
sampler     euler_maruyama on the demo denoiser, JAX jit vs the PyTorch export, same weights and
            injected noise: latency at batch 1, throughput at batch 64 (sampler_model_speed.py).
scaling     a small model (tiny networks, a random 64-wide GPT-2 frozen LM with 1024 positions):
            train-step tokens/s as L grows (K = L), with K = L/f at the longest L, and with batch
            size, each against the first point; the frozen LM forward (Flax/torch) as L grows;
            the sampler (JAX/torch) as K grows.
data        the data pipeline's tokens/s against what the demo train step consumes.
"""

from __future__ import annotations

import functools

from ldlm_jax.bench.suite import make_row


def _config(spec: str, overrides=()):
    from ldlm_jax.cli.train import resolve_config_path
    from ldlm_jax.config import load_config

    return load_config(resolve_config_path(spec), list(overrides))


def _lm_pair(ctx, name: str, max_len: int = 1024):
    from ldlm_jax.bench import lm_forward as lmf

    if name == "minilm":
        return ctx.cached("minilm", lmf.minilm_pair)
    if name == "gpt2_small":
        return lmf.gpt2_pair()
    if name == "gpt2_micro":
        return lmf.gpt2_pair(
            n_embd=32,
            n_layer=1,
            n_head=2,
            vocab_size=30522,
            n_positions=64,
            bos_token_id=None,
            eos_token_id=None,
        )
    if name == "gpt2_scale":  # the scaling section's frozen LM
        width, layers, heads = ctx.settings.scale_lm
        build = functools.partial(
            lmf.gpt2_pair,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            vocab_size=30522,
            n_positions=max_len,
            bos_token_id=None,
            eos_token_id=None,
        )
        return ctx.cached("gpt2_scale", build)
    raise ValueError(f"unknown LM {name!r}")


def _where() -> str:
    """'' when JAX and torch share the platform, else where each ran (e.g. TPU vs torch CPU)."""
    import jax

    from ldlm_jax.bench.timing import torch_device

    ours, ref = jax.default_backend(), torch_device()
    return "" if ours == ref else f"; JAX on {ours}, torch on {ref}"


def _forward_row(section, r, figure):
    return make_row(
        section,
        figure,
        "tok/s",
        r["flax_seconds"],
        r["tokens"],
        reference_seconds=r["torch_seconds"],
        note="flax vs transformers torch" + _where(),
    )


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.endswith("seconds")}


def lm_forward(s, ctx) -> list[dict]:
    """Flax vs transformers tok/s of each model in s.lm_models at s.lm_shape."""
    from ldlm_jax.bench import lm_forward as lmf

    rows = []
    batch, length = s.lm_shape
    for name in s.lm_models:
        ctx.note(f"load {name}")
        lm, ref = _lm_pair(ctx, name)
        ctx.note(f"time {name}")
        r = lmf.bench_model(name, lm, ref, batch, length, s.runs)
        ctx.details.setdefault("lm_forward", []).append(_strip(r))
        rows.append(_forward_row("lm_forward", r, f"LM forward {name} {batch}x{length}"))
    return rows


def _measure_train(ctx, config, lm_name: str, devices: int | None, random_data: bool):
    """ldlm_jax.bench.train_step.measure, memoised on (config, frozen LM, devices, steps) so a
    point two sections share is measured once (the micro mode's train step = scaling base)."""
    import json

    import jax

    from ldlm_jax.bench import train_step as ts

    s = ctx.settings
    lm = None
    if lm_name == "gpt2_scale":
        lm = _lm_pair(ctx, lm_name, max(s.scale_lengths[-1], 64))[0]
    elif config.frozen_lm.source == "minilm" and config.frozen_lm.dtype == "float32":
        lm = _lm_pair(ctx, "minilm")[0]
    batch = ts.random_batch(config, lm.vocab_size) if random_data else None
    used = None if devices is None else jax.devices()[:devices]
    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), lm_name, devices)
    steps, warmup = (s.train_steps, s.train_warmup) if lm_name == "config" else (s.scale_steps, 1)
    return ctx.cached(
        ("train", key, steps),
        lambda: ts.measure(config, lm, batch, steps, warmup, ctx.note, used),
    )


def train_step(s, ctx) -> list[dict]:
    """The train step of s.train_config: tokens/s and MFU rows."""
    import jax

    config = _config(s.train_config, s.train_overrides)
    scale_lm = s.train_lm == "scale"
    devices = s.train_devices
    if devices is None and jax.default_backend() == "cpu":
        # CPU host devices (--cpu-devices, for the sampler) share the cores the matmul peak is
        # measured on with one device: the MFU rows divide the FLOPs per device by that peak.
        devices = 1
    r = _measure_train(ctx, config, "gpt2_scale" if scale_lm else "config", devices, scale_lm)
    ctx.results["train_step"] = r
    ctx.details["train_step"] = _strip(r)
    shape = f"{config.name} B={r['batch']} L={r['seq_len']}"
    rows = [make_row("train_step", f"train step {shape}", "tok/s", r["step_seconds"], r["tokens"])]
    if r["step_flops"]:
        per_device = r["step_flops"] / r["devices"]
        rows.append(
            make_row(
                "train_step",
                f"train step MFU vs measured f32 matmul peak ({config.name})",
                "GFLOP/s",
                r["step_seconds"],
                per_device,
                reference_seconds=r["peak_seconds"],
                reference_work=r["probe_flops"],
                note="ratio = MFU; peak: jnp.dot 2048x2048, timed between the steps",
            )
        )
        if not r["peak_source"].startswith("measured"):
            rows.append(
                make_row(
                    "train_step",
                    f"train step MFU vs {r['peak_source']} ({config.name})",
                    "GFLOP/s",
                    r["step_seconds"],
                    per_device,
                    reference_value=r["peak_flops"] / 1e9,
                    note="ratio = MFU against the chip's datasheet peak",
                )
            )
    return rows


def _sampler_rows(section, r, label) -> list[dict]:
    """Latency (B = 1) or throughput rows of one bench_sampler result: JAX on the devices the
    batch is sharded over, and (when that is several CPU host devices) JAX on one device."""
    steps, batch = r["steps"], r["batch"]
    diff = r["max_abs_diff_z0"]
    note = f"noise {r['noise']}" + ("" if diff is None else f", max|dz0| {diff:.1e}") + _where()
    if batch == 1:
        return [
            make_row(
                section,
                f"{label} latency B=1, {steps} steps",
                "ms",
                r["jax_seconds"],
                reference_seconds=r["torch_seconds"],
                note=note,
            )
        ]
    sides = [("", r["jax_seconds"])]
    if r.get("jax_devices", 1) > 1:
        sides = [
            (f" on {r['jax_devices']} CPU devices", r["jax_seconds"]),
            (" on 1 CPU device", r["jax_one_device_seconds"]),
        ]
    return [
        make_row(
            section,
            f"{label} B={batch}, {steps} steps{where}",
            "seq/s",
            seconds,
            batch,
            reference_seconds=r["torch_seconds"],
            note=note,
        )
        for where, seconds in sides
    ]


def sampler(s, ctx) -> list[dict]:
    """JAX vs PyTorch-export sampling on s.sampler_config's denoiser."""
    from ldlm_jax.bench import sampler_model_speed as sms

    config = _config(s.sampler_config, ("model.dtype=float32", *s.sampler_overrides))
    ctx.note("build networks and torch export")
    model, params, tmodel = sms.build(config)
    rows = []
    for steps in s.sampler_steps:
        for batch in s.sampler_batches:
            ctx.note(f"sample B={batch} {steps} steps")
            r = sms.bench_sampler(model, params, tmodel, batch, steps, s.sampler_runs or s.runs)
            ctx.details.setdefault("sampler", []).append(_strip(r))
            rows += _sampler_rows("sampler", r, f"sampler {config.name} K={r['num_latents']}")
    return rows


def _scale_points(s):
    """(L, K, B) train-step points: L sweep, K sweep at the longest L, batch sweep at the first."""
    first, last = s.scale_lengths[0], s.scale_lengths[-1]
    points = [(n, n, s.scale_batch) for n in s.scale_lengths]
    points += [(last, last // f, s.scale_batch) for f in s.scale_fracs]
    points += [(first, first, b) for b in s.scale_batches if b != s.scale_batch]
    return points


def scaling(s, ctx) -> list[dict]:
    """Cost growth with L, K < L and batch size, on a small model (train steps on one device)."""
    from ldlm_jax.bench import lm_forward as lmf
    from ldlm_jax.bench import sampler_model_speed as sms

    rows, base, details = [], None, []
    longest = s.scale_lengths[-1]
    ctx.note("build the small frozen LM")
    lm, ref = _lm_pair(ctx, "gpt2_scale", max(longest, 64))
    for length, k, batch in _scale_points(s):
        ctx.note(f"train step L={length} K={k} B={batch}")
        config = _config(
            s.scale_config,
            (
                *s.scale_overrides,
                f"data.seq_len={length}",
                f"model.latent_count={k}",
                f"train.batch_size={batch}",
            ),
        )
        r = _measure_train(ctx, config, "gpt2_scale", 1, True)
        base = base or r
        details.append(_strip(r))
        mfu = r["mfu_measured"]
        rows.append(
            make_row(
                "scaling",
                f"train L={length} K={k} B={batch} (vs L={base['seq_len']} K={base['num_latents']}"
                f" B={base['batch']})",
                "tok/s",
                r["step_seconds"],
                r["tokens"],
                reference_seconds=base["step_seconds"],
                reference_work=base["tokens"],
                note="" if mfu is None else f"MFU {100 * mfu:.1f}% of measured peak",
            )
        )
    ctx.details["scaling_train"] = details
    width = s.scale_lm[0]
    for length in s.scale_lengths:
        ctx.note(f"LM forward L={length}")
        r = lmf.bench_model("gpt2_scale", lm, ref, s.scale_batch, length, s.runs)
        ctx.details.setdefault("scaling_lm_forward", []).append(_strip(r))
        figure = f"LM forward GPT-2 {width}w {s.scale_batch}x{length}"
        rows.append(_forward_row("scaling", r, figure))
    ks = [longest // f for f in sorted(s.scale_fracs, reverse=True)] + [longest]
    for k in ks if s.scale_sampler else []:
        ctx.note(f"sampler K={k}")
        config = _config(
            s.scale_config,
            (
                *s.scale_overrides,
                "model.dtype=float32",
                f"data.seq_len={longest}",
                f"model.latent_count={k}",
            ),
        )
        model, params, tmodel = sms.build(config, lm_dim=lm.hidden_size)
        batch, steps = s.scale_sampler_batch, s.scale_sampler_steps
        r = sms.bench_sampler(model, params, tmodel, batch, steps, s.runs)
        ctx.details.setdefault("scaling_sampler", []).append(_strip(r))
        rows += _sampler_rows("scaling", r, f"sampler tiny K={k}")
    return rows


def data(s, ctx) -> list[dict]:
    """Data-pipeline tokens/s (demo settings) vs the train step's consumption when measured."""
    import absl.flags

    from ldlm_jax.bench import data_pipeline as dp

    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

    config = _config("configs/demo.py")
    if "minilm" in ctx.cache:
        tokenizer = ctx.cache["minilm"][0].tokenizer
    else:
        from transformers import AutoTokenizer

        from ldlm_jax.frozen_lm import minilm_path

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = ctx.results.get("train_step")
    rows = []
    for workers in s.data_workers:
        ctx.note(f"data pipeline, {workers} workers")
        config.data.worker_count = workers
        r = dp.measure(config, tokenizer, s.data_batches, warmup=min(10, s.data_batches))
        ctx.details.setdefault("data", []).append(r)
        slots = r["batches"] * config.train.batch_size * config.data.seq_len
        kw = {}
        if train is not None:
            kw = dict(reference_seconds=train["step_seconds"], reference_work=train["tokens"])
        rows.append(
            make_row(
                "data",
                f"data pipeline {workers} workers B={config.train.batch_size} "
                f"L={config.data.seq_len}" + (" (vs the train step's use)" if kw else ""),
                "tok/s",
                [r["elapsed_s"]],
                slots,
                note=f"fill {r['fill']}, startup {r['startup_s']} s",
                **kw,
            )
        )
    return rows
