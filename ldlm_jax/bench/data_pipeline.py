"""Benchmark: data pipeline throughput (tokens/s) with 0 and 2 grain worker processes.

Defaults are the demo's settings: the embedded Bible, the MiniLM tokenizer, L=64, batch 32, pad
mode. Reports slots/s (batch x L positions, what the train step consumes) and real tokens/s
(mask = 1) after a warm-up; writes JSON with --out.

  python -m ldlm_jax.bench.data_pipeline --out /tmp/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--source", default="bible", help="data.source (bible, synthetic, ...)")
    parser.add_argument("--paths", default="", help="data.paths for text_files / prepared")
    parser.add_argument("--mode", default="pad", choices=("pad", "pack"))
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    parser.add_argument("--tokenizer", default="", help="HF tokenizer folder (default MiniLM)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def measure(config, tokenizer, batches: int, warmup: int) -> dict:
    """Time `batches` batches of the config's training iterator after `warmup` untimed ones.

    Returns worker_count, startup_s (iterator creation + warmup), batches, seconds (rounded) and
    elapsed_s (exact) of the timed batches, batches_per_s, tokens_per_s (B x L slots a second),
    real_tokens_per_s (mask = 1), fill (real / slots)."""
    from ldlm_jax import pipeline

    start = time.perf_counter()
    iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    for _ in range(warmup):
        next(iterator)
    ready = time.perf_counter()
    real = 0
    for _ in range(batches):
        real += int(next(iterator)["attention_mask"].sum())
    seconds = time.perf_counter() - ready
    if hasattr(iterator, "close"):
        iterator.close()
    slots = batches * config.train.batch_size * config.data.seq_len
    return {
        "worker_count": int(config.data.worker_count),
        "startup_s": round(ready - start, 3),
        "batches": batches,
        "seconds": round(seconds, 3),
        "elapsed_s": seconds,
        "batches_per_s": round(batches / seconds, 2),
        "tokens_per_s": round(slots / seconds),
        "real_tokens_per_s": round(real / seconds),
        "fill": round(real / slots, 3),
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import absl.flags

    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    from transformers import AutoTokenizer

    from ldlm_jax import frozen_lm
    from ldlm_jax.config import base_config

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or frozen_lm.minilm_path())
    config = base_config()
    config.data.source, config.data.paths, config.data.mode = args.source, args.paths, args.mode
    config.data.seq_len, config.train.batch_size = args.seq_len, args.batch_size
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        config.data.worker_count = workers
        row = measure(config, tokenizer, args.batches, args.warmup)
        results.append(row)
        print(
            f"workers={workers}: {row['tokens_per_s']:,} tokens/s ({row['real_tokens_per_s']:,} "
            f"real, fill {row['fill']}), {row['batches_per_s']} batches/s, "
            f"startup {row['startup_s']} s"
        )
    report = {
        "benchmark": "data_pipeline",
        "source": args.source,
        "mode": args.mode,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokenizer": args.tokenizer or "minilm",
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
