"""ldlm-eval: sample quality of a trained LDLM checkpoint.

Example:
  ldlm-eval --workdir runs/owt --scorer ~/gpt2-large --num 256 --steps 10,50,200
  ldlm-eval --workdir runs/demo --num 32 --steps 10,50   # no scorer: entropy + reconstruction

For every step count it samples --num texts and reports the generative perplexity under the scorer
(GPT-2 Large, a local HF folder or an ldlm-convert-lm folder: it is never downloaded) together with
the mean per-sample unigram entropy of the generated ids (nats), so the two are read as a
quality-diversity frontier. It also reports the autoencoder's reconstruction accuracy on held-out
text and, with --mauve and the optional mauve-text package, MAUVE against held-out text on the
scorer's features. Writes WORKDIR/eval.json, WORKDIR/frontier.png and the samples of each step
count (WORKDIR/eval_samples_<steps>.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ldlm_jax.cli.sample import (
    add_sampling_args,
    check_settings,
    sampling_settings,
    use_cpu_devices,
)


def parse_steps(text: str) -> list[int]:
    """'10,50,200' -> [10, 50, 200]; ValueError for non-integers or values < 1."""
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"--steps takes comma-separated integers like 10,50,200, got {text!r}"
        ) from None
    if not steps:
        raise ValueError("--steps is empty: give e.g. 10,50,200")
    bad = [s for s in steps if s < 1]
    if bad:
        raise ValueError(f"steps must be >= 1, got {bad[0]} in --steps {text!r}")
    return sorted(set(steps))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="training workdir with a checkpoint")
    parser.add_argument(
        "--scorer",
        default=None,
        help="GPT-2 Large as a local HF folder or an ldlm-convert-lm folder; needed for gen PPL "
        "and MAUVE (without it only entropy and reconstruction are reported)",
    )
    parser.add_argument("--num", type=int, default=64, help="samples per step count (default 64)")
    parser.add_argument(
        "--steps", default="10,50,200", help="comma-separated step counts (default 10,50,200)"
    )
    parser.add_argument("--mauve", action="store_true", help="also MAUVE (needs mauve-text)")
    parser.add_argument(
        "--heldout-batches",
        type=int,
        default=4,
        help="held-out batches for reconstruction accuracy and MAUVE references (default 4)",
    )
    parser.add_argument(
        "--scorer-batch-size", type=int, default=8, help="rows per scorer call (default 8)"
    )
    parser.add_argument(
        "--context", type=int, default=1024, help="scorer context in tokens (default 1024)"
    )
    parser.add_argument("--out", default=None, help="output JSON (default WORKDIR/eval.json)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    add_sampling_args(parser)
    return parser


def heldout_batches(gen, count: int) -> list[dict]:
    """Up to `count` held-out batches {'input_ids', 'attention_mask'} [B, L] (numpy)."""
    import numpy as np

    try:
        from ldlm_jax import train_feed

        iterator = train_feed.make_eval_iterator(gen.config, gen.tokenizer, 0, 1)
    except (ImportError, OSError, ValueError) as error:
        print(f"ldlm-eval: no held-out data ({type(error).__name__}: {error})", file=sys.stderr)
        return []
    out = []
    for batch in iterator or ():
        out.append({k: np.asarray(batch[k]) for k in ("input_ids", "attention_mask")})
        if len(out) >= count:
            break
    return out


def batches_to_texts(gen, batches) -> list[str]:
    tok, texts = gen.tokenizer, []
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
            texts.append(
                tok.decode(
                    [int(i) for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True
                )
            )
    return [t for t in texts if t.strip()]


def content_ids(ids, special: set[int]) -> list[int]:
    """Generated ids without special tokens ([CLS], [PAD], ...) for the entropy."""
    return [i for i in ids if i not in special]


def run(args) -> dict:
    from ldlm_jax import evaluation, generation

    steps_list = parse_steps(args.steps)
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    use_cpu_devices(args, "ldlm-eval")  # before check_workdir: orbax starts JAX
    generation.check_workdir(args.workdir)
    if args.scorer is not None and not os.path.exists(args.scorer):
        raise FileNotFoundError(
            f"--scorer {args.scorer!r} does not exist: give a local GPT-2 Large HF folder or an "
            "ldlm-convert-lm folder (e.g. ldlm-convert-lm --source gpt2-large --out DIR)"
        )
    mauve_note = None
    if args.mauve and not evaluation.mauve_available():
        mauve_note = "skipped: pip install mauve-text to compute MAUVE (optional dependency)"
        print(f"ldlm-eval: MAUVE {mauve_note}", file=sys.stderr)
    elif args.mauve and args.scorer is None:
        mauve_note = "skipped: MAUVE needs --scorer (GPT-2 Large features)"
        print(f"ldlm-eval: {mauve_note}", file=sys.stderr)
    config = generation.read_config(args.workdir)
    settings = sampling_settings(argparse.Namespace(**{**vars(args), "steps": None}), config)
    settings["steps"] = steps_list
    check_settings(settings)
    if args.scorer is None:
        print(
            "ldlm-eval: no --scorer given: gen PPL needs a converted scorer (GPT-2 Large: "
            "ldlm-convert-lm, then --scorer DIR); reporting entropy and reconstruction only",
            file=sys.stderr,
        )

    gen = generation.load_generator(args.workdir, raw_weights=not settings["use_ema"])
    heldout = heldout_batches(gen, args.heldout_batches)
    reference = batches_to_texts(gen, heldout)
    scorer = evaluation.load_scorer(args.scorer) if args.scorer else None
    if scorer is not None:  # fail on a tokenizer mismatch before sampling compiles anything
        for i, text in enumerate(reference[:8]):
            scorer.encode(text, i)

    special = set(int(i) for i in gen.tokenizer.all_special_ids)
    points, by_steps = [], {}
    sample_kw = {k: v for k, v in settings.items() if k not in ("steps", "use_ema")}
    for steps in steps_list:
        start = time.perf_counter()
        samples = generation.generate(
            gen, num=args.num, steps=steps, progress=not args.no_progress, **sample_kw
        )
        seconds = time.perf_counter() - start
        generation.write_samples(samples, os.path.join(args.workdir, f"eval_samples_{steps}.jsonl"))
        texts = [s["text"] for s in samples]
        point = {
            "steps": steps,
            "entropy": evaluation.mean_unigram_entropy(
                [content_ids(s["token_ids"], special) for s in samples]
            ),
            "gen_ppl": None,
            "num_samples": len(samples),
            "sampling_seconds": seconds,
        }
        if scorer is not None:
            ppl = evaluation.generative_perplexity(
                texts, scorer, batch_size=args.scorer_batch_size, context=args.context
            )
            point.update(gen_ppl=ppl["gen_ppl"], scored_tokens=ppl["scored_tokens"])
        points.append(point)
        by_steps[steps] = texts
        print(f"steps {steps}: gen PPL {point['gen_ppl']}, entropy {point['entropy']:.4f} nats")

    result = {
        "workdir": args.workdir,
        "checkpoint_step": gen.step,
        "weights": gen.weights,
        "sampler": {k: v for k, v in settings.items() if k != "use_ema"},
        "num_samples": args.num,
        "scorer": args.scorer,
        "entropy_base": "nats (natural log), mean over samples of per-sample unigram entropy",
        "frontier": points,
    }
    if heldout:
        recon = evaluation.reconstruction_accuracy(
            gen.ldlm, gen.params, gen.frozen_params, gen.hidden_stats, heldout, gen.mesh
        )
        result["reconstruction_accuracy"] = recon["reconstruction_accuracy"]
        result["reconstruction_tokens"] = recon["tokens"]
    else:
        result["reconstruction_accuracy"] = None
        result["reconstruction_note"] = "no held-out data for this config"
    if args.mauve:
        if mauve_note is None and reference:
            result["mauve"] = evaluation.mauve_score(
                by_steps[steps_list[-1]], reference, scorer, batch_size=args.scorer_batch_size
            )
            result["mauve_steps"] = steps_list[-1]
        else:
            result["mauve"] = None
            result["mauve_note"] = mauve_note or "skipped: no held-out reference text"
    png = os.path.join(args.workdir, "frontier.png")
    evaluation.write_frontier([p for p in points], os.path.join(args.workdir, "frontier.json"), png)
    result["frontier_png"] = png
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ldlm_jax.evaluation import ScorerError
    from ldlm_jax.generation import GenerationError

    try:
        result = run(args)
    except (ValueError, FileNotFoundError, GenerationError, ScorerError) as error:
        print(f"ldlm-eval: error: {error}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.workdir, "eval.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
