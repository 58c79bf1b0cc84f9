"""ldlm-export-torch: export a training checkpoint to PyTorch, and prove the twin is faithful.

    ldlm-export-torch --workdir /tmp/ldlm_demo /tmp/ldlm_demo_torch --ema --verify

writes OUT/model.safetensors, OUT/config.json and OUT/frozen_lm/ (HF layout + tokenizer), which
`ldlm_jax.torch.LDLMTorch.from_pretrained(OUT)` loads without jax. The checkpoint may have been
saved sharded on any mesh: it is restored onto one local device (CPU is enough).

--verify runs every module in JAX (float32 compute, highest matmul precision) and in torch on the
same inputs: the frozen LM + normalisation, encoder, denoiser, latent decoder, token decoder, the
schedule, the adaptive time warp, and short Euler-Maruyama and ODE sampling runs given the same
injected noise (tokens compared too). One line per module, then `max_abs_diff=<float>`; the exit
status is 1 when it exceeds --tolerance (default 1e-4).
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

TOLERANCE = 1e-4


def _float32_config(config):
    """A copy of config computing in float32 (parity is defined in float32)."""
    from ldlm_jax.config import from_dict, to_dict

    c = from_dict(to_dict(config))
    c.model.dtype = "float32"
    c.frozen_lm.dtype = "float32"
    c.lock()
    return c


def _diff(a, b, mask=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def verify(
    out: str,
    config,
    params,
    frozen_lm,
    hidden_stats=None,
    adaptive_state=None,
    *,
    batch: int = 2,
    sample_steps: int = 4,
    seed: int = 0,
    samplers=None,
) -> list[dict]:
    """Compare the export in OUT with the JAX model module by module.

    Args:
      out: an export folder; config / params / frozen_lm / hidden_stats / adaptive_state: the JAX
        side it was written from. batch, sample_steps, seed: the size of the random test inputs.
      samplers: sampler names to run (default: euler_maruyama and ode_euler).
    Returns:
      One dict per check: {'module', 'max_abs_diff', 'scale' (max |JAX output|), 'note'}.
    """
    import jax
    import torch

    from ldlm_jax.ldlm import LDLM
    from ldlm_jax.torch import LDLMTorch

    torch.set_num_threads(min(torch.get_num_threads(), 4))
    tmodel = LDLMTorch.from_pretrained(out)
    cfg = _float32_config(config)
    jmodel = LDLM(cfg, frozen_lm)
    rng = np.random.default_rng(seed)
    seq, k, dz = jmodel.seq_len, jmodel.num_latents, jmodel.latent_dim
    ids = rng.integers(
        0, min(frozen_lm.vocab_size, len(frozen_lm.tokenizer or []) or 10**9), (batch, seq)
    ).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[1:, seq // 2 :] = 0  # padded rows exercise the key masks
    rows = []

    def add(name, jax_out, torch_out, where=None, note=""):
        torch_out = torch_out.detach().numpy() if hasattr(torch_out, "detach") else torch_out
        jax_out = np.asarray(jax_out)
        scale = float(np.max(np.abs(jax_out))) if jax_out.size else 0.0
        rows.append(
            dict(module=name, max_abs_diff=_diff(jax_out, torch_out, where), scale=scale, note=note)
        )
        return jax_out

    def tt(x):  # a writable float/int copy (jax arrays are read-only views)
        return torch.from_numpy(np.array(x, copy=True))

    # One jitted program per module: fewer, larger compiles than op-by-op dispatch.
    hidden, encode, denoise = (
        jax.jit(jmodel.hidden),
        jax.jit(jmodel.encode),
        jax.jit(jmodel.denoise),
    )
    decode_hidden, decode_tokens = jax.jit(jmodel.decode_hidden), jax.jit(jmodel.decode_tokens)
    with jax.default_matmul_precision("highest"), torch.no_grad():
        stats = hidden_stats if cfg.frozen_lm.normalize else None
        h = add(
            "frozen_lm",
            hidden(frozen_lm.params, stats, ids, mask),
            tmodel.hidden(tt(ids), tt(mask)),
            mask,
            f"{frozen_lm.arch}, real tokens",
        )
        z0 = add("encoder", encode(params, h, mask), tmodel.encode(tt(h), tt(mask)))
        t = rng.uniform(0.05, 1.0, (batch,)).astype(np.float32)
        sc = rng.normal(size=(batch, k, dz)).astype(np.float32)
        add("denoiser", denoise(params, z0, t, sc), tmodel.denoise(tt(z0), tt(t), tt(sc)))
        h_hat = add("latent_decoder", decode_hidden(params, z0), tmodel.decode_hidden(tt(z0)))
        add(
            "token_decoder",
            decode_tokens(params, h_hat, mask),
            tmodel.decode_tokens(tt(h_hat), tt(mask)),
        )
        grid = np.linspace(0.0, 1.0, 101, dtype=np.float32)
        a, s = jmodel.schedule.alpha_sigma(grid)
        ta, ts = tmodel.schedule.alpha_sigma(tt(grid))
        add("schedule", np.stack([a, s]), torch.stack([ta, ts]), note=cfg.diffusion.schedule)
        if adaptive_state:
            from ldlm_jax import adaptive_timesteps
            from ldlm_jax.torch import sampling as tsampling

            floor = float(cfg.recipe.adaptive_floor)
            state = {k_: jax.numpy.asarray(v) for k_, v in adaptive_state.items()}
            add(
                "time_warp",
                adaptive_timesteps.time_warp(state, grid, floor),
                tsampling.time_warp({k_: tt(v) for k_, v in state.items()}, tt(grid), floor),
            )
        warp = None
        if adaptive_state:  # the ODE run uses the adaptive grid, so the warp is checked in use
            warp = (state, floor, tmodel.time_warp())
        for name in ("euler_maruyama", "ode_euler") if samplers is None else samplers:
            w = warp if name.startswith("ode") else None
            rows.extend(_sampler_rows(jmodel, params, tmodel, name, sample_steps, batch, seed, w))
    return rows


def _sampler_rows(jmodel, params, tmodel, sampler, steps, batch, seed, warp=None) -> list[dict]:
    """A short sampling run in both frameworks from the same injected noise: latents, tokens.
    warp: None or (adaptive state, floor, torch u -> t) for the adaptive time grid."""
    import jax

    from ldlm_jax import adaptive_timesteps
    from ldlm_jax import samplers as jsamplers
    from ldlm_jax.torch import sampling as tsampling

    shape = (batch, jmodel.num_latents, jmodel.latent_dim)
    noise = np.random.default_rng(seed + 1).normal(size=(steps + 1, *shape)).astype(np.float32)
    settings = dict(sampler=sampler, steps=steps, t_min=0.05)

    @jax.jit
    def run(params, noise, warp_state):  # weights and state are arguments: no baked constants
        time_warp = None
        if warp is not None:
            time_warp = functools.partial(adaptive_timesteps.time_warp, warp_state, floor=warp[1])
        z0 = jsamplers.sample_latents(
            jmodel.denoise_fn(params),
            jmodel.schedule,
            shape,
            jax.random.PRNGKey(seed),
            noise=noise,
            time_warp=time_warp,
            **settings,
        )
        return z0, jmodel.decode_tokens(params, jmodel.decode_hidden(params, z0)).argmax(-1)

    z0, ids = (np.asarray(x) for x in run(params, noise, None if warp is None else warp[0]))
    tz0 = tsampling.sample_latents(
        tmodel.denoise,
        tmodel.schedule,
        noise=noise.copy(),
        time_warp=None if warp is None else warp[2],
        **settings,
    )
    tids = tmodel.decode_tokens(tmodel.decode_hidden(tz0)).argmax(-1).numpy()
    same = int((ids == tids).sum())
    grid = "adaptive" if warp else "uniform"
    return [
        dict(
            module=f"sampler:{sampler}",
            max_abs_diff=_diff(z0, tz0.numpy()),
            scale=float(np.abs(z0).max()),
            note=f"{steps} steps, {grid} grid, z0",
        ),
        dict(
            module=f"tokens:{sampler}",
            max_abs_diff=float(same != ids.size),
            scale=1.0,
            note=f"{same}/{ids.size} argmax tokens equal",
        ),
    ]


def format_rows(rows: list[dict]) -> list[str]:
    """One line per check, then the last line `max_abs_diff=<float>`."""
    lines = [
        f"{r['module']:<24} max_abs_diff={r['max_abs_diff']:.3e}  max_abs={r['scale']:.3g}"
        + (f"  ({r['note']})" if r["note"] else "")
        for r in rows
    ]
    worst = max((r["max_abs_diff"] for r in rows), default=0.0)
    return [*lines, f"max_abs_diff={worst:.6g}"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-export-torch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created; files overwritten)")
    parser.add_argument("--workdir", required=True, help="training workdir holding checkpoints/")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument(
        "--ema", action="store_true", help="export the EMA weights (default: the raw params)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="run every module in JAX and torch on the same inputs; print one line per module "
        "and max_abs_diff=<float>; exit 1 above --tolerance",
    )
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="for --verify")
    parser.add_argument("--verify-steps", type=int, default=4, help="sampler steps for --verify")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ldlm_jax.config import ConfigError
    from ldlm_jax.torch_export import TorchExportError, export_checkpoint

    try:
        meta, restored, frozen_lm = export_checkpoint(args.workdir, args.out, args.step, args.ema)
    except (TorchExportError, ConfigError, FileNotFoundError) as error:
        print(f"ldlm-export-torch: error: {error}", file=sys.stderr)
        return 2
    src = meta["source"]
    print(f"exported step {src['step']} ({src['weights']} weights) of {args.workdir} to {args.out}")
    if not args.verify:
        return 0
    import transformers

    transformers.utils.logging.disable_progress_bar()
    rows = verify(
        args.out,
        restored["config"],
        restored["params"],
        frozen_lm,
        restored.get("hidden_stats"),
        restored.get("adaptive_state"),
        sample_steps=args.verify_steps,
    )
    for line in format_rows(rows):
        print(line)
    worst = max(r["max_abs_diff"] for r in rows)
    if not worst <= args.tolerance:
        print(f"ldlm-export-torch: verify FAILED: {worst:.3e} > {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
