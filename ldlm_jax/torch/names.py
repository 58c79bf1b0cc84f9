"""The explicit JAX <-> PyTorch parameter-name table of the LDLM networks (numpy only, no torch).

One Rule per parameter: its path in the Flax params tree, its torch state_dict name, its Flax shape
and an exact transform each way (transpose / reshape only, so a round trip is bitwise). Flax
Dense kernels [in, out] become nn.Linear weights [out, in]; attention q/k/v kernels [D, H, hd]
become [H*hd, D] and out [H, hd, D] becomes [D, H*hd]; `layer_i` / `block_i` become `layers.i` /
`blocks.i`. Used by ldlm_jax/torch_export.py (export, import back) and by the torch side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


class TorchExportError(ValueError):
    """The model, checkpoint or folder cannot be exported / imported (names the cause and fix)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """jax_path: path in the params tree; torch_name: state_dict key; jax_shape: expected shape;
    to_torch / to_jax: exact array transforms."""

    jax_path: tuple
    torch_name: str
    jax_shape: tuple
    to_torch: Callable
    to_jax: Callable


def _same(jp, tn, shape):
    return Rule(tuple(jp), tn, tuple(shape), lambda x: x, lambda x: x)


def _dense(jp, tn, n_in, n_out, bias):
    """Flax Dense kernel [in, out] <-> torch Linear weight [out, in]."""
    jp = (*jp, "linear")
    rows = [Rule((*jp, "kernel"), f"{tn}.weight", (n_in, n_out), lambda x: x.T, lambda x: x.T)]
    return rows + ([_same((*jp, "bias"), f"{tn}.bias", (n_out,))] if bias else [])


def _attention(jp, tn, width, heads, bias, qk_norm):
    """q/k/v kernels [D, H, hd] <-> [H*hd, D]; out [H, hd, D] <-> [D, H*hd]; biases flattened."""
    hd = width // heads
    rows = []
    for name in ("query", "key", "value"):
        rows.append(
            Rule(
                (*jp, name, "kernel"),
                f"{tn}.{name}.weight",
                (width, heads, hd),
                lambda x: x.reshape(width, -1).T,
                lambda x: x.T.reshape(width, heads, hd),
            )
        )
        if bias:
            rows.append(
                Rule(
                    (*jp, name, "bias"),
                    f"{tn}.{name}.bias",
                    (heads, hd),
                    lambda x: x.reshape(-1),
                    lambda x: x.reshape(heads, hd),
                )
            )
    rows.append(
        Rule(
            (*jp, "out", "kernel"),
            f"{tn}.out.weight",
            (heads, hd, width),
            lambda x: x.reshape(-1, width).T,
            lambda x: x.T.reshape(heads, hd, width),
        )
    )
    if bias:
        rows.append(_same((*jp, "out", "bias"), f"{tn}.out.bias", (width,)))
    if qk_norm:
        rows += [_rms((*jp, "query_norm"), f"{tn}.query_norm", hd)]
        rows += [_rms((*jp, "key_norm"), f"{tn}.key_norm", hd)]
    return rows


def _rms(jp, tn, d):
    return _same((*jp, "scale"), f"{tn}.weight", (d,))


def _layer_norm(jp, tn, d):
    return [_same((*jp, "scale"), f"{tn}.weight", (d,)), _same((*jp, "bias"), f"{tn}.bias", (d,))]


def _embedding(jp, tn, shape):
    return _same((*jp, "embedding"), tn, shape)


def _perceiver(jp, tn, width, heads, mlp):
    rows = [_rms((*jp, "query_input_norm"), f"{tn}.query_input_norm", width)]
    rows += [_rms((*jp, "context_input_norm"), f"{tn}.context_input_norm", width)]
    rows += _attention((*jp, "attention"), f"{tn}.attention", width, heads, False, True)
    rows += [_rms((*jp, "mlp_norm"), f"{tn}.mlp_norm", width)]
    rows += _dense((*jp, "mlp", "up"), f"{tn}.mlp.up", width, mlp, False)
    return rows + _dense((*jp, "mlp", "down"), f"{tn}.mlp.down", mlp, width, False)


