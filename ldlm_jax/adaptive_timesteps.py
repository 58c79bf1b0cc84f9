"""Adaptive timestep sampling (CDCD-style time warping) for the diffusion loss.

We keep an exponential moving average of the per-example diffusion loss in B bins over t in [0, 1].
The x0-prediction loss L(t) grows with t; we fit it monotonically and sample t with density
proportional to dL/dt (plus a floor), i.e. t = F^{-1}(u), u ~ U(0, 1), where F(t) = (L(t) - L(0)) /
(L(1) - L(0)) is the normalised fitted loss. Training then spends its steps where the loss changes
fastest, and the loss grows linearly in the warped time u. Before any loss has been seen the
sampler is uniform. `time_warp(state, u)` is the same inverse CDF, usable as the sampling grid.

State: a dict of arrays, part of the train state (checkpointed, shardable, replicated):
  'loss_ema' [B] float32  EMA of the mean diffusion loss in each bin,
  'seen'     [B] float32  1 once a bin has received a loss.

Monotone fit: the mean of the running maximum from the left and the running minimum from the
right; both are non-decreasing, so their average is, and it equals L where L is already monotone.
Bins never seen are filled by linear interpolation between their seen neighbours.
Density per bin: central differences of the fit, clipped at 0, plus floor * mean density.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_adaptive_state(num_bins: int = 100) -> dict[str, jax.Array]:
    """A fresh (uniform) state with `num_bins` bins."""
    return {
        "loss_ema": jnp.zeros((num_bins,), jnp.float32),
        "seen": jnp.zeros((num_bins,), jnp.float32),
    }


def _fill_unseen(values: jax.Array, seen: jax.Array) -> jax.Array:
    """Linear interpolation over unseen bins from the nearest seen bins on either side."""
    num = values.shape[0]
    idx = jnp.arange(num)
    prev = jax.lax.cummax(jnp.where(seen, idx, -1), axis=0)
    nxt = jax.lax.cummin(jnp.where(seen, idx, num), axis=0, reverse=True)
    has_prev, has_next = prev >= 0, nxt < num
    v_prev = values[jnp.clip(prev, 0, num - 1)]
    v_next = values[jnp.clip(nxt, 0, num - 1)]
    frac = (idx - prev) / jnp.maximum(nxt - prev, 1)
    both = v_prev + frac * (v_next - v_prev)
    filled = jnp.where(has_prev & has_next, both, jnp.where(has_prev, v_prev, v_next))
    return jnp.where(seen, values, filled)


def monotone_fit(values: jax.Array) -> jax.Array:
    """A non-decreasing fit of values [B] (mean of left cummax and right cummin)."""
    up = jax.lax.cummax(values, axis=0)
    down = jax.lax.cummin(values, axis=0, reverse=True)
    return 0.5 * (up + down)


def bin_density(state: dict[str, jax.Array], floor: float = 1e-3) -> jax.Array:
    """Normalised sampling probability of each bin, [B] float32 summing to 1.

    Uniform while no bin has been seen or the fitted loss is flat.
    """
    loss, seen = state["loss_ema"], state["seen"] > 0
    num = loss.shape[0]
    fit = monotone_fit(_fill_unseen(loss, seen))
    padded = jnp.concatenate([fit[:1], fit, fit[-1:]])
    slope = jnp.maximum(0.5 * (padded[2:] - padded[:-2]), 0.0)
    # One-sided differences at the ends (central differences would halve them).
    slope = slope.at[0].set(jnp.maximum(fit[1] - fit[0], 0.0))
    slope = slope.at[-1].set(jnp.maximum(fit[-1] - fit[-2], 0.0))
    mean = jnp.mean(slope)
    density = slope + floor * mean
    usable = jnp.any(seen) & (mean > 0)
    density = jnp.where(usable, density, jnp.ones((num,), jnp.float32))
    return density / jnp.sum(density)


def time_warp(state: dict[str, jax.Array], u: jax.Array, floor: float = 1e-3) -> jax.Array:
    """Inverse CDF of the adaptive density: u in [0, 1] (any shape) -> t in [0, 1] float32.

    The density is piecewise constant over the B bins, so the CDF is piecewise linear.
    """
    probs = bin_density(state, floor)
    num = probs.shape[0]
    cdf = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(probs)])
    cdf = cdf / cdf[-1]
    u = jnp.clip(jnp.asarray(u, jnp.float32), 0.0, 1.0)
    b = jnp.clip(jnp.searchsorted(cdf, u, side="right") - 1, 0, num - 1)
    within = (u - cdf[b]) / jnp.maximum(probs[b], 1e-12)
    return jnp.clip((b + jnp.clip(within, 0.0, 1.0)) / num, 0.0, 1.0)


def sample_timesteps(
    state: dict[str, jax.Array], rng: jax.Array, shape, floor: float = 1e-3
) -> jax.Array:
    """t ~ the adaptive density (uniform before any loss is seen); float32 of `shape`."""
    return time_warp(state, jax.random.uniform(rng, shape, jnp.float32), floor)


def update_adaptive_state(
    state: dict[str, jax.Array], t: jax.Array, per_example_loss: jax.Array, decay: float = 0.99
) -> dict[str, jax.Array]:
    """Fold a batch of (t, loss) pairs into the per-bin EMA.

    Args:
      t: [N] float32 diffusion times of the batch.
      per_example_loss: [N] float32 diffusion losses of those examples (gradient stopped).
      decay: EMA decay per update of a bin; a bin seen for the first time takes the batch mean.
    Returns:
      The new state (same structure, shapes and dtypes).
    """
    num = state["loss_ema"].shape[0]
    t = jnp.reshape(t, (-1,)).astype(jnp.float32)
    loss = jax.lax.stop_gradient(jnp.reshape(per_example_loss, (-1,)).astype(jnp.float32))
    bins = jnp.clip(jnp.floor(t * num).astype(jnp.int32), 0, num - 1)
    sums = jax.ops.segment_sum(loss, bins, num_segments=num)
    counts = jax.ops.segment_sum(jnp.ones_like(loss), bins, num_segments=num)
    batch_mean = sums / jnp.maximum(counts, 1.0)
    hit = counts > 0
    seen = state["seen"] > 0
    ema = jnp.where(seen, decay * state["loss_ema"] + (1.0 - decay) * batch_mean, batch_mean)
    return {
        "loss_ema": jnp.where(hit, ema, state["loss_ema"]).astype(jnp.float32),
        "seen": jnp.where(hit, 1.0, state["seen"]).astype(jnp.float32),
    }


def timesteps_from_config(
    config, state: dict[str, jax.Array] | None, rng: jax.Array, shape
) -> jax.Array:
    """t for a training batch: adaptive (config.recipe.timestep_sampler) or U(0, 1)."""
    if config.recipe.timestep_sampler == "uniform" or state is None:
        return jax.random.uniform(rng, shape, jnp.float32)
    return sample_timesteps(state, rng, shape, config.recipe.adaptive_floor)
