"""Export a trained LDLM to PyTorch: the JAX <-> torch parameter table, the writer and the reader.

The exported folder OUT (loaded by ldlm_jax.torch.LDLMTorch.from_pretrained) holds
  model.safetensors  the four networks' float32 weights under torch state_dict names,
  config.json        model spec, schedule, sampler defaults, hidden-state stats, adaptive state,
                     token ids, the full training config and where it came from,
  frozen_lm/         the frozen LM in HF save_pretrained layout (lm_conversion.export_hf) plus
                     its tokenizer.
The name table (ldlm_jax/torch/names.py) is explicit, one Rule per parameter, with an exact
transform each way, so export -> import is bitwise. Writing needs numpy and safetensors, not torch.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ldlm_jax.torch.names import (  # numpy only: no torch import
    TorchExportError,
    param_table,
    params_from_state_dict,
    to_state_dict,
)

__all__ = [
    "TorchExportError",
    "check_supported",
    "export_checkpoint",
    "export_model",
    "import_params",
    "load_checkpoint",
    "model_spec",
    "param_table",
    "params_from_state_dict",
    "to_state_dict",
]

FORMAT, VERSION = "ldlm_jax.torch", 1
SUPPORTED_SCHEDULES = ("tan_d", "cosine", "linear")
SUPPORTED_LM_TYPES = ("gpt2", "bert", "llama", "qwen2")
SUPPORTED_SAMPLERS = ("euler_maruyama", "ode_euler", "ode_heun")


def model_spec(config, lm_dim: int, vocab_size: int) -> dict:
    """The architecture numbers both frameworks build from (config.json's 'model' section)."""
    from ldlm_jax.config import latent_count

    m = config.model
    section = {
        name: {k: (v.item() if hasattr(v, "item") else v) for k, v in m[name].items()}
        for name in ("encoder", "denoiser", "latent_decoder", "token_decoder")
    }
    return dict(
        lm_dim=int(lm_dim),
        vocab_size=int(vocab_size),
        seq_len=int(config.data.seq_len),
        num_latents=int(latent_count(config)),
        latent_dim=int(m.latent_dim),
        perceiver_local_bias=float(m.get("perceiver_local_bias", 0.0)),
        **section,
    )


def check_supported(config, lm_model_type: str | None = None) -> None:
    """TorchExportError if the config uses something ldlm_jax.torch does not mirror."""
    schedule = config.diffusion.schedule
    if schedule not in SUPPORTED_SCHEDULES:
        raise TorchExportError(
            f"diffusion.schedule {schedule!r} has no PyTorch twin; supported: "
            f"{list(SUPPORTED_SCHEDULES)}"
        )
    if lm_model_type is not None and lm_model_type not in SUPPORTED_LM_TYPES:
        raise TorchExportError(
            f"frozen LM model_type {lm_model_type!r} has no PyTorch loader here; supported: "
            f"{list(SUPPORTED_LM_TYPES)}"
        )


def _eos_pad(tokenizer) -> tuple[int | None, int]:
    """As generation.Generator: [SEP] first (BERT), else EOS; pad falls back to EOS or 0."""
    eos = None
    for ident in (
        getattr(tokenizer, "sep_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if ident is not None:
            eos = int(ident)
            break
    pad = getattr(tokenizer, "pad_token_id", None)
    return eos, int(pad if pad is not None else (eos or 0))


def _plain(tree):
    return (
        None if tree is None else {k: np.asarray(v, np.float32).tolist() for k, v in tree.items()}
    )


def export_model(
    out: str,
    config,
    params,
    frozen_lm,
    hidden_stats=None,
    adaptive_state=None,
    source: dict | None = None,
) -> dict:
    """Write OUT (model.safetensors, config.json, frozen_lm/) from in-memory JAX objects.

    Args:
      config: the LDLM ConfigDict; params: trainable params (nested dict, jax/numpy float);
      frozen_lm: ldlm_jax.frozen_lm.FrozenLM; hidden_stats: {'mean','std'} [Dh] or None;
      adaptive_state: {'loss_ema','seen'} [bins] or None; source: provenance for config.json.
    Returns:
      The config.json dict.
    """
    from safetensors.numpy import save_file

    from ldlm_jax import lm_conversion
    from ldlm_jax.config import to_dict

    model_type = getattr(frozen_lm.hf_config, "model_type", None)
    check_supported(config, model_type)
    spec = model_spec(config, frozen_lm.hidden_size, frozen_lm.vocab_size)
    tensors = to_state_dict(params, spec)  # checks every name and shape before writing
    os.makedirs(out, exist_ok=True)
    lm_folder = os.path.join(out, "frozen_lm")
    lm_conversion.export_hf(frozen_lm.params, frozen_lm.hf_config, lm_folder)
    if frozen_lm.tokenizer is not None:
        frozen_lm.tokenizer.save_pretrained(lm_folder)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    eos, pad = _eos_pad(frozen_lm.tokenizer)
    d, s = config.diffusion, config.sampler
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": spec,
        "diffusion": {"schedule": d.schedule, "tan_d": float(d.tan_d)},
        "sampler": {
            k: s[k] for k in ("name", "steps", "t_min", "time_grid", "temperature", "self_cond")
        },
        "frozen_lm": {
            "folder": "frozen_lm",
            "arch": frozen_lm.arch,
            "model_type": model_type,
            "layer": int(config.frozen_lm.layer),
            "normalize": bool(config.frozen_lm.normalize),
        },
        "hidden_stats": _plain(hidden_stats),
        "adaptive": None
        if not adaptive_state
        else {**_plain(adaptive_state), "floor": float(config.recipe.adaptive_floor)},
        "tokens": {"eos_id": eos, "pad_id": pad},
        "source": source or {},
        "ldlm_config": to_dict(config),
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def read_export_config(out: str) -> dict:
    """config.json of an exported folder, checked for format and version."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        raise TorchExportError(f"{out}: no config.json; export first with ldlm-export-torch")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TorchExportError(f"{path} is not an {FORMAT} v{VERSION} export")
    return meta


def import_params(out: str) -> dict:
    """model.safetensors of an export -> JAX params (nested dict of float32 numpy); no torch."""
    from safetensors.numpy import load_file

    meta = read_export_config(out)
    return params_from_state_dict(load_file(os.path.join(out, "model.safetensors")), meta["model"])


def load_checkpoint(workdir: str, step: int | None = None, ema: bool = False) -> dict:
    """Restore a training checkpoint for export on this host (any saving mesh; one device).

    Returns restore_for_inference's dict. TorchExportError when the workdir has no checkpoint
    or not the requested step."""
    from ldlm_jax import checkpointing

    if not os.path.isdir(workdir):
        raise TorchExportError(f"workdir {workdir!r} does not exist")
    manager = (
        checkpointing._read_only_manager(workdir)
        if os.path.isdir(os.path.join(workdir, "checkpoints"))
        else None
    )
    steps = sorted(manager.all_steps()) if manager is not None else []
    if not steps:
        raise TorchExportError(
            f"workdir {workdir!r} holds no checkpoint (no {workdir}/checkpoints/<step>): train "
            "first with ldlm-train --workdir, or point --workdir at a training run"
        )
    if step is not None and int(step) not in steps:
        raise TorchExportError(
            f"workdir {workdir!r} has no checkpoint at step {step}; it has steps {steps}"
        )
    return checkpointing.restore_for_inference(workdir, step=step, use_ema=ema)


def export_checkpoint(workdir: str, out: str, step: int | None = None, ema: bool = False):
    """Export a workdir's checkpoint (latest unless `step`; EMA weights if `ema`) to OUT.

    Returns (config.json dict, restored dict, frozen LM) so callers can verify without rereading.
    """
    from ldlm_jax.frozen_lm import frozen_lm_from_config

    restored = load_checkpoint(workdir, step, ema)
    config = restored["config"]
    check_supported(config)  # before building the frozen LM (slow)
    frozen_lm = frozen_lm_from_config(config)
    params = restored["params"]
    source = {
        "workdir": os.path.abspath(workdir),
        "step": int(restored["step"]),
        "weights": "ema" if ema else "raw",
    }
    meta = export_model(
        out,
        config,
        params,
        frozen_lm,
        restored.get("hidden_stats"),
        restored.get("adaptive_state"),
        source,
    )
    return meta, restored, frozen_lm
