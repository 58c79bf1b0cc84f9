"""ldlm-train end to end: the tiny config with the real offline MiniLM on the embedded Bible
corpus writes a checkpoint, metrics.jsonl, TensorBoard events and samples, and the loss falls.
Also: --help, compile_only, and resuming a finished run is a no-op.
"""

import glob
import json
import os
import subprocess
import sys

import pytest
from train_utils import REPO

from ldlm_jax import checkpointing
from ldlm_jax.cli import train as cli

STEPS = 30  # full XLA optimisation here: the steps, not the compile, dominate this test


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cli"))
    argv = [
        "--config", "configs/tiny.py",
        "--workdir", workdir,
        f"--config.train.steps={STEPS}",
        "--config.train.batch_size=8",
        "--config.train.seed=1",
        "--config.checkpoint.every=15",
        "--config.train.log_every=5",
        f"--config.train.eval_every={STEPS}",
        "--config.frozen_lm.stats_sequences=32",
        "--config.sampler.steps=4",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return workdir


def test_writes_checkpoints_metrics_events_and_samples(run):
    assert checkpointing.latest_step(run) == STEPS
    assert sorted(int(s) for s in os.listdir(os.path.join(run, "checkpoints"))) == [15, STEPS]
    assert glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
    samples = glob.glob(os.path.join(run, f"samples_step_{STEPS}.jsonl"))
    assert samples
    with open(samples[0]) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and all(isinstance(r["text"], str) for r in rows)
    train = [r for r in _records(run) if "loss" in r]
    assert [r["step"] for r in train] == list(range(5, STEPS + 1, 5))
    for key in ("loss", "diffusion_loss", "hidden_loss", "token_loss", "gamma", "grad_norm",
                "tokens_per_sec", "mfu", "lr"):  # fmt: skip
        assert key in train[-1], key
    assert 0 < train[-1]["mfu"] < 1
    assert any("eval/loss" in r for r in _records(run))


def test_loss_falls(run):
    train = [r for r in _records(run) if "loss" in r]
    assert train[-1]["loss"] < 0.85 * train[0]["loss"], [r["loss"] for r in train]
    assert train[-1]["token_loss"] < train[0]["token_loss"]


def test_finished_run_resumes_as_a_no_op(run):
    before = len(_records(run))
    assert cli.main(["--config", "configs/tiny.py", "--workdir", run,
                     f"--config.train.steps={STEPS}"]) == 0  # fmt: skip
    assert len(_records(run)) == before
    assert checkpointing.latest_step(run) == STEPS


def test_help_lists_the_overrides():
    out = subprocess.run(
        [sys.executable, "-m", "ldlm_jax.cli.train", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0
    for flag in ("--config.train.steps", "--config.train.batch_size", "--config.checkpoint.every",
                 "--config.train.seed", "--workdir", "--coordinator"):  # fmt: skip
        assert flag in out.stdout, flag
