"""HF <-> ldlm_jax weight conversion for the frozen LMs: one explicit name/transform table per
architecture, checkpoint readers (safetensors without torch; pytorch_model.bin only with torch) and
the reverse export of our params under HF names as safetensors.

A table row maps one HF tensor (name without the model-class prefix, e.g. 'h.0.attn.c_attn.weight')
with its expected shape to one or more of our param paths, with a transform each way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from ldlm_jax.lm_checkpoint import ConversionError, TensorSource

__all__ = ["ConversionError", "TensorSource", "conversion_table", "export_hf", "params_from_hf"]

SUPPORTED = {"gpt2": "gpt2", "bert": "bert", "llama": "llama", "qwen2": "llama"}
# Prefixes the HF model classes put before the base-model names; the first is used on export.
PREFIXES = {"gpt2": ("transformer.", ""), "bert": ("", "bert."), "llama": ("model.", "")}


def arch_of(hf_config) -> str:
    """HF config -> 'gpt2' | 'bert' | 'llama'; clear error for anything else."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ValueError(
            f"unsupported architecture {model_type!r}: supported model_type values are "
            f"{sorted(SUPPORTED)} (GPT-2, BERT, and the Llama family incl. SmolLM and Qwen2)"
        )
    return SUPPORTED[model_type]


@dataclasses.dataclass(frozen=True)
class Rule:
    """hf_name/hf_shape: the HF tensor; ours: our param paths; to_ours: array -> list of arrays in
    the order of ours; to_hf: list of arrays -> array. top_level: name carries no model prefix."""

    hf_name: str
    hf_shape: tuple
    ours: tuple
    to_ours: Callable
    to_hf: Callable
    top_level: bool = False


def _same(name, shape, path, top_level=False):
    return Rule(name, tuple(shape), (path,), lambda x: [x], lambda ys: ys[0], top_level)


def _linear(name, out_in, path, our_shape, top_level=False):
    """torch Linear weight [out, in] -> our kernel [in, out...] reshaped to our_shape."""
    o, i = out_in
    return Rule(
        name,
        (o, i),
        (path,),
        lambda x: [x.T.reshape(our_shape)],
        lambda ys: ys[0].reshape(i, o).T,
        top_level,
    )


def _reshape(name, shape, path, our_shape):
    """Same layout, different shape (biases [H*hd] -> [H, hd]; Conv1D [in, out] -> [in, H, hd])."""
    return Rule(
        name,
        tuple(shape),
        (path,),
        lambda x: [x.reshape(our_shape)],
        lambda ys: ys[0].reshape(shape),
    )


def _split3(name, shape, paths, our_shape):
    """GPT-2 c_attn [..., 3D] -> q, k, v each reshaped to our_shape; inverse concatenates."""
    lead = tuple(shape[:-1])
    return Rule(
        name,
        tuple(shape),
        tuple(paths),
        lambda x: [p.reshape(our_shape) for p in np.split(x, 3, axis=-1)],
        lambda ys: np.concatenate([y.reshape(*lead, -1) for y in ys], axis=-1),
    )


def _norm(hf, ours, with_bias=True):
    rows = [("weight", "scale")] + ([("bias", "bias")] if with_bias else [])
    return [(f"{hf}.{a}", (*ours, b)) for a, b in rows]


