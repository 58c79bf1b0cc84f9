"""The benchmark suite's machinery: modes, rows and ratios, machine facts, the table and the JSON.

A row is one figure measured side by side in this run: `ours` and `reference` each come from
timed calls kept in the row (ours_seconds / reference_seconds, the work done per call in
ours_work / reference_work), and the ratio is computed from those two medians, never typed in:

  rate rows (tok/s, seq/s, GFLOP/s): value = work / median(seconds) / scale, ratio = ours / ref;
  latency rows (ms): value = 1000 * median(seconds), ratio = ref / ours.

So a ratio > 1 always means ours does better (the MFU rows are the exception by nature: ours is
the achieved FLOP rate, the reference the peak, and the ratio is the utilisation). The sections
themselves live in ldlm_jax/bench/sections.py; `python -m ldlm_jax.bench` is the command.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback

from ldlm_jax.bench.timing import median

SCHEMA = "ldlm_jax.bench/1"
SECTIONS = ("lm_forward", "train_step", "sampler", "scaling", "data")
RATE_UNITS = {"tok/s": 1.0, "seq/s": 1.0, "GFLOP/s": 1e9}
LATENCY_UNITS = {"ms": 1e3}
ROW_KEYS = (
    "section",
    "figure",
    "ours",
    "reference",
    "ratio",
    "unit",
    "better",
    "ours_work",
    "ours_seconds",
    "reference_work",
    "reference_seconds",
    "note",
)

SCALE_OVERRIDES = ("model.encoder.num_layers=1", "model.latent_decoder.num_layers=1")
# The micro train step is the micro scaling section's first point, so it is measured once.
MICRO_TRAIN = (*SCALE_OVERRIDES, "data.seq_len=16", "model.latent_count=16", "train.batch_size=2")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one mode measures. runs: timed calls per measurement (median)."""

    mode: str
    runs: int
    lm_models: tuple = ("minilm",)
    lm_shape: tuple = (8, 128)  # batch, length
    train_config: str = "configs/demo.py"
    train_overrides: tuple = ()
    train_steps: int = 3
    train_warmup: int = 1
    train_devices: int | None = None  # None: every device, sized by the config's mesh
    train_lm: str = "config"  # or "scale": the scaling section's small GPT-2, random ids
    sampler_config: str = "configs/demo.py"
    sampler_overrides: tuple = ()
    sampler_steps: tuple = (10,)
    sampler_runs: int | None = None  # None: runs
    sampler_batches: tuple = (1, 64)
    scale_config: str = "configs/tiny.py:random_lm"
    scale_overrides: tuple = SCALE_OVERRIDES
    scale_lm: tuple = (64, 2, 2)  # the small random GPT-2 frozen LM: width, layers, heads
    scale_lengths: tuple = (128, 1024)  # K = L, batch scale_batch
    scale_fracs: tuple = (8,)  # K = L / f at the longest length
    scale_batch: int = 1
    scale_batches: tuple = (4,)  # more batch sizes at the shortest length
    scale_steps: int = 2
    scale_sampler: bool = True  # the sampler's K sweep (K = L/f and L at the longest L)
    scale_sampler_steps: int = 5
    scale_sampler_batch: int = 1  # the sampler's K sweep: latency at this batch size
    data_workers: tuple = (0,)
    data_batches: int = 50


MODES = {
    # Tiny shapes and one repeat: the test of the machinery (tests/test_bench_suite.py).
    "micro": Settings(
        mode="micro",
        runs=1,
        lm_models=("gpt2_micro",),
        lm_shape=(2, 16),
        train_config="configs/tiny.py:random_lm",
        train_overrides=MICRO_TRAIN,
        train_steps=1,
        train_devices=1,
        train_lm="scale",
        sampler_config="configs/tiny.py:random_lm",
        sampler_overrides=("data.seq_len=8",),
        sampler_steps=(2,),
        sampler_batches=(1, 2),
        scale_lm=(32, 1, 2),
        scale_lengths=(16,),
        scale_fracs=(),
        scale_batch=2,
        scale_batches=(),
        scale_steps=1,
        scale_sampler_steps=2,
        scale_sampler_batch=2,
        data_batches=2,
    ),
    "quick": Settings(mode="quick", runs=3, scale_sampler=False),
    "full": Settings(
        mode="full",
        runs=5,
        lm_models=("minilm", "gpt2_small"),
        train_steps=10,
        train_warmup=2,
        sampler_steps=(50, 200),
        sampler_runs=3,
        scale_lengths=(128, 256, 512, 1024),
        scale_fracs=(4, 8),
        scale_batch=4,
        scale_batches=(1, 16, 32),
        scale_steps=3,
        scale_sampler_steps=10,
        data_workers=(0, 2),
        data_batches=200,
    ),
}


