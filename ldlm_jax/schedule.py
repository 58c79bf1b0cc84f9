"""Noise schedules of the variance-preserving latent diffusion: z_t = alpha_t z_0 + sigma_t eps.

All schedules share one interface, with t in [0, 1], alpha_0 = 1, alpha_1 = 0 (up to float error)
and alpha_t^2 + sigma_t^2 = 1:
  - `alpha_sigma(t)`: (alpha_t, sigma_t), each shaped like t, float32.
  - `log_snr(t)`: log(alpha_t^2 / sigma_t^2).
  - `beta(t)`: -d log(alpha_t^2)/dt, the VP-SDE's drift/diffusion rate (f = -beta/2, g^2 = beta).

The paper's schedule is tan-d with d = 3: alpha_t = 1 / sqrt(1 + d^2 tan^2(pi t / 2)). (One
third-party port calls 1 - t^3 by this name; that is a different schedule.) We evaluate it as
cos / sqrt(cos^2 + d^2 sin^2), which stays finite at t = 1.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ldlm_jax.config import SCHEDULES, ConfigError


@dataclasses.dataclass(frozen=True)
class TanDSchedule:
    """alpha_t = 1/sqrt(1 + d^2 tan^2(pi t/2)); d = 1 is the cosine schedule."""

    d: float = 3.0

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        t = jnp.asarray(t, jnp.float32)
        cos, sin = jnp.cos(0.5 * math.pi * t), jnp.sin(0.5 * math.pi * t)
        norm = jnp.sqrt(cos**2 + (self.d * sin) ** 2)
        return cos / norm, self.d * sin / norm

    def log_snr(self, t: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(t, jnp.float32)
        return -2.0 * jnp.log(self.d * jnp.tan(0.5 * math.pi * t))

    def beta(self, t: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(t, jnp.float32)
        cos, sin = jnp.cos(0.5 * math.pi * t), jnp.sin(0.5 * math.pi * t)
        return math.pi * self.d**2 * sin / (cos * (cos**2 + (self.d * sin) ** 2))


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """The VP-SDE 'linear' schedule: beta(t) = beta_min + t (beta_max - beta_min)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _log_alpha2(self, t: jnp.ndarray) -> jnp.ndarray:
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def alpha_sigma(self, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        t = jnp.asarray(t, jnp.float32)
        log_alpha2 = self._log_alpha2(t)
        return jnp.exp(0.5 * log_alpha2), jnp.sqrt(-jnp.expm1(log_alpha2))

    def log_snr(self, t: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(t, jnp.float32)
        log_alpha2 = self._log_alpha2(t)
        return log_alpha2 - jnp.log(-jnp.expm1(log_alpha2))

    def beta(self, t: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(t, jnp.float32)
        return self.beta_min + t * (self.beta_max - self.beta_min)


def get_schedule(name: str, tan_d: float = 3.0):
    """The schedule called `name` ('tan_d', 'cosine' or 'linear')."""
    if name == "tan_d":
        return TanDSchedule(d=tan_d)
    if name == "cosine":
        return TanDSchedule(d=1.0)
    if name == "linear":
        return LinearSchedule()
    raise ConfigError(f"unknown diffusion.schedule {name!r}; choose one of {list(SCHEDULES)}")


def schedule_from_config(config) -> TanDSchedule | LinearSchedule:
    """The schedule named by `config.diffusion`."""
    return get_schedule(config.diffusion.schedule, config.diffusion.tan_d)
