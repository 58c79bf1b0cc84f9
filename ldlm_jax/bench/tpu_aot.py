"""Benchmark (not a test): paper-scale configs compiled ahead of time for TPU slices and a CPU.

  python -m ldlm_jax.bench.tpu_aot --out tpu_aot.json          # everything below (long: ~1 h)
  python -m ldlm_jax.bench.tpu_aot --configs owt --topologies v5e:4x4 --cpu-mesh 0 \
      --set model.remat=full --set train.batch_size=256        # explore one case

For each config (configs/owt.py, configs/lm1b.py) x target (v5p:2x2x2, v5e:4x4; libtpu, no TPU)
it compiles, from abstract shapes (ldlm_jax/aot.py), the real train step and the default sampler
(Euler-Maruyama, config.sampler.steps, batch 64) under the settings of SETTINGS (the mesh, batch
and remat found to fit that chip; --set overrides them), and, for issue 8, the OWT train step at
the paper's batch 512 on a 16-device CPU mesh (fsdp x data). Each case runs in its own process
(libtpu reads its accelerator type once; XLA_FLAGS fixes the CPU device count at jax import).
Prints a table and writes JSON: per-device memory vs HBM, estimated step time, tokens/s, MFU,
per-chip batch, sampler time per call and sequences/s, compile time. These are compile-time
estimates from XLA's cost model (or a roofline where it gives none), not measured runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"owt": "configs/owt.py", "lm1b": "configs/lm1b.py"}
# (config, chip) -> overrides: per-chip batch >= 8 sequences, data parallel (the model's
# activation sharding constraints are inactive, so fsdp/tensor meshes replicate activations).
SETTINGS = {
    ("owt", "v5e"): ("train.batch_size=128", "mesh.data=-1", "model.remat=full"),
    ("owt", "v5p"): ("train.batch_size=512", "mesh.data=-1", "model.remat=full"),
    ("lm1b", "v5e"): ("train.batch_size=512", "mesh.data=-1", "model.remat=none"),
    ("lm1b", "v5p"): ("train.batch_size=512", "mesh.data=-1", "model.remat=none"),
    ("owt", "cpu"): ("train.batch_size=512", "mesh.data=4", "mesh.fsdp=4", "model.remat=none"),
}


def run_case(config_name: str, target: str, overrides: list[str], sampler: bool) -> dict:
    """Compile one case in this process; a JSON-able dict (reports, or the does-not-fit error)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # GPT-2's HF config: the defaults, no retries
    from ldlm_jax import aot, tpu_compile
    from ldlm_jax.config import load_config

    config = load_config(os.path.join(REPO, CONFIGS[config_name]), overrides)
    row = dict(config=config_name, target=target, overrides=overrides)
    start = time.perf_counter()
    try:
        result = aot.compile_programs(config, target, sampler=sampler)
        row.update(
            fits=True,
            mesh=result.mesh,
            param_counts=result.param_counts,
            reports={k: r.to_json() for k, r in result.reports.items()},
        )
    except tpu_compile.DoesNotFitError as error:
        print(error, flush=True)
        row.update(fits=False, error=str(error), required_bytes=error.required_bytes)
        row.update(hbm_bytes=error.hbm_bytes)
    row["seconds"] = time.perf_counter() - start
    row["batch_size"] = int(config.train.batch_size)
    row["seq_len"] = int(config.data.seq_len)
    row["remat"] = config.model.remat
    return row


def _cases(args) -> list[tuple[str, str, list[str]]]:
    from ldlm_jax.tpu_topology import parse_topology

    cases = []
    for name in [c for c in args.configs.split(",") if c]:
        for topology in [t for t in args.topologies.split(",") if t]:
            chip = parse_topology(topology)[0].name
            cases.append((name, topology, [*SETTINGS.get((name, chip), ()), *args.set]))
    if args.cpu_mesh:
        cases.append(("owt", f"cpu:{args.cpu_mesh}", [*SETTINGS[("owt", "cpu")], *args.set]))
    return cases


