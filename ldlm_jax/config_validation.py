"""Config validation: the cross-key checks that run on every config before anything compiles.

`validate_config` needs no model, data or devices: it checks choices (schedule, decoder loss,
sampler, data source, dtypes, ...), widths against head counts, K against L, the recipe's ranges
and the mesh sizes, and raises `ConfigError` naming the key. `ldlm_jax.config` runs it after
loading a file and applying overrides, and re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ml_collections import ConfigDict

SCHEDULES = ("tan_d", "cosine", "linear")
DECODER_LOSSES = ("mse", "ce")
TIMESTEP_SAMPLERS = ("adaptive", "uniform")
SAMPLERS = ("euler_maruyama", "ode_euler", "ode_heun", "ddim", "ddpm")
TIME_GRIDS = ("uniform", "adaptive")
DATA_SOURCES = ("bible", "text_files", "prepared", "tfds_lm1b", "synthetic")
DATA_MODES = ("pack", "pad")
TEXT_UNITS = ("line", "paragraph", "file")
DTYPES = ("float32", "bfloat16")
REMAT_MODES = ("none", "full", "dots")
ATTENTION_KERNELS = ("auto", "xla", "flash")  # ldlm_jax.attention_kernels


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or conflicts with another key."""


def _lookup(config: ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_choice(config: ConfigDict, dotted: str, choices: Sequence[str]) -> None:
    value = _lookup(config, dotted)
    if value not in choices:
        raise ConfigError(f"config key {dotted!r} is {value!r}; choose one of {list(choices)}")


def _check_heads(config: ConfigDict, section: str, width: int) -> None:
    heads = config.model[section].num_heads
    if heads <= 0 or width % heads:
        raise ConfigError(
            f"model.{section}.num_heads={heads} does not divide its width {width}"
            + (" (model.latent_dim)" if section == "encoder" else f" (model.{section}.width)")
        )


def latent_count(config: ConfigDict) -> int:
    """K, the number of latents: model.latent_count, or data.seq_len when that is 0."""
    return config.model.latent_count or config.data.seq_len


def validate_config(config: ConfigDict) -> None:
    """Cross-key checks that need no model or data; raises ConfigError naming the key."""
    _check_choice(config, "diffusion.schedule", SCHEDULES)
    _check_choice(config, "recipe.decoder_loss", DECODER_LOSSES)
    _check_choice(config, "recipe.timestep_sampler", TIMESTEP_SAMPLERS)
    _check_choice(config, "sampler.name", SAMPLERS)
    _check_choice(config, "sampler.time_grid", TIME_GRIDS)
    _check_choice(config, "data.source", DATA_SOURCES)
    _check_choice(config, "data.mode", DATA_MODES)
    _check_choice(config, "data.text_unit", TEXT_UNITS)
    if not 0.0 <= config.data.validation_fraction < 1.0 or config.data.validation_docs < 0:
        raise ConfigError(
            "data.validation_fraction must lie in [0, 1) and data.validation_docs must be >= 0"
        )
    _check_choice(config, "model.dtype", DTYPES)
    _check_choice(config, "model.param_dtype", DTYPES)
    _check_choice(config, "model.remat", REMAT_MODES)
    _check_choice(config, "model.attention", ATTENTION_KERNELS)
    _check_choice(config, "frozen_lm.dtype", DTYPES)
    model = config.model
    if model.latent_dim != model.denoiser.width:
        raise ConfigError(
            f"model.latent_dim={model.latent_dim} must equal model.denoiser.width="
            f"{model.denoiser.width}: the denoiser works on the latents at their own width"
        )
    _check_heads(config, "encoder", model.latent_dim)
    for section in ("denoiser", "latent_decoder", "token_decoder"):
        _check_heads(config, section, model[section].width)
    if model.denoiser.unet_skips and model.denoiser.num_layers % 2:
        raise ConfigError(
            f"model.denoiser.num_layers={model.denoiser.num_layers} must be even when "
            "model.denoiser.unet_skips is on (half the blocks feed the other half)"
        )
    if model.perceiver_local_bias < 0:
        raise ConfigError(f"model.perceiver_local_bias={model.perceiver_local_bias} must be >= 0")
    if model.latent_count < 0:
        raise ConfigError(f"model.latent_count={model.latent_count} must be >= 0 (0 means K = L)")
    if model.latent_count > config.data.seq_len:
        raise ConfigError(
            f"model.latent_count={model.latent_count} > data.seq_len={config.data.seq_len}: "
            "K > L is not supported (the encoder compresses, it does not expand)"
        )
    if config.data.seq_len <= 0:
        raise ConfigError(f"data.seq_len={config.data.seq_len} must be positive")
    if not 0.0 <= config.diffusion.self_cond_prob <= 1.0:
        raise ConfigError("diffusion.self_cond_prob must lie in [0, 1]")
    if config.diffusion.tan_d <= 0:
        raise ConfigError("diffusion.tan_d must be positive")
    if config.recipe.decoder_noise < 0:
        raise ConfigError("recipe.decoder_noise (sigma_dec) must be >= 0")
    if config.recipe.gamma_warmup and config.recipe.gamma_warmup_steps <= 0:
        raise ConfigError("recipe.gamma_warmup_steps must be positive when recipe.gamma_warmup")
    if not 0.0 < config.recipe.gamma_min <= 1.0:
        raise ConfigError("recipe.gamma_min must lie in (0, 1]")
    if config.recipe.adaptive_bins < 2:
        raise ConfigError("recipe.adaptive_bins must be >= 2")
    if config.train.steps < 0 or config.train.batch_size <= 0 or config.train.microbatches <= 0:
        raise ConfigError("train.steps, train.batch_size and train.microbatches must be positive")
    if config.train.batch_size % config.train.microbatches:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is not divisible by "
            f"train.microbatches={config.train.microbatches}"
        )
    if config.sampler.steps < 1:
        raise ConfigError(f"sampler.steps={config.sampler.steps} must be >= 1")
    if not 0.0 <= config.sampler.t_min < 1.0:
        raise ConfigError("sampler.t_min must lie in [0, 1)")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size} must be a positive size or -1 (fill)")
    if sum(1 for axis in ("data", "fsdp", "tensor") if config.mesh[axis] == -1) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