def gpt2_table(cfg) -> list[Rule]:
    """GPT-2: Conv1D weights are stored [in, out]; c_attn holds q|k|v along its output axis."""
    d, h, v = cfg.n_embd, cfg.n_head, cfg.vocab_size
    hd, inner = d // h, cfg.n_inner or 4 * cfg.n_embd
    rows = [
        _same("wte.weight", (v, d), ("wte", "embedding")),
        _same("wpe.weight", (cfg.n_positions, d), ("wpe", "embedding")),
    ]
    for i in range(cfg.n_layer):
        p, b = f"h.{i}.", f"h_{i}"
        qkv = [(b, "attn", n) for n in ("query", "key", "value")]
        rows += [_same(n, (d,), path) for n, path in _norm(p + "ln_1", (b, "ln_1"))]
        rows += [
            _split3(
                p + "attn.c_attn.weight", (d, 3 * d), [(*q, "kernel") for q in qkv], (d, h, hd)
            ),
            _split3(p + "attn.c_attn.bias", (3 * d,), [(*q, "bias") for q in qkv], (h, hd)),
            _reshape(p + "attn.c_proj.weight", (d, d), (b, "attn", "out", "kernel"), (h, hd, d)),
            _same(p + "attn.c_proj.bias", (d,), (b, "attn", "out", "bias")),
        ]
        rows += [_same(n, (d,), path) for n, path in _norm(p + "ln_2", (b, "ln_2"))]
        rows += [
            _same(p + "mlp.c_fc.weight", (d, inner), (b, "mlp", "fc", "kernel")),
            _same(p + "mlp.c_fc.bias", (inner,), (b, "mlp", "fc", "bias")),
            _same(p + "mlp.c_proj.weight", (inner, d), (b, "mlp", "proj", "kernel")),
            _same(p + "mlp.c_proj.bias", (d,), (b, "mlp", "proj", "bias")),
        ]
    rows += [_same(n, (d,), path) for n, path in _norm("ln_f", ("ln_f",))]
    return rows


def bert_table(cfg) -> list[Rule]:
    """BERT: torch Linear weights [out, in] are transposed; q/k/v/out reshaped per head."""
    d, h, inner = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
    hd = d // h
    e = "embeddings."
    rows = [
        _same(e + "word_embeddings.weight", (cfg.vocab_size, d), ("word_embeddings", "embedding")),
        _same(
            e + "position_embeddings.weight",
            (cfg.max_position_embeddings, d),
            ("position_embeddings", "embedding"),
        ),
        _same(
            e + "token_type_embeddings.weight",
            (cfg.type_vocab_size, d),
            ("token_type_embeddings", "embedding"),
        ),
    ]
    rows += [_same(n, (d,), path) for n, path in _norm(e + "LayerNorm", ("embeddings_ln",))]
    for i in range(cfg.num_hidden_layers):
        p, b = f"encoder.layer.{i}.", f"layer_{i}"
        for hf, ours in (("query", "query"), ("key", "key"), ("value", "value")):
            a = p + "attention.self." + hf
            rows.append(
                _linear(a + ".weight", (d, d), (b, "attention", ours, "kernel"), (d, h, hd))
            )
            rows.append(_reshape(a + ".bias", (d,), (b, "attention", ours, "bias"), (h, hd)))
        o = p + "attention.output."
        rows += [
            _linear(o + "dense.weight", (d, d), (b, "attention", "out", "kernel"), (h, hd, d)),
            _same(o + "dense.bias", (d,), (b, "attention", "out", "bias")),
        ]
        rows += [_same(n, (d,), path) for n, path in _norm(o + "LayerNorm", (b, "attention_ln"))]
        rows += [
            _linear(
                p + "intermediate.dense.weight", (inner, d), (b, "mlp", "fc", "kernel"), (d, inner)
            ),
            _same(p + "intermediate.dense.bias", (inner,), (b, "mlp", "fc", "bias")),
            _linear(
                p + "output.dense.weight", (d, inner), (b, "mlp", "proj", "kernel"), (inner, d)
            ),
            _same(p + "output.dense.bias", (d,), (b, "mlp", "proj", "bias")),
        ]
        rows += [
            _same(n, (d,), path) for n, path in _norm(p + "output.LayerNorm", (b, "output_ln"))
        ]
    return rows


