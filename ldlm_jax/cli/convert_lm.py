"""ldlm-convert-lm: convert a pretrained HF LM (GPT-2, BERT/MiniLM, Llama family) to ldlm_jax.

    ldlm-convert-lm SRC OUT            # orbax params + config.json + tokenizer files into OUT
    ldlm-convert-lm SRC --verify       # our Flax model vs transformers PyTorch on real sentences
    ldlm-convert-lm minilm OUT --verify

SRC: 'minilm' (offline all-MiniLM-L6-v2), a local HF folder, or a hub name (needs internet). OUT
then loads with ldlm_jax.frozen_lm.load_frozen_lm(OUT) with neither torch nor the hub. --verify
prints one line per compared tensor (each hidden state, the logits), then `max_abs_diff=<float>`,
and exits 1 if that exceeds --tolerance (non-pad positions only; needs torch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "Hello!",
    "Latent diffusion language models generate text by denoising continuous latent vectors "
    "that a jointly trained encoder produces from a frozen language model's hidden states.",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldlm-convert-lm",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="'minilm', a local HF model folder, or a hub name like 'gpt2'")
    p.add_argument("out", nargs="?", help="output folder (optional with --verify)")
    p.add_argument("--verify", action="store_true", help="compare with transformers PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| for --verify")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _torch_reference(lm, folder: str):
    """The transformers PyTorch model with the same weights: from the HF folder when SRC is one,
    else (an ldlm-convert-lm folder) from our own HF export of the params."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from ldlm_jax.frozen_lm import MARKER
    from ldlm_jax.lm_conversion import export_hf

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if os.path.exists(os.path.join(folder, MARKER)):
        folder = export_hf(lm.params, lm.hf_config, tempfile.mkdtemp(prefix="ldlm_verify_"))
        print(f"note: {MARKER} folder; comparing against our own HF export in {folder}")
    cls = AutoModel if lm.arch == "bert" else AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def verify(lm, folder: str, tolerance: float) -> tuple[float, bool]:
    """Run both models on the padded SENTENCES batch; print per-tensor diffs; (max diff, ok)."""
    import jax
    import torch

    batch = lm.tokenizer(
        SENTENCES, padding=True, truncation=True, max_length=lm.max_positions, return_tensors="np"
    )
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    ours = jax.jit(lm.apply)(lm.params, ids, mask)
    ref_model = _torch_reference(lm, folder)
    with torch.no_grad():
        ref = ref_model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
    real = mask.astype(bool)
    pairs = [
        (f"hidden_states[{i}]", a, b)
        for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states, strict=True))
    ]
    if ours.logits is not None:
        pairs.append(("logits", ours.logits, ref.logits))
    worst = 0.0
    for name, a, b in pairs:
        a, b = np.asarray(a, np.float32)[real], b.float().numpy()[real]
        diff = float(np.abs(a - b).max())
        worst = max(worst, diff)
        scale = float(np.abs(b).max())
        print(f"{name:18s} shape={tuple(a.shape)} max_abs_diff={diff:.3e} max_abs={scale:.3e}")
    print(f"max_abs_diff={worst:.6e}")
    return worst, worst <= tolerance


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out and not args.verify:
        print("error: give an output folder OUT, or --verify", file=sys.stderr)
        return 2
    from ldlm_jax.frozen_lm import load_frozen_lm, resolve_source, save_converted
    from ldlm_jax.lm_conversion import ConversionError

    try:
        folder = resolve_source(args.src)
        lm = load_frozen_lm(folder, "float32", progress=not args.quiet)
    except (ConversionError, ValueError, FileNotFoundError, RuntimeError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_params = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(lm.params))
    print(
        f"loaded {args.src}: arch={lm.arch} layers={lm.num_layers} hidden={lm.hidden_size} "
        f"vocab={lm.vocab_size} params={n_params:,}"
    )
    if args.out:
        save_converted(lm, args.out, source=args.src)
        print(f"wrote {os.path.abspath(args.out)} (load with load_frozen_lm({args.out!r}))")
    if args.verify:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("error: --verify needs torch: pip install torch==2.13.0", file=sys.stderr)
            return 2
        worst, ok = verify(lm, folder, args.tolerance)
        if not ok:
            print(f"error: max_abs_diff {worst:.3e} > tolerance {args.tolerance}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
