"""The grain input pipeline: documents -> this host's shard -> shuffled epochs -> tokens -> batches.

    MapDataset.source(documents)[split][process_index::process_count]   # each host its own shard
      .shuffle(seed).repeat()                                           # a new order every epoch
      pad:  .batch(B_local, texts) .map(PadTokenize)                    # [B_local, L] per element
      pack: .batch(64 documents) .map(StreamTokenize) -> PackIterDataset -> .batch(B_local)
      .to_iter_dataset(ReadOptions) [.mp_prefetch(worker_count)]

Everything before `to_iter_dataset` is index-based, so the iterator's state is a few integers
(plus, in pack mode, the offset into the current document group): `iterator_state(it)` returns
grain's JSON-able state dict and `restore_iterator(it, state)` puts it back; a restored iterator
yields exactly the batches the uninterrupted one would have. The trainer stores this dict per
process in the checkpoint (orbax JsonSave), not through grain's own orbax handler.

Pad-mode batches are formed before the worker split, so the batches do not depend on
data.worker_count; pack mode packs per worker, so its rows do depend on it (deterministically).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from ldlm_jax import corpora, tokenization

log = logging.getLogger(__name__)

KEYS = ("input_ids", "attention_mask")
DOCS_PER_GROUP = 64  # documents tokenised together in pack mode (one fast-tokenizer call)
SYNTHETIC_DOCS = 65_536


class DataConfigError(ValueError):
    """The data settings cannot work with this tokenizer / LM / topology; names the key."""


def local_batch_size(config, process_count: int) -> int:
    """train.batch_size / process_count (rows this host feeds per step)."""
    batch = int(config.train.batch_size)
    if process_count <= 0 or batch % process_count:
        raise DataConfigError(
            f"train.batch_size={batch} is not divisible by the {process_count} processes: "
            "each host feeds an equal share of the global batch"
        )
    return batch // process_count


def _split_source(documents: Sequence[str], config, split: str) -> grain.MapDataset:
    d = config.data
    start, stop = corpora.split_bounds(
        len(documents), split, d.validation_fraction, d.validation_docs
    )
    return grain.MapDataset.source(documents)[start:stop]


def load_documents(config, split: str = "train") -> grain.MapDataset:
    """The documents (str) of `split` ('train' or 'validation') for data.source."""
    d = config.data
    if d.source == "bible":
        return _split_source(corpora.bible_verses(), config, split)
    if d.source == "text_files":
        docs = corpora.read_documents(d.paths, d.text_field, d.text_unit, d.skip_invalid_utf8)
        return _split_source(docs, config, split)
    if d.source == "synthetic":
        return _split_source(corpora.SyntheticTexts(SYNTHETIC_DOCS, seed=0), config, split)
    if d.source == "prepared":
        from ldlm_jax import prepared_dataset

        if not d.paths:
            raise DataConfigError("data.source='prepared' needs data.paths = the prepared folder")
        return grain.MapDataset.source(prepared_dataset.open_prepared(d.paths, split))
    if d.source == "tfds_lm1b":
        if d.paths:  # a local tfds folder in lm1b's layout ({'text': bytes}), no catalog lookup
            from ldlm_jax import prepared_dataset

            names = _split_names(d.paths)
            return grain.MapDataset.source(
                prepared_dataset.open_prepared(d.paths, _lm1b_split(split, names))
            )
        return grain.MapDataset.source(corpora.lm1b_source(split, d.tfds_data_dir))
    raise DataConfigError(f"data.source={d.source!r} is not a known source")


def _split_names(path: str) -> list[str]:
    import tensorflow_datasets as tfds

    from ldlm_jax import prepared_dataset

    return list(tfds.builder_from_directory(prepared_dataset.resolve_prepared(path)).info.splits)


def _lm1b_split(split: str, names: Sequence[str]) -> str:
    return "test" if split == "validation" and "validation" not in names else split


def build_dataset(
    documents: grain.MapDataset,
    tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    mode: str = "pad",
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 2,
    add_special_tokens: bool = True,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """A grain IterDataset of batches {'input_ids', 'attention_mask'} int32 [batch_size, L].

    documents: all documents of the split (str); this host keeps every process_count-th one
      starting at process_index. num_epochs None repeats forever (each epoch reshuffled).
    """
    if len(documents) < process_count:
        raise DataConfigError(
            f"{len(documents)} documents cannot be shared among {process_count} processes"
        )
    ds = documents[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed)
    ds = ds.repeat(num_epochs)
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(int(prefetch), 1))
    if mode == "pad":
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
        ds = ds.map(tokenization.PadTokenize(tokenizer, seq_len, add_special_tokens))
        ids = ds.to_iter_dataset(read)
    elif mode == "pack":
        ds = ds.batch(DOCS_PER_GROUP, batch_fn=list).map(tokenization.StreamTokenize(tokenizer))
        rows = tokenization.PackIterDataset(
            ds.to_iter_dataset(read), seq_len, tokenization.pad_id(tokenizer)
        )
        ids = rows.batch(batch_size, drop_remainder=drop_remainder)
    else:
        raise DataConfigError(f"data.mode={mode!r}; choose 'pack' or 'pad'")
    if worker_count > 0:
        options = grain.MultiprocessingOptions(
            num_workers=int(worker_count), per_worker_buffer_size=max(int(prefetch), 1)
        )
        ids = ids.mp_prefetch(options)
    return ids


def _process(process_index, process_count) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise DataConfigError(f"process_index={index} is not in [0, {count})")
    return index, count


def make_train_iterator(
    config, tokenizer, *, process_index=None, process_count=None, split: str = "train"
):
    """This host's endless, shuffled stream of local batches {'input_ids', 'attention_mask'}
    int32 [train.batch_size / process_count, data.seq_len] (a grain DatasetIterator: get_state /
    set_state). Shuffled with train.seed, reshuffled every epoch."""
    index, count = _process(process_index, process_count)
    d = config.data
    ds = build_dataset(
        load_documents(config, split),
        tokenizer,
        seq_len=int(d.seq_len),
        batch_size=local_batch_size(config, count),
        mode=d.mode,
        seed=int(config.train.seed),
        shuffle=True,
        process_index=index,
        process_count=count,
        worker_count=int(d.worker_count),
        prefetch=int(d.prefetch),
        add_special_tokens=bool(d.add_special_tokens),
    )
    return iter(ds)


def make_eval_iterator(config, tokenizer, *, process_index=None, process_count=None):
    """Held-out local batches (shapes as make_train_iterator) in a fixed order, cycling forever
    (every host yields the same number of batches); take as many as needed. None when the
    source has no held-out split."""
    index, count = _process(process_index, process_count)
    d = config.data
    try:
        documents = load_documents(config, "validation")
    except corpora.CorpusError as error:
        if "no validation split" in str(error):
            return None
        raise
    ds = build_dataset(
        documents,
        tokenizer,
        seq_len=int(d.seq_len),
        batch_size=local_batch_size(config, count),
        mode=d.mode,
        shuffle=False,
        process_index=index,
        process_count=count,
        worker_count=0,
        prefetch=int(d.prefetch),
        add_special_tokens=bool(d.add_special_tokens),
    )
    return iter(ds)


def iterator_state(iterator) -> dict[str, Any]:
    """The iterator's position as a JSON-able dict (what the checkpoint stores per process)."""
    state = iterator.get_state()
    return json.loads(json.dumps(state, default=_json_default))


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"iterator state holds a {type(value).__name__}, not JSON-able")


