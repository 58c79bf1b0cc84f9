"""ldlm-ablation: the small-scale ablation of LDLM's recipe (issue 9), end to end, resumable.

  ldlm-ablation --workdir bench_results/ablation --budget 120 --seeds 0 --num-samples 64
  ldlm-ablation --workdir /tmp/abl --config configs/tiny.py:random_lm --budget 4 --arms full

Arms (ARMS): the full recipe; each of its four parts removed in turn (a cross-entropy decoder
loss instead of the hidden-state MSE, no gamma warmup, uniform t instead of adaptive timesteps,
sigma_dec = 0); naive joint training (all four removed); and an autoregressive GPT-2 baseline of
about the LDLM's trainable size (ldlm_jax/autoregressive.py) trained on the same batches. Every
arm gets the same token budget (--budget steps, or --budget-unit tokens: padded positions,
train.batch_size * data.seq_len per step) and, per seed, exactly the same batches in the same order.

Budget-scaled settings (explicit, so that "no warmup" means something at a small budget): the
gamma warmup lasts --warmup-fraction of the steps (default 0.5: configs/demo.py's 2000 of 4000),
the learning-rate warmup --lr-warmup-fraction (0.05: the demo's 200 of 4000), and the weight EMA
averages over --ema-fraction of the steps (0.25: decay 1 - 1 / (0.25 * steps), the demo's 0.999
at 4000 steps; the EMA has no bias correction, so a fixed 0.999 would leave a short run's EMA
weights near their initialisation).

Metrics (as ldlm-eval computes them): reconstruction accuracy on held-out verses, and, over
--sampler-steps, generative perplexity with mean unigram entropy (nats) of --num-samples samples
(a sample whose retokenisation holds [UNK] is scored with it, and counted). The scorer is
an autoregressive LM trained first, on the training split (GPT-2 Large is not available offline):
texts without special tokens, as the scorer sees them, for --scorer-steps (default 2x the budget).
Held-out verses give a reference row (their PPL under the scorer, their entropy).

Outputs in --workdir: study.json (the settings; a rerun with other settings is refused),
scorer/, runs/ARM/seedS/ (an LDLM trainer workdir with eval samples, or the AR model) with its
result.json, and results.json, results.md and frontier.png. An arm with a result.json is skipped;
an interrupted LDLM arm resumes from its last checkpoint (the trainer's auto-resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ldlm_jax.ablation_arms import (
    ARMS,
    Study,
    StudyError,
    arm_config,
    base_config,
    budget_steps,
    heldout,
    read_json,
    run_ar_arm,
    run_ldlm_arm,
    scaled_overrides,
    special_ids,
    text_metrics,
    write_json,
)

log = logging.getLogger("ldlm-ablation")


# ----------------------------------------------------------------------------- the study


def train_scorer(study: Study, steps: int) -> str:
    """Train (once) the AR scorer on the training split, texts without special tokens."""
    from ldlm_jax import autoregressive as ar
    from ldlm_jax.config import apply_overrides, validate_config
    from ldlm_jax.frozen_lm import frozen_lm_from_config

    folder = os.path.join(study.workdir, "scorer")
    if os.path.exists(os.path.join(folder, "scorer.json")):
        return os.path.join(folder, "model")
    config = base_config(study)
    apply_overrides(
        config,
        [
            *scaled_overrides(steps, study),
            f"train.seed={study.scorer_seed}",
            "data.add_special_tokens=False",
        ],
    )
    validate_config(config)
    tokenizer = frozen_lm_from_config(config).tokenizer
    model = ar.init_autoregressive(tokenizer, *study.scorer_size, seed=study.scorer_seed)
    log.info(
        "scorer: GPT-2 %s, %d parameters, %d steps",
        study.scorer_size,
        ar.parameter_count(model.params),
        steps,
    )
    train = ar.train_autoregressive(config, model, progress=study.progress)
    model.save(os.path.join(folder, "model"))
    held = ar.heldout_nll(model, heldout(config, tokenizer, study.heldout_batches))
    info = {
        "size": study.scorer_size,
        "params": ar.parameter_count(model.params),
        "train": train,
        "heldout_teacher_forced": held,
    }
    write_json(os.path.join(folder, "scorer.json"), info)
    return os.path.join(folder, "model")


def reference_row(study: Study, scorer) -> dict:
    """Held-out verses (the reconstruction set) under the scorer: the target PPL / entropy."""
    from ldlm_jax.frozen_lm import frozen_lm_from_config

    path = os.path.join(study.workdir, "reference.json")
    if os.path.exists(path):
        return read_json(path)
    config = arm_config(study, ARMS["full"], 0)
    tokenizer = frozen_lm_from_config(config).tokenizer
    texts, rows = [], []
    for b in heldout(config, tokenizer, study.heldout_batches):
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
            row = [int(i) for i, m in zip(ids, mask, strict=True) if m]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
            rows.append(row)
    out = text_metrics(texts, rows, scorer, special_ids(tokenizer))
    write_json(path, out)
    return out


def _check_workdir(study: Study) -> None:
    path = os.path.join(study.workdir, "study.json")
    if os.path.exists(path):
        saved = read_json(path)
        diff = {k: (saved.get(k), v) for k, v in study.fingerprint().items() if saved.get(k) != v}
        if diff:
            raise StudyError(
                f"{study.workdir} holds a study with other settings ({diff}, as saved vs now): "
                "rerun with the same flags to resume, or use a fresh --workdir"
            )
    else:
        write_json(path, study.fingerprint())


def run_study(study: Study) -> dict:
    """Run every (arm, seed) not yet done, then write results.json / results.md / frontier.png."""
    from ldlm_jax import ablation_report, evaluation

    unknown = [a for a in study.arms if a not in ARMS]
    if unknown:
        raise StudyError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    # The sampling settings are only used after the scorer and an arm have trained: check now.
    if not study.sampler_steps or min(study.sampler_steps) < 1:
        raise StudyError(f"--sampler-steps must be >= 1 each, got {list(study.sampler_steps)}")
    if study.num_samples < 1:
        raise StudyError(f"--num-samples must be >= 1, got {study.num_samples}")
    if not study.seeds:
        raise StudyError("--seeds is empty; give at least one, e.g. --seeds 0")
    config = base_config(study)
    steps = budget_steps(config, study)
    _check_workdir(study)
    scorer_path = study.scorer
    if not scorer_path:
        scorer_path = os.path.join(study.workdir, "scorer", "model")
        if not os.path.exists(os.path.join(study.workdir, "scorer", "scorer.json")):
            train_scorer(study, study.scorer_steps or 2 * steps)
    scorer = evaluation.load_scorer(scorer_path)
    reference = reference_row(study, scorer)
    plan = [(ARMS[a], s) for a in study.arms for s in study.seeds]
    bar = plan
    if study.progress:
        from tqdm import tqdm

        bar = tqdm(plan, desc="ablation arms", unit="arm")
    results = {}
    for arm, seed in bar:
        folder = os.path.join(study.workdir, "runs", arm.name, f"seed{seed}")
        path = os.path.join(folder, "result.json")
        if os.path.exists(path):
            log.info("arm %s seed %d: done already (%s), skipped", arm.name, seed, path)
        else:
            log.info("arm %s seed %d: %s", arm.name, seed, arm.description)
            if arm.kind == "ldlm":
                out = run_ldlm_arm(study, arm, seed, folder, scorer)
            else:
                out = run_ar_arm(study, arm, seed, folder, scorer)
            write_json(path, {"arm": arm.name, "seed": seed, "kind": arm.kind, **out})
        results.setdefault(arm.name, {})[str(seed)] = read_json(path)
    scorer_info_path = os.path.join(os.path.dirname(scorer_path), "scorer.json")
    summary = {
        "study": study.fingerprint() | {"seeds": list(study.seeds), "arms": list(study.arms)},
        "steps_per_arm": steps,
        "tokens_per_arm": steps * int(config.train.batch_size) * int(config.data.seq_len),
        "scorer": scorer_path,
        "scorer_info": read_json(scorer_info_path) if os.path.exists(scorer_info_path) else None,
        "reference": reference,
        "arms": results,
        "descriptions": {a: ARMS[a].description for a in study.arms},
    }
    write_json(os.path.join(study.workdir, "results.json"), summary)
    ablation_report.write_markdown(summary, os.path.join(study.workdir, "results.md"))
    ablation_report.plot(summary, os.path.join(study.workdir, "frontier.png"))
    return summary


# ----------------------------------------------------------------------------- CLI


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _names(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in ARMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown arm(s) {bad or text!r}; choose from {list(ARMS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldlm-ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Study(workdir="")
    add = p.add_argument
    add("--workdir", required=True, help="where the study lives (resumed if it exists)")
    add(
        "--config",
        default=d.config,
        help=f"base config (default {d.config}); --config.KEY=VALUE overrides apply to every arm",
    )
    add("--budget", type=int, default=d.budget, help=f"per arm (default {d.budget})")
    add("--budget-unit", choices=("steps", "tokens"), default=d.budget_unit)
    add("--seeds", type=_ints, default=d.seeds, help="comma-separated seeds (default 0)")
    add("--arms", type=_names, default=d.arms, help=f"subset of {','.join(ARMS)} (default all)")
    add(
        "--sampler-steps",
        type=_ints,
        default=d.sampler_steps,
        help="frontier step counts (default 10,30,100)",
    )
    add("--num-samples", type=int, default=d.num_samples, help="samples per point (default 64)")
    add(
        "--heldout-batches",
        type=int,
        default=d.heldout_batches,
        help="held-out batches for reconstruction and the reference row (default 4)",
    )
    for name, help_text in (
        ("warmup", "gamma warmup"),
        ("lr-warmup", "learning-rate warmup"),
        ("ema", "weight-EMA horizon"),
    ):
        key = name.replace("-", "_") + "_fraction"
        add(
            f"--{name}-fraction",
            type=float,
            default=getattr(d, key),
            help=f"{help_text} as a fraction of the steps (default {getattr(d, key)})",
        )
    add(
        "--ar-size",
        type=_ints,
        default=d.ar_size,
        help="AR baseline width,layers,heads "
        "(default 160,6,5: ~6.8M parameters, the demo LDLM has ~6.6M trainable)",
    )
    add("--scorer", default=d.scorer, help="use this scorer folder instead of training one")
    add("--scorer-size", type=_ints, default=d.scorer_size, help="scorer width,layers,heads")
    add("--scorer-steps", type=int, default=d.scorer_steps, help="0 = 2x the budget's steps")
    add("--scorer-seed", type=int, default=d.scorer_seed)
    add("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    from ldlm_jax.cli.train import _setup_logging, split_overrides

    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    for name in ("ar_size", "scorer_size"):
        if len(getattr(args, name)) != 3:
            print(
                f"ldlm-ablation: error: --{name.replace('_', '-')} takes width,layers,heads",
                file=sys.stderr,
            )
            return 2
    study = Study(
        workdir=os.path.abspath(args.workdir),
        config=args.config,
        overrides=tuple(overrides),
        budget=args.budget,
        budget_unit=args.budget_unit,
        seeds=args.seeds,
        arms=args.arms,
        sampler_steps=tuple(sorted(set(args.sampler_steps))),
        num_samples=args.num_samples,
        heldout_batches=args.heldout_batches,
        warmup_fraction=args.warmup_fraction,
        lr_warmup_fraction=args.lr_warmup_fraction,
        ema_fraction=args.ema_fraction,
        ar_size=args.ar_size,
        scorer=args.scorer,
        scorer_size=args.scorer_size,
        scorer_steps=args.scorer_steps,
        scorer_seed=args.scorer_seed,
        progress=not args.no_progress,
    )
    _setup_logging("INFO")
    import jax

    if not jax.config.jax_compilation_cache_dir:  # the arms share most compiled programs
        jax.config.update("jax_compilation_cache_dir", os.path.join(study.workdir, ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from ldlm_jax.config import ConfigError

    try:
        summary = run_study(study)
    except (StudyError, ConfigError, FileNotFoundError) as error:
        print(f"ldlm-ablation: error: {error}", file=sys.stderr)
        return 2
    with open(os.path.join(study.workdir, "results.md")) as f:
        print(f.read())
    log.info(
        "wrote %s/results.{json,md} and frontier.png (%d arms)", study.workdir, len(summary["arms"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
