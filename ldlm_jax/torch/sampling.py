"""PyTorch twins of the noise schedules, the adaptive time warp and the reverse-time samplers.

Mirrors ldlm_jax/schedule.py, adaptive_timesteps.time_warp and ldlm_jax/samplers.py step for step
in float32, with the randomness injected (`noise`), so a JAX run and a torch run given the same
noise produce the same latents up to float rounding. No jax import.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("tan_d", "cosine", "linear")


class TanDSchedule:
    """alpha_t = 1/sqrt(1 + d^2 tan^2(pi t/2)), as cos / sqrt(cos^2 + d^2 sin^2)."""

    def __init__(self, d: float = 3.0):
        self.d = float(d)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float32)
        cos, sin = torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)
        norm = torch.sqrt(cos**2 + (self.d * sin) ** 2)
        return cos / norm, self.d * sin / norm

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        return -2.0 * torch.log(self.d * torch.tan(0.5 * math.pi * t))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        cos, sin = torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)
        return math.pi * self.d**2 * sin / (cos * (cos**2 + (self.d * sin) ** 2))


class LinearSchedule:
    """VP-SDE linear schedule: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_alpha2(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def alpha_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float32)
        log_alpha2 = self._log_alpha2(t)
        return torch.exp(0.5 * log_alpha2), torch.sqrt(-torch.expm1(log_alpha2))

    def log_snr(self, t):
        t = torch.as_tensor(t, dtype=torch.float32)
        log_alpha2 = self._log_alpha2(t)
        return log_alpha2 - torch.log(-torch.expm1(log_alpha2))

    def beta(self, t):
        t = torch.as_tensor(t, dtype=torch.float32)
        return self.beta_min + t * (self.beta_max - self.beta_min)


def get_schedule(name: str, tan_d: float = 3.0):
    """'tan_d' | 'cosine' | 'linear' -> schedule; ValueError naming the supported ones."""
    if name == "tan_d":
        return TanDSchedule(tan_d)
    if name == "cosine":
        return TanDSchedule(1.0)
    if name == "linear":
        return LinearSchedule()
    raise ValueError(f"diffusion schedule {name!r} has no PyTorch twin; supported: {SCHEDULES}")


def schedule_from_meta(meta: dict):
    """The schedule named in an export's config.json."""
    d = meta.get("diffusion", {})
    return get_schedule(d.get("schedule"), float(d.get("tan_d", 3.0)))


# ---------------------------------------------------------------------- adaptive time warp


