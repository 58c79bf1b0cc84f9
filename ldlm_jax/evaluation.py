"""Sample-quality metrics: generative perplexity, unigram entropy, reconstruction, MAUVE, frontier.

Generative perplexity follows the field's protocol (MDLM, SEDD, Duo): decode samples to text,
retokenise with the scorer's tokenizer (GPT-2 Large converted with ldlm-convert-lm, run in Flax),
context <= 1024 tokens, a text's first token never scored, token-weighted over the corpus, log-
likelihoods summed in float64 on the host. Longer texts are cut into windows overlapping by one
token, so every token after the first is scored once. The scorer is jitted with its weights as an
argument; batches are padded to a fixed size and a few bucket lengths (few compiled shapes).

Always report gen PPL together with the mean per-sample unigram entropy (natural log, nats) of
the generated ids: a low-entropy, repetitive sampler gets a low perplexity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import sharding as shd

DEFAULT_CONTEXT = 1024


class ScorerError(ValueError):
    """The scorer cannot score a text (its tokenizer cannot encode it, or vocab mismatch)."""


# ----------------------------------------------------------------------------- entropy


def unigram_entropy(token_ids: Sequence[int]) -> float:
    """Entropy in nats of one sample's empirical token distribution.

    Args:
      token_ids: int ids of one sample (after cutting at EOS; no pads).
    Returns:
      -sum_v p_v log p_v with p_v = count_v / n (natural log); 0.0 for an empty sample.
    """
    counts = np.array(list(Counter(int(t) for t in token_ids).values()), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mean_unigram_entropy(samples: Iterable[Sequence[int]]) -> float:
    """Mean over samples of `unigram_entropy` (nats). Empty samples are skipped; NaN if all are."""
    values = [unigram_entropy(s) for s in samples if len(s) > 0]
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------- scorer


@dataclasses.dataclass
class Scorer:
    """A causal LM with an LM head used to score text, plus its tokenizer.

    log_probs_fn(params, input_ids [B,T] int32, attention_mask [B,T] int32) -> [B,T-1] float32:
      log p(input_ids[:, i+1] | input_ids[:, :i+1]); jitted, weights as an argument.
    features_fn(params, input_ids, attention_mask) -> [B,D] float32: last-layer hidden state at each
      row's last real token (MAUVE's GPT-2 features).
    """

    tokenizer: Any
    params: Any
    log_probs_fn: Callable
    features_fn: Callable
    vocab_size: int
    max_positions: int
    name: str = "scorer"

    def encode(self, text: str, index: int = 0) -> list[int]:
        """Text -> scorer token ids (no special tokens); ScorerError naming the sample on unknown
        tokens, no tokens from a non-empty text, or ids outside the model's vocabulary."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        unk = getattr(self.tokenizer, "unk_token_id", None)
        snippet = text[:60].replace("\n", " ")
        if text.strip() and not ids:
            raise ScorerError(
                f"sample {index} ({snippet!r}): the scorer's tokenizer gave no tokens for a "
                "non-empty text; use a byte-level tokenizer such as GPT-2's"
            )
        if unk is not None and unk in ids:
            raise ScorerError(
                f"sample {index} ({snippet!r}): the scorer's tokenizer cannot encode this text "
                f"(unknown token {self.tokenizer.unk_token!r}); score with a byte-level "
                "tokenizer such as GPT-2's"
            )
        if ids and max(ids) >= self.vocab_size:
            raise ScorerError(
                f"sample {index} ({snippet!r}): token id {max(ids)} >= the scorer model's vocab "
                f"size {self.vocab_size}; the tokenizer does not belong to this model"
            )
        return ids


def scorer_from_frozen_lm(frozen_lm, name: str = "scorer") -> Scorer:
    """Wrap a FrozenLM (ldlm_jax.frozen_lm) that has an LM head as a Scorer."""
    module = frozen_lm.module

    @jax.jit
    def log_probs_fn(params, input_ids, attention_mask):
        out = module.apply({"params": params}, input_ids, attention_mask)
        if out.logits is None:
            raise ScorerError("the scorer model has no LM head (logits=None); use a causal LM")
        logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]

    @jax.jit
    def features_fn(params, input_ids, attention_mask):
        out = module.apply({"params": params}, input_ids, attention_mask)
        last = jnp.maximum(attention_mask.sum(axis=1) - 1, 0)
        h = out.hidden_states[-1].astype(jnp.float32)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]

    return Scorer(
        tokenizer=frozen_lm.tokenizer,
        params=frozen_lm.params,
        log_probs_fn=log_probs_fn,
        features_fn=features_fn,
        vocab_size=int(frozen_lm.vocab_size),
        max_positions=int(frozen_lm.max_positions),
        name=name,
    )


