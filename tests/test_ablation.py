"""The recipe ablation study (ldlm_jax/ablation.py) and its autoregressive LM
(ldlm_jax/autoregressive.py): the arm table's config switches and budget-scaled settings, the AR
model learning a repeated batch, deterministic ancestral sampling that stops at [SEP], the scorer
round trip (save_converted -> load_scorer, gen PPL == exp(mean NLL) by hand), and the study
driver end to end on a tiny budget, then skipping its finished arms on a rerun.

Tiny everything: the random 64-wide frozen LM (configs/tiny.py:random_lm), 32-wide one-layer
GPT-2s, a few steps, and `jax_disable_most_optimizations` (behaviour, not speed, is tested).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from train_utils import REPO, TEST_OVERRIDES, TINY, TINY_EXTRA

from ldlm_jax import ablation, ablation_arms, evaluation
from ldlm_jax import autoregressive as ar
from ldlm_jax.frozen_lm import frozen_lm_from_config

VERSE = "jesus wept."
SMALL_AR = (32, 1, 2)


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


def tiny_study(workdir="", **kw) -> ablation.Study:
    overrides = tuple(o for o in (*TEST_OVERRIDES, *TINY_EXTRA) if not o.startswith("train.st"))
    return ablation.Study(workdir=str(workdir), config=TINY, overrides=overrides, **kw)


# ----------------------------------------------------------------------------- the arm table


def test_arm_table_maps_to_the_recipe_switches():
    study = tiny_study(budget=40)
    recipes = {n: ablation_arms.recipe_of(ablation_arms.arm_config(study, a, 0))
               for n, a in ablation.ARMS.items() if a.kind == "ldlm"}  # fmt: skip
    full = recipes["full"]
    assert (full["decoder_loss"], full["gamma_warmup"], full["timestep_sampler"]) == (
        "mse", True, "adaptive")  # fmt: skip
    assert full["decoder_noise"] > 0
    assert recipes["naive"] == {**full, "decoder_loss": "ce", "gamma_warmup": False,
                                "timestep_sampler": "uniform", "decoder_noise": 0.0}  # fmt: skip
    removed = {"ce_decoder_loss": "decoder_loss", "no_warmup": "gamma_warmup",
               "uniform_t": "timestep_sampler", "no_decoder_noise": "decoder_noise"}  # fmt: skip
    for arm, key in removed.items():
        assert recipes[arm][key] == recipes["naive"][key], arm
        assert {k for k in full if recipes[arm][k] != full[k]} == {key}, arm
    assert set(ablation.ARMS) == {"full", *removed, "naive", "autoregressive"}


def test_budget_scales_the_schedules_and_counts_tokens():
    study = tiny_study(budget=40, warmup_fraction=0.5, lr_warmup_fraction=0.1, ema_fraction=0.25)
    c = ablation_arms.arm_config(study, ablation.ARMS["no_warmup"], seed=3)
    assert (c.train.steps, c.train.seed, c.recipe.gamma_warmup_steps) == (40, 3, 20)
    assert c.train.lr_warmup_steps == 4 and c.train.ema_decay == pytest.approx(0.9)
    per_step = c.train.batch_size * c.data.seq_len
    tokens = tiny_study(budget=5 * per_step + 1, budget_unit="tokens")
    assert ablation_arms.budget_steps(c, tokens) == 6
    with pytest.raises(SystemExit):
        ablation.build_parser().parse_args(["--workdir", "x", "--arms", "full,bogus"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(sampler_steps=(10, 0)), "--sampler-steps must be >= 1 each"),
        (dict(num_samples=0), "--num-samples must be >= 1"),
        (dict(seeds=()), "--seeds is empty"),
    ],
)
def test_bad_sampling_settings_fail_before_any_training(tmp_path, bad, message):
    workdir = tmp_path / "study"
    with pytest.raises(ablation_arms.StudyError, match=message):
        ablation.run_study(tiny_study(workdir, budget=2, **bad))
    assert not workdir.exists()  # nothing trained, nothing written


# ----------------------------------------------------------------------------- the AR model


@pytest.fixture(scope="module")
def memorised():
    """A tiny GPT-2 fitted to one verse repeated 8 times: (untrained copy, model, losses, row)."""
    tokenizer = frozen_lm_from_config(ablation_arms.base_config(tiny_study())).tokenizer
    untrained = ar.init_autoregressive(tokenizer, *SMALL_AR, seed=0)
    model = ar.init_autoregressive(tokenizer, *SMALL_AR, seed=0)
    enc = tokenizer([VERSE] * 8, padding="max_length", max_length=16, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    opt = optax.adamw(1e-2)
    step = ar.make_train_step(model.module, opt, ema_decay=0.0)
    params, ema, state = model.params, jax.tree.map(np.array, model.params), opt.init(model.params)
    losses = []
    for _ in range(40):
        params, ema, state, metrics = step(params, ema, state, ids, mask)
        losses.append(float(metrics["loss"]))
    model.params = params
    return untrained, model, losses, ids[0]


def test_ar_loss_falls_on_a_repeated_batch(memorised):
    _, _, losses, _ = memorised
    assert losses[0] > 8.0  # about log(30522) at initialisation
    assert losses[-1] < 0.2 * losses[0], losses


def test_ar_sampling_is_deterministic_and_stops_at_eos(memorised):
    untrained, model, _, row = memorised
    key = jax.random.PRNGKey(0)
    a, b = ar.sample(untrained, key, 4, 16), ar.sample(untrained, key, 4, 16)
    assert a.shape == (4, 16) and a.dtype == np.int32 and (a == b).all()
    assert (a[:, 0] == untrained.bos_id).all()
    assert not (ar.sample(untrained, jax.random.PRNGKey(1), 4, 16) == a).all()
    out = ar.sample(model, key, 8, 16)
    eos, pad = model.eos_id, model.pad_id
    for sample in out:
        assert eos in sample[1:]
        first = 1 + list(sample[1:]).index(eos)
        assert (sample[first + 1 :] == pad).all()  # nothing after [SEP] but pads
    assert (out == row).all(axis=1).sum() >= 6  # the memorised verse, [SEP] and pads
    texts = ar.sample_texts(model, 0, 8, 16)
    assert sum(t["text"] == VERSE for t in texts) >= 6
    assert all(eos not in t["token_ids"] for t in texts)


def test_scorer_round_trip_and_perplexity_by_hand(memorised, tmp_path):
    _, model, _, _ = memorised
    folder = model.save(str(tmp_path / "scorer"))
    scorer = evaluation.load_scorer(folder)
    for x, y in zip(jax.tree.leaves(scorer.params), jax.tree.leaves(model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    texts = [VERSE, "in the beginning god created the heaven and the earth.", "amen"]
    got = evaluation.generative_perplexity(texts, scorer)
    nll, count = 0.0, 0
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        logits = model.module.apply({"params": model.params}, np.asarray([ids], np.int32)).logits
        logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
        nll -= float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
        count += len(ids) - 1
    assert got["scored_tokens"] == count
    assert got["gen_ppl"] == pytest.approx(float(np.exp(nll / count)), rel=1e-4)


# ----------------------------------------------------------------------------- the driver


def _argv(workdir, budget=2):
    study = tiny_study()
    return ["--workdir", str(workdir), "--config", TINY, "--budget", str(budget),
            "--arms", "full,autoregressive", "--sampler-steps", "2", "--num-samples", "8",
            "--heldout-batches", "1", "--ar-size", "32,1,2", "--scorer-size", "32,1,2",
            "--no-progress", *(f"--config.{o}" for o in study.overrides)]  # fmt: skip


def test_study_runs_end_to_end_then_skips_finished_arms(tmp_path, monkeypatch):
    assert ablation.main(_argv(tmp_path)) == 0
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["arms"]) == {"full", "autoregressive"} and results["steps_per_arm"] == 2
    full, auto = results["arms"]["full"]["0"], results["arms"]["autoregressive"]["0"]
    assert 0.0 <= full["reconstruction_accuracy"] <= 1.0 and auto["reconstruction_accuracy"] is None
    assert [p["steps"] for p in full["frontier"]] == [2]
    for point in (*full["frontier"], *auto["frontier"], results["reference"]):
        assert point["gen_ppl"] > 1.0 and point["entropy"] >= 0.0
    for key in ("first_batch_hash", "last_batch_hash"):  # the same tokens, in the same order
        assert full["train"][key] == auto["train"][key] is not None
    table = (tmp_path / "results.md").read_text()
    assert "| full | mse | on (1) | adaptive |" in table and "reference" in table
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def must_not_run(*args, **kw):
        raise AssertionError("a finished arm was run again")

    monkeypatch.setattr(ablation, "run_ldlm_arm", must_not_run)
    monkeypatch.setattr(ablation, "run_ar_arm", must_not_run)
    monkeypatch.setattr(ablation, "train_scorer", must_not_run)
    assert ablation.main(_argv(tmp_path)) == 0
    assert ablation.main(_argv(tmp_path, budget=3)) == 2  # other settings: refused, not mixed
    assert os.path.exists(tmp_path / "runs" / "full" / "seed0" / "result.json")


def test_help_lists_the_study_flags():
    out = subprocess.run([sys.executable, "-m", "ldlm_jax.ablation", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for flag in ("--budget", "--budget-unit", "--seeds", "--arms", "--sampler-steps",
                 "--warmup-fraction", "--workdir", "--scorer-steps"):  # fmt: skip
        assert flag in out.stdout, flag
