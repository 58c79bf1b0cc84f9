"""Shared helpers for the training tests: the tiny config, shrinking any config, quiet runs.

Every training test uses the tiny random frozen LM ('random' source, 64 wide, 2 layers) except
the end-to-end CLI test, float32 compute, and `jax_disable_most_optimizations` (a module sets
FAST_COMPILE = True; conftest.py's fast_compile fixture applies it) because compile time
dominates on 2 CPU cores and these tests check behaviour, not speed.
"""

from __future__ import annotations

import os

from ldlm_jax.config import ConfigDict, apply_overrides, load_config, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py") + ":random_lm"

# Keys every test run shares: small, float32, no eval/sampling, one log line per step.
TEST_OVERRIDES = (
    "train.steps=6",  # runs stop early with train(stop_at=...): one program, compiled once
    "train.batch_size=8",
    "data.seq_len=16",
    "frozen_lm.stats_sequences=16",
    "train.eval_every=0",
    "train.log_every=1",
    "train.progress_bar=False",
    "checkpoint.every=1000",
    "checkpoint.async_save=False",
)


# On top of configs/tiny.py:random_lm: float32, one-layer encoder and latent decoder (the
# denoiser keeps 2 for its U-Net skip), so each distinct program compiles faster.
TINY_EXTRA = (
    "model.dtype=float32",
    "model.encoder.num_layers=1",
    "model.latent_decoder.num_layers=1",
)


def tiny_config(*overrides: str) -> ConfigDict:
    """configs/tiny.py:random_lm shrunk further for tests, then `overrides` (key=value)."""
    return load_config(TINY, [*TEST_OVERRIDES, *TINY_EXTRA, *overrides])


def shrink(config: ConfigDict, *overrides: str) -> ConfigDict:
    """Any config file's config made test-sized: tiny widths/layers/seq_len, the tiny random
    frozen LM, batch 8, the offline Bible corpus; the recipe switches, data mode and compute
    dtype are kept (so bf16 configs run in bf16)."""
    apply_overrides(config, shrink_overrides(config, *overrides))
    validate_config(config)
    return config


def shrink_overrides(config: ConfigDict, *overrides: str) -> list[str]:
    """The `key=value` overrides `shrink` applies to `config` (for command lines)."""
    m = config.model
    return [
        "frozen_lm.source=random",
        "frozen_lm.random_arch=bert",
        "frozen_lm.random_width=64",
        "frozen_lm.random_layers=2",
        "frozen_lm.random_heads=2",
        "frozen_lm.layer=-1",
        "model.latent_dim=32",
        f"model.latent_count={min(m.latent_count, 8)}",
        "model.encoder.num_layers=1",
        "model.encoder.num_heads=2",
        "model.encoder.mlp_dim=64",
        "model.denoiser.num_layers=2",
        "model.denoiser.width=32",
        "model.denoiser.num_heads=2",
        "model.denoiser.mlp_dim=64",
        "model.denoiser.time_mlp_dim=64",
        "model.latent_decoder.num_layers=1",
        "model.latent_decoder.width=32",
        "model.latent_decoder.num_heads=2",
        "model.latent_decoder.mlp_dim=64",
        "model.token_decoder.num_layers=1",
        "model.token_decoder.width=32",
        "model.token_decoder.num_heads=2",
        "model.token_decoder.mlp_dim=64",
        "data.source=bible",
        "data.paths=",
        # The Bible's own held-out split: a paper config's (OWT's last 100k documents) is larger
        # than the whole corpus.
        "data.validation_docs=0",
        "data.validation_fraction=0.01",
        "train.microbatches=1",
        "mesh.data=-1",
        "mesh.fsdp=1",
        "mesh.tensor=1",
        *TEST_OVERRIDES,
        "train.steps=1",
        *overrides,
    ]
