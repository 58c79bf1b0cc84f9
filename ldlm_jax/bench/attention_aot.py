"""Benchmark (not a test): attention kernels and RoPE forms, compiled for a TPU chip; RoPE on CPU.

  python -m ldlm_jax.bench.attention_aot                  # v5e (libtpu, no TPU), ~1 min
  python -m ldlm_jax.bench.attention_aot --chip v5p --skip-cpu

Part 1, compile-time estimates for one chip from XLA's cost analysis with the flash correction
(tpu_compile.compile_for_target), roofline time max(FLOPs / peak, bytes / HBM bandwidth):
- the attention core forward + backward (attention_kernels.attention) over 8192 tokens of 12 heads
  x 64 at L = 128 ... 1024, XLA kernel against flash: the crossover behind FLASH_AUTO_MIN_LENGTH;
- apply_rope forward + backward on q [8, 1024, 12, 64] bfloat16, sliced against matmul form;
- a Perceiver-shaped attention layer (1024 queries, 2048 keys, flash) with and without its
  per-head QK RMSNorm.
Part 2, measured on this CPU, side by side: the demo config's denoiser forward at batch 64 with
the sliced RoPE (what CPU runs) against the matmul form (what the TPU kernels take), median of
interleaved calls.
"""

from __future__ import annotations

import argparse
import os

TOKENS, HEADS, HEAD_DIM, WIDTH = 8192, 12, 64, 768
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _grad(fn, argnums):
    """fn's gradient of sum(outputs) (float32) with respect to `argnums`."""
    import jax
    import jax.numpy as jnp

    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=argnums)


def _report(fn, args, chip, mesh):
    from ldlm_jax import tpu_compile

    report = tpu_compile.compile_for_target(fn, args, chip=chip, mesh=mesh, label="attention")
    return report.roofline_seconds * 1e3, report.bytes_accessed_per_device / 1e9


def compiled_rows(chip: str, lengths) -> list[str]:
    """Part 1's table rows for `chip` ('v5e', 'v5p', ...), one device of a slice of it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ldlm_jax import attention_kernels, tpu_compile
    from ldlm_jax.layers import Attention, apply_rope

    topology = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}.get(chip, f"{chip}:2x2x1")
    mesh = jax.sharding.Mesh(np.array(tpu_compile.target_devices(topology)[:1]), ("data",))
    rows = []
    for length in lengths:
        q = jax.ShapeDtypeStruct((TOKENS // length, length, HEADS, HEAD_DIM), jnp.bfloat16)
        cells = []
        for kernel in ("xla", "flash"):
            core = _grad(lambda q, k, v, kernel=kernel: attention_kernels.attention(
                q, k, v, kernel=kernel), (0, 1, 2))  # fmt: skip
            cells.append(_report(core, (q, q, q), chip, mesh))
        (xla_ms, xla_gb), (flash_ms, flash_gb) = cells
        rows.append(
            f"attention core fwd+bwd, L = {length:4d}: XLA {xla_ms:6.3f} ms ({xla_gb:.3f} GB), "
            f"flash {flash_ms:6.3f} ms ({flash_gb:.3f} GB), XLA / flash {xla_ms / flash_ms:.2f}"
        )
    x = jax.ShapeDtypeStruct((8, 1024, HEADS, HEAD_DIM), jnp.bfloat16)
    positions = np.arange(1024)
    forms = [
        _report(_grad(lambda x, m=m: apply_rope(x, positions, 1e4, m), 0), (x,), chip, mesh)
        for m in (False, True)
    ]
    rows.append(
        f"apply_rope fwd+bwd on q [8, 1024, 12, 64]: sliced {forms[0][1]:.3f} GB, "
        f"matmul {forms[1][1]:.3f} GB, sliced / matmul {forms[0][1] / forms[1][1]:.2f}"
    )
    xq = jax.ShapeDtypeStruct((8, 1024, WIDTH), jnp.bfloat16)
    xkv = jax.ShapeDtypeStruct((8, 2048, WIDTH), jnp.bfloat16)
    norms = []
    init = (jnp.zeros((1, 128, WIDTH)), jnp.zeros((1, 256, WIDTH)))
    for qk_norm in (True, False):
        layer = Attention(HEADS, qk_norm=qk_norm, kernel="flash", dtype=jnp.bfloat16)
        params = jax.eval_shape(lambda layer=layer: layer.init(jax.random.PRNGKey(0), *init))
        step = _grad(lambda p, a, b, layer=layer: layer.apply(p, a, b), (0, 1, 2))
        norms.append(_report(step, (params, xq, xkv), chip, mesh))
    rows.append(
        "Perceiver attention layer fwd+bwd (1024 q, 2048 kv, flash): with QK RMSNorm "
        f"{norms[0][1]:.3f} GB, without {norms[1][1]:.3f} GB (+{norms[0][1] - norms[1][1]:.3f})"
    )
    return rows


def cpu_rope_row(runs: int) -> str:
    """Part 2: the demo denoiser forward at batch 64, sliced against matmul RoPE, on CPU."""
    import jax
    import jax.numpy as jnp

    from ldlm_jax.bench.timing import jax_call, median, time_pair
    from ldlm_jax.config import load_config
    from ldlm_jax.ldlm import LDLM

    config = load_config(os.path.join(REPO, "configs", "demo.py"))
    # platform='tpu' resolves 'auto' as on TPU: at K = 64 keys the attention stays XLA, but RoPE
    # takes the matmul form; 'xla' is what CPU runs.
    sliced = LDLM(config, lm_dim=384, vocab_size=30522)
    matmul = LDLM(config, lm_dim=384, vocab_size=30522, platform="tpu")
    params = sliced.init_params(jax.random.PRNGKey(0))
    z = jax.random.normal(jax.random.PRNGKey(1), (64, sliced.num_latents, sliced.latent_dim))
    t = jnp.full((64,), 0.5)
    calls = [jax_call(jax.jit(m.denoise), params, z, t) for m in (sliced, matmul)]
    times = time_pair(*calls, runs=runs)
    a, b = (median(x) * 1e3 for x in times)
    return f"CPU demo denoiser forward, B = 64: sliced RoPE {a:.1f} ms, matmul {b:.1f} ms, " + (
        f"matmul / sliced {b / a:.2f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ldlm_jax.bench.attention_aot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--chip", default="v5e", help="TPU generation to compile for (libtpu)")
    parser.add_argument("--lengths", default="128,256,512,1024", help="comma-separated L")
    parser.add_argument("--runs", type=int, default=15, help="timed CPU calls per side")
    parser.add_argument("--skip-cpu", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",") if n]
    if any(n <= 0 or TOKENS % n for n in lengths):
        parser.error(f"--lengths must divide {TOKENS} tokens, got {args.lengths!r}")
    from ldlm_jax import tpu_compile

    if not tpu_compile.libtpu_available():
        parser.error(tpu_compile.LIBTPU_INSTALL_HINT)
    for row in compiled_rows(args.chip, lengths):
        print(row, flush=True)
    if not args.skip_cpu:
        print(cpu_rope_row(args.runs), flush=True)
    print("(part 1: compile-time estimates, not measured runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
