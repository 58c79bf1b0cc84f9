"""A small autoregressive (GPT-2 style) LM on LDLM's data: the ablation's AR baseline and scorer.

The model is our Flax GPT-2 (ldlm_jax/gpt2.py, LM head tied to the token embedding) built from a
transformers GPT2Config whose vocabulary is the frozen LM's tokenizer (MiniLM's bert-base-uncased
WordPiece in configs/demo.py). `train_autoregressive` fits it with next-token cross-entropy on
exactly the batches the LDLM trainer sees for the same config (pipeline.make_train_iterator with
the same train.seed: same rows, same order; the batch hashes match the trainer's), with the LDLM's
own optimiser (optimizer.make_optimizer: AdamW, linear warmup then cosine, clipping) in one jitted
step, and keeps an EMA of the weights (train.ema_decay) as the LDLM trainer does.

`sample` is ancestral sampling (temperature 1 by default) inside one jit: a lax.scan over the
positions, starting from the rows' first token ([CLS]), each token drawn from the softmax of the
last position's logits; once the tokenizer's EOS ([SEP]) is drawn the row only gets pads. The
trained model is written with frozen_lm.save_converted, so evaluation.load_scorer reads it back
as a generative-perplexity scorer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldlm_jax import frozen_lm as flm
from ldlm_jax import optimizer as optim

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class AutoregressiveLM:
    """GPT-2 LM: hf_config (transformers GPT2Config), module (gpt2.GPT2LM), params (float32
    pytree), tokenizer (the frozen LM's HF tokenizer)."""

    hf_config: Any
    module: nn.Module
    params: Any
    tokenizer: Any

    @property
    def num_layers(self) -> int:
        return int(self.module.spec.num_layers)

    @property
    def bos_id(self) -> int:
        """The first token of every training row ([CLS] for BERT tokenizers, else BOS)."""
        for name in ("cls_token_id", "bos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        raise ValueError("the tokenizer has neither [CLS] nor BOS, so sampling has no start token")

    @property
    def eos_id(self) -> int | None:
        """The token that ends a sample: [SEP] for BERT tokenizers, else EOS (None: never)."""
        for name in ("sep_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        return None

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else 0)

    def as_frozen_lm(self) -> flm.FrozenLM:
        return flm.FrozenLM("gpt2", self.hf_config, self.module, self.params, self.tokenizer)

    def save(self, folder: str) -> str:
        """Write an ldlm-convert-lm style folder (evaluation.load_scorer / load_autoregressive)."""
        return flm.save_converted(self.as_frozen_lm(), folder, source="ldlm_jax.autoregressive")


def parameter_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def init_autoregressive(tokenizer, width: int, layers: int, heads: int, seed: int = 0):
    """A fresh AutoregressiveLM: GPT-2 with n_embd=width, n_layer=layers, n_head=heads, FFN 4x,
    512 positions, vocab_size = len(tokenizer); params float32, initialised from PRNGKey(seed)."""
    hf_config = flm.random_config("gpt2", width, layers, heads, vocab_size=len(tokenizer))
    _, module = flm.build_module(hf_config, "float32")
    ids = jnp.zeros((1, 8), jnp.int32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(seed), ids)["params"])
    return AutoregressiveLM(hf_config, module, params, tokenizer)


def load_autoregressive(folder: str) -> AutoregressiveLM:
    """Read back a folder written by AutoregressiveLM.save."""
    lm = flm.load_converted(folder)
    if lm.arch != "gpt2":
        raise ValueError(f"{folder} holds a {lm.arch} model, not an autoregressive GPT-2")
    return AutoregressiveLM(lm.hf_config, lm.module, lm.params, lm.tokenizer)


def next_token_nll(module, params, input_ids, attention_mask):
    """Summed next-token NLL and correct-argmax count over real targets.

    Args:
      input_ids, attention_mask: int32 [B, L]; position i+1 is a target when its mask is 1.
    Returns:
      (nll_sum, correct, count): float32 scalars (count = number of scored targets).
    """
    logits = module.apply({"params": params}, input_ids, attention_mask).logits[:, :-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets = input_ids[:, 1:]
    weight = attention_mask[:, 1:].astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(correct * weight), jnp.sum(weight)


def make_train_step(module, optimizer: optax.GradientTransformation, ema_decay: float):
    """jit(params, ema_params, opt_state, input_ids [B, L] int32, attention_mask [B, L] int32)
    -> (params, ema_params, opt_state, metrics {loss, accuracy, grad_norm}: float32 scalars);
    loss = mean next-token CE over real targets. The three states are donated."""

    def step(params, ema_params, opt_state, input_ids, attention_mask):
        def loss_fn(p):
            nll, correct, count = next_token_nll(module, p, input_ids, attention_mask)
            count = jnp.maximum(count, 1.0)
            return nll / count, correct / count

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema_params = optim.ema_update(ema_params, params, ema_decay)
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}
        return params, ema_params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1, 2))


def batch_hash(input_ids) -> str:
    """The trainer's batch fingerprint (train_feed.DataFeed): md5 of the int32 ids, 16 hex."""
    return hashlib.md5(np.ascontiguousarray(input_ids, np.int32).tobytes()).hexdigest()[:16]


