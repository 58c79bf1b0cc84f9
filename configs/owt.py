"""LDLM on OpenWebText at paper scale (arXiv 2605.07933): GPT-2 small frozen at hidden_states[-3].

Sequences of 1024 GPT-2 BPE tokens, packed; K = L = 1024 latents of width 768. Encoder 6 layers
(~45M), denoiser 12 LLaMA blocks (~130M), latent decoder 6 layers (~45M), token decoder 3 layers +
50257-way head (~62M); ~280M trainable + 124M frozen. AdamW 2e-4, batch 512, bf16, EMA 0.9999,
gamma warmup over 50k steps, adaptive timesteps, sigma_dec = 3.

Prepare the data once (GPT-2 tokens, last 100k documents held out), then train:

  ldlm-prepare-data --config configs/owt.py --output gs://BUCKET/owt_data
  ldlm-train --config configs/owt.py --workdir gs://BUCKET/owt --config.data.paths=gs://BUCKET/owt_data

frozen_lm.source='gpt2' is the hub name (needs network); on a machine without it, run
`ldlm-convert-lm gpt2 --output DIR` elsewhere and pass --config.frozen_lm.source=DIR.
Inspect sizes and FLOPs without any weights: ldlm-info --config configs/owt.py
"""

from ldlm_jax.config import ConfigError, base_config


def get_config(variant=None):
    if variant:
        raise ConfigError(f"configs/owt.py has no variants (got {variant!r})")
    c = base_config()
    c.name = "owt"
    c.frozen_lm.source = "gpt2"
    c.frozen_lm.layer = -3  # residual stream after block 10 of 12, no final LayerNorm
    c.frozen_lm.dtype = "bfloat16"
    c.frozen_lm.stats_sequences = 1024

    c.model.latent_count = 0  # K = L
    c.model.latent_dim = 768
    c.model.dtype = "bfloat16"

    c.data.source = "prepared"
    c.data.seq_len = 1024
    c.data.mode = "pack"
    c.data.validation_fraction = 0.0  # the held-out split is made by ldlm-prepare-data
    c.data.hf_dataset = "Skylion007/openwebtext"  # ldlm-prepare-data's input (needs network)
    c.data.validation_docs = 100_000  # ldlm-prepare-data holds out the last 100k documents

    c.train.steps = 1_000_000
    c.train.batch_size = 512
    c.recipe.gamma_warmup_steps = 50_000
    return c
