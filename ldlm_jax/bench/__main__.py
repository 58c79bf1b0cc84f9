"""`python -m ldlm_jax.bench`: the one-command benchmark suite (every figure a side-by-side ratio).

    python -m ldlm_jax.bench --quick                  # < 3 minutes on 2 CPU cores, cold cache
    python -m ldlm_jax.bench --out bench_results/bench_full.json
    python -m ldlm_jax.bench --quick --only lm_forward,sampler

Sections, in one process on one machine (ldlm_jax/bench/sections.py):
  lm_forward  frozen LM forward, our Flax port vs transformers PyTorch (MiniLM; + GPT-2 small)
  train_step  demo-config train step tokens/s, and MFU against the f32 matmul peak measured between
              the timed steps (on TPU/GPU also against the chip's datasheet peak)
  sampler     latency at batch 1 and throughput at batch 64, JAX vs the PyTorch export
  scaling     a small model: train step as L grows 128 -> 1024, with K = L/f, with batch size;
              LM forward as L grows; sampler as K grows (not in --quick)
  data        data-pipeline tokens/s against what the train step consumes
Each figure is the median of timed calls; when two programs are compared they are timed in turns.
Prints one table (figure, ours, reference, ratio, unit; ratio > 1 means ours does better, and
for the MFU rows it is the utilisation) and writes one JSON with the machine's facts, every row's
raw timings, and per-section details. Progress goes to stderr. Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from ldlm_jax.bench import suite


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ldlm_jax.bench",
        description="The one-command benchmark suite: every figure a ratio measured side by side.",
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="fewer points and repeats (< 3 min on 2 CPU cores)"
    )
    size.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)  # tests only
    parser.add_argument(
        "--out",
        default=None,
        help="JSON results file (default bench_results/bench_<quick|full>.json)",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(suite.SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed calls per measurement (median; default by mode)",
    )
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="persistent JAX compilation cache folder (default: none, every compile is cold)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads for the PyTorch side (default: the faster of 1 and one per "
        "core, probed at start: on a shared machine torch's one-per-core default can be several "
        "times slower)",
    )
    parser.add_argument(
        "--cpu-devices",
        default="auto",
        metavar="N|auto",
        help="XLA host devices on a CPU machine (default auto: one per core, at most 8), as "
        "ldlm-sample uses them: the sampler section shards its batch over them and also times "
        "one device; the other sections run on one device",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sections = suite.parse_sections(args.only)
    except ValueError as error:
        parser.error(str(error))
    mode = "micro" if args.micro else "quick" if args.quick else "full"
    settings = suite.MODES[mode]
    if args.runs is not None:
        if args.runs < 1:
            parser.error(f"--runs must be >= 1, got {args.runs}")
        settings = suite.dataclasses.replace(settings, runs=args.runs)
    out = args.out or os.path.join("bench_results", f"bench_{mode}.json")

    import jax

    from ldlm_jax.host_devices import configure_cpu_devices

    try:
        configure_cpu_devices(args.cpu_devices)
    except ValueError as error:
        parser.error(str(error))
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads must be >= 1, got {args.torch_threads}")
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    report = suite.run(
        sections,
        settings,
        out,
        command=" ".join(["python -m ldlm_jax.bench", *argv]),
        progress=not args.no_progress,
        torch_threads=args.torch_threads,
    )
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
