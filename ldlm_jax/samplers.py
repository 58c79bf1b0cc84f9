"""Reverse-time samplers of the latent diffusion: prior noise z_1 -> clean latents z_0.

The model is a VP diffusion z_t = alpha_t z_0 + sigma_t eps (ldlm_jax.schedule), and the network
predicts x0: denoise_fn(z_t [B,K,D], t [B], self_cond [B,K,D]) -> x0_hat [B,K,D]. The score is
score = -(z_t - alpha_t x0_hat) / sigma_t^2. With h = t - s > 0 a step goes from t to s < t:

  euler_maruyama  the reverse VP-SDE dz = [f z - g^2 score] dt + g dW (f = -beta/2, g^2 = beta),
                  Euler-Maruyama at the step's start (the paper's default):
                  z_s = z_t - h [f z_t - beta score] + sqrt(beta h) xi.
  ode_euler       the probability-flow ODE dz/dt = f z - beta score / 2, Euler.
  ode_heun        the same ODE, Heun (2nd order; 2 denoiser calls a step, the last step at s = 0
                  is plain Euler because the ODE is singular at sigma = 0).
  ddim            DDIM (eta = 0): z_s = alpha_s x0_hat + sigma_s (z_t - alpha_t x0_hat) / sigma_t.
  ddpm            the ancestral step z_s ~ q(z_s | z_t, x0 = x0_hat) (DDPM posterior).

The first step, from t = 1: for the tan-d and cosine schedules beta(t) diverges at t = 1
(alpha_1 = 0), so Euler steps there are undefined (and near-singular for any schedule with a
steep start). The first step of euler_maruyama is therefore the DDPM-posterior step and the first
step of ode_euler / ode_heun the DDIM step: these are the exact solutions of the reverse SDE /
probability-flow ODE over the step when x0_hat is held fixed (the linear part is integrated in
closed form), they stay finite at alpha_t = 0 (the step then returns alpha_s x0_hat + sigma_s xi,
resp. alpha_s x0_hat + sigma_s z_1), and they converge to the same limit. Later steps use the
named discretisation unchanged. The DDPM coefficients are computed from the log-SNR difference
(expm1), so tiny steps do not cancel catastrophically in float32.

Loop: N steps over the time grid t_0 = 1 > ... > t_N = t_min (ldlm_jax.time_grids), inside one
jax.lax.scan, then one more denoiser call at t_min: the OUTPUT IS THAT LAST x0 ESTIMATE
x0_hat(z_{t_min}, t_min), not z_{t_min} (so a t_min > 0 leaves no residual noise). The last step
(to t_min) adds no noise. Self-conditioning feeds each call the previous call's x0_hat (zeros on the
first call), or zeros always when self_cond=False.

Temperature: the prior is z_1 ~ N(0, temperature^2 I), and the stochastic samplers' injected
noise is scaled by the temperature too (with alpha_1 = 0 the SDE samplers forget z_1 after one step,
so a prior-only temperature would do nothing for them). temperature = 1 is the model's sampler.

Randomness: the Gaussian of grid point i (i = 0: the prior; i >= 1: the noise of step i - 1 and
the infilling redraw at t_i) is jax.random.normal(fold_in(rng, i), shape): values depend on the
shape only, never on how the batch is sharded. `noise` [N+1, B, K, D] injects exactly these draws
(standard normal, before the temperature) for cross-framework parity tests.

Weights are not closed over: make_sampler(apply_fn, ...) returns one jitted function of
(params, rng, ...), so a new checkpoint of the same shapes reuses the compiled sampler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ldlm_jax.config import SAMPLERS
from ldlm_jax.infilling import check_infilling_supported, check_known, replace_known
from ldlm_jax.time_grids import check_sampler_settings, time_grid

STOCHASTIC_SAMPLERS = ("euler_maruyama", "ddpm")
_SIGMA_EPS = 1e-6  # below this sigma_s the Heun correction (1/sigma_s^2) is skipped


def _alpha_sigma(schedule, t):
    # tan-d at t = 1 gives alpha = cos(pi/2) ~ -4e-8 in float32: clip to the true range.
    alpha, sigma = schedule.alpha_sigma(t)
    return jnp.clip(alpha, 0.0, 1.0), jnp.clip(sigma, 0.0, 1.0)


def ddpm_coefficients(schedule, t, s):
    """(a, b, c) of the DDPM-posterior step z_s = a z_t + b x0_hat + c xi (scalars, float32).

    q(z_s | z_t, x0) = N(alpha_t sigma_s^2 / (alpha_s sigma_t^2) z_t + alpha_s r x0, sigma_s^2 r)
    with r = 1 - SNR_t / SNR_s. Finite at alpha_t = 0 (t = 1) and at sigma_s = 0 (s = 0).
    """
    a_t, s_t = _alpha_sigma(schedule, t)
    a_s, s_s = _alpha_sigma(schedule, s)
    log_ratio = 2.0 * (jnp.log(a_t) - jnp.log(s_t) - jnp.log(a_s) + jnp.log(s_s))
    log_ratio = jnp.minimum(log_ratio, 0.0)  # log SNR_t/SNR_s <= 0
    r = -jnp.expm1(log_ratio)
    moved = t > s
    a = jnp.where(moved, s_s / s_t * jnp.exp(0.5 * log_ratio), 1.0)
    b = jnp.where(moved, a_s * r, 0.0)
    c = jnp.where(moved, s_s * jnp.sqrt(r), 0.0)
    return a, b, c


def ddim_coefficients(schedule, t, s):
    """(a, b, 0) of the DDIM (eta = 0) step z_s = a z_t + b x0_hat (scalars, float32)."""
    a_t, s_t = _alpha_sigma(schedule, t)
    a_s, s_s = _alpha_sigma(schedule, s)
    a = s_s / s_t
    return a, a_s - a_t * a, jnp.zeros_like(a)


def euler_coefficients(schedule, t, h, score_weight: float, stochastic: bool):
    """(a, b, c) of one Euler(-Maruyama) step of length h back from t (scalars, float32).

    The reverse drift is f z - score_weight * beta * score with score = -(z - alpha x0)/sigma^2
    (score_weight 1: the SDE; 1/2: the probability-flow ODE); the SDE adds sqrt(beta h) xi.
    """
    alpha, sigma = _alpha_sigma(schedule, t)
    bh = schedule.beta(t) * h
    inv_var = 1.0 / jnp.maximum(sigma**2, 1e-20)
    a = 1.0 + bh * (0.5 - score_weight * inv_var)
    b = score_weight * bh * alpha * inv_var
    c = jnp.sqrt(jnp.maximum(bh, 0.0)) if stochastic else jnp.zeros_like(a)
    return a, b, c


def _step_coefficients(sampler, schedule, t, s, first):
    """(a, b, c) for the affine samplers; the first step of the Euler ones is exact (see top)."""
    if sampler == "ddpm":
        return ddpm_coefficients(schedule, t, s)
    if sampler == "ddim":
        return ddim_coefficients(schedule, t, s)
    exact = ddpm_coefficients if sampler == "euler_maruyama" else ddim_coefficients
    t_safe = jnp.where(first, 0.5, t)  # keep beta(1) = inf out of the unused branch
    euler = euler_coefficients(
        schedule,
        t_safe,
        t - s,
        score_weight=1.0 if sampler == "euler_maruyama" else 0.5,
        stochastic=sampler == "euler_maruyama",
    )
    return tuple(jnp.where(first, e, u) for e, u in zip(exact(schedule, t, s), euler, strict=True))


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (batch, latents, dim) with positive sizes, got {shape}")
    return shape


def _check_noise(noise, steps: int, shape) -> None:
    if noise is not None and tuple(noise.shape) != (steps + 1, *shape):
        raise ValueError(
            f"noise has shape {tuple(noise.shape)}; it must be [steps + 1, B, K, D] = "
            f"{(steps + 1, *shape)} (index 0: the prior, index i: the draw at grid point i)"
        )


def sample_latents(
    denoise_fn: Callable,
    schedule,
    shape,
    rng: jax.Array,
    *,
    sampler: str = "euler_maruyama",
    steps: int = 200,
    t_min: float = 0.05,
    time_warp: Callable | None = None,
    temperature: float = 1.0,
    self_cond: bool = True,
    known_latents: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    noise: jax.Array | None = None,
    sharding=None,
) -> jax.Array:
    """Sample clean latents with the reverse-time `sampler` (jittable; sampler/steps are static).

    Args:
      denoise_fn: (z_t [B,K,D] f32, t [B] f32, self_cond [B,K,D] f32) -> x0_hat [B,K,D].
      schedule: a schedule with alpha_sigma(t) and beta(t) (ldlm_jax.schedule).
      shape: (B, K, D), static.
      rng: a PRNG key.
      sampler: one of config.SAMPLERS ('euler_maruyama', 'ode_euler', 'ode_heun', 'ddim',
        'ddpm'). steps: N >= 1 grid steps. t_min: the last grid time, in [0, 1).
      time_warp: None (grid uniform in t) or a callable u -> t (the adaptive grid).
      temperature: prior std (and stochastic noise scale), > 0.
      self_cond: feed the previous x0 estimate to the denoiser (zeros when False).
      known_latents: [B,K,D] float32 clean latents of the known positions, with
      known_mask: [B,K] bool (True = known): infilling by replacement (ldlm_jax.infilling).
      noise: optional [N+1, B, K, D] float32 standard normal draws replacing the internal ones.
      sharding: optional sharding of [B,K,D] (batch axis sharded) imposed on the loop state.
    Returns:
      z0 [B, K, D] float32: the last x0 estimate, x0_hat(z_{t_min}, t_min); known positions are
      exactly known_latents.
    """
    check_sampler_settings(sampler, steps, t_min, temperature)
    shape = _check_shape(shape)
    check_known(shape, known_latents, known_mask)
    _check_noise(noise, steps, shape)
    t_min, temperature = float(t_min), float(temperature)
    infill = known_latents is not None
    if infill:
        known_latents = jnp.asarray(known_latents, jnp.float32)
        known_mask = jnp.asarray(known_mask, bool)
    needs_noise = sampler in STOCHASTIC_SAMPLERS or infill

    def constrain(z):
        return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)

    def draw(i, injected):
        if injected is not None:
            return jnp.asarray(injected, jnp.float32)
        return jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32)

    def denoise(z, t, sc):
        t_b = jnp.full((shape[0],), t, jnp.float32)
        return jnp.asarray(denoise_fn(z, t_b, sc if self_cond else zeros), jnp.float32)

    def place_known(z, t, eps):
        if not infill:
            return z
        alpha, sigma = _alpha_sigma(schedule, t)
        return replace_known(z, known_latents, known_mask, alpha, sigma, eps)

    grid = time_grid(steps, t_min, time_warp)
    zeros = jnp.zeros(shape, jnp.float32)
    eps0 = draw(0, None if noise is None else noise[0])
    z = constrain(place_known(temperature * eps0, grid[0], eps0))

    def body(carry, xs):
        z, x0_prev = carry
        i, t, s, injected = xs
        first, last = i == 0, i == steps - 1
        eps = draw(i + 1, injected) if needs_noise else None
        x0 = denoise(z, t, x0_prev)
        if sampler == "ode_heun":
            z_new, x0 = _heun_step(schedule, denoise, z, x0, t, s, first)
        else:
            a, b, c = _step_coefficients(sampler, schedule, t, s, first)
            z_new = a * z + b * x0
            if sampler in STOCHASTIC_SAMPLERS:
                z_new = z_new + jnp.where(last, 0.0, c * temperature) * eps
        z_new = constrain(place_known(z_new, s, eps))
        return (z_new, x0), None

    xs = (jnp.arange(steps), grid[:-1], grid[1:], None if noise is None else noise[1:])
    (z, x0_prev), _ = jax.lax.scan(body, (z, zeros), xs)
    x0 = denoise(z, grid[-1], x0_prev)
    if infill:
        x0 = jnp.where(known_mask[..., None], known_latents, x0)
    return constrain(x0)


def _heun_step(schedule, denoise, z, x0, t, s, first):
    """Heun on the probability-flow ODE from t to s; DDIM on the first step, Euler at sigma_s=0.

    Returns (z_s, the latest x0 estimate) (the corrector's, when it ran)."""
    h = t - s
    pred = _step_coefficients("ode_euler", schedule, t, s, first)
    z_pred = pred[0] * z + pred[1] * x0
    _, sigma_s = _alpha_sigma(schedule, s)

    def correct(_):
        x0_s = denoise(z_pred, s, x0)
        a2, b2, _ = euler_coefficients(schedule, s, h, score_weight=0.5, stochastic=False)
        # z_t - h d(z_pred, s) = z_t + (a2 - 1) z_pred + b2 x0_s; Heun averages the slopes.
        return 0.5 * z_pred + 0.5 * (z + (a2 - 1.0) * z_pred + b2 * x0_s), x0_s

    use_corrector = jnp.logical_and(jnp.logical_not(first), sigma_s > _SIGMA_EPS)
    return jax.lax.cond(use_corrector, correct, lambda _: (z_pred, x0), None)


def make_sampler(
    apply_fn: Callable,
    schedule,
    shape,
    *,
    sampler: str = "euler_maruyama",
    steps: int = 200,
    t_min: float = 0.05,
    time_warp: Callable | None = None,
    temperature: float = 1.0,
    self_cond: bool = True,
    sharding=None,
) -> Callable:
    """A jitted sampler whose weights are arguments (a new checkpoint does not recompile).

    Args:
      apply_fn: (params, z_t [B,K,D], t [B], self_cond [B,K,D]) -> x0_hat [B,K,D] float32.
      schedule, shape, sampler, steps, t_min, temperature, self_cond: as in sample_latents
        (static: changing them builds a new sampler).
      time_warp: None, or (warp_state, u) -> t (e.g. ldlm_jax.adaptive_timesteps.time_warp);
        warp_state is then an argument of the returned function.
      sharding: optional sharding of [B,K,D] (batch sharded): the loop state and output use it.
    Returns:
      sample(params, rng, warp_state=None, known_latents=None, known_mask=None, noise=None)
        -> z0 [B,K,D] float32, checked before compiling; `.jitted` is the underlying jax.jit.
    """
    check_sampler_settings(sampler, steps, t_min, temperature)
    shape = _check_shape(shape)

    def run(params, rng, warp_state, known_latents, known_mask, noise):
        warp = None if time_warp is None else functools.partial(time_warp, warp_state)
        return sample_latents(
            functools.partial(apply_fn, params),
            schedule,
            shape,
            rng,
            sampler=sampler,
            steps=steps,
            t_min=t_min,
            time_warp=warp,
            temperature=temperature,
            self_cond=self_cond,
            known_latents=known_latents,
            known_mask=known_mask,
            noise=noise,
            sharding=sharding,
        )

    jitted = jax.jit(run, out_shardings=sharding)

    def sample(params, rng, warp_state=None, known_latents=None, known_mask=None, noise=None):
        check_known(shape, known_latents, known_mask)
        _check_noise(noise, steps, shape)
        if time_warp is not None and warp_state is None:
            raise ValueError("this sampler uses a time warp: pass its warp_state")
        return jitted(params, rng, warp_state, known_latents, known_mask, noise)

    sample.jitted = jitted
    return sample


__all__ = [
    "SAMPLERS",
    "STOCHASTIC_SAMPLERS",
    "check_infilling_supported",
    "ddim_coefficients",
    "ddpm_coefficients",
    "euler_coefficients",
    "make_sampler",
    "sample_latents",
]
