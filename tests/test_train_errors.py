"""Bad input fails with a clear error before any compile, and nothing already saved is lost.

Covered: a mesh that does not match the devices, a batch the data axes cannot split, a logical
axis without a rule, an unknown config key, missing data, a corrupt or partial latest checkpoint
(fall back to the previous one with a warning) and a NaN loss (stop naming the step, keep the
last good checkpoint).
"""

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import TEST_OVERRIDES, TINY, TINY_EXTRA, tiny_config

from ldlm_jax import checkpointing, trainer
from ldlm_jax.cli import train as cli
from ldlm_jax.config import ConfigError
from ldlm_jax.sharding import ShardingError
from ldlm_jax.train_feed import DataError

MESH_8 = ("mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1")


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


def _toy_state(scale: float):
    return {"w": jnp.full((8, 4), scale, jnp.float32), "step": jnp.asarray(int(scale), jnp.int32)}


@pytest.fixture
def saved_workdir(tmp_path):
    """A workdir holding two small checkpoints (steps 1 and 2)."""
    ck = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False)
    for step in (1, 2):
        stats = {"mean": np.zeros(3), "std": np.ones(3)}
        ck.save(step, _toy_state(step), {"pos": step}, {"name": "toy"}, stats)
    ck.close()
    return tmp_path


def _listing(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
        for d, _, files in os.walk(root)
        for f in files
    )


def _abstract():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _toy_state(0)
    )


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (("mesh.data=3",), ShardingError, "needs 3 devices but 8"),
        (("train.batch_size=12", "mesh.data=8"), ShardingError, "not divisible by the batch"),
        (
            ("logical_axis_rules=(('batch', ('data', 'fsdp')), ('embed', 'fsdp'))",),
            ShardingError,
            "logical axis '(mlp|heads|vocab|length|kv|latent)'",
        ),
    ],
    ids=["mesh", "batch", "rule"],
)
def test_bad_layout_fails_before_compile_and_keeps_checkpoints(
    saved_workdir, overrides, error, match
):
    before = _listing(saved_workdir)
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        trainer.train(tiny_config(*overrides), str(saved_workdir))
    assert time.perf_counter() - start < 30  # failed before compiling the train step
    assert _listing(saved_workdir) == before


def test_cli_reports_unknown_key_and_bad_mesh(tmp_path, capsys):
    code = cli.main(["--config", "configs/tiny.py:random_lm", "--workdir", str(tmp_path),
                     "--config.train.stepz=3"])  # fmt: skip
    assert code == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err
    code = cli.main(["--config", "configs/tiny.py:random_lm", "--workdir", str(tmp_path),
                     "--config.mesh.data=5"])  # fmt: skip
    assert code == 2
    assert "needs 5 devices" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown config key"):
        tiny_config("model.nope=1")


def test_missing_data_is_a_clear_error(saved_workdir):
    before = _listing(saved_workdir)
    config = tiny_config("data.source=text_files", "data.paths=/nonexistent/corpus.txt")
    with pytest.raises(DataError, match="nonexistent"):
        trainer.train(config, str(saved_workdir))
    assert _listing(saved_workdir) == before


def test_checkpoint_of_another_config_is_an_error_not_corruption(saved_workdir):
    before = _listing(saved_workdir)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="different model config"):
        trainer.train(tiny_config(*MESH_8), str(saved_workdir))
    assert _listing(saved_workdir) == before  # nothing moved aside


def test_corrupt_latest_checkpoint_falls_back(saved_workdir, caplog):
    # Corrupt step 2: truncate every array data file.
    for d, _, files in os.walk(saved_workdir / "checkpoints" / "2" / "state"):
        for f in files:
            if os.path.basename(d) == "d":
                open(os.path.join(d, f), "wb").close()
    ck = checkpointing.Checkpointer(str(saved_workdir), keep=5, async_save=False)
    with caplog.at_level(logging.WARNING):
        restored = ck.restore_latest(_abstract())
    assert restored.step == 1 and restored.data_state == {"pos": 1}
    assert float(restored.state["w"][0, 0]) == 1.0
    assert "step 2" in caplog.text and "falling back" in caplog.text
    moved = os.listdir(saved_workdir / "corrupt_checkpoints")
    assert len(moved) == 1 and moved[0].startswith("2.")  # kept aside, not deleted
    assert ck.all_steps() == [1]
    ck.close()


def test_partial_latest_checkpoint_falls_back(saved_workdir, caplog):
    # A step whose state item never finished (as after a crash mid-save on a store without
    # atomic renames), plus an orbax temporary directory that must be ignored.
    import shutil

    shutil.rmtree(saved_workdir / "checkpoints" / "2" / "state")
    os.makedirs(saved_workdir / "checkpoints" / "3.orbax-checkpoint-tmp-123" / "state")
    ck = checkpointing.Checkpointer(str(saved_workdir), keep=5, async_save=False)
    with caplog.at_level(logging.WARNING):
        restored = ck.restore_latest(_abstract())
    assert restored.step == 1
    assert "step 2" in caplog.text
    ck.close()


def test_nan_loss_stops_naming_the_step_and_keeps_last_good(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config(*MESH_8, "checkpoint.every=1")
    trainer.train(config, workdir, stop_at=2)
    assert checkpointing.latest_step(workdir) == 2
    original = checkpointing.Checkpointer.restore_latest

    def poisoned(self, abstract_state):  # std = 0: h / 0 -> inf -> NaN loss at the next step
        restored = original(self, abstract_state)
        restored.hidden_stats["std"] = np.zeros_like(restored.hidden_stats["std"])
        return restored

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpointing.Checkpointer, "restore_latest", poisoned)
        with pytest.raises(trainer.TrainingDivergedError, match="at step 3.*checkpoint is step 2"):
            trainer.train(config, workdir)
    assert checkpointing.latest_step(workdir) == 2


def test_compile_only_stops_before_training(tmp_path):
    # The NaN test's program (the persistent compile cache serves it).
    overrides = [f"--config.{o}" for o in (*TEST_OVERRIDES, *TINY_EXTRA, *MESH_8)]
    code = cli.main(["--config", TINY, "--workdir", str(tmp_path),
                     "--config.compile_only=True", *overrides])  # fmt: skip
    assert code == 0
    assert checkpointing.latest_step(str(tmp_path)) is None
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))