def llama_table(cfg) -> list[Rule]:
    """Llama / SmolLM / Qwen2: torch Linear weights [out, in]; q/k/v/o reshaped per head (GQA)."""
    from ldlm_jax.llama import LlamaSpec

    s = LlamaSpec.from_hf(cfg)
    d, hd, inner = s.hidden_size, s.head_dim, s.intermediate_size
    rows = [_same("embed_tokens.weight", (s.vocab_size, d), ("embed_tokens", "embedding"))]
    for i in range(s.num_layers):
        p, b = f"layers.{i}.", f"layers_{i}"
        for proj, ours, heads in (
            ("q", "query", s.num_heads),
            ("k", "key", s.num_kv_heads),
            ("v", "value", s.num_kv_heads),
        ):
            a = f"{p}self_attn.{proj}_proj"
            rows.append(
                _linear(a + ".weight", (heads * hd, d), (b, "attn", ours, "kernel"), (d, heads, hd))
            )
            if s.qkv_bias:
                rows.append(
                    _reshape(a + ".bias", (heads * hd,), (b, "attn", ours, "bias"), (heads, hd))
                )
        o = p + "self_attn.o_proj"
        rows.append(
            _linear(
                o + ".weight",
                (d, s.num_heads * hd),
                (b, "attn", "out", "kernel"),
                (s.num_heads, hd, d),
            )
        )
        if s.out_bias:
            rows.append(_same(o + ".bias", (d,), (b, "attn", "out", "bias")))
        for proj, shape in (("gate", (inner, d)), ("up", (inner, d)), ("down", (d, inner))):
            a = f"{p}mlp.{proj}_proj"
            rows.append(_linear(a + ".weight", shape, (b, "mlp", proj, "kernel"), shape[::-1]))
            if s.mlp_bias:
                rows.append(_same(a + ".bias", shape[:1], (b, "mlp", proj, "bias")))
        rows.append(_same(p + "input_layernorm.weight", (d,), (b, "input_norm", "scale")))
        rows.append(
            _same(p + "post_attention_layernorm.weight", (d,), (b, "post_attention_norm", "scale"))
        )
    rows.append(_same("norm.weight", (d,), ("norm", "scale")))
    if not s.tie_word_embeddings:
        rows.append(
            _linear(
                "lm_head.weight",
                (s.vocab_size, d),
                ("lm_head", "kernel"),
                (d, s.vocab_size),
                top_level=True,
            )
        )
    return rows


TABLES = {"gpt2": gpt2_table, "bert": bert_table, "llama": llama_table}


def conversion_table(hf_config) -> list[Rule]:
    """The name/transform table for this config's architecture."""
    return TABLES[arch_of(hf_config)](hf_config)


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf(source: TensorSource, hf_config, progress: bool = False) -> dict:
    """HF tensors -> our params (nested dict of float32 numpy arrays).

    Every tensor's presence and shape is checked before any is read, so a broken folder fails fast
    naming the first missing or wrongly shaped tensor and the shape the config expects."""
    arch = arch_of(hf_config)
    table = conversion_table(hf_config)
    names = source.names()
    resolved = []
    for rule in table:
        candidates = (
            [rule.hf_name] if rule.top_level else [p + rule.hf_name for p in PREFIXES[arch]]
        )
        found = next((c for c in candidates if c in names), None)
        if found is None:
            raise ConversionError(
                f"{source.folder}: missing tensor {rule.hf_name!r} (expected shape "
                f"{rule.hf_shape} from config.json); the checkpoint has {len(names)} tensors"
            )
        if source.shape(found) != rule.hf_shape:
            raise ConversionError(
                f"{source.folder}: tensor {found!r} has shape {source.shape(found)}, but "
                f"config.json expects {rule.hf_shape}"
            )
        resolved.append((found, rule))
    if progress:
        from tqdm import tqdm

        resolved = tqdm(resolved, desc="converting tensors", unit="tensor")
    params: dict = {}
    for found, rule in resolved:
        for path, value in zip(rule.ours, rule.to_ours(source.get(found)), strict=True):
            _set(params, path, np.ascontiguousarray(value, dtype=np.float32))
    return params


def export_hf(params, hf_config, folder: str) -> str:
    """Write our params under HF names (the with-LM-head class's prefixes) as float32
    model.safetensors plus config.json into folder; transformers' from_pretrained loads it."""
    from safetensors.numpy import save_file

    arch = arch_of(hf_config)
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for rule in conversion_table(hf_config):
        ours = [np.asarray(_get(params, p), dtype=np.float32) for p in rule.ours]
        name = rule.hf_name if rule.top_level else PREFIXES[arch][0] + rule.hf_name
        tensors[name] = np.ascontiguousarray(rule.to_hf(ours))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    hf_config.save_pretrained(folder)
    return folder
