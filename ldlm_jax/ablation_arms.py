"""The ablation study's arms and their runs (driven by ldlm_jax/ablation.py, ldlm-ablation).

ARMS maps each arm to its config switches (the full recipe is made explicit, then one part, or
all four for 'naive', switched off); arm_config adds the budget-scaled schedule settings and the
seed to the base config. run_ldlm_arm trains an LDLM arm with trainer.train (auto-resume) and
evaluates it with ldlm-eval's parts (generation.generate, evaluation.*); run_ar_arm trains the
autoregressive baseline on the same batches, samples and scores it. Each writes its train.json
as soon as training ends, so a rerun only evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

log = logging.getLogger("ldlm-ablation")

RECIPE_KEYS = ("decoder_loss", "gamma_warmup", "timestep_sampler", "decoder_noise")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: kind 'ldlm' (trained by trainer.train) or 'autoregressive'; switches: config
    overrides on top of the base config (the full recipe, made explicit)."""

    name: str
    kind: str
    switches: tuple[tuple[str, object], ...]
    description: str


FULL = (
    ("recipe.decoder_loss", "mse"),
    ("recipe.gamma_warmup", True),
    ("recipe.timestep_sampler", "adaptive"),
)
NO_CE = ("recipe.decoder_loss", "ce")
NO_WARMUP = ("recipe.gamma_warmup", False)
NO_ADAPTIVE = ("recipe.timestep_sampler", "uniform")
NO_NOISE = ("recipe.decoder_noise", 0.0)


def _arm(name, switches, description, kind="ldlm") -> Arm:
    merged = dict(FULL)
    merged.update(switches)
    return Arm(name, kind, tuple(merged.items()) if kind == "ldlm" else (), description)


ARMS = {
    a.name: a
    for a in (
        _arm("full", [], "the full recipe (the base config's sigma_dec)"),
        _arm("ce_decoder_loss", [NO_CE], "token CE as the decoder loss instead of hidden MSE"),
        _arm("no_warmup", [NO_WARMUP], "gamma = 1 from step 0"),
        _arm("uniform_t", [NO_ADAPTIVE], "t ~ U(0, 1) instead of adaptive timesteps"),
        _arm("no_decoder_noise", [NO_NOISE], "sigma_dec = 0"),
        _arm("naive", [NO_CE, NO_WARMUP, NO_ADAPTIVE, NO_NOISE], "all four parts removed"),
        _arm("autoregressive", [], "GPT-2 baseline, same batches", kind="autoregressive"),
    )
}


@dataclasses.dataclass
class Study:
    """The study's settings (study.json); see build_parser for each one."""

    workdir: str
    config: str = "configs/demo.py"
    overrides: tuple[str, ...] = ()
    budget: int = 120  # what fits ~70 min for all seven arms on 2 shared CPU cores
    budget_unit: str = "steps"
    seeds: tuple[int, ...] = (0,)
    arms: tuple[str, ...] = tuple(ARMS)
    sampler_steps: tuple[int, ...] = (10, 30, 100)
    num_samples: int = 64
    heldout_batches: int = 4
    warmup_fraction: float = 0.5
    lr_warmup_fraction: float = 0.05
    ema_fraction: float = 0.25
    ar_size: tuple[int, int, int] = (160, 6, 5)  # width, layers, heads
    scorer: str = ""  # an existing scorer folder; '' = train one in WORKDIR/scorer
    scorer_size: tuple[int, int, int] = (160, 6, 5)
    scorer_steps: int = 0  # 0 = 2x the budget's steps
    scorer_seed: int = 1000
    progress: bool = True

    def fingerprint(self) -> dict:
        """The settings a result depends on (a rerun must match them)."""
        out = dataclasses.asdict(self)
        for key in ("workdir", "seeds", "arms", "progress"):
            out.pop(key)
        return json.loads(json.dumps(out))


class StudyError(ValueError):
    """Bad study settings (unknown arm, a workdir holding another study, ...)."""


# ----------------------------------------------------------------------------- configs


def base_config(study: Study):
    """The base config (--config plus the --config.KEY=VALUE overrides), locked."""
    from ldlm_jax.cli.train import resolve_config_path
    from ldlm_jax.config import load_config

    return load_config(resolve_config_path(study.config), study.overrides)