def load_scorer(source: str, dtype: str = "float32") -> Scorer:
    """A scorer from a GPT-2 (Large) HF folder or an ldlm-convert-lm folder."""
    from ldlm_jax.frozen_lm import load_frozen_lm

    if not os.path.exists(source):
        raise FileNotFoundError(
            f"scorer {source!r} not found: give a local GPT-2 Large HF folder or a folder written "
            "by ldlm-convert-lm (the scorer is never downloaded)"
        )
    return scorer_from_frozen_lm(load_frozen_lm(source, dtype=dtype), name=os.path.basename(source))


def bucket_lengths(context: int) -> list[int]:
    """Padded lengths the scorer compiles for: powers of two from 64, capped by `context`."""
    return sorted({min(2**k, context) for k in range(6, 12)} | {context})


def _windows(ids: list[int], context: int) -> list[list[int]]:
    """Cut ids into windows of <= context tokens overlapping by one: each window scores its tokens
    1..end, so over all windows every token but the text's first is scored once."""
    if len(ids) <= context:
        return [ids]
    out, start = [], 0
    while start < len(ids) - 1:
        out.append(ids[start : start + context])
        start += context - 1
    return out


def _shard_batch(arrays: Sequence[np.ndarray]):
    """Put [B, ...] arrays on all devices, batch-sharded (B is a multiple of the device count)."""
    devices = jax.devices()
    if len(devices) == 1:
        return [jnp.asarray(a) for a in arrays]
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return [jax.device_put(a, sharding) for a in arrays]