def restore_iterator(iterator, state: dict[str, Any]) -> None:
    """Move `iterator` (built from the same config) to a position saved by iterator_state."""
    iterator.set_state(state)


def to_global_batch(local_batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
    """This process's rows {name: [B / P, L]} -> global jax.Arrays [B, L] laid out by `sharding`
    (batch axis over the processes' devices); no host ever holds the global batch."""
    out = {}
    for key in KEYS:
        value = np.asarray(local_batch[key], np.int32)
        shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def validate_data_config(config, tokenizer, max_positions: int, vocab_size: int | None = None):
    """Data errors before any compile: L vs the LM's positions, a tokenizer from another LM
    (vocabulary size), the tokens each mode needs, batch divisibility, missing or empty files.

    max_positions: the frozen LM's maximum positions; vocab_size: its embedding rows (optional).
    Raises DataConfigError (or corpora.CorpusError naming the file).
    """
    d = config.data
    if d.seq_len > max_positions:
        raise DataConfigError(
            f"data.seq_len={d.seq_len} exceeds the frozen LM's maximum positions {max_positions} "
            f"(frozen_lm.source={config.frozen_lm.source!r}); lower data.seq_len"
        )
    if vocab_size is not None:
        size = len(tokenizer)
        # Embeddings may be padded a little beyond the tokenizer (e.g. 32000 -> 32064).
        if size > vocab_size or size < 0.9 * vocab_size:
            raise DataConfigError(
                f"the tokenizer has {size} tokens but the frozen LM's vocabulary has {vocab_size} "
                f"(frozen_lm.source={config.frozen_lm.source!r}): use that LM's own tokenizer"
            )
    if d.mode == "pack":
        tokenization.separator_id(tokenizer)
    local_batch_size(config, jax.process_count())
    if d.source == "bible":
        corpora.bible_path()
    elif d.source == "text_files":
        files = corpora.split_paths(d.paths)
        if not files:
            raise DataConfigError("data.source='text_files' needs data.paths (comma-separated)")
        for path in files:
            docs = corpora.iter_documents([path], d.text_field, d.text_unit, d.skip_invalid_utf8)
            if next(docs, None) is None:
                raise corpora.CorpusError(f"no documents in {path} (only blank lines?)")
    elif d.source == "prepared" or (d.source == "tfds_lm1b" and d.paths):
        from ldlm_jax import prepared_dataset

        if not d.paths:
            raise DataConfigError("data.source='prepared' needs data.paths = the prepared folder")
        prepared_dataset.resolve_prepared(d.paths)


__all__ = [
    "DataConfigError",
    "build_dataset",
    "iterator_state",
    "load_documents",
    "local_batch_size",
    "make_eval_iterator",
    "make_train_iterator",
    "restore_iterator",
    "to_global_batch",
    "validate_data_config",
]
