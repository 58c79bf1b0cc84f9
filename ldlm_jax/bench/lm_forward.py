"""Frozen-LM forward throughput: our jitted Flax model vs transformers PyTorch (same CPU, weights).

    python -m ldlm_jax.bench.lm_forward --out lm_forward.json

Models: the real all-MiniLM-L6-v2 (hidden states) and a random GPT-2-small-shaped model (12 layers,
768 wide, vocab 50257, with LM-head logits). Inputs: batch 8 x 128 tokens (one row half padding).
Reports the median tokens/s of --runs timed forwards after a warmup, and flax/torch ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def _median_seconds(fn, runs: int) -> float:
    fn()  # warmup (and compile, for JAX)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(vocab: int, batch: int, length: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, min(vocab, 30000), (batch, length), dtype=np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[-1, length // 2 :] = 0
    return ids, mask


def bench_model(name: str, lm, torch_model, batch: int, length: int, runs: int) -> dict:
    """Time lm.apply (jitted) and torch_model.forward on the same ids/mask."""
    import jax
    import torch

    ids, mask = _inputs(lm.vocab_size, batch, length)
    fwd = jax.jit(lm.apply)

    def run_flax():
        out = fwd(lm.params, ids, mask)
        jax.block_until_ready(out)

    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def run_torch():
        with torch.inference_mode():
            torch_model(input_ids=t_ids, attention_mask=t_mask)

    tokens = batch * length
    flax_s, torch_s = _median_seconds(run_flax, runs), _median_seconds(run_torch, runs)
    row = {
        "model": name,
        "batch": batch,
        "length": length,
        "flax_tokens_per_s": tokens / flax_s,
        "torch_tokens_per_s": tokens / torch_s,
        "flax_over_torch": torch_s / flax_s,
    }
    print(
        f"{name:12s} flax {row['flax_tokens_per_s']:9.0f} tok/s   torch "
        f"{row['torch_tokens_per_s']:9.0f} tok/s   ratio flax/torch {row['flax_over_torch']:.2f}"
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="lm_forward.json", help="JSON results file")
    p.add_argument("--runs", type=int, default=5, help="timed forwards per model (median)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--models", default="minilm,gpt2_small", help="comma-separated subset")
    args = p.parse_args(argv)

    import jax
    import torch
    import transformers as tf

    from ldlm_jax.frozen_lm import load_frozen_lm, minilm_path

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    wanted = args.models.split(",")
    if "minilm" in wanted:
        lm = load_frozen_lm("minilm")
        ref = tf.AutoModel.from_pretrained(minilm_path(), dtype=torch.float32).eval()
        rows.append(bench_model("minilm", lm, ref, args.batch, args.length, args.runs))
    if "gpt2_small" in wanted:
        torch.manual_seed(0)
        ref = tf.GPT2LMHeadModel(tf.GPT2Config()).eval()  # 12 layers, 768, vocab 50257
        with tempfile.TemporaryDirectory() as folder:
            ref.save_pretrained(folder)
            tok = tf.AutoTokenizer.from_pretrained(minilm_path())  # any tokenizer <= vocab
            lm = load_frozen_lm(folder, tokenizer=tok)
        rows.append(bench_model("gpt2_small", lm, ref, args.batch, args.length, args.runs))
    result = {
        "benchmark": "frozen LM forward, tokens/s (median)",
        "command": "python -m ldlm_jax.bench.lm_forward " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "jax_devices": [str(d) for d in jax.devices()],
        },
        "runs": args.runs,
        "results": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