def _spawn(case, sampler: bool, timeout: float) -> dict:
    name, target, overrides = case
    env = dict(os.environ)
    if target.startswith("cpu"):
        count = target.partition(":")[2] or "1"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        command = [sys.executable, "-m", "ldlm_jax.bench.tpu_aot", "--one", name, target, out]
        command += [f"--set={o}" for o in overrides] + ([] if sampler else ["--no-sampler"])
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, timeout=timeout, text=True)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        wall = time.perf_counter() - start
        if code == 0 and os.path.exists(out):
            with open(out) as f:
                row = json.load(f)
        else:
            row = dict(config=name, target=target, overrides=overrides, failed=str(code))
    row["wall_seconds"] = wall
    row["max_rss_gib_so_far"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return row


def _fmt(value, spec, scale=1.0, suffix=""):
    return "n/a" if value is None else f"{value * scale:{spec}}{suffix}"


def table(rows: list[dict]) -> str:
    """A markdown table of the rows (one line per config x target x program)."""
    head = ("| config | target | mesh | settings | program | per-chip batch | memory/device "
            "| HBM | est. time | tokens/s | seq/s | MFU | compile |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        settings = f"batch {row.get('batch_size')}, remat {row.get('remat')}"
        if not row.get("reports"):
            need = row.get("required_bytes")
            why = row.get("failed") or "does not fit" + (
                f" (needs {need / 2**30:.2f} GiB)" if need else ""
            )
            lines.append(f"| {row['config']} | {row['target']} | | {settings} | {why} |||||||||")
            continue
        for program, r in row["reports"].items():
            chips = r["num_devices"]
            if program == "train_step":
                per_chip = f"{row['batch_size'] / chips:g} x {row['seq_len']}"
            else:
                per_chip = f"{r['sequences_per_step'] / chips:g} (sampler)"
            hbm = _fmt(r["hbm_bytes"], ".2f", 2**-30, " GiB")
            lines.append(
                f"| {row['config']} | {row['target']} | {row['mesh'].split(' over ')[0]} "
                f"| {settings} | {r['label']} | {per_chip} "
                f"| {r['total_bytes'] / 2**30:.2f} GiB | {hbm} "
                f"| {_fmt(r['step_seconds'], '.1f', 1e3, ' ms')} ({r['step_time_source']}) "
                f"| {_fmt(r['tokens_per_second'], ',.0f')} "
                f"| {_fmt(r['sequences_per_second'], ',.1f')} "
                f"| {_fmt(r['mfu'], '.1f', 100, '%')} | {r['compile_seconds']:.0f} s |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ldlm_jax.bench.tpu_aot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", default="owt,lm1b", help="comma-separated: owt, lm1b")
    parser.add_argument("--topologies", default="v5p:2x2x2,v5e:4x4", help="TPU targets")
    parser.add_argument(
        "--cpu-mesh", type=int, default=16, help="also the OWT step on N CPU devices (0: skip)"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="extra override for every case, e.g. "
        "--set model.remat=dots (repeatable; applied after SETTINGS)",
    )  # fmt: skip
    parser.add_argument("--no-sampler", action="store_true", help="train steps only")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--one", nargs=3, metavar=("CONFIG", "TARGET", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one:
        name, target, out = args.one
        row = run_case(name, target, args.set, sampler=not args.no_sampler)
        with open(out, "w") as f:
            json.dump(row, f)
        return 0
    rows = []
    for case in _cases(args):
        print(f"=== {case[0]} on {case[1]}: {' '.join(case[2])}", flush=True)
        sampler = not args.no_sampler and not case[1].startswith("cpu")
        rows.append(_spawn(case, sampler, args.timeout))
        print(f"=== done in {rows[-1]['wall_seconds']:.0f} s", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print(table(rows))
    print("(compile-time estimates from XLA's cost model or a roofline, not measured runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
