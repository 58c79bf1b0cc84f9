"""ldlm-info: parameter counts and FLOPs of an LDLM config, computed abstractly (no weights, no
allocation, no network).

Example:
  ldlm-info --config configs/owt.py
  ldlm-info --config configs/tiny.py:random_lm --config.model.latent_count=8 --json

Parameter counts come from jax.eval_shape of each network's init; the frozen LM's from its HF
config (read from a local folder, the MiniLM package, or, for the hub name 'gpt2' without network,
transformers.GPT2Config(), whose defaults are GPT-2 small). FLOPs come from XLA's cost analysis of
the lowered (not compiled) programs, per sequence: the frozen LM forward, each network's forward,
one training step (value_and_grad of the full loss; XLA counts the self-conditioning branch of the
lax.cond once) and one sampling step (one denoiser call on K latents).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from ldlm_jax.config import ConfigError, load_config

NETWORK_LABELS = (
    ("encoder", "encoder"),
    ("denoiser", "denoiser"),
    ("latent_decoder", "latent decoder"),
    ("token_decoder", "token decoder"),
)


def hf_config_for(config):
    """The frozen LM's HF config without weights or network (see the module docstring)."""
    import transformers

    from ldlm_jax import frozen_lm as flm

    c = config.frozen_lm
    if c.source == "random":
        return flm.random_config(c.random_arch, c.random_width, c.random_layers, c.random_heads)
    if c.source == "minilm":
        return transformers.AutoConfig.from_pretrained(flm.minilm_path())
    try:
        return transformers.AutoConfig.from_pretrained(c.source)
    except Exception as error:  # offline or unknown hub name
        if c.source in ("gpt2", "openai-community/gpt2"):
            return transformers.GPT2Config()  # defaults = GPT-2 small (124M)
        raise ConfigError(
            f"frozen_lm.source={c.source!r}: cannot read its HF config ({error}); give a local "
            "folder (ldlm-convert-lm output or an HF folder) or run where the hub is reachable"
        ) from error


def abstract_frozen_lm(config):
    """A FrozenLM with abstract (ShapeDtypeStruct) params and no tokenizer."""
    from ldlm_jax import frozen_lm as flm

    hf_config = hf_config_for(config)
    arch, module = flm.build_module(hf_config, config.frozen_lm.dtype)
    return flm.FrozenLM(arch, hf_config, module, flm.abstract_params(module), None)


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def model_info(config, flops: bool = True) -> dict:
    """{'params': {name: count}, 'flops': {name: per-sequence FLOPs}} for a validated config."""
    from ldlm_jax import adaptive_timesteps
    from ldlm_jax.ldlm import LDLM, LDLMNetworks, count_params

    frozen = abstract_frozen_lm(config)
    model = LDLM(config, frozen)
    params = model.abstract_params()
    counts = {"frozen LM": count_params(frozen.params)}
    for key, label in NETWORK_LABELS:
        counts[label] = count_params(params[key])
    counts["total trainable"] = count_params(params)
    info = {"params": counts, "flops": {}}
    if not flops:
        return info

    length, k, dim = model.seq_len, model.num_latents, model.latent_dim
    sds = jax.ShapeDtypeStruct
    ids, mask = sds((1, length), jnp.int32), sds((1, length), jnp.int32)
    h = sds((1, length, model.lm_dim), jnp.float32)
    z, t = sds((1, k, dim), jnp.float32), sds((1,), jnp.float32)
    layer = int(config.frozen_lm.layer)
    stats = {"mean": sds((model.lm_dim,), jnp.float32), "std": sds((model.lm_dim,), jnp.float32)}
    state = jax.eval_shape(
        lambda: adaptive_timesteps.init_adaptive_state(config.recipe.adaptive_bins)
    )
    batch = {"input_ids": ids, "attention_mask": mask}
    net = model.networks

    def apply(method):
        return lambda p, *a: net.apply({"params": p}, *a, method=method)

    f = info["flops"]
    f["frozen LM forward"] = _flops(
        lambda p, i, m: frozen.hidden_states(p, i, m, layer), frozen.params, ids, mask
    )
    f["encoder forward"] = _flops(apply(LDLMNetworks.encode), params, h, mask)
    f["denoiser forward"] = _flops(apply(LDLMNetworks.denoise), params, z, t, z)
    f["latent decoder forward"] = _flops(apply(LDLMNetworks.decode_hidden), params, z)
    f["token decoder forward"] = _flops(apply(LDLMNetworks.decode_tokens), params, h, mask)

    def train_step(p, fp, s, b, st):
        return jax.value_and_grad(model.loss, has_aux=True)(
            p, fp, s, b, jax.random.PRNGKey(0), 0, st
        )

    f["train step"] = _flops(train_step, params, frozen.params, stats, batch, state)
    f["sampling step"] = f["denoiser forward"]
    return info


def format_info(config, info: dict) -> str:
    lines = [
        f"LDLM config {config.name!r}: L={config.data.seq_len}, latent width "
        f"{config.model.latent_dim}, frozen LM {config.frozen_lm.source!r} "
        f"(layer {config.frozen_lm.layer})",
        "",
        f"{'module':<24}{'parameters':>16}",
    ]
    for name, count in info["params"].items():
        lines.append(f"{name:<24}{count:>16,}  ({count / 1e6:.1f}M)")
    if info["flops"]:
        batch = config.train.batch_size
        lines += [
            "",
            f"{'FLOPs (XLA cost analysis)':<28}{'per sequence':>16}{f'per batch of {batch}':>22}",
        ]
        for name, value in info["flops"].items():
            lines.append(f"{name:<28}{value:>16.3e}{value * batch:>22.3e}")
        lines.append("(sampling step: one denoiser evaluation on K latents, per sequence)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-info",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", required=True, help="config file, e.g. configs/owt.py[:variant]"
    )
    parser.add_argument("--no-flops", action="store_true", help="parameter counts only (faster)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments {bad}; overrides look like --config.key=value")
    try:
        config = load_config(args.config, overrides)
        info = model_info(config, flops=not args.no_flops)
    except ConfigError as error:
        print(f"ldlm-info: {error}", file=sys.stderr)
        return 2
    print(json.dumps(info) if args.json else format_info(config, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