def _padded_batches(rows: list[list[int]], batch_size: int, context: int):
    """Yield (row indices, ids [B,T] int32, mask [B,T] int32) with T a bucket length, rows sorted
    by length so a batch pads little; B is batch_size rounded up to the device count."""
    n_dev = jax.device_count()
    batch_size = -(-batch_size // n_dev) * n_dev
    buckets = bucket_lengths(context)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        longest = max(len(rows[i]) for i in idx)
        length = next(b for b in buckets if b >= longest)
        ids = np.zeros((batch_size, length), np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for r, i in enumerate(idx):
            ids[r, : len(rows[i])] = rows[i]
            mask[r, : len(rows[i])] = 1
        yield idx, ids, mask


def generative_perplexity(
    texts: Sequence[str],
    scorer: Scorer,
    *,
    batch_size: int = 8,
    context: int = DEFAULT_CONTEXT,
) -> dict:
    """Token-weighted perplexity of `texts` under the scorer.

    Args:
      texts: decoded samples.
      scorer: a Scorer (see load_scorer).
      batch_size: rows per jitted scorer call.
      context: longest window the scorer sees (capped by its position table).
    Returns:
      dict with gen_ppl = exp(total NLL / scored tokens) (float64 sums), nll_per_token,
      scored_tokens, num_texts, num_empty (texts with nothing to score) and per_text_nll (mean NLL
      of each text, NaN if it has fewer than two tokens).
    Raises:
      ScorerError naming the first sample the tokenizer cannot encode (before anything compiles).
    """
    context = min(int(context), scorer.max_positions)
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    encoded = [scorer.encode(t, i) for i, t in enumerate(texts)]
    rows, owner = [], []
    for i, ids in enumerate(encoded):
        if len(ids) >= 2:
            for w in _windows(ids, context):
                rows.append(w)
                owner.append(i)
    nll = np.zeros(len(texts), np.float64)
    count = np.zeros(len(texts), np.int64)
    for idx, ids, mask in _padded_batches(rows, batch_size, context) if rows else ():
        ids_d, mask_d = _shard_batch([ids, mask])
        logp = np.asarray(scorer.log_probs_fn(scorer.params, ids_d, mask_d), np.float64)
        valid = mask[:, 1:].astype(bool)
        for r, i in enumerate(idx):
            nll[owner[i]] -= logp[r][valid[r]].sum()
            count[owner[i]] += int(valid[r].sum())
    total_tokens = int(count.sum())
    total_nll = float(nll.sum())
    mean_nll = total_nll / total_tokens if total_tokens else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_text = np.where(count > 0, nll / np.maximum(count, 1), np.nan)
    return {
        "gen_ppl": math.exp(mean_nll) if total_tokens else float("nan"),
        "nll_per_token": mean_nll,
        "scored_tokens": total_tokens,
        "num_texts": len(texts),
        "num_empty": int((count == 0).sum()),
        "per_text_nll": [float(x) for x in per_text],
        "context": context,
        "scorer": scorer.name,
    }


# ----------------------------------------------------------------------------- MAUVE


def mauve_available() -> bool:
    """Whether the optional `mauve-text` package (import name `mauve`) is installed."""
    import importlib.util

    return importlib.util.find_spec("mauve") is not None


def scorer_features(
    texts: Sequence[str], scorer: Scorer, *, batch_size: int = 8, context: int = DEFAULT_CONTEXT
) -> np.ndarray:
    """[N, D] float32 features: the scorer's last hidden state at each text's last token (texts
    truncated to `context` tokens), as MAUVE computes them with GPT-2 Large."""
    context = min(int(context), scorer.max_positions)
    rows = [scorer.encode(t, i)[:context] or [0] for i, t in enumerate(texts)]
    out = [None] * len(rows)
    for idx, ids, mask in _padded_batches(rows, batch_size, context):
        feats = np.asarray(scorer.features_fn(scorer.params, *_shard_batch([ids, mask])))
        for r, i in enumerate(idx):
            out[i] = feats[r]
    return np.stack(out).astype(np.float32)


def mauve_score(
    generated: Sequence[str], reference: Sequence[str], scorer: Scorer, *, seed: int = 0, **kw
) -> float:
    """MAUVE between generated and reference texts on the scorer's features.

    Raises ImportError with an install hint if `mauve-text` is not installed (it is optional and
    not a dependency of ldlm_jax)."""
    if not mauve_available():
        raise ImportError(
            "MAUVE needs the optional package mauve-text (pip install mauve-text); it is not a "
            "dependency of ldlm_jax. Gen PPL and entropy are reported without it."
        )
    import mauve

    p = scorer_features(reference, scorer, **kw)
    q = scorer_features(generated, scorer, **kw)
    result = mauve.compute_mauve(p_features=p, q_features=q, seed=seed, verbose=False)
    return float(result.mauve)


# ----------------------------------------------------------------------------- reconstruction


def reconstruction_accuracy(ldlm, params, frozen_params, hidden_stats, batches, mesh=None) -> dict:
    """Autoencoder token accuracy without diffusion noise: tokens -> h -> encode -> decode_hidden
    -> decode_tokens -> argmax, compared with the input over non-pad positions.

    ldlm: an LDLM container; params: its trainable params (EMA or raw); frozen_params and
    hidden_stats ({'mean', 'std'}) as saved; batches: dicts of input_ids / attention_mask int32
    [B, L]; mesh: the mesh the params live on (Generator.mesh), entered with the config's
    activation rules as in sampling (the TPU flash-attention kernel runs per shard under it).
    Returns {'reconstruction_accuracy': correct / non-pad tokens, 'tokens': count}.
    """
    fn = _reconstruct_fn(ldlm)
    correct, total = 0, 0
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        for batch in batches:
            ids = np.asarray(batch["input_ids"], np.int32)
            mask = np.asarray(batch["attention_mask"], np.int32)
            pred = np.asarray(fn(params, frozen_params, hidden_stats, ids, mask))
            real = mask.astype(bool)
            correct += int((pred == ids)[real].sum())
            total += int(real.sum())
    return {
        "reconstruction_accuracy": correct / total if total else float("nan"),
        "tokens": total,
    }


def _reconstruct_fn(ldlm):
    def fn(params, frozen_params, hidden_stats, ids, mask):
        h = ldlm.hidden(frozen_params, hidden_stats, ids, mask)
        z0 = ldlm.encode(params, h, mask)
        h_hat = ldlm.decode_hidden(params, z0)
        return jnp.argmax(ldlm.decode_tokens(params, h_hat, mask), axis=-1).astype(jnp.int32)

    return jax.jit(shd.with_activation_rules(fn, ldlm.config.logical_axis_rules))


# ----------------------------------------------------------------------------- frontier


def write_frontier(points: Sequence[dict], json_path: str, png_path: str | None = None) -> None:
    """Write the quality-diversity frontier over step counts.

    points: dicts with 'steps', 'gen_ppl' (None without a scorer) and 'entropy', one per step
    count, written as a JSON list to json_path and plotted to png_path (if given)."""
    points = sorted(points, key=lambda p: p["steps"])
    with open(json_path, "w") as f:
        json.dump(points, f, indent=2)
    if png_path:
        plot_frontier(points, png_path)


def plot_frontier(points: Sequence[dict], png_path: str) -> None:
    """Gen PPL against unigram entropy (nats), one labelled point per step count (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if p.get("gen_ppl") is not None and np.isfinite(p["gen_ppl"])]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    if ok:
        xs = [p["entropy"] for p in ok]
        ys = [p["gen_ppl"] for p in ok]
        ax.plot(xs, ys, "o-")
        for p, x, y in zip(ok, xs, ys, strict=True):
            ax.annotate(f"{p['steps']} steps", (x, y), textcoords="offset points", xytext=(4, 4))
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no gen PPL (no scorer)", ha="center", va="center")
    ax.set_xlabel("mean unigram entropy (nats)")
    ax.set_ylabel("generative perplexity")
    ax.set_title("quality-diversity frontier over sampling steps")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
