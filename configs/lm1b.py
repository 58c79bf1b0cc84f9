"""LDLM on LM1B at paper scale: GPT-2 small frozen at hidden_states[-3], 128 tokens, padded.

One sentence per row (GPT-2 BPE; the field's bert-base-uncased tokens do not fit a GPT-2 frozen
LM), K = L = 128 latents of width 768; the networks are those of configs/owt.py. Run:

  ldlm-train --config configs/lm1b.py --workdir gs://BUCKET/lm1b

The data come from tensorflow-datasets 'lm1b' (downloaded to TFDS_DATA_DIR on first use; needs
network). frozen_lm.source='gpt2' is the hub name; offline, pass a folder written by
ldlm-convert-lm via --config.frozen_lm.source=DIR.
Sizes and FLOPs without weights: ldlm-info --config configs/lm1b.py
"""

from ldlm_jax.config import ConfigError, base_config


def get_config(variant=None):
    if variant:
        raise ConfigError(f"configs/lm1b.py has no variants (got {variant!r})")
    c = base_config()
    c.name = "lm1b"
    c.frozen_lm.source = "gpt2"
    c.frozen_lm.layer = -3
    c.frozen_lm.dtype = "bfloat16"
    c.frozen_lm.stats_sequences = 4096

    c.model.latent_count = 0  # K = L
    c.model.latent_dim = 768
    c.model.dtype = "bfloat16"

    c.data.source = "tfds_lm1b"
    c.data.seq_len = 128
    c.data.mode = "pad"

    c.train.steps = 1_000_000
    c.train.batch_size = 512
    c.recipe.gamma_warmup_steps = 50_000
    return c
