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
