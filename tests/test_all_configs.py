"""Every config file in configs/ loads, shrinks to test size and trains one step, so none rots.

Shrinking (train_utils.shrink) keeps each config's recipe switches, data mode and compute dtype
but swaps in tiny widths/layers, seq_len 16, the tiny random frozen LM and the offline Bible
corpus (so lm1b/owt, whose data is not offline, still run). Each file's default get_config() is
checked; tiny.py:random_lm is the config of every other training test.
"""

import glob
import math
import os

import pytest
from train_utils import REPO, shrink

from ldlm_jax import trainer
from ldlm_jax.config import load_config

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"demo.py", "tiny.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_trains_one_step(path, tmp_path):
    config = load_config(path)  # the full-size config validates as written
    full_dtype = config.model.dtype
    # tiny.py also exercises gradient accumulation (no extra compile: it is its own program).
    config = shrink(
        config,
        *(["train.microbatches=2", "train.batch_size=16"] if path.endswith("tiny.py") else []),
    )
    assert config.model.dtype == full_dtype
    result = trainer.train(config, str(tmp_path))
    assert result.step == 1 and result.stopped == "done"
    assert math.isfinite(result.losses[1])
    assert result.param_counts["total"] > 0
