"""ldlm-sample and ldlm-eval end to end on a tiny checkpoint, and their bad-input errors.

The checkpoint is configs/tiny.py:random_lm (random 2-layer BERT frozen LM, L = K = 32) at
initialisation, written with the training workstream's Checkpointer: sampling does not care whether
the weights are trained, and skipping training keeps this file fast on 2 shared cores.
"""

import functools
import json
import os
import types

import jax
import numpy as np
import pytest

from ldlm_jax import generation
from ldlm_jax.cli import evaluate as eval_cli
from ldlm_jax.cli import sample as sample_cli

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")
STEPS = "3"


def make_checkpoint(workdir: str):
    from ldlm_jax import checkpointing
    from ldlm_jax import optimizer as optim
    from ldlm_jax import sharding as shd
    from ldlm_jax import train_state as ts
    from ldlm_jax.config import load_config, to_dict
    from ldlm_jax.frozen_lm import frozen_lm_from_config
    from ldlm_jax.ldlm import LDLM

    config = load_config(CONFIG + ":random_lm")
    frozen = frozen_lm_from_config(config)
    model = LDLM(config, frozen)
    optimizer, _ = optim.make_optimizer(config)
    init_fn = ts.make_init_fn(functools.partial(model.init_params, unbox=False), optimizer, config)
    mesh = shd.make_mesh(dict(config.mesh))
    state, _ = ts.create_train_state(
        init_fn, jax.random.PRNGKey(0), mesh, shd.rules_table(config.logical_axis_rules)
    )
    d = frozen.hidden_size
    stats = {"mean": np.zeros(d, np.float32), "std": np.ones(d, np.float32)}
    ckpt = checkpointing.Checkpointer(workdir, keep=1, async_save=False)
    ckpt.save(1, state, None, to_dict(config), stats)
    ckpt.close()
    return config, frozen


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ldlm_ckpt"))
    config, frozen = make_checkpoint(path)
    return types.SimpleNamespace(path=path, config=config, tokenizer=frozen.tokenizer)


def run_sample(workdir, *extra, out=None):
    out = out or os.path.join(workdir, "samples.jsonl")
    argv = ["--workdir", workdir, "--steps", STEPS, "--no-progress", "--out", out, *extra]
    assert sample_cli.main(argv) == 0
    return generation.read_samples(out)


def test_sample_writes_jsonl_and_is_reproducible(workdir, tmp_path):
    a = run_sample(workdir.path, "--num", "3", "--seed", "1", "--batch-size", "8")
    assert len(a) == 3
    for s in a:
        assert {"text", "token_ids", "steps", "sampler", "seed", "temperature"} <= set(s)
        assert s["steps"] == 3 and s["seed"] == 1 and s["sampler"] == "euler_maruyama"
        assert len(s["token_ids"]) <= workdir.config.data.seq_len
        assert isinstance(s["text"], str)
    b = run_sample(workdir.path, "--num", "3", "--seed", "1", out=str(tmp_path / "b.jsonl"))
    assert [s["token_ids"] for s in a] == [s["token_ids"] for s in b]
    c = run_sample(workdir.path, "--num", "3", "--seed", "2", out=str(tmp_path / "c.jsonl"))
    assert [s["token_ids"] for s in a] != [s["token_ids"] for s in c]


