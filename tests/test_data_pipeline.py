"""The grain data pipeline: exact resume, host sharding, lossless packing, padding masks, the
lm1b layout from a local fixture, global batches on the mesh and early errors (no network)."""

import json
import os

import grain
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ldlm_jax import corpora, pipeline, tokenization
from ldlm_jax.config import base_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def verses():
    return corpora.bible_verses()[:600]


def demo_config(**data):
    c = base_config()
    c.data.seq_len = 64
    c.train.batch_size = 32
    for key, value in data.items():
        c.data[key] = value
    return c


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def build(docs, tokenizer, **kw):
    args = dict(seq_len=32, batch_size=4, mode="pad", seed=3)
    args.update(kw)
    return pipeline.build_dataset(grain.MapDataset.source(docs), tokenizer, **args)


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_resume_yields_the_uninterrupted_batches(tokenizer, verses, mode):
    it = iter(build(verses, tokenizer, mode=mode))
    take(it, 7)
    state = json.loads(json.dumps(pipeline.iterator_state(it)))  # as stored in the checkpoint
    expected = take(it, 6)
    again = iter(build(verses, tokenizer, mode=mode))
    pipeline.restore_iterator(again, state)
    assert same(take(again, 6), expected)
    fresh = iter(build(verses, tokenizer, mode=mode))
    assert not same(take(fresh, 6), expected)  # the state really moved the iterator


def test_resume_with_two_worker_processes(tokenizer, verses):
    docs = verses[:200]
    it = iter(build(docs, tokenizer, mode="pack", worker_count=2))
    reference = take(it, 5)
    state = pipeline.iterator_state(it)
    expected = take(it, 4)
    it.close()
    again = iter(build(docs, tokenizer, mode="pack", worker_count=2))
    pipeline.restore_iterator(again, json.loads(json.dumps(state)))
    got = take(again, 4)
    again.close()
    assert same(got, expected)
    assert reference[0]["input_ids"].shape == (4, 32)


def test_epochs_are_reshuffled_and_seeded(tokenizer):
    docs = [f"document number {i}" for i in range(12)]

    def order(seed, n=24):
        rows = take(iter(build(docs, tokenizer, batch_size=1, seed=seed)), n)
        return [tokenizer.decode(r["input_ids"][0], skip_special_tokens=True) for r in rows]

    first = order(0)
    assert sorted(first[:12]) == sorted(docs) == sorted(first[12:])  # every epoch is complete
    assert first[:12] != first[12:]  # and differently ordered
    assert order(0) == first and order(1) != first


def test_two_hosts_see_every_document_once(tokenizer):
    docs = [f"document number {i}" for i in range(101)]  # not a multiple of 2 x batch
    seen = []
    for host in range(2):
        ds = build(
            docs,
            tokenizer,
            batch_size=4,
            num_epochs=1,
            drop_remainder=False,
            process_index=host,
            process_count=2,
        )
        for batch in ds:
            seen += tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert sorted(seen) == sorted(docs)  # all of them, none twice


def test_packing_loses_no_tokens(tokenizer, verses):
    docs = verses[:300]
    ds = build(docs, tokenizer, mode="pack", shuffle=False, num_epochs=1, drop_remainder=False)
    batches = list(ds)
    ids = np.concatenate([b["input_ids"] for b in batches])
    mask = np.concatenate([b["attention_mask"] for b in batches])
    stream = tokenization.StreamTokenize(tokenizer)(docs)
    assert np.array_equal(ids[mask == 1], stream)
    assert mask[:-1].all()  # only the very last row of the finite stream is padded
    assert (stream == tokenizer.sep_token_id).sum() == len(docs)  # [SEP] separates (BERT)
    assert ids.dtype == np.int32 and ids.shape[1] == 32