def _fill_unseen(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    num = values.shape[0]
    idx = torch.arange(num)
    prev = torch.cummax(torch.where(seen, idx, -1), 0).values
    nxt = torch.flip(torch.cummin(torch.flip(torch.where(seen, idx, num), [0]), 0).values, [0])
    has_prev, has_next = prev >= 0, nxt < num
    v_prev, v_next = values[prev.clamp(0, num - 1)], values[nxt.clamp(0, num - 1)]
    frac = (idx - prev) / torch.clamp(nxt - prev, min=1)
    both = v_prev + frac.float() * (v_next - v_prev)
    filled = torch.where(has_prev & has_next, both, torch.where(has_prev, v_prev, v_next))
    return torch.where(seen, values, filled)


def bin_density(state: dict, floor: float = 1e-3) -> torch.Tensor:
    """Adaptive sampling probability per bin, [B] float32 (adaptive_timesteps.bin_density)."""
    loss, seen = state["loss_ema"].float(), state["seen"] > 0
    filled = _fill_unseen(loss, seen)
    up = torch.cummax(filled, 0).values
    down = torch.flip(torch.cummin(torch.flip(filled, [0]), 0).values, [0])
    fit = 0.5 * (up + down)
    padded = torch.cat([fit[:1], fit, fit[-1:]])
    slope = torch.clamp(0.5 * (padded[2:] - padded[:-2]), min=0.0)
    slope[0] = torch.clamp(fit[1] - fit[0], min=0.0)
    slope[-1] = torch.clamp(fit[-1] - fit[-2], min=0.0)
    mean = slope.mean()
    density = slope + floor * mean
    if not (bool(seen.any()) and float(mean) > 0):
        density = torch.ones_like(density)
    return density / density.sum()


def time_warp(state: dict, u: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Inverse CDF of the adaptive density: u in [0, 1] -> t in [0, 1] float32."""
    probs = bin_density(state, floor)
    num = probs.shape[0]
    cdf = torch.cat([torch.zeros(1), torch.cumsum(probs, 0)])
    cdf = cdf / cdf[-1]
    u = torch.as_tensor(u, dtype=torch.float32).clamp(0.0, 1.0)
    b = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, num - 1)
    within = (u - cdf[b]) / torch.clamp(probs[b], min=1e-12)
    return ((b + within.clamp(0.0, 1.0)) / num).clamp(0.0, 1.0)


# ---------------------------------------------------------------------- samplers

SAMPLERS = ("euler_maruyama", "ode_euler", "ode_heun", "ddim", "ddpm")
STOCHASTIC_SAMPLERS = ("euler_maruyama", "ddpm")
_SIGMA_EPS = 1e-6


def check_sampler_settings(sampler: str, steps: int, t_min: float, temperature: float) -> None:
    """ValueError naming a bad setting (as ldlm_jax.time_grids.check_sampler_settings)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= float(t_min) < 1.0:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min!r}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def time_grid(steps: int, t_min: float, warp=None) -> torch.Tensor:
    """[steps + 1] float32 from 1 down to t_min, uniform in t or in the warped time u."""
    u = 1.0 - torch.arange(steps + 1, dtype=torch.float32) / steps
    w = u if warp is None else torch.as_tensor(warp(u), dtype=torch.float32).clamp(0.0, 1.0)
    t = t_min + (1.0 - t_min) * w
    t[0], t[-1] = 1.0, t_min
    return t


def _alpha_sigma(schedule, t):
    alpha, sigma = schedule.alpha_sigma(t)
    return alpha.clamp(0.0, 1.0), sigma.clamp(0.0, 1.0)


def ddpm_coefficients(schedule, t, s):
    """(a, b, c): z_s = a z_t + b x0_hat + c xi, the DDPM posterior (log-SNR form)."""
    a_t, s_t = _alpha_sigma(schedule, t)
    a_s, s_s = _alpha_sigma(schedule, s)
    log_ratio = 2.0 * (torch.log(a_t) - torch.log(s_t) - torch.log(a_s) + torch.log(s_s))
    log_ratio = log_ratio.clamp(max=0.0)
    r = -torch.expm1(log_ratio)
    if not bool(t > s):
        return torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0)
    return s_s / s_t * torch.exp(0.5 * log_ratio), a_s * r, s_s * torch.sqrt(r)


def ddim_coefficients(schedule, t, s):
    """(a, b, 0): the DDIM (eta = 0) step."""
    a_t, s_t = _alpha_sigma(schedule, t)
    a_s, s_s = _alpha_sigma(schedule, s)
    a = s_s / s_t
    return a, a_s - a_t * a, torch.zeros_like(a)


def euler_coefficients(schedule, t, h, score_weight: float, stochastic: bool):
    """(a, b, c) of one Euler(-Maruyama) step of length h back from t."""
    alpha, sigma = _alpha_sigma(schedule, t)
    bh = schedule.beta(t) * h
    inv_var = 1.0 / torch.clamp(sigma**2, min=1e-20)
    a = 1.0 + bh * (0.5 - score_weight * inv_var)
    b = score_weight * bh * alpha * inv_var
    c = torch.sqrt(torch.clamp(bh, min=0.0)) if stochastic else torch.zeros_like(a)
    return a, b, c


def _step_coefficients(sampler, schedule, t, s, first: bool):
    if sampler == "ddpm":
        return ddpm_coefficients(schedule, t, s)
    if sampler == "ddim":
        return ddim_coefficients(schedule, t, s)
    if first:  # beta(1) diverges: the exact step (see ldlm_jax/samplers.py)
        exact = ddpm_coefficients if sampler == "euler_maruyama" else ddim_coefficients
        return exact(schedule, t, s)
    weight = 1.0 if sampler == "euler_maruyama" else 0.5
    return euler_coefficients(schedule, t, t - s, weight, sampler == "euler_maruyama")


