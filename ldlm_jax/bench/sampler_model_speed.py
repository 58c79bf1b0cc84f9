"""Sampler speed: the LDLM denoiser's reverse-time loop, jitted JAX vs the PyTorch export (eager).

    python -m ldlm_jax.bench.sampler_model_speed --config configs/demo.py --out sampler_speed.json

One set of random weights for the config's networks (demo: denoiser 4 blocks x 128 wide, K = 64
latents of width 128) goes to both sides: JAX runs ldlm_jax.samplers.make_sampler (the whole time
loop in one jit); PyTorch loads the same weights through the export format (to_state_dict ->
model.safetensors + config.json -> LDLMTorch.from_pretrained, ldlm_jax/torch) and runs
ldlm_jax.torch.sampling.sample_latents eagerly under inference_mode. Both take the same injected
standard-normal draws (noise [steps + 1, B, K, D]) when that array is at most 256 MiB, else each
draws its own; with injected noise the two final latents are compared. On a CPU machine JAX
gets one XLA host device per core (--cpu-devices, ldlm_jax.host_devices, as ldlm-sample does)
and shards each batch over those that split it evenly; such rows also time JAX on one device.
The programs are timed in turns (ldlm_jax.bench.timing.time_turns). Reports latency at batch 1
and throughput (sequences/s) at batch 64, at 50 and 200 euler_maruyama steps. Target: JAX >= 2x
PyTorch eager at batch 64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import numpy as np

from ldlm_jax.bench.timing import (
    jax_call,
    median,
    pick_torch_threads,
    time_turns,
    torch_call,
    torch_device,
)

INJECT_LIMIT_BYTES = 256 * 2**20


def random_params(model, seed: int = 0) -> dict:
    """Random float32 numpy params of the LDLM's shapes (no init compile): kernels and
    embeddings N(0, 1/fan_in), norm scales 1 + N(0, 0.01), biases N(0, 0.01)."""
    import jax

    rng = np.random.default_rng(seed)

    def leaf(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if x.ndim == 1:
            return (1.0 + 0.1 * noise) if names[-1] == "scale" else 0.1 * noise
        fan_in = int(np.prod(x.shape[:-1])) if names[-2] == "out" else x.shape[0]
        return noise / np.float32(np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(leaf, model.abstract_params())


def torch_twin(config, params, lm_dim: int, vocab_size: int):
    """The PyTorch export of `params` (LDLMTorch, eval mode, on torch_device()): written as
    model.safetensors + config.json to a temporary folder and read back by from_pretrained
    (without a frozen LM: sampling starts from noise)."""
    from safetensors.numpy import save_file

    from ldlm_jax import torch_export
    from ldlm_jax.torch import LDLMTorch

    spec = torch_export.model_spec(config, lm_dim, vocab_size)
    meta = {
        "format": torch_export.FORMAT,
        "version": torch_export.VERSION,
        "model": spec,
        "diffusion": {
            "schedule": config.diffusion.schedule,
            "tan_d": float(config.diffusion.tan_d),
        },
        "frozen_lm": {"folder": "frozen_lm", "normalize": False},
        "hidden_stats": None,
        "adaptive": None,
        "tokens": {"eos_id": None, "pad_id": 0},
    }
    with tempfile.TemporaryDirectory() as folder:
        save_file(
            torch_export.to_state_dict(params, spec), os.path.join(folder, "model.safetensors")
        )
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(meta, f)
        model = LDLMTorch.from_pretrained(folder, load_frozen_lm=False)
    return model.to(torch_device())


def build(config, seed: int = 0, lm_dim: int = 384, vocab_size: int = 30522):
    """(JAX LDLM, its random params, the torch twin) for config (compute dtype float32)."""
    from ldlm_jax.ldlm import LDLM

    model = LDLM(config, lm_dim=lm_dim, vocab_size=vocab_size)  # no frozen LM when sampling
    params = random_params(model, seed)
    return model, params, torch_twin(config, params, lm_dim, vocab_size)


def jax_devices_for(batch: int) -> int:
    """Devices the JAX side shards `batch` over: the most of jax.devices() that split it evenly
    on a CPU backend (host_devices: one XLA device per core), 1 on GPU/TPU (one chip)."""
    import jax

    from ldlm_jax.host_devices import even_split

    return even_split(batch, jax.device_count()) if jax.default_backend() == "cpu" else 1


def _jax_sampler(model, shape, steps, sampler, t_min, params, noise, devices: int):
    """A thunk running the jitted sampler with its batch sharded over `devices` devices."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from ldlm_jax.samplers import make_sampler

    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data")) if devices > 1 else None
    fn = make_sampler(
        model.denoise,
        model.schedule,
        shape,
        sampler=sampler,
        steps=steps,
        t_min=t_min,
        sharding=batch_sharding,
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    noise_sharding = NamedSharding(mesh, PartitionSpec(None, "data")) if devices > 1 else None
    j_noise = None if noise is None else jax.device_put(noise, noise_sharding or replicated)
    return jax_call(
        fn, jax.device_put(params, replicated), jax.random.PRNGKey(0), None, None, None, j_noise
    )


def bench_sampler(model, params, tmodel, batch: int, steps: int, runs: int, **settings) -> dict:
    """Time one sampling call (batch sequences, `steps` steps) on both sides, in turns.

    On a CPU backend with several host devices (ldlm_jax.host_devices) the JAX side shards the
    batch over jax_devices_for(batch) of them, and is also timed on one device (in the same
    turns) so both figures are on record.
    settings: sampler (default euler_maruyama), t_min (0.05), seed (0).
    Returns {'batch', 'steps', 'num_latents', 'jax_devices', 'jax_seconds', 'torch_seconds'
    (lists), 'jax_seq_per_s', 'torch_seq_per_s', 'speedup' (torch median / jax median), and with
    jax_devices > 1 'jax_one_device_seconds', 'jax_one_device_seq_per_s', 'speedup_one_device',
    'max_abs_diff_devices' (sharded vs one device); 'noise' ('injected' | 'own rng'),
    'max_abs_diff_z0' (injected noise only, else None)}."""
    import torch

    from ldlm_jax.torch import sampling

    sampler = settings.get("sampler", "euler_maruyama")
    t_min = float(settings.get("t_min", 0.05))
    k, d = model.num_latents, model.latent_dim
    shape = (batch, k, d)
    inject = (steps + 1) * batch * k * d * 4 <= INJECT_LIMIT_BYTES
    rng = np.random.default_rng(settings.get("seed", 0))
    noise = rng.standard_normal((steps + 1, *shape), np.float32) if inject else None
    devices = jax_devices_for(batch)
    run_jax = _jax_sampler(model, shape, steps, sampler, t_min, params, noise, devices)
    dev = torch_device()
    t_noise = None if noise is None else torch.from_numpy(noise).to(dev)
    gen = torch.Generator().manual_seed(0)

    def torch_sample():
        return sampling.sample_latents(
            tmodel.denoise,
            tmodel.schedule,
            shape,
            sampler=sampler,
            steps=steps,
            t_min=t_min,
            noise=t_noise,
            generator=gen,
            device=dev,
        )

    run_torch = torch_call(torch_sample)
    programs = [run_jax, run_torch]
    if devices > 1:
        programs.append(_jax_sampler(model, shape, steps, sampler, t_min, params, noise, 1))
    times = time_turns(programs, runs)
    jax_s, torch_s = times[0], times[1]
    diff = None
    if inject:
        diff = float(np.max(np.abs(np.asarray(run_jax()) - run_torch().cpu().numpy())))
    row = {
        "sampler": sampler,
        "batch": batch,
        "steps": steps,
        "num_latents": k,
        "latent_dim": d,
        "jax_devices": devices,
        "jax_seconds": jax_s,
        "torch_seconds": torch_s,
        "jax_seq_per_s": batch / median(jax_s),
        "torch_seq_per_s": batch / median(torch_s),
        "speedup": median(torch_s) / median(jax_s),
        "noise": "injected" if inject else "own rng",
        "max_abs_diff_z0": diff,
    }
    if devices > 1:
        one = times[2]
        row.update(
            jax_one_device_seconds=one,
            jax_one_device_seq_per_s=batch / median(one),
            speedup_one_device=median(torch_s) / median(one),
            max_abs_diff_devices=float(
                np.max(np.abs(np.asarray(run_jax()) - np.asarray(programs[2]())))
            ),
        )
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--steps", default="50,200")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sampler", default="euler_maruyama")
    parser.add_argument("--t-min", type=float, default=0.05)
    parser.add_argument(
        "--cpu-devices",
        default="auto",
        metavar="N|auto",
        help="XLA host devices on a CPU machine (default auto: one per core, at most 8); the "
        "JAX side shards each batch over those that split it evenly, and is timed on one too",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import jax
    import torch

    from ldlm_jax.config import load_config
    from ldlm_jax.host_devices import configure_cpu_devices

    try:
        configure_cpu_devices(args.cpu_devices)
    except ValueError as error:
        parser.error(str(error))

    pick_torch_threads()  # torch's faster thread count here, now
    config = load_config(args.config, ["model.dtype=float32"])
    model, params, tmodel = build(config)
    results = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            row = bench_sampler(
                model,
                params,
                tmodel,
                batch,
                steps,
                args.runs,
                sampler=args.sampler,
                t_min=args.t_min,
            )
            results.append(row)
            print(
                json.dumps({k: v for k, v in row.items() if not k.endswith("seconds")}), flush=True
            )
    report = dict(
        config=args.config,
        denoiser=dict(config.model.denoiser),
        device=str(jax.devices()[0].platform),
        jax_device_count=jax.device_count(),
        torch_device=torch_device(),
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
