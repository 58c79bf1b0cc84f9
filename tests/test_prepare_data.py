"""ldlm-prepare-data: local .txt/.jsonl files and the embedded corpus into array_record shards
that tfds and grain read back; counts, the held-out tail, idempotent reruns, clear errors."""

import os

import grain
import pytest
import tensorflow_datasets as tfds

from ldlm_jax import corpora, pipeline, prepared_dataset
from ldlm_jax.cli import prepare_data
from ldlm_jax.config import base_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TXT, JSONL = os.path.join(FIXTURES, "tiny.txt"), os.path.join(FIXTURES, "tiny.jsonl")


def shard_files(output):
    folder = os.path.join(output, "ldlm_text", "1.0.0")
    return {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}


def test_txt_and_jsonl_files(tmp_path, capsys):
    out = str(tmp_path / "data")
    argv = [TXT, JSONL, "--output", out, "--validation-docs", "3", "--no-progress"]
    assert prepare_data.main(argv) == 0
    docs = corpora.read_documents([TXT, JSONL])
    assert len(docs) == 16
    train = tfds.data_source("ldlm_text", split="train", data_dir=out)
    valid = tfds.data_source("ldlm_text", split="validation", data_dir=out)
    assert len(train) == 13 and len(valid) == 3
    assert [x["text"].decode() for x in valid] == docs[-3:]  # the last documents are held out
    read = grain.MapDataset.source(prepared_dataset.open_prepared(out, "train"))
    assert list(read) == docs[:13]
    assert any(s.endswith("array_record-00000-of-00001") for s in shard_files(out))
    before = shard_files(out)
    capsys.readouterr()
    assert prepare_data.main(argv) == 0  # a rerun is a no-op
    assert "already prepared" in capsys.readouterr().out
    assert shard_files(out) == before
    assert prepare_data.main([TXT, "--output", out, "--no-progress"]) == 1  # other inputs
    assert "other inputs" in capsys.readouterr().err


def test_embedded_corpus_feeds_the_pipeline(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    out = str(tmp_path / "bible")
    assert prepare_data.main(["--bible", "--output", out, "--no-progress"]) == 0
    manifest = prepared_dataset.read_manifest(out)
    assert manifest["documents"] == 31103 and manifest["validation"] == 311  # 1% default
    config = base_config()
    config.data.source, config.data.paths = "prepared", out
    config.data.seq_len, config.train.batch_size = 32, 4
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    pipeline.validate_data_config(config, tokenizer, max_positions=512, vocab_size=30522)
    batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
    assert batch["input_ids"].shape == (4, 32)
    held = next(pipeline.make_eval_iterator(config, tokenizer, process_index=0, process_count=1))
    first = tokenizer.decode(held["input_ids"][0], skip_special_tokens=True)
    verse = corpora.bible_verses()[-311]
    assert first == tokenizer.decode(tokenizer(verse)["input_ids"][:32], skip_special_tokens=True)


def test_bad_inputs_are_named(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert prepare_data.main([str(tmp_path / "missing.txt"), "--output", out]) == 1
    assert "missing.txt" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"body": "x"}\n')
    assert prepare_data.main([str(bad), "--output", out, "--no-progress"]) == 1
    assert "bad.jsonl: line 2: no field 'text'" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 au lait\nfine line\nanother\n")
    assert prepare_data.main([str(latin), "--output", out, "--no-progress"]) == 1
    assert "latin.txt: line 1, byte offset 3" in capsys.readouterr().err
    argv = [str(latin), "--output", out, "--no-progress", "--skip-invalid-utf8"]
    argv += ["--validation-docs", "1"]
    assert prepare_data.main(argv) == 0
    assert len(prepared_dataset.open_prepared(out, "train")) == 1


def test_help_and_no_input(capsys):
    with pytest.raises(SystemExit) as info:
        prepare_data.main(["--help"])
    assert info.value.code == 0 and "--hf-dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no input"):
        prepare_data.main(["--output", "/tmp/unused"])


def test_owt_config_names_its_hub_input(tmp_path, capsys):
    # Offline here: the run must stop with a readable message, before writing anything.
    out = str(tmp_path / "owt")
    owt = os.path.join(os.path.dirname(FIXTURES), os.pardir, "configs", "owt.py")
    assert prepare_data.main(["--config", owt, "--output", out]) == 1
    assert "'Skylion007/openwebtext'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, prepared_dataset.MANIFEST))