def budget_steps(config, study: Study) -> int:
    """--budget in optimizer steps: tokens are padded positions, batch_size * seq_len a step."""
    if study.budget < 1:
        raise StudyError(f"--budget must be >= 1, got {study.budget}")
    if study.budget_unit == "steps":
        return int(study.budget)
    if study.budget_unit == "tokens":
        per_step = int(config.train.batch_size) * int(config.data.seq_len)
        return max(1, math.ceil(study.budget / per_step))
    raise StudyError(f"--budget-unit must be 'steps' or 'tokens', got {study.budget_unit!r}")


def scaled_overrides(steps: int, study: Study) -> list[str]:
    """The budget-scaled settings (see ldlm_jax/ablation.py's docstring) as key=value strings."""
    ema_horizon = max(study.ema_fraction * steps, 1.0)
    return [
        f"train.steps={steps}",
        f"recipe.gamma_warmup_steps={max(1, round(study.warmup_fraction * steps))}",
        f"train.lr_warmup_steps={max(1, round(study.lr_warmup_fraction * steps))}",
        f"train.ema_decay={1.0 - 1.0 / ema_horizon if ema_horizon > 1 else 0.0}",
        "train.eval_every=0",  # the study evaluates each arm itself, after training
        f"train.log_every={max(1, steps // 20)}",
        f"checkpoint.every={max(1, steps // 4)}",
        f"train.progress_bar={study.progress}",
    ]


def arm_config(study: Study, arm: Arm, seed: int):
    """The locked config one arm trains with: base, budget-scaled settings, seed, switches."""
    from ldlm_jax.config import apply_overrides, set_key, validate_config

    config = base_config(study)
    if arm.name == "full" and config.recipe.decoder_noise <= 0:
        raise StudyError("the base config has recipe.decoder_noise=0: the full arm needs > 0")
    apply_overrides(
        config, [*scaled_overrides(budget_steps(config, study), study), f"train.seed={seed}"]
    )
    for key, value in arm.switches:
        set_key(config, key, value)
    validate_config(config)
    return config


def recipe_of(config) -> dict:
    out = {k: config.recipe[k] for k in RECIPE_KEYS}
    out["gamma_warmup_steps"] = int(config.recipe.gamma_warmup_steps)
    return out


# ----------------------------------------------------------------------------- helpers


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)  # a result file is complete or absent


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def special_ids(tokenizer) -> set[int]:
    return {int(i) for i in tokenizer.all_special_ids}


def heldout(config, tokenizer, count: int) -> list[dict]:
    """The first `count` held-out (validation) batches, numpy int32 [B, L]."""
    import numpy as np

    from ldlm_jax import pipeline

    iterator = pipeline.make_eval_iterator(config, tokenizer, process_index=0, process_count=1)
    if iterator is None:
        raise StudyError(f"data.source={config.data.source!r} has no validation split")
    return [
        {k: np.asarray(b[k], np.int32) for k in ("input_ids", "attention_mask")}
        for b, _ in zip(iterator, range(count), strict=False)
    ]


def text_metrics(texts, token_rows, scorer, special) -> dict:
    """Gen PPL of texts under the scorer and mean unigram entropy of the rows' content ids.

    A text the scorer's tokenizer turns into [UNK] (WordPiece does so for a "word" over 100
    characters, e.g. a degenerate run of ##-pieces) is scored with [UNK], a token the scorer
    never saw in training, rather than failing the study; unk_texts counts such texts."""
    from ldlm_jax import evaluation

    unk = getattr(scorer.tokenizer, "unk_token_id", None)
    flagged = []

    class Lenient(type(scorer)):
        def encode(self, text, index=0):
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            flagged.extend([index] if unk is not None and unk in ids else [])
            return ids

    lenient = Lenient(**{f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer)})
    ppl = evaluation.generative_perplexity(texts, lenient)
    rows = [[i for i in r if i not in special] for r in token_rows]
    return {
        "gen_ppl": ppl["gen_ppl"],
        "entropy": evaluation.mean_unigram_entropy(rows),
        "scored_tokens": ppl["scored_tokens"],
        "num_samples": len(texts),
        "unk_texts": len(flagged),
    }


# ----------------------------------------------------------------------------- the arms


