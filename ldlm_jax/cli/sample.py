"""ldlm-sample: turn a trained LDLM checkpoint into text.

Example:
  ldlm-sample --workdir runs/demo --num 16 --steps 200 --sampler euler_maruyama --seed 0
  ldlm-sample --workdir runs/demo --num 4 --steps 50 --prompt "In the beginning" --out p.jsonl

Writes one JSON object per line to WORKDIR/samples.jsonl (or --out): the text, the token ids and
the settings that produced it (so a number computed from the file can be reproduced).

Compile only (nothing runs, no weights needed): compile this sampler for a target from abstract
shapes and print per-device memory vs HBM, FLOPs, the estimated time per call and sequences/s:
  ldlm-sample --config configs/owt.py --compile-only --target-topology v5p:2x2x2
  ldlm-sample --config configs/owt.py --compile-only --target-topology v5e:4x4 --config.mesh.fsdp=4
  ldlm-sample --workdir runs/demo --compile-only          # the checkpoint's config, local devices
"""

from __future__ import annotations

import argparse
import os
import sys

from ldlm_jax.config import SAMPLERS, TIME_GRIDS


def add_sampling_args(parser: argparse.ArgumentParser, steps_help: str | None = None) -> None:
    """The sampler flags shared by ldlm-sample and ldlm-eval."""
    g = parser.add_argument_group("sampler")
    g.add_argument(
        "--sampler",
        default=None,
        help=f"reverse-time sampler, one of {', '.join(SAMPLERS)} (default: the config's, "
        "euler_maruyama in the paper)",
    )
    g.add_argument(
        "--time-grid",
        default=None,
        help="'uniform' in t, or 'adaptive' (the training loss's warped time) (default: config)",
    )
    g.add_argument(
        "--t-min", type=float, default=None, help="last time of the grid (default: config, 0.05)"
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="scale of the prior and the injected noise (default: config, 1.0)",
    )
    g.add_argument(
        "--no-self-cond",
        action="store_true",
        help="do not feed the previous x0 estimate back (self-conditioning is on by default)",
    )
    g.add_argument(
        "--raw-weights",
        action="store_true",
        help="sample with the raw trained weights instead of their EMA",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples)")
    g.add_argument(
        "--cpu-devices",
        default="auto",
        metavar="N|auto",
        help="on a CPU machine, XLA host devices to shard the batch over (default auto: one per "
        "core, at most 8, that split the batch evenly; 1 for a single sequence). Same samples "
        "for any count; 1.2-1.5x the throughput of one device on 2 cores. No effect on GPU/TPU",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per jitted sampler call (default: min(num, 64), rounded up to the "
        "data-parallel size)",
    )


def use_cpu_devices(args, prog: str) -> None:
    """Apply --cpu-devices for the sampling batch of --num / --batch-size before JAX starts
    (host_devices.configure_cpu_devices); on a CPU backend say on stderr how many devices the
    batch is sharded over. ValueError if bad."""
    import jax

    from ldlm_jax.generation import sampling_batch
    from ldlm_jax.host_devices import configure_cpu_devices

    configure_cpu_devices(args.cpu_devices, sampling_batch(args.num, args.batch_size))
    if jax.default_backend() == "cpu":
        print(
            f"{prog}: {jax.device_count()} CPU device(s) (--cpu-devices {args.cpu_devices})",
            file=sys.stderr,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="training workdir holding the checkpoint and config (required unless "
        "--compile-only --config)",
    )
    aot = parser.add_argument_group("compile only (ahead of time, nothing runs)")
    aot.add_argument(
        "--compile-only",
        action="store_true",
        help="compile the sampler for --target-topology from abstract shapes and print its "
        "per-device memory vs HBM, FLOPs, estimated time per call and sequences/s; exit 2 if "
        "it does not fit (compile-time estimates, not measurements)",
    )
    aot.add_argument(
        "--target-topology",
        default="",
        help="TPU slice such as v5p:2x2x2 or v5e:4x4 (needs the libtpu wheel, not a TPU), cpu:N "
        "(N host CPU devices), or empty for this machine's devices (default)",
    )
    aot.add_argument(
        "--config",
        default=None,
        help="config file to compile instead of a workdir's (with --compile-only); overrides "
        "as in ldlm-train: --config.mesh.fsdp=4",
    )
    parser.add_argument("--num", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the config's, 200)"
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="prefix text: its latents are held fixed while the rest is generated (needs K = L)",
    )
    parser.add_argument("--out", default=None, help="output file (default WORKDIR/samples.jsonl)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    add_sampling_args(parser)
    return parser


def sampling_settings(args, config) -> dict:
    """Resolve CLI flags against config.sampler and check them; ValueError before any compile."""
    s = config.sampler
    settings = dict(
        sampler=args.sampler if args.sampler is not None else s.name,
        steps=getattr(args, "steps", None) if getattr(args, "steps", None) is not None else s.steps,
        time_grid=args.time_grid if args.time_grid is not None else s.time_grid,
        t_min=args.t_min if args.t_min is not None else s.t_min,
        temperature=args.temperature if args.temperature is not None else s.temperature,
        self_cond=bool(s.self_cond) and not args.no_self_cond,
        use_ema=bool(s.use_ema) and not args.raw_weights,
        seed=args.seed,
    )
    check_settings(settings)
    return settings


def check_settings(settings: dict) -> None:
    """Clear errors for a bad sampler, step count, time grid, t_min or temperature."""
    if settings["sampler"] not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {settings['sampler']!r}: choose one of {', '.join(SAMPLERS)}"
        )
    steps = settings["steps"]
    for value in steps if isinstance(steps, (list, tuple)) else [steps]:
        if int(value) < 1:
            raise ValueError(f"steps must be >= 1, got {value}")
    if settings["time_grid"] not in TIME_GRIDS:
        raise ValueError(
            f"unknown time grid {settings['time_grid']!r}: choose one of {', '.join(TIME_GRIDS)}"
        )
    if not 0.0 <= settings["t_min"] < 1.0:
        raise ValueError(f"t_min must be in [0, 1), got {settings['t_min']}")
    if settings["temperature"] <= 0:
        raise ValueError(f"temperature must be > 0, got {settings['temperature']}")


def compile_only(args, overrides) -> int:
    """--compile-only: compile the sampler for args.target_topology and print the report."""
    from ldlm_jax import aot, tpu_compile
    from ldlm_jax.cli.train import resolve_config_path
    from ldlm_jax.config import ConfigError, apply_overrides, load_config, validate_config

    try:
        if args.config is None and args.workdir is None:
            raise ValueError("--compile-only needs --config (a config file) or --workdir")
        if args.config is not None:
            config = load_config(resolve_config_path(args.config), overrides)
        else:
            from ldlm_jax import generation

            config = apply_overrides(generation.read_config(args.workdir), overrides)
            validate_config(config)
        settings = sampling_settings(args, config)
        for key in ("use_ema", "seed"):  # weights and seed do not change the program
            settings.pop(key)
        batch = args.batch_size if args.batch_size is not None else min(args.num, 64)
        mesh = aot.target_mesh(config, args.target_topology)
        report = aot.compile_sampler(config, mesh, batch=batch, settings=settings)
    except (ValueError, FileNotFoundError, ConfigError, tpu_compile.TpuCompileError) as error:
        print(f"ldlm-sample: error: {error}", file=sys.stderr)
        return 2
    print(tpu_compile.format_report(report))
    print("(compile-time estimates from XLA's cost model, not measured runs)")
    return 0


def main(argv=None) -> int:
    from ldlm_jax.cli.train import split_overrides

    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    if args.compile_only:
        return compile_only(args, overrides)
    if overrides or args.config or args.target_topology:
        print("ldlm-sample: error: --config/--target-topology need --compile-only", file=sys.stderr)
        return 2
    if args.workdir is None:
        print("ldlm-sample: error: --workdir is required", file=sys.stderr)
        return 2
    from ldlm_jax import generation

    try:
        if args.num < 1:
            raise ValueError(f"--num must be >= 1, got {args.num}")
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        use_cpu_devices(args, "ldlm-sample")  # before read_config: orbax starts JAX
        # Cheap checks first (config JSON only), so bad flags fail before weights or compiles.
        config = generation.read_config(args.workdir)
        settings = sampling_settings(args, config)
        gen = generation.load_generator(args.workdir, raw_weights=not settings.pop("use_ema"))
        samples = generation.generate(
            gen,
            num=args.num,
            batch_size=args.batch_size,
            prompt=args.prompt,
            progress=not args.no_progress,
            **settings,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"ldlm-sample: error: {error}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.workdir, "samples.jsonl")
    generation.write_samples(samples, out)
    print(f"wrote {len(samples)} samples to {out}")
    for s in samples[: min(3, len(samples))]:
        print("  " + s["text"][:120].replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