def test_prompt_is_kept(workdir, tmp_path):
    prompt = "in the beginning god created"
    samples = run_sample(
        workdir.path, "--num", "2", "--prompt", prompt, out=str(tmp_path / "p.jsonl")
    )
    ids = workdir.tokenizer(prompt)["input_ids"][:-1]  # [CLS] ... without the final [SEP]
    for s in samples:
        assert s["token_ids"][: len(ids)] == ids
        assert s["text"].startswith(prompt)
        assert s["prompt"] == prompt


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "nope"], "unknown sampler 'nope'"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--time-grid", "log"], "unknown time grid"),
        (["--prompt", "word " * 40], "the prompt is 41 tokens"),
        (["--cpu-devices", "0"], "--cpu-devices must be 'auto' or an integer >= 1, got '0'"),
        (["--cpu-devices", "3"], "conflicts with XLA_FLAGS"),  # conftest's 8 devices
    ],
)
def test_sample_bad_input(workdir, capsys, argv, message):
    assert sample_cli.main(["--workdir", workdir.path, "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cpu_devices_shard_the_batch_and_keep_the_samples(workdir, tmp_path):
    """A fresh ldlm-sample process without the tests' XLA flag: --cpu-devices 2 makes two CPU
    devices (it says so) and writes the samples this process (8 devices) writes. A fresh
    ldlm-eval gets its two devices too (the flag is applied before anything starts JAX)."""
    import re
    import subprocess
    import sys

    argv = ["--num", "4", "--seed", "3"]
    here = run_sample(workdir.path, *argv, out=str(tmp_path / "here.jsonl"))
    env = dict(os.environ)
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env["XLA_FLAGS"])
    out = str(tmp_path / "two.jsonl")
    cmd = [sys.executable, "-m", "ldlm_jax.cli.sample", "--workdir", workdir.path, "--steps"]
    cmd += [STEPS, "--no-progress", "--out", out, "--cpu-devices", "2", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ldlm-sample: 2 CPU device(s) (--cpu-devices 2)" in proc.stderr
    two = generation.read_samples(out)
    assert [s["token_ids"] for s in two] == [s["token_ids"] for s in here]
    cmd = [sys.executable, "-m", "ldlm_jax.cli.evaluate", "--workdir", workdir.path, "--steps"]
    cmd += [STEPS, "--no-progress", "--num", "2", "--heldout-batches", "1", "--cpu-devices", "2"]
    cmd += ["--out", str(tmp_path / "eval.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ldlm-eval: 2 CPU device(s) (--cpu-devices 2)" in proc.stderr


def test_sample_no_checkpoint(tmp_path, capsys):
    assert sample_cli.main(["--workdir", str(tmp_path), "--no-progress"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_prompt_needs_one_latent_per_token():
    gen = types.SimpleNamespace(num_latents=8, seq_len=32)
    template = np.full((32,), -1, np.int32)
    generation._check_known(gen, template)  # no prompt: fine
    template[:3] = [101, 7, 8]
    with pytest.raises(generation.GenerationError, match="need K = L"):
        generation._check_known(gen, template)


def test_cut_at_eos():
    assert generation.cut_at_eos([101, 5, 6, 102, 7, 0], 102) == [101, 5, 6]
    assert generation.cut_at_eos([102, 5, 102], 102) == [102, 5]  # a leading EOS is kept
    assert generation.cut_at_eos([101, 5, 6], None) == [101, 5, 6]


def test_eval_end_to_end(workdir, tmp_path_factory):
    from test_evaluation import make_tiny_gpt2_with_tokenizer

    scorer = str(tmp_path_factory.mktemp("scorer"))
    make_tiny_gpt2_with_tokenizer(scorer, workdir.tokenizer)
    argv = ["--workdir", workdir.path, "--scorer", scorer, "--num", "4", "--steps", "2,3"]
    assert eval_cli.main([*argv, "--no-progress", "--heldout-batches", "1", "--mauve"]) == 0
    with open(os.path.join(workdir.path, "eval.json")) as f:
        result = json.load(f)
    assert [p["steps"] for p in result["frontier"]] == [2, 3]
    for p in result["frontier"]:
        assert p["gen_ppl"] > 1 and 0 <= p["entropy"] <= np.log(32)
    assert 0 <= result["reconstruction_accuracy"] <= 1 and result["reconstruction_tokens"] > 0
    assert "mauve" in result
    with open(result["frontier_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_bad_input(workdir, capsys, tmp_path):
    base = ["--workdir", workdir.path, "--no-progress"]
    assert eval_cli.main([*base, "--steps", "10,0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert eval_cli.main([*base, "--scorer", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_cli.main([*base, "--sampler", "nope"]) == 2
    assert "unknown sampler" in capsys.readouterr().err


def test_eval_scorer_that_cannot_encode(workdir, capsys, tmp_path):
    from test_evaluation import make_tiny_gpt2

    make_tiny_gpt2(str(tmp_path))  # a WordLevel tokenizer: most sampled words are unknown
    argv = ["--workdir", workdir.path, "--scorer", str(tmp_path), "--num", "4", "--steps", STEPS]
    assert eval_cli.main([*argv, "--no-progress", "--heldout-batches", "1"]) == 2
    err = capsys.readouterr().err
    assert "sample 0" in err and "cannot encode" in err


def test_reconstruction_accuracy_matches_the_container(workdir):
    from ldlm_jax import evaluation

    gen = generation.load_generator(workdir.path)
    texts = ["in the beginning god created the heaven and the earth", "and god said"]
    enc = workdir.tokenizer(texts, padding="max_length", max_length=gen.seq_len)
    batch = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask")}
    result = evaluation.reconstruction_accuracy(
        gen.ldlm, gen.params, gen.frozen_params, gen.hidden_stats, [batch]
    )
    h = gen.ldlm.hidden(gen.frozen_params, gen.hidden_stats, **batch)
    pred = np.argmax(np.asarray(gen.ldlm.reconstruct(gen.params, h, batch["attention_mask"])), -1)
    real = batch["attention_mask"].astype(bool)
    assert result["tokens"] == int(real.sum())
    assert result["reconstruction_accuracy"] == pytest.approx(
        (pred == batch["input_ids"])[real].mean()
    )
