"""Frozen-LM forward throughput: our jitted Flax model vs transformers PyTorch (same CPU, weights).

    python -m ldlm_jax.bench.lm_forward --out lm_forward.json

Models: the real all-MiniLM-L6-v2 (hidden states) and a random GPT-2-small-shaped model (12 layers,
768 wide, vocab 50257, with LM-head logits). Inputs: batch 8 x 128 tokens (one row half padding).
The two sides are timed in turns (ldlm_jax.bench.timing.time_pair) after a warmup each; reports
the median tokens/s of --runs timed forwards and the flax/torch ratio. `python -m ldlm_jax.bench`
runs this as its lm_forward section.
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
    time_pair,
    torch_call,
    torch_device,
)


def make_inputs(vocab: int, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), int32 [batch, length] each; the last row is half padding."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, min(vocab, 30000), (batch, length), dtype=np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[-1, length // 2 :] = 0
    return ids, mask


def minilm_pair():
    """(our FrozenLM, transformers BertModel in eval mode) of the offline all-MiniLM-L6-v2."""
    import torch
    import transformers as tf

    from ldlm_jax.frozen_lm import load_frozen_lm, minilm_path

    lm = load_frozen_lm("minilm")
    ref = tf.AutoModel.from_pretrained(minilm_path(), dtype=torch.float32).eval()
    return lm, ref.to(torch_device())


def gpt2_pair(seed: int = 0, **config):
    """(our FrozenLM, transformers GPT2LMHeadModel) of one random GPT-2, same weights.

    config: GPT2Config fields (default: GPT-2 small, 12 x 768, vocab 50257, 1024 positions). The
    torch model is saved to a temporary folder and read back by our converter; the MiniLM
    tokenizer stands in (any tokenizer no larger than the vocab will do)."""
    import torch
    import transformers as tf

    from ldlm_jax.frozen_lm import load_frozen_lm, minilm_path

    torch.manual_seed(seed)
    ref = tf.GPT2LMHeadModel(tf.GPT2Config(**config)).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        tok = tf.AutoTokenizer.from_pretrained(minilm_path())
        lm = load_frozen_lm(folder, tokenizer=tok)
    return lm, ref.to(torch_device())


def bench_model(name: str, lm, torch_model, batch: int, length: int, runs: int) -> dict:
    """Time lm.apply (jitted) and torch_model.forward on the same ids/mask, in turns.

    Returns {'model', 'batch', 'length', 'tokens', 'flax_seconds', 'torch_seconds' (lists),
    'flax_tokens_per_s', 'torch_tokens_per_s', 'flax_over_torch'} (rates from the medians)."""
    import jax
    import torch

    ids, mask = make_inputs(lm.vocab_size, batch, length)
    fwd = jax.jit(lm.apply)
    dev = torch_device()
    t_ids = torch.from_numpy(ids).long().to(dev)
    t_mask = torch.from_numpy(mask).long().to(dev)

    def torch_forward():
        return torch_model(input_ids=t_ids, attention_mask=t_mask)

    flax_s, torch_s = time_pair(
        jax_call(fwd, lm.params, ids, mask), torch_call(torch_forward), runs
    )
    tokens = batch * length
    return {
        "model": name,
        "batch": batch,
        "length": length,
        "tokens": tokens,
        "flax_seconds": flax_s,
        "torch_seconds": torch_s,
        "flax_tokens_per_s": tokens / median(flax_s),
        "torch_tokens_per_s": tokens / median(torch_s),
        "flax_over_torch": median(torch_s) / median(flax_s),
    }


def build(name: str):
    """'minilm' | 'gpt2_small' -> (our FrozenLM, the transformers model)."""
    if name == "minilm":
        return minilm_pair()
    if name == "gpt2_small":
        return gpt2_pair()
    raise ValueError(f"unknown model {name!r}: choose minilm or gpt2_small")


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

    threads, _ = pick_torch_threads()  # torch's faster thread count here, now
    rows = []
    for name in args.models.split(","):
        lm, ref = build(name)
        row = bench_model(name, lm, ref, args.batch, args.length, args.runs)
        rows.append(row)
        print(
            f"{name:12s} flax {row['flax_tokens_per_s']:9.0f} tok/s   torch "
            f"{row['torch_tokens_per_s']:9.0f} tok/s   flax/torch {row['flax_over_torch']:.2f}"
        )
    result = {
        "benchmark": "frozen LM forward, tokens/s (median)",
        "command": "python -m ldlm_jax.bench.lm_forward " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": threads,
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
