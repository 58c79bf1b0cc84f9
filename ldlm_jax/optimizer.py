"""The optimiser: AdamW with linear warmup then cosine decay, global-norm clipping (LDLM_SPEC.md).

Defaults (config.train): lr 2e-4, betas (0.9, 0.98), eps 1e-6, weight decay 1e-5, 1k warmup
steps, clip 1.0. Weight decay applies to matrices only (ndim >= 2): norm scales and biases are
not decayed, the usual transformer practice. The cosine decays to 0 at train.steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(config: ConfigDict) -> optax.Schedule:
    """step (int32 scalar) -> learning rate (float32 scalar): 0 -> lr over the warmup, then
    cosine to 0 at train.steps (constant lr when train.steps is within the warmup)."""
    train = config.train
    warmup = max(int(train.lr_warmup_steps), 0)
    total = max(int(train.steps), warmup + 1)
    if warmup == 0:
        return optax.cosine_decay_schedule(train.learning_rate, total)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=0.0,
    )


def decay_mask(params):
    """True for the leaves weight decay applies to (matrices, ndim >= 2)."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, lr schedule) for the trainable params (float32 master weights).

    The chain clips the global gradient norm to train.grad_clip (0 disables), then AdamW.
    """
    train = config.train
    schedule = learning_rate_schedule(config)
    parts = []
    if train.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=train.b1,
            b2=train.b2,
            eps=train.eps,
            weight_decay=train.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def ema_update(ema, params, decay: float):
    """EMA of the trainable params: ema <- decay * ema + (1 - decay) * params (float32)."""
    return jax.tree.map(lambda e, p: e * decay + p.astype(e.dtype) * (1.0 - decay), ema, params)
