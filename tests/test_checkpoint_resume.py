"""Kill and resume: 6 straight steps == 3 steps, a crash, a restart from the checkpoint and 3
more (same losses and the same batches); resuming onto a different mesh; SIGTERM saves and stops.

All runs use the tiny config with train.steps=6 on 8 CPU devices, so they share one compiled
program (the persistent compile cache serves the repeats).
"""

import os
import shutil
import signal

import pytest
from train_utils import tiny_config

from ldlm_jax import checkpointing, train_feed, trainer

MESH_8 = ("mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1")


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return trainer.train(tiny_config(*MESH_8), str(tmp_path_factory.mktemp("straight")))


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A run that checkpoints at step 3 and dies while fetching the batch of step 5."""
    workdir = str(tmp_path_factory.mktemp("crashed"))
    original = train_feed.DataFeed.next
    calls = {"n": 0}

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_feed.DataFeed, "next", dying_next)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(tiny_config(*MESH_8, "checkpoint.every=3"), workdir)
    assert checkpointing.latest_step(workdir) == 3
    return workdir


def _copy(workdir, tmp_path):
    target = str(tmp_path / "resumed")
    shutil.copytree(workdir, target)
    return target


def test_straight_run_trains_six_steps(straight):
    assert sorted(straight.losses) == [1, 2, 3, 4, 5, 6]
    assert straight.stopped == "done"
    assert checkpointing.latest_step(straight.workdir) == 6


def test_kill_and_resume_matches_straight(straight, crashed, tmp_path):
    workdir = _copy(crashed, tmp_path)
    resumed = trainer.train(tiny_config(*MESH_8, "checkpoint.every=3"), workdir)
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.batch_hashes[step] == straight.batch_hashes[step], step
        assert abs(resumed.losses[step] - straight.losses[step]) < 1e-5, step
    assert checkpointing.latest_step(workdir) == 6


def test_resume_onto_a_different_mesh(straight, crashed, tmp_path):
    workdir = _copy(crashed, tmp_path)
    config = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    resumed = trainer.train(config, workdir)
    for step in (4, 5, 6):
        assert resumed.batch_hashes[step] == straight.batch_hashes[step], step
        assert abs(resumed.losses[step] - straight.losses[step]) < 1e-4, step


def test_sigterm_saves_and_stops(tmp_path):
    original = train_feed.DataFeed.next
    calls = {"n": 0}

    def next_then_term(self):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_feed.DataFeed, "next", next_then_term)
        result = trainer.train(tiny_config(*MESH_8), str(tmp_path))
    assert result.stopped == "preempted"
    assert result.step == 2
    assert checkpointing.latest_step(str(tmp_path)) == 2
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