def param_table(spec: dict) -> list[Rule]:
    """One Rule per trainable parameter of the four networks, for the architecture `spec`."""
    s, k, seq, dz, dh = (
        spec,
        spec["num_latents"],
        spec["seq_len"],
        spec["latent_dim"],
        spec["lm_dim"],
    )
    enc, den, ldec, tdec = s["encoder"], s["denoiser"], s["latent_decoder"], s["token_decoder"]
    rows = [
        _embedding(("encoder", "token_positions"), "encoder.token_positions", (seq, dz)),
        *_dense(("encoder", "token_proj"), "encoder.token_proj", dh, dz, False),
        _embedding(("encoder", "initial_latents"), "encoder.initial_latents", (k, dz)),
    ]
    for i in range(enc["num_layers"]):
        rows += _perceiver(
            ("encoder", f"layer_{i}"), f"encoder.layers.{i}", dz, enc["num_heads"], enc["mlp_dim"]
        )
    rows.append(_rms(("encoder", "output_norm"), "encoder.output_norm", dz))

    w, t = den["width"], den["time_mlp_dim"]
    rows += _dense(("denoiser", "time", "fc1"), "denoiser.time.fc1", w, t, True)
    rows += _dense(("denoiser", "time", "fc2"), "denoiser.time.fc2", t, w, True)
    for i in range(den["num_layers"]):
        jp, tn = ("denoiser", f"block_{i}"), f"denoiser.blocks.{i}"
        rows += _dense(("denoiser", f"time_proj_{i}"), f"denoiser.time_proj.{i}", w, w, True)
        rows += _dense(
            ("denoiser", f"self_cond_proj_{i}"), f"denoiser.self_cond_proj.{i}", w, w, True
        )
        rows.append(_rms((*jp, "attention_norm"), f"{tn}.attention_norm", w))
        rows += _attention((*jp, "attention"), f"{tn}.attention", w, den["num_heads"], False, False)
        rows.append(_rms((*jp, "mlp_norm"), f"{tn}.mlp_norm", w))
        for name, n_in, n_out in (
            ("gate", w, den["mlp_dim"]),
            ("up", w, den["mlp_dim"]),
            ("down", den["mlp_dim"], w),
        ):
            rows += _dense((*jp, "mlp", name), f"{tn}.mlp.{name}", n_in, n_out, False)
    rows.append(_rms(("denoiser", "output_norm"), "denoiser.output_norm", w))

    w = ldec["width"]
    rows += [
        _embedding(
            ("latent_decoder", "latent_positions"), "latent_decoder.latent_positions", (k, w)
        ),
        *_dense(("latent_decoder", "latent_proj"), "latent_decoder.latent_proj", dz, w, False),
        _embedding(("latent_decoder", "queries"), "latent_decoder.queries", (seq, w)),
    ]
    for i in range(ldec["num_layers"]):
        rows += _perceiver(
            ("latent_decoder", f"layer_{i}"),
            f"latent_decoder.layers.{i}",
            w,
            ldec["num_heads"],
            ldec["mlp_dim"],
        )
    rows.append(_rms(("latent_decoder", "output_norm"), "latent_decoder.output_norm", w))
    rows += _dense(("latent_decoder", "output_proj"), "latent_decoder.output_proj", w, dh, False)

    w, mlp = tdec["width"], tdec["mlp_dim"]
    rows.append(_embedding(("token_decoder", "positions"), "token_decoder.positions", (seq, w)))
    rows += _dense(("token_decoder", "input_proj"), "token_decoder.input_proj", dh, w, True)
    for i in range(tdec["num_layers"]):
        jp, tn = ("token_decoder", f"layer_{i}"), f"token_decoder.layers.{i}"
        rows += _layer_norm((*jp, "attention_norm"), f"{tn}.attention_norm", w)
        rows += _attention((*jp, "attention"), f"{tn}.attention", w, tdec["num_heads"], True, False)
        rows += _layer_norm((*jp, "mlp_norm"), f"{tn}.mlp_norm", w)
        rows += _dense((*jp, "mlp", "up"), f"{tn}.mlp.up", w, mlp, True)
        rows += _dense((*jp, "mlp", "down"), f"{tn}.mlp.down", mlp, w, True)
    rows += _layer_norm(("token_decoder", "output_norm"), "token_decoder.output_norm", w)
    rows += _dense(("token_decoder", "lm_head"), "token_decoder.lm_head", w, s["vocab_size"], True)
    return rows


def _flatten(tree, prefix=()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def to_state_dict(params, spec: dict) -> dict[str, np.ndarray]:
    """JAX params (nested dict; jax or numpy arrays) -> {torch name: float32 numpy array}.

    Every parameter must be covered by the table and have the table's shape, else
    TorchExportError (e.g. a module the exporter does not know)."""
    flat = {k: v for k, v in _flatten(dict(params)).items()}
    table = param_table(spec)
    extra = set(flat) - {r.jax_path for r in table}
    if extra:
        raise TorchExportError(
            f"params hold {len(extra)} entries the torch export does not know, e.g. "
            f"{'/'.join(sorted(extra)[0])}: this model has a feature ldlm_jax.torch does not mirror"
        )
    out = {}
    for rule in table:
        if rule.jax_path not in flat:
            raise TorchExportError(f"params lack {'/'.join(rule.jax_path)} {rule.jax_shape}")
        x = np.asarray(flat[rule.jax_path], np.float32)
        if x.shape != rule.jax_shape:
            raise TorchExportError(
                f"param {'/'.join(rule.jax_path)} has shape {x.shape}, the config says "
                f"{rule.jax_shape}"
            )
        out[rule.torch_name] = np.ascontiguousarray(rule.to_torch(x))
    return out


def params_from_state_dict(state_dict, spec: dict) -> dict:
    """{torch name: tensor or array} -> JAX params (nested dict of float32 numpy arrays)."""
    table = param_table(spec)
    missing = [r.torch_name for r in table if r.torch_name not in state_dict]
    extra = set(state_dict) - {r.torch_name for r in table}
    if missing or extra:
        raise TorchExportError(
            f"state dict does not match the config: missing {missing[:3]}, unexpected "
            f"{sorted(extra)[:3]}"
        )
    params: dict = {}
    for rule in table:
        value = state_dict[rule.torch_name]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        x = np.ascontiguousarray(rule.to_jax(np.asarray(value, np.float32)))
        if x.shape != rule.jax_shape:
            raise TorchExportError(
                f"{rule.torch_name} gives shape {x.shape}, expected {rule.jax_shape}"
            )
        node = params
        for key in rule.jax_path[:-1]:
            node = node.setdefault(key, {})
        node[rule.jax_path[-1]] = x
    return params