def test_padding_masks(tokenizer):
    docs = ["short one.", "a " * 100 + "end", "two words"]
    batch = next(iter(build(docs, tokenizer, batch_size=3, shuffle=False)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for text, row, row_mask in zip(docs, ids, mask, strict=True):
        full = tokenizer(text)["input_ids"]  # [CLS] ... [SEP]
        n = min(len(full), 32)
        assert row_mask.tolist() == [1] * n + [0] * (32 - n)
        assert row[:n].tolist() == full[:n]
        assert (row[n:] == tokenizer.pad_token_id).all()
    assert mask[1].all()  # the long row is truncated to L


def test_train_and_eval_iterators_from_config(tokenizer):
    config = demo_config(mode="pad")
    it = pipeline.make_train_iterator(config, tokenizer, process_index=1, process_count=2)
    batch = next(it)
    assert batch["input_ids"].shape == (16, 64) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == np.int32
    ev = pipeline.make_eval_iterator(config, tokenizer, process_index=0, process_count=1)
    held = tokenizer.batch_decode(next(ev)["input_ids"], skip_special_tokens=True)
    tail = corpora.bible_verses()[-311:]  # the last 1% of the verses are held out
    assert held[0] == tokenizer.decode(tokenizer(tail[0])["input_ids"], skip_special_tokens=True)
    config.train.batch_size = 30
    with pytest.raises(ValueError, match="train.batch_size=30"):
        pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=4)


def test_lm1b_layout_from_a_local_fixture(tokenizer, tmp_path):
    from ldlm_jax import prepared_dataset

    path = os.path.join(FIXTURES, "lm1b_sample.txt")
    source = prepared_dataset.DocumentInput(lambda: corpora.iter_text(path), {"f": path})
    prepared_dataset.prepare_documents(source, str(tmp_path), validation_docs=2, progress=False)
    import tensorflow_datasets as tfds

    raw = tfds.data_source("ldlm_text", split="train", data_dir=str(tmp_path))
    assert isinstance(raw[0]["text"], bytes)  # the layout of tfds lm1b: {'text': bytes}
    config = demo_config(source="tfds_lm1b", paths=str(tmp_path), seq_len=32)
    config.train.batch_size = 4
    pipeline.validate_data_config(config, tokenizer, max_positions=512, vocab_size=30522)
    batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
    lines = list(corpora.iter_text(path))[:10]
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert all(
        t in [tokenizer.decode(tokenizer(x)["input_ids"][1:-1]) for x in lines] for t in texts
    )
    ev = pipeline.make_eval_iterator(config, tokenizer, process_index=0, process_count=1)
    assert next(ev)["input_ids"].shape == (4, 32)


def test_to_global_batch_places_rows_on_the_mesh():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    local = {
        "input_ids": np.arange(16 * 4, dtype=np.int32).reshape(16, 4),
        "attention_mask": np.ones((16, 4), np.int32),
    }
    out = pipeline.to_global_batch(local, sharding)
    assert out["input_ids"].shape == (16, 4) and out["input_ids"].sharding == sharding
    assert np.array_equal(np.asarray(out["input_ids"]), local["input_ids"])
    assert len(out["input_ids"].addressable_shards) == 8


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_bad_files_name_the_file_line_and_offset(tmp_path, tokenizer):
    with pytest.raises(corpora.CorpusError, match="empty.*empty.txt"):
        corpora.read_documents(write(tmp_path, "empty.txt", b""))
    with pytest.raises(corpora.CorpusError, match="not found.*nope.txt"):
        corpora.read_documents(str(tmp_path / "nope.txt"))
    jsonl = write(tmp_path, "a.jsonl", b'{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(corpora.CorpusError, match=r"a\.jsonl: line 2: no field 'text'"):
        corpora.read_documents(jsonl)
    bad = write(tmp_path, "bad.txt", b"good line\nbad \xff\xfe line\nlast line\n")
    with pytest.raises(corpora.CorpusError, match=r"bad\.txt: line 2, byte offset 14"):
        corpora.read_documents(bad)
    assert corpora.read_documents(bad, skip_invalid_utf8=True) == ["good line", "last line"]
    config = demo_config(source="text_files", paths=bad)
    with pytest.raises(ValueError, match="skip_invalid_utf8"):
        pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    config.data.skip_invalid_utf8 = True
    config.train.batch_size = 2
    assert next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))


def test_validate_data_config_errors(tokenizer, tmp_path):
    config = demo_config()
    pipeline.validate_data_config(config, tokenizer, max_positions=512, vocab_size=30522)
    with pytest.raises(ValueError, match="data.seq_len=64 exceeds.*32"):
        pipeline.validate_data_config(config, tokenizer, max_positions=32)
    with pytest.raises(ValueError, match="30522 tokens.*50257"):
        pipeline.validate_data_config(config, tokenizer, max_positions=1024, vocab_size=50257)
    config = demo_config(source="text_files", paths=write(tmp_path, "blank.txt", b"\n \n"))
    with pytest.raises(ValueError, match="blank.txt"):
        pipeline.validate_data_config(config, tokenizer, max_positions=512)
    config = demo_config(source="prepared", paths=str(tmp_path))
    with pytest.raises(ValueError, match="ldlm-prepare-data"):
        pipeline.validate_data_config(config, tokenizer, max_positions=512)


def test_text_units_and_jsonl_fixture():
    txt = os.path.join(FIXTURES, "tiny.txt")
    assert len(corpora.read_documents(txt)) == 10
    assert len(corpora.read_documents(txt, unit="paragraph")) == 3
    assert len(corpora.read_documents(txt, unit="file")) == 1
    docs = corpora.read_documents(os.path.join(FIXTURES, "tiny.jsonl"))
    assert len(docs) == 6 and docs[0] == "In the beginning was the word."
    synthetic = corpora.SyntheticTexts(10, seed=0)
    assert synthetic[3] == corpora.SyntheticTexts(10, seed=0)[3] != synthetic[4]