def train_autoregressive(config, model: AutoregressiveLM, *, progress: bool = True) -> dict:
    """Train `model` in place for config.train.steps on the LDLM trainer's batches.

    config: a locked LDLM ConfigDict (data.*, train.* are read; the model sizes are not).
    The final params are the EMA weights. Returns {'steps', 'tokens' (padded positions B*L per
    step), 'real_tokens', 'seconds', 'final_loss', 'losses' {step: loss} every train.log_every,
    'first_batch_hash', 'last_batch_hash'}.
    """
    from ldlm_jax import pipeline

    steps = int(config.train.steps)
    optimizer, _ = optim.make_optimizer(config)
    step_fn = make_train_step(model.module, optimizer, float(config.train.ema_decay))
    params = model.params
    ema = jax.tree.map(jnp.copy, params)
    opt_state = optimizer.init(params)
    iterator = pipeline.make_train_iterator(
        config, model.tokenizer, process_index=0, process_count=1
    )
    every = max(int(config.train.log_every), 1)
    losses, hashes, real, metrics = {}, [], 0, None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="autoregressive", unit="step")
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = next(iterator)
        ids = np.asarray(batch["input_ids"], np.int32)
        mask = np.asarray(batch["attention_mask"], np.int32)
        hashes.append(batch_hash(ids))
        real += int(mask.sum())
        params, ema, opt_state, metrics = step_fn(params, ema, opt_state, ids, mask)
        if step % every == 0 or step == steps:
            losses[step] = float(metrics["loss"])
            if not np.isfinite(losses[step]):
                raise FloatingPointError(
                    f"autoregressive loss is {losses[step]} at step {step}: lower "
                    "train.learning_rate"
                )
            if bar is not None:
                bar.set_postfix(loss=f"{losses[step]:.3f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.params = ema
    return {
        "steps": steps,
        "tokens": steps * int(config.train.batch_size) * int(config.data.seq_len),
        "real_tokens": real,
        "seconds": time.perf_counter() - start,
        "final_loss": losses.get(steps),
        "losses": losses,
        "first_batch_hash": hashes[0] if hashes else None,
        "last_batch_hash": hashes[-1] if hashes else None,
    }


def heldout_nll(model: AutoregressiveLM, batches) -> dict:
    """Teacher-forced NLL on batches {'input_ids', 'attention_mask'} int32 [B, L] (float64 sums):
    {'nll_per_token', 'ppl', 'tokens'}; the same targets the training loss scores."""
    fn = jax.jit(functools.partial(next_token_nll, model.module))
    total, count = 0.0, 0.0
    for b in batches:
        nll, _, n = fn(model.params, np.asarray(b["input_ids"]), np.asarray(b["attention_mask"]))
        total, count = total + float(nll), count + float(n)
    mean = total / count if count else float("nan")
    return {"nll_per_token": mean, "ppl": float(np.exp(mean)), "tokens": int(count)}


@functools.lru_cache(maxsize=8)
def _sampler(module, batch: int, seq_len: int, bos: int, eos: int, pad: int):
    num_layers = int(module.spec.num_layers)

    def run(params, rng, temperature):
        ids = jnp.full((batch, seq_len), pad, jnp.int32).at[:, 0].set(bos)
        mask = jnp.ones((batch, seq_len), jnp.int32)  # causal: later positions are never seen
        wte = params["wte"]["embedding"]

        def body(carry, xs):
            ids, done = carry
            position, key = xs
            out = module.apply({"params": params}, ids, mask, stop_at_layer=num_layers)
            h = jax.lax.dynamic_index_in_dim(out.hidden_states[-1], position, 1, False)
            logits = (h @ wte.T).astype(jnp.float32) / temperature
            token = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
            token = jnp.where(done, pad, token)
            ids = jax.lax.dynamic_update_index_in_dim(ids, token, position + 1, 1)
            return (ids, done | (token == eos)), None

        positions = jnp.arange(seq_len - 1)
        keys = jax.random.split(rng, seq_len - 1)
        (ids, _), _ = jax.lax.scan(body, (ids, jnp.zeros((batch,), bool)), (positions, keys))
        return ids

    return jax.jit(run)


def sample(
    model: AutoregressiveLM,
    rng,
    num: int,
    seq_len: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> np.ndarray:
    """Ancestral samples: int32 [num, seq_len]; column 0 is bos_id, then drawn tokens; after the
    first eos_id a row holds only pad_id. Same rng, same samples (batch b uses fold_in(rng, b))."""
    if num < 1 or seq_len < 2:
        raise ValueError(f"need num >= 1 and seq_len >= 2, got num={num}, seq_len={seq_len}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    eos = model.eos_id if model.eos_id is not None else -1
    batch = min(int(batch_size), num)
    fn = _sampler(model.module, batch, int(seq_len), model.bos_id, eos, model.pad_id)
    rows = []
    for b in range(-(-num // batch)):
        out = fn(model.params, jax.random.fold_in(rng, b), jnp.float32(temperature))
        rows.append(np.asarray(out))
    return np.concatenate(rows)[:num]


def sample_texts(model: AutoregressiveLM, seed: int, num: int, seq_len: int, **kw) -> list[dict]:
    """`sample` decoded: one dict per sample with token_ids (cut before EOS, no trailing pads,
    [CLS] kept as the LDLM's samples keep it) and text (special tokens skipped)."""
    ids = sample(model, jax.random.PRNGKey(seed), num, seq_len, **kw)
    out = []
    for row in ids:
        row = [int(i) for i in row]
        cut = row.index(model.eos_id, 1) if model.eos_id in row[1:] else len(row)
        row = row[:cut]
        while len(row) > 1 and row[-1] == model.pad_id:
            row.pop()
        text = model.tokenizer.decode(row, skip_special_tokens=True)
        out.append({"text": text, "token_ids": row, "num_tokens": len(row)})
    return out