def parse_sections(spec: str | None) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b') in the suite's order; None or '' -> all. ValueError on unknown names."""
    if not spec:
        return SECTIONS
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown section(s) {unknown or [spec]}: choose from {', '.join(SECTIONS)}"
        )
    return tuple(s for s in SECTIONS if s in names)


def _value(unit: str, work, seconds, scale_given=None):
    if seconds is None:
        return scale_given
    if unit in LATENCY_UNITS:
        return LATENCY_UNITS[unit] * median(seconds)
    return float(work) / median(seconds) / RATE_UNITS[unit]


def make_row(section, figure, unit, ours_seconds, ours_work=1, **kw) -> dict:
    """One table row from measured timings.

    Args:
      unit: 'tok/s' | 'seq/s' | 'GFLOP/s' (rates) or 'ms' (latency).
      ours_seconds: list of timed calls' seconds; ours_work: work per call (tokens, sequences,
        FLOPs) for rates.
      kw: reference_seconds / reference_work (the other side, measured in the same run), or
        reference_value (a number from elsewhere, e.g. a datasheet peak, in `unit`); note.
    Returns:
      The row dict (ROW_KEYS), ours / reference / ratio computed from the medians.
    """
    if unit not in RATE_UNITS and unit not in LATENCY_UNITS:
        raise ValueError(f"unknown unit {unit!r}")
    ref_s, ref_work = kw.get("reference_seconds"), kw.get("reference_work", ours_work)
    ours = _value(unit, ours_work, ours_seconds)
    reference = _value(unit, ref_work, ref_s, kw.get("reference_value"))
    better = "lower" if unit in LATENCY_UNITS else "higher"
    ratio = None
    if reference:
        ratio = ours / reference if better == "higher" else reference / ours
    return {
        "section": section,
        "figure": figure,
        "ours": ours,
        "reference": reference,
        "ratio": ratio,
        "unit": unit,
        "better": better,
        "ours_work": ours_work,
        "ours_seconds": list(ours_seconds),
        "reference_work": ref_work if ref_s is not None else None,
        "reference_seconds": None if ref_s is None else list(ref_s),
        "note": kw.get("note", ""),
    }


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Platform, device kind, library versions, CPU count, load average and the date (UTC)."""
    import jax

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
    }
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        info[name] = _version(name)
    try:
        import torch

        from ldlm_jax.bench.timing import torch_device

        info.update(torch_threads=torch.get_num_threads(), torch_device=torch_device())
    except ImportError:
        info["torch_device"] = None
    return info


def _set_torch_threads(threads: int | None) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        torch.set_num_threads(threads)
        return None
    from ldlm_jax.bench.timing import pick_torch_threads

    _, seconds = pick_torch_threads()
    return {str(n): s for n, s in seconds.items()}


def _fmt(x) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table: figure, ours, reference, ratio, unit, note."""
    head = ("figure", "ours", "reference", "ratio", "unit", "note")
    cells = [head] + [
        (
            r["figure"],
            _fmt(r["ours"]),
            _fmt(r["reference"]),
            _fmt(r["ratio"]),
            r["unit"],
            r["note"],
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    left = (0, 4, 5)
    lines = []
    for n, c in enumerate(cells):
        parts = [c[i].ljust(widths[i]) if i in left else c[i].rjust(widths[i]) for i in range(6)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Progress:
    """A tqdm bar on stderr over the sections; note() shows what is being measured now."""

    def __init__(self, names, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(names), file=sys.stderr, unit="section", disable=not enabled, leave=True
        )

    def start(self, name: str) -> None:
        self.bar.set_description(name)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text[:60])

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Context:
    """What the sections share: settings, progress notes, caches (models), results, details."""

    def __init__(self, settings: Settings, progress: Progress | None = None):
        self.settings = settings
        self.progress = progress
        self.cache: dict = {}
        self.results: dict = {}
        self.details: dict = {}

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)

    def cached(self, key, build):
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


def run(
    sections,
    settings: Settings,
    out: str | None = None,
    command: str = "",
    progress: bool = True,
    torch_threads: int | None = None,
):
    """Run `sections` in order in this process; print the table; write the JSON to `out`.

    torch_threads: the PyTorch side's intra-op threads; None: the faster of 1 and one per core
    (timing.pick_torch_threads, recorded in machine.torch_threads_probe).

    Returns the report dict: schema, command, mode, sections, machine, rows, details, errors
    ({section: message} for sections that raised; the others still run), section_seconds and
    section_cpu_seconds, wall_s and cpu_s (the process's CPU time since it started)."""
    from ldlm_jax.bench import sections as impl

    start = time.perf_counter()
    probe = _set_torch_threads(torch_threads)
    machine = machine_info()
    machine["torch_threads_probe"] = probe
    bar = Progress(sections, enabled=progress)
    ctx = Context(settings, bar)
    rows, errors, seconds, cpu = [], {}, {}, {}
    for name in sections:
        bar.start(name)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            rows.extend(getattr(impl, name)(settings, ctx))
        except Exception as error:  # one broken section must not lose the others' figures
            errors[name] = f"{type(error).__name__}: {error}"
            traceback.print_exc(file=sys.stderr)
        seconds[name] = round(time.perf_counter() - t0, 1)
        cpu[name] = round(time.process_time() - c0, 1)
        bar.done()
    bar.close()
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "schema": SCHEMA,
        "command": command,
        "mode": settings.mode,
        "sections": list(sections),
        "machine": machine,
        "rows": rows,
        "details": ctx.details,
        "errors": errors,
        "section_seconds": seconds,
        "section_cpu_seconds": cpu,  # this process's CPU time (all threads)
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time(), 1),
    }
    print(format_table(rows))
    busy = max(machine["load_average"][0], machine["load_average_end"][0])
    print(
        f"\n{settings.mode} run, {report['wall_s']} s; ratio > 1: ours better (MFU rows: the "
        f"utilisation); {machine['backend']} {machine['device_kind']}, "
        f"{machine['cpu_count']} CPUs, load average {busy:.1f}"
        + (" (busy machine: figures are pessimistic)" if busy > (os.cpu_count() or 1) else "")
    )
    for name, message in errors.items():
        print(f"section {name} failed: {message}")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {out}")
    return report
