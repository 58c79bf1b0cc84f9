"""Sampling time grids: the N + 1 times 1 = t_0 > t_1 > ... > t_N = t_min the samplers step through.

Two grids (config `sampler.time_grid`):
  - 'uniform': t_i = t_min + (1 - t_min) (1 - i / N), uniform in t.
  - 'adaptive': uniform in the warped time u, mapped through a monotone warp u -> t on [0, 1]
    (the adaptive timestep sampler's inverse CDF, ldlm_jax.adaptive_timesteps.time_warp):
    t_i = t_min + (1 - t_min) warp(1 - i / N). The affine rescaling keeps all N steps inside
    [t_min, 1] (clipping the warp at t_min instead would waste steps on repeated times); with
    the identity warp it is the uniform grid. t_0 = 1 and t_N = t_min are set exactly.

Also here: the checks of the sampler settings shared by every entry point, raised before any
compile.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from ldlm_jax.config import SAMPLERS


def check_sampler_settings(sampler: str, steps: int, t_min: float, temperature: float) -> None:
    """ValueError naming the bad setting and its fix: unknown sampler, steps < 1, t_min outside
    [0, 1), temperature <= 0."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (reverse steps from t=1), got {steps!r}")
    if not 0.0 <= float(t_min) < 1.0:
        raise ValueError(f"t_min must lie in [0, 1) (the last time of the grid), got {t_min!r}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be > 0 (1.0 = the model's prior), got {temperature!r}")


def time_grid(
    steps: int, t_min: float, time_warp: Callable[[jnp.ndarray], jnp.ndarray] | None = None
) -> jnp.ndarray:
    """The decreasing grid [steps + 1] float32 from 1 to t_min.

    Args:
      steps: N >= 1, the number of reverse steps.
      t_min: the last time, in [0, 1).
      time_warp: None (uniform in t) or a monotone non-decreasing callable u [N+1] -> t [N+1] on
        [0, 1] with warp(0) = 0, warp(1) = 1 (traced: it may close over traced state).
    Returns:
      t [steps + 1] float32, t[0] = 1, t[-1] = t_min, non-increasing.
    """
    u = 1.0 - jnp.arange(steps + 1, dtype=jnp.float32) / steps
    w = u if time_warp is None else jnp.clip(jnp.asarray(time_warp(u), jnp.float32), 0.0, 1.0)
    t = t_min + (1.0 - t_min) * w
    return t.at[0].set(1.0).at[-1].set(t_min)