@torch.no_grad()
def sample_latents(
    denoise_fn,
    schedule,
    shape=None,
    *,
    sampler="euler_maruyama",
    steps=200,
    t_min=0.05,
    time_warp=None,
    temperature=1.0,
    self_cond=True,
    known_latents=None,
    known_mask=None,
    noise=None,
    generator=None,
    device=None,
):
    """The reverse-time loop of ldlm_jax.samplers.sample_latents, step for step.

    Args:
      denoise_fn: (z_t [B,K,D], t [B], self_cond [B,K,D]) -> x0_hat [B,K,D] float32.
      shape: (B, K, D); may be omitted when `noise` is given.
      noise: [steps + 1, B, K, D] standard normal draws (index 0: the prior; i: grid point i),
        the same array the JAX sampler takes; else draws come from torch `generator`.
      known_latents [B,K,D] / known_mask [B,K] bool: infilling by replacement.
      device: where the loop runs (the model's device; draws are made on the generator's).
    Returns:
      z0 [B, K, D] float32: the last x0 estimate, at t_min.
    """
    check_sampler_settings(sampler, steps, t_min, temperature)
    if noise is not None:
        noise = torch.as_tensor(noise, dtype=torch.float32)
        shape = tuple(noise.shape[1:]) if shape is None else tuple(shape)
        if tuple(noise.shape) != (steps + 1, *shape):
            raise ValueError(f"noise must be [steps + 1, B, K, D] = {(steps + 1, *shape)}")
    shape = tuple(int(n) for n in shape)
    infill = known_latents is not None
    if infill:
        known_latents = torch.as_tensor(known_latents, dtype=torch.float32, device=device)
        known_mask = torch.as_tensor(known_mask, device=device).bool()
    needs_noise = sampler in STOCHASTIC_SAMPLERS or infill

    def draw(i):
        if noise is not None:
            return noise[i].to(device)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    zeros = torch.zeros(shape, dtype=torch.float32, device=device)

    def denoise(z, t, sc):
        t_b = torch.full((shape[0],), float(t), dtype=torch.float32, device=device)
        return denoise_fn(z, t_b, sc if self_cond else zeros).float()

    def place_known(z, t, eps):
        if not infill:
            return z
        alpha, sigma = _alpha_sigma(schedule, t)
        noised = alpha * known_latents + (0.0 if eps is None else sigma * eps)
        return torch.where(known_mask[..., None], noised, z)

    grid = time_grid(steps, float(t_min), time_warp)
    eps0 = draw(0)
    z = place_known(temperature * eps0, grid[0], eps0)
    x0_prev = zeros
    for i in range(steps):
        t, s, first, last = grid[i], grid[i + 1], i == 0, i == steps - 1
        eps = draw(i + 1) if needs_noise else None
        x0 = denoise(z, t, x0_prev)
        if sampler == "ode_heun":
            z_new, x0 = _heun_step(schedule, denoise, z, x0, t, s, first)
        else:
            a, b, c = _step_coefficients(sampler, schedule, t, s, first)
            z_new = a * z + b * x0
            if sampler in STOCHASTIC_SAMPLERS:
                z_new = z_new + (0.0 if last else c * temperature) * eps
        z, x0_prev = place_known(z_new, s, eps), x0
    x0 = denoise(z, grid[-1], x0_prev)
    if infill:
        x0 = torch.where(known_mask[..., None], known_latents, x0)
    return x0


def _heun_step(schedule, denoise, z, x0, t, s, first):
    """Heun on the probability-flow ODE; DDIM on the first step, Euler when sigma_s ~ 0."""
    a, b, _ = _step_coefficients("ode_euler", schedule, t, s, first)
    z_pred = a * z + b * x0
    _, sigma_s = _alpha_sigma(schedule, s)
    if first or not bool(sigma_s > _SIGMA_EPS):
        return z_pred, x0
    x0_s = denoise(z_pred, s, x0)
    a2, b2, _ = euler_coefficients(schedule, s, t - s, 0.5, False)
    return 0.5 * z_pred + 0.5 * (z + (a2 - 1.0) * z_pred + b2 * x0_s), x0_s
