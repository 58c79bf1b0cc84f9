"""Training logs: metrics.jsonl, TensorBoard events, a tqdm bar, throughput and MFU.

Only process 0 writes (other processes get a logger whose methods do nothing). WORKDIR may be
gs://: files are opened through etils.epath; metrics.jsonl is then rewritten whole at each flush
(object stores cannot append), locally it is appended line by line.

MFU = (model FLOPs per step / step seconds) / (peak FLOP/s per device * devices). The FLOPs of a
step are XLA's count for the whole unpartitioned step (`jit(step).lower(...).cost_analysis()`:
the frozen LM forward, the self-conditioning pass, forward and backward of the LDLM networks), so
the figure means "useful arithmetic done per second against the hardware's matmul peak". The peak:
a TPU's datasheet bf16 number (ldlm_jax.tpu_compile.CHIPS), known GPUs' dense bf16 datasheet
numbers, and elsewhere (CPU) measured once at startup as the float32 rate of jnp.dot on two
2048 x 2048 matrices (median of 5 runs).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

log = logging.getLogger(__name__)

# Dense bf16 FLOP/s per device from vendors' datasheets (no sparsity).
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@functools.cache
def measure_matmul_peak(size: int = 2048, repeats: int = 5, device=None) -> float:
    """float32 FLOP/s of one jnp.dot [size, size] x [size, size] on `device` (median; measured
    once per process and device)."""
    device = device or jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    b = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(times))


def peak_flops_per_device(device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    device = device or jax.local_devices()[0]
    kind = getattr(device, "device_kind", "")
    if device.platform == "tpu":
        from ldlm_jax.tpu_compile import chip_spec_for

        spec = chip_spec_for([device])
        if spec is not None:
            return spec.peak_bf16_flops, f"{spec.name} datasheet bf16"
    if device.platform == "gpu":
        for name, peak in GPU_PEAKS.items():
            if name in kind:
                return peak, f"{name} datasheet bf16"
    return measure_matmul_peak(device=device), "measured f32 jnp.dot 2048x2048"


def step_flops(lowered) -> float | None:
    """Total FLOPs XLA counts in a lowered (not yet partitioned) step, or None."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # some backends have no cost model
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _scalar(value) -> float | int:
    value = np.asarray(value)
    return value.item() if value.size == 1 else float(value.mean())


class MetricsLogger:
    """Writes one JSON object per logged step to WORKDIR/metrics.jsonl, TensorBoard scalars to
    WORKDIR/tensorboard/, and drives a tqdm progress bar with ETA.

    Args:
      workdir: local path or gs:// path.
      total_steps: for the progress bar.
      initial_step: where a resumed run starts.
      enabled: False on processes other than 0 (nothing written).
      progress_bar: show tqdm on stderr.
    """

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        progress_bar: bool = True,
    ):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self._remote = "://" in str(workdir)
        self._lines: list[str] = []
        self._writer = None
        self._bar = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "metrics.jsonl"
        if self._remote and self.path.exists():
            self._lines = self.path.read_text().splitlines(keepends=True)
        try:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.workdir / "tensorboard"))
        except Exception as error:  # e.g. gs:// without the GCS client installed
            log.warning("TensorBoard events disabled: %s", error)
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial_step, desc="train", unit="step", smoothing=0.1
            )

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Log metrics (scalars) of `step`; names get `prefix` (e.g. 'eval/') in TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({prefix + k: _scalar(v) for k, v in metrics.items()})
        line = json.dumps(record) + "\n"
        if self._remote:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        else:
            with self.path.open("a") as f:
                f.write(line)
        if self._writer is not None:
            for name, value in record.items():
                if name != "step" and np.isfinite(value):
                    tag = name if "/" in name else f"train/{name}"
                    self._writer.add_scalar(tag, value, int(step))
            self._writer.flush()
        if self._bar is not None and not prefix:
            shown = {k: record[k] for k in ("loss", "tokens_per_sec") if k in record}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def write_text(self, step: int, name: str, text: str) -> None:
        """A text summary in TensorBoard (e.g. decoded samples)."""
        if self.enabled and self._writer is not None:
            self._writer.add_text(name, text, int(step))
            self._writer.flush()

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by n steps."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()


def write_jsonl(path: epath.Path, records: list[dict]) -> None:
    """Write records as JSON lines (samples_step_N.jsonl etc.); process 0 only."""
    if jax.process_index() == 0:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
