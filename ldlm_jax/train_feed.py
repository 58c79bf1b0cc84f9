"""Feeding the train step: this process's data shard -> global sharded batch arrays.

Each process iterates its own shard of the data (ldlm_jax.pipeline.make_train_iterator with its
process_index / process_count) and yields local batches [B / P, L]; `DataFeed.next` assembles the
global [B, L] jax.Arrays laid out along the 'batch' mesh axes
(jax.make_array_from_process_local_data), so no host ever holds the global batch. The iterator's
state (JSON-able) goes into every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have seen.

The hidden-state statistics are computed once, at the start of a fresh run, from the first
config.frozen_lm.stats_sequences sequences of the *whole* training stream (every process reads
the same sequences as process 0 of 1 would), so all processes agree without communicating.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import sharding as shd

log = logging.getLogger(__name__)

KEYS = ("input_ids", "attention_mask")


class DataError(ValueError):
    """The training data cannot be read (missing files, empty corpus, bad batch shapes)."""


def make_iterator(config, tokenizer, process_index: int, process_count: int):
    """The data workstream's training iterator (ldlm_jax.pipeline); local batches of
    {'input_ids', 'attention_mask'} int32 [B / process_count, L]."""
    try:
        from ldlm_jax import pipeline
    except ImportError as error:
        raise DataError(
            f"the data pipeline (ldlm_jax/pipeline.py) is not available: {error}"
        ) from error
    try:
        return pipeline.make_train_iterator(
            config, tokenizer, process_index=process_index, process_count=process_count
        )
    except (FileNotFoundError, OSError, ValueError) as error:
        raise DataError(
            f"cannot read the training data (data.source={config.data.source!r}, "
            f"data.paths={config.data.paths!r}): {error}"
        ) from error


def make_eval_iterator(config, tokenizer, process_index: int, process_count: int):
    """Held-out batches (ldlm_jax.pipeline.make_eval_iterator), or None when there is none."""
    try:
        from ldlm_jax import pipeline
    except ImportError:
        return None
    factory = getattr(pipeline, "make_eval_iterator", None)
    if factory is None:
        return None
    return factory(config, tokenizer, process_index=process_index, process_count=process_count)


def get_iterator_state(iterator) -> Any:
    """The iterator's JSON-able state (pipeline.iterator_state; grain get_state otherwise)."""
    try:
        from ldlm_jax.pipeline import iterator_state
    except ImportError:
        iterator_state = None
    if iterator_state is not None and hasattr(iterator, "get_state"):
        return iterator_state(iterator)
    if hasattr(iterator, "get_state"):
        return iterator.get_state()
    return getattr(iterator, "state", None)


def set_iterator_state(iterator, state) -> None:
    if hasattr(iterator, "set_state"):
        iterator.set_state(state)
    else:
        iterator.state = state


def validate_data(config, frozen_lm) -> None:
    """The pipeline's cheap data checks (files exist, seq_len vs the LM, tokenizer vs vocab),
    raised as DataError before anything is compiled."""
    try:
        from ldlm_jax import pipeline
    except ImportError:
        return
    check = getattr(pipeline, "validate_data_config", None)
    if check is None:
        return
    try:
        check(config, frozen_lm.tokenizer, frozen_lm.max_positions, frozen_lm.vocab_size)
    except (FileNotFoundError, OSError, ValueError) as error:
        raise DataError(
            f"bad data settings (data.source={config.data.source!r}, "
            f"data.paths={config.data.paths!r}): {error}"
        ) from error


@dataclasses.dataclass
class Batch:
    """arrays: {'input_ids', 'attention_mask'} global int32 [B, L] jax.Arrays; hash: of this
    process's rows (tests compare the batches of two runs with it)."""

    arrays: dict[str, jax.Array]
    hash: str


def abstract_batch(config, sharding=None) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of the global batch (for lowering before any data is read)."""
    shape = (config.train.batch_size, config.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for k in KEYS}


def to_global(local: dict, sharding, global_batch: int) -> dict[str, jax.Array]:
    """This process's rows {name: [B / P, L]} -> global sharded jax.Arrays [B, L]."""
    out = {}
    for key in KEYS:
        value = np.asarray(local[key], np.int32)
        shape = (global_batch, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


class DataFeed:
    """Global batches for the train step, with a checkpointable iterator state."""

    def __init__(self, config, tokenizer, mesh, rules):
        self.config = config
        self.sharding = shd.batch_sharding(mesh, rules)
        self.global_batch = int(config.train.batch_size)
        self.local_batch = self.global_batch // jax.process_count()
        self.iterator = make_iterator(config, tokenizer, jax.process_index(), jax.process_count())

    def next(self) -> Batch:
        local = next(self.iterator)
        ids = np.asarray(local["input_ids"])
        expected = (self.local_batch, self.config.data.seq_len)
        if ids.shape != expected:
            raise DataError(
                f"the data pipeline gave a batch of shape {ids.shape}, expected {expected} "
                "(train.batch_size / processes, data.seq_len)"
            )
        digest = hashlib.md5(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()[:16]
        return Batch(to_global(local, self.sharding, self.global_batch), digest)

    def get_state(self) -> Any:
        return get_iterator_state(self.iterator)

    def set_state(self, state) -> None:
        if state is not None:
            set_iterator_state(self.iterator, state)


def initial_hidden_stats(config, frozen_lm) -> dict[str, np.ndarray]:
    """{'mean', 'std'} float32 [Dh] from the first frozen_lm.stats_sequences training sequences
    (identity stats when frozen_lm.normalize is off)."""
    dim = frozen_lm.hidden_size
    if not config.frozen_lm.normalize:
        return {"mean": np.zeros(dim, np.float32), "std": np.ones(dim, np.float32)}
    from ldlm_jax.hidden_stats import compute_hidden_stats

    wanted = max(int(config.frozen_lm.stats_sequences), 1)
    iterator = make_iterator(config, frozen_lm.tokenizer, 0, 1)
    ids, masks, have = [], [], 0
    while have < wanted:
        batch = next(iterator)
        ids.append(np.asarray(batch["input_ids"], np.int32))
        masks.append(np.asarray(batch["attention_mask"], np.int32))
        have += len(ids[-1])
    ids, masks = np.concatenate(ids)[:wanted], np.concatenate(masks)[:wanted]
    stats = compute_hidden_stats(
        frozen_lm,
        frozen_lm.params,
        ids,
        masks,
        int(config.frozen_lm.layer),
        batch_size=min(wanted, 32),
    )
    log.info("hidden-state stats from %d sequences (%d tokens)", wanted, stats.count)
    return stats.to_dict()