def evaluate_ldlm(study: Study, folder: str, seed: int, scorer) -> tuple[float, list[dict]]:
    """What ldlm-eval reports, from its parts: (reconstruction accuracy on the held-out batches,
    one frontier point per sampler step count), with the config's sampler (EMA weights)."""
    import time

    from ldlm_jax import evaluation, generation
    from ldlm_jax.cli.evaluate import heldout_batches

    gen = generation.load_generator(folder)
    s = gen.config.sampler
    if not s.use_ema:
        gen = generation.load_generator(folder, raw_weights=True)
    settings = dict(
        sampler=s.name,
        time_grid=s.time_grid,
        t_min=s.t_min,
        temperature=s.temperature,
        self_cond=s.self_cond,
    )
    frontier = []
    for steps in study.sampler_steps:
        start = time.perf_counter()
        samples = generation.generate(
            gen, num=study.num_samples, steps=steps, seed=seed, progress=study.progress, **settings
        )
        seconds = time.perf_counter() - start
        generation.write_samples(samples, os.path.join(folder, f"eval_samples_{steps}.jsonl"))
        texts, rows = [x["text"] for x in samples], [x["token_ids"] for x in samples]
        point = text_metrics(texts, rows, scorer, special_ids(gen.tokenizer))
        frontier.append({"steps": steps, **point, "sampling_seconds": seconds})
    batches = heldout_batches(gen, study.heldout_batches)
    recon = evaluation.reconstruction_accuracy(
        gen.ldlm, gen.params, gen.frozen_params, gen.hidden_stats, batches, gen.mesh
    )
    return recon["reconstruction_accuracy"], frontier


def _last_logged(folder: str) -> dict:
    """The last training metrics in a trainer workdir's metrics.jsonl ({} if none)."""
    path, last = os.path.join(folder, "metrics.jsonl"), {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                last = record if "loss" in record else last
    return last


def run_ldlm_arm(study: Study, arm: Arm, seed: int, folder: str, scorer) -> dict:
    """Train (or resume) one LDLM arm with trainer.train, then evaluate it (evaluate_ldlm)."""
    from ldlm_jax import checkpointing, trainer

    config = arm_config(study, arm, seed)
    steps = int(config.train.steps)
    train_path = os.path.join(folder, "train.json")
    if not (os.path.exists(train_path) and checkpointing.latest_step(folder) == steps):
        result = trainer.train(config, folder)
        info = {
            "steps": result.step,
            "tokens": steps * config.train.batch_size * config.data.seq_len,
            "stopped": result.stopped,
            "first_batch_hash": result.batch_hashes.get(1),
            "last_batch_hash": result.batch_hashes.get(steps),
            "final_metrics": result.last_metrics or _last_logged(folder),
            "param_counts": result.param_counts,
        }
        if result.step != steps:
            raise StudyError(f"arm {arm.name} stopped ({result.stopped}) at step {result.step}")
        write_json(train_path, info)
    recon, frontier = evaluate_ldlm(study, folder, seed, scorer)
    return {
        "reconstruction_accuracy": recon,
        "frontier": frontier,
        "train": read_json(train_path),
        "recipe": recipe_of(config),
    }


def run_ar_arm(study: Study, arm: Arm, seed: int, folder: str, scorer) -> dict:
    """Train one AR baseline on the LDLM arms' batches, then sample and score it."""
    import time

    from ldlm_jax import autoregressive as ar
    from ldlm_jax import generation
    from ldlm_jax.frozen_lm import frozen_lm_from_config

    config = arm_config(study, arm, seed)
    model_dir, train_path = os.path.join(folder, "model"), os.path.join(folder, "train.json")
    if os.path.exists(train_path):
        model = ar.load_autoregressive(model_dir)
    else:
        tokenizer = frozen_lm_from_config(config).tokenizer
        model = ar.init_autoregressive(tokenizer, *study.ar_size, seed=seed)
        train = ar.train_autoregressive(config, model, progress=study.progress)
        train["param_counts"] = {"total trainable": ar.parameter_count(model.params)}
        model.save(model_dir)
        write_json(train_path, train)
    start = time.perf_counter()
    samples = ar.sample_texts(model, seed, study.num_samples, int(config.data.seq_len))
    seconds = time.perf_counter() - start
    generation.write_samples(samples, os.path.join(folder, "eval_samples.jsonl"))
    point = text_metrics(
        [s["text"] for s in samples],
        [s["token_ids"] for s in samples],
        scorer,
        special_ids(model.tokenizer),
    )
    point.update(steps="ancestral", sampling_seconds=seconds)
    held = ar.heldout_nll(model, heldout(config, model.tokenizer, study.heldout_batches))
    return {
        "reconstruction_accuracy": None,
        "frontier": [point],
        "train": read_json(train_path),
        "heldout_teacher_forced": held,
        "recipe": None,
    }
