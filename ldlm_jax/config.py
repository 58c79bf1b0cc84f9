"""Configuration: one locked ml_collections tree, Python config files and strict overrides.

Every key the project knows lives in `base_config()`. A config file (`configs/*.py`) defines
`get_config(variant: str | None = None)`, starts from `base_config()` and changes values; it cannot
invent keys, because the tree is locked. Command-line overrides look like `--config.train.steps=10`
and are cast to the type of the value they replace. An unknown key, a value of the wrong type or a
combination that cannot work (checked by `validate_config`) raises `ConfigError` naming the key,
before anything is compiled.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from collections.abc import Iterable, Sequence

import ml_collections
from ml_collections import ConfigDict

from ldlm_jax.config_validation import (  # re-exported: ldlm_jax.config is the public face
    DATA_MODES,
    DATA_SOURCES,
    DECODER_LOSSES,
    DTYPES,
    REMAT_MODES,
    SAMPLERS,
    SCHEDULES,
    TEXT_UNITS,
    TIME_GRIDS,
    TIMESTEP_SAMPLERS,
    ConfigError,
    latent_count,
    validate_config,
)


def base_config() -> ConfigDict:
    """Every key ldlm_jax reads, with the paper-scale defaults of ../shared/LDLM_SPEC.md."""
    c = ConfigDict()
    c.name = "base"

    # The frozen pretrained LM whose hidden states are the autoencoder's target.
    c.frozen_lm = ConfigDict()
    # 'minilm' (the offline all-MiniLM-L6-v2 package), a local HF folder, a folder written by
    # ldlm-convert-lm, a hub name (needs network), or 'random' (a random model of random_arch with
    # the random_* sizes and the MiniLM tokenizer: tests only).
    c.frozen_lm.source = "minilm"
    c.frozen_lm.layer = -1  # index into HF's hidden_states; GPT-2 in the paper uses -3
    c.frozen_lm.dtype = "float32"
    c.frozen_lm.normalize = True  # per-dimension mean/std normalisation of h
    c.frozen_lm.stats_sequences = 256  # sequences used once to compute the mean/std
    c.frozen_lm.random_arch = "bert"
    c.frozen_lm.random_width = 64
    c.frozen_lm.random_layers = 2
    c.frozen_lm.random_heads = 2

    # The trainable LDLM networks. The encoder's width is the latent width.
    c.model = ConfigDict()
    c.model.latent_count = 0  # K; 0 means K = data.seq_len (no compression)
    c.model.latent_dim = 768
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"  # master weights
    # Activation checkpointing of every transformer/Perceiver layer (the training backward pass
    # recomputes it): 'none'; 'full' (keep only layer inputs); 'dots' (also keep the weight
    # matmuls, recompute attention and elementwise ops). Same params, same results.
    c.model.remat = "none"
    # Attention kernel (ldlm_jax.attention_kernels): 'auto' = Pallas flash attention on TPU for
    # keys of >= 512 positions (lengths multiples of 128, no locality bias), XLA elsewhere; 'xla';
    # 'flash' (also below 512).
    c.model.attention = "auto"
    c.model.encoder = ConfigDict(dict(num_layers=6, num_heads=12, mlp_dim=3072))
    c.model.denoiser = ConfigDict(
        dict(
            num_layers=12,
            width=768,
            num_heads=12,
            mlp_dim=3072,
            rope_theta=1e4,
            time_max_period=10.0,
            time_mlp_dim=1536,
            unet_skips=True,
        )
    )
    c.model.latent_decoder = ConfigDict(dict(num_layers=6, width=768, num_heads=12, mlp_dim=3072))
    # Not in the paper: ALiBi-style locality bias in the encoder's and latent decoder's Perceiver
    # attention (slope; 0 = off, the paper's setting). Small models learn the routing faster.
    c.model.perceiver_local_bias = 0.0
    c.model.token_decoder = ConfigDict(dict(num_layers=3, width=768, num_heads=12, mlp_dim=3072))

    # Continuous diffusion on the latents.
    c.diffusion = ConfigDict()
    c.diffusion.schedule = "tan_d"
    c.diffusion.tan_d = 3.0
    c.diffusion.self_cond_prob = 0.5

    # The four recipe parts; each can be switched off for the ablation.
    c.recipe = ConfigDict()
    c.recipe.decoder_loss = "mse"  # 'mse' on hidden states, or 'ce' through the token decoder
    c.recipe.gamma_warmup = True
    c.recipe.gamma_warmup_steps = 50_000
    c.recipe.gamma_min = 0.001
    c.recipe.gamma_k = 10.0
    c.recipe.gamma_c = 0.8
    c.recipe.timestep_sampler = "adaptive"
    c.recipe.adaptive_bins = 100
    c.recipe.adaptive_ema_decay = 0.99
    c.recipe.adaptive_floor = 1e-3  # density floor, relative to the mean density
    c.recipe.decoder_noise = 3.0  # sigma_dec, training only

    c.loss_weights = ConfigDict(dict(diffusion=1.0, hidden=1.0, token=1.0))

    # Data.
    c.data = ConfigDict()
    c.data.source = "bible"
    c.data.paths = ""  # comma-separated files, or a prepared folder
    c.data.text_field = "text"
    c.data.seq_len = 128
    c.data.mode = "pad"  # 'pack' (EOS-separated, OWT style) or 'pad' (one row each, LM1B style)
    c.data.validation_fraction = 0.01
    c.data.worker_count = 0
    c.data.prefetch = 2
    c.data.skip_invalid_utf8 = False
    c.data.text_unit = "line"  # .txt documents: 'line', 'paragraph' (blank-line separated), 'file'
    c.data.add_special_tokens = True  # pad mode: the tokenizer's own specials ([CLS] .. [SEP])
    c.data.validation_docs = 0  # held-out last documents; > 0 overrides validation_fraction
    c.data.hf_dataset = ""  # ldlm-prepare-data input from the HF hub, e.g. Skylion007/openwebtext
    c.data.tfds_data_dir = ""  # where tfds keeps lm1b ('' = $TFDS_DATA_DIR)

    # Optimisation.
    c.train = ConfigDict()
    c.train.steps = 1_000_000
    c.train.batch_size = 512
    c.train.microbatches = 1
    c.train.seed = 0
    c.train.learning_rate = 2e-4
    c.train.b1 = 0.9
    c.train.b2 = 0.98
    c.train.eps = 1e-6
    c.train.weight_decay = 1e-5
    c.train.lr_warmup_steps = 1000
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.eval_batches = 4
    c.train.eval_samples = 4
    c.train.progress_bar = True

    c.checkpoint = ConfigDict(dict(every=5000, keep=3, async_save=True))

    # Sharding as data: mesh axis sizes (-1 fills) and logical-name -> mesh-axis rules.
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("latent", None),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("lm_embed", "fsdp"),
        ("norm", None),
    )

    c.sampler = ConfigDict(
        dict(
            name="euler_maruyama",
            steps=200,
            t_min=0.05,
            time_grid="uniform",
            temperature=1.0,
            self_cond=True,
            use_ema=True,
        )
    )

    c.compile_only = False
    c.target_topology = ""  # e.g. 'v5p:2x2x2': compile for that TPU slice (compile_only)
    return c


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Load `path/to/config.py[:variant]`, apply `key.path=value` overrides and validate.

    Args:
      spec: a config file path, optionally followed by `:variant` (passed to `get_config`).
      overrides: strings `a.b.c=value`; a leading `--config.` or `config.` is accepted.
    Returns:
      The validated, locked ConfigDict.
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r} (give a path such as configs/demo.py)")
    module_spec = importlib.util.spec_from_file_location(f"ldlm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except (AttributeError, KeyError) as error:
        raise ConfigError(f"{path}: {error}") from error
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    config.lock()
    apply_overrides(config, overrides)
    validate_config(config)
    return config


def _known_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, ConfigDict):
            keys.extend(_known_keys(value, full + "."))
    return keys


def _unknown_key_error(config: ConfigDict, dotted: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _known_keys(config), n=3)
    hint = f" (did you mean {', '.join(repr(k) for k in close)}?)" if close else ""
    return ConfigError(f"unknown config key {dotted!r}{hint}")


def _cast(dotted: str, old, text: str):
    """Parse `text` into the type of the value it replaces."""
    if isinstance(old, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {dotted!r} takes True or False, got {text!r}")
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if old is None:
            return text
        raise ConfigError(
            f"config key {dotted!r} takes a {type(old).__name__}, got {text!r}"
        ) from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if old is not None and not isinstance(value, type(old)):
        if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
            return type(old)(value)
        raise ConfigError(
            f"config key {dotted!r} takes a {type(old).__name__}, got {text!r} "
            f"({type(value).__name__})"
        )
    return value


def _parent(config: ConfigDict, dotted: str) -> tuple[ConfigDict, str]:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ConfigDict) or part not in node:
            raise _unknown_key_error(config, dotted)
        node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise _unknown_key_error(config, dotted)
    return node, leaf


def get_key(config: ConfigDict, dotted: str):
    """The value at `a.b.c`; an unknown key raises ConfigError naming it."""
    node, leaf = _parent(config, dotted)
    return node[leaf]


def set_key(config: ConfigDict, dotted: str, value) -> None:
    """Set `a.b.c` in a locked config; an unknown key raises ConfigError naming it."""
    node, leaf = _parent(config, dotted)
    if isinstance(node[leaf], ConfigDict):
        raise ConfigError(f"config key {dotted!r} is a section; set one of its keys instead")
    try:
        node[leaf] = value  # a locked ConfigDict still lets existing keys change
    except TypeError as error:
        raise ConfigError(f"config key {dotted!r}: {error}") from error


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
    """Apply `key=value` strings (optionally prefixed `--config.` / `config.`) in place."""
    for item in overrides:
        text = item
        for prefix in ("--config.", "config."):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --config.key.path=value")
        dotted, raw = text.split("=", 1)
        set_key(config, dotted, _cast(dotted, get_key(config, dotted), raw))
    return config


def to_dict(config: ConfigDict) -> dict:
    """A plain, JSON-friendly dict of the config (for checkpoints and logs)."""
    return config.to_dict()


def from_dict(values: dict) -> ConfigDict:
    """Rebuild a locked config from `to_dict` output, on top of `base_config()` (so old
    checkpoints gain new keys with their defaults)."""
    config = base_config()
    config.lock()

    def walk(node: ConfigDict, data: dict, prefix: str) -> None:
        for key, value in data.items():
            if key not in node:
                raise _unknown_key_error(config, prefix + key)
            if isinstance(node[key], ConfigDict):
                walk(node[key], value, prefix + key + ".")
            else:
                if isinstance(node[key], tuple) and isinstance(value, list):
                    value = _as_tuple(value)
                node[key] = value

    walk(config, values, "")
    return config


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


__all__ = [
    "DATA_MODES",
    "DATA_SOURCES",
    "DECODER_LOSSES",
    "DTYPES",
    "REMAT_MODES",
    "SAMPLERS",
    "SCHEDULES",
    "TEXT_UNITS",
    "TIME_GRIDS",
    "TIMESTEP_SAMPLERS",
    "ConfigDict",
    "ConfigError",
    "apply_overrides",
    "base_config",
    "from_dict",
    "get_key",
    "latent_count",
    "load_config",
    "ml_collections",
    "set_key",
    "to_dict",
    "validate_config",
]
