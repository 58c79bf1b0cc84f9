"""ldlm-convert-lm: convert the real MiniLM folder and load it back (same outputs, no torch/hub
needed), --verify against transformers PyTorch, and clear failures on broken input."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file, save_file

from ldlm_jax import frozen_lm as F
from ldlm_jax.cli import convert_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, minilm_path):
    out = str(tmp_path_factory.mktemp("minilm_converted"))
    assert convert_lm.main([minilm_path, out, "--quiet"]) == 0
    return out


def test_convert_and_load_back(converted):
    assert os.path.exists(os.path.join(converted, F.MARKER))
    assert os.path.exists(os.path.join(converted, "config.json"))
    assert os.path.isdir(os.path.join(converted, "params"))
    assert not os.path.exists(os.path.join(converted, "model.safetensors"))  # orbax only
    direct, loaded = F.load_frozen_lm("minilm"), F.load_frozen_lm(converted)
    assert loaded.arch == "bert" and len(loaded.tokenizer) == len(direct.tokenizer)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), direct.params, loaded.params)
    assert all(jax.tree.leaves(same))
    b = loaded.tokenizer(["A converted model.", "Same outputs?"], padding=True, return_tensors="np")
    ids, mask = b["input_ids"], b["attention_mask"]
    np.testing.assert_array_equal(
        direct.hidden_states(direct.params, ids, mask, -1),
        loaded.hidden_states(loaded.params, ids, mask, -1),
    )
    bf16 = F.load_frozen_lm(converted, dtype="bfloat16")
    assert jax.tree.leaves(bf16.params)[0].dtype == jax.numpy.bfloat16


def test_verify_prints_max_abs_diff(minilm_path, capsys):
    assert convert_lm.main(["minilm", "--verify", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("hidden_states[") for line in lines) == 7
    assert lines[-1].startswith("max_abs_diff=")
    assert float(lines[-1].split("=")[1]) < 1e-4


def test_verify_fails_above_tolerance(tmp_path, capsys):
    """A tiny GPT-2 (logits compared too) with an impossible tolerance exits 1."""
    cfg = tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=30522)
    tf.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path))
    tok = tf.AutoTokenizer.from_pretrained(F.minilm_path())
    tok.save_pretrained(str(tmp_path))
    assert convert_lm.main([str(tmp_path), "--verify", "--quiet", "--tolerance", "0"]) == 1
    out = capsys.readouterr()
    assert "logits" in out.out and "max_abs_diff=" in out.out and "tolerance" in out.err


def test_corrupted_folder_fails_clearly(minilm_path, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(minilm_path, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["encoder.layer.3.output.dense.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    assert convert_lm.main([str(bad), str(tmp_path / "out"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "missing tensor 'encoder.layer.3.output.dense.weight'" in err and "(384, 1536)" in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_input(tmp_path, capsys):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "mamba"}, f)
    assert convert_lm.main([str(tmp_path), str(tmp_path / "o")]) == 2
    assert "unsupported architecture 'mamba'" in capsys.readouterr().err
    assert convert_lm.main([str(tmp_path / "nope"), "--verify"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert convert_lm.main(["minilm"]) == 2  # neither OUT nor --verify
    with pytest.raises(SystemExit):
        convert_lm.main(["--help"])
    assert "ldlm-convert-lm SRC OUT" in capsys.readouterr().out
