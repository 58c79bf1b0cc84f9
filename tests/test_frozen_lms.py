"""Frozen LMs: parity with transformers PyTorch (tiny random GPT-2 / BERT / Llama / Qwen2 and
the real all-MiniLM-L6-v2), HF export round trip, stop_at_layer, no gradient path, bfloat16,
hidden-state statistics, and the clear errors for bad input."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file, save_file

from ldlm_jax import frozen_lm as F
from ldlm_jax.lm_conversion import ConversionError, export_hf

torch.set_num_threads(1)
TOL = 1e-4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "And God said, Let there be light: and there was light.",
]
SMALL = dict(vocab_size=30522, pad_token_id=0)
CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=None,
        eos_token_id=None,
        **SMALL,
    ),
    "bert": lambda: tf.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **SMALL,
    ),
    # GQA (4 query heads, 2 kv heads), untied head, non-default rope_theta.
    "llama_gqa_untied": lambda: tf.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        **SMALL,
    ),
    # Qwen2: q/k/v biases, tied head, 1 kv head.
    "qwen2_tied": lambda: tf.Qwen2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        **SMALL,
    ),
}
HF_CLASSES = {"bert": tf.AutoModel}


def hf_class(name):
    return HF_CLASSES.get(name.split("_")[0], tf.AutoModelForCausalLM)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return F._load_tokenizer(minilm_path)


@pytest.fixture(scope="module")
def batch(tokenizer):
    b = tokenizer(SENTENCES, padding=True, return_tensors="np")
    return b["input_ids"].astype(np.int32), b["attention_mask"].astype(np.int32)


def torch_forward(model, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
    logits = getattr(out, "logits", None)
    return [h.numpy() for h in out.hidden_states], None if logits is None else logits.numpy()


def max_diff(ours, ref_hidden, ref_logits, mask):
    """Largest |diff| over every hidden state and the logits, non-pad positions only."""
    real = mask.astype(bool)
    assert len(ours.hidden_states) == len(ref_hidden)
    diffs = [
        np.abs(np.asarray(a)[real] - b[real]).max()
        for a, b in zip(ours.hidden_states, ref_hidden, strict=True)
    ]
    assert (ours.logits is None) == (ref_logits is None)
    if ref_logits is not None:
        diffs.append(np.abs(np.asarray(ours.logits)[real] - ref_logits[real]).max())
    return float(max(diffs))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory, tokenizer, batch):
    """A tiny random HF model (all weights perturbed, so zero-init biases matter), saved as an HF
    folder, loaded by our loader; both run on the same padded batch of real sentences."""
    name = request.param
    torch.manual_seed(0)
    model = hf_class(name).from_config(CONFIGS[name]()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(folder)
    lm = F.load_frozen_lm(folder, tokenizer=tokenizer)
    ids, mask = batch
    ours = jax.jit(lm.apply)(lm.params, ids, mask)
    return dict(
        name=name, folder=folder, model=model, lm=lm, ours=ours, ref=torch_forward(model, ids, mask)
    )


def test_parity_with_transformers(case, batch):
    _, mask = batch
    assert case["lm"].arch == {"qwen2": "llama"}.get(
        case["name"].split("_")[0], case["name"].split("_")[0]
    )
    assert max_diff(case["ours"], *case["ref"], mask) < TOL
    # The padded rows really are padded (so the mask path is exercised).
    assert mask.sum(1).min() < mask.shape[1]


def test_export_round_trip(case, batch, tmp_path):
    """Our params under HF names load into transformers and give the same outputs."""
    export_hf(case["lm"].params, case["lm"].hf_config, str(tmp_path))
    reloaded = hf_class(case["name"]).from_pretrained(str(tmp_path)).eval()
    ids, mask = batch
    assert max_diff(case["ours"], *torch_forward(reloaded, ids, mask), mask) < TOL


def test_stop_at_layer_runs_fewer_blocks(case, batch):
    lm, (ids, mask) = case["lm"], batch
    h1 = lm.hidden_states(lm.params, ids, mask, 1)
    h_last = lm.hidden_states(lm.params, ids, mask, -1)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(h1)[real], case["ref"][0][1][real], atol=TOL)
    np.testing.assert_allclose(np.asarray(h_last)[real], case["ref"][0][-1][real], atol=TOL)
    assert h1.dtype == jnp.float32 and h1.shape == (*ids.shape, lm.hidden_size)

    def n_dots(layer):
        jaxpr = jax.make_jaxpr(lambda p: lm.hidden_states(p, ids, mask, layer))(lm.params)
        return str(jaxpr).count("dot_general")

    assert n_dots(0) == 0 < n_dots(1) < n_dots(2)


def test_minilm_parity_real_sentences(minilm_path, batch):
    lm = F.load_frozen_lm("minilm")
    assert (lm.arch, lm.num_layers, lm.hidden_size, lm.vocab_size) == ("bert", 6, 384, 30522)
    assert lm.pad_token_id == 0 and lm.max_positions == 512
    ids, mask = batch
    ours = jax.jit(lm.apply)(lm.params, ids, mask)
    ref = tf.AutoModel.from_pretrained(minilm_path).eval()
    assert max_diff(ours, *torch_forward(ref, ids, mask), mask) < TOL


def test_no_gradient_path_and_bfloat16(batch):
    lm = F.random_frozen_lm("gpt2", 32, 2, 2)
    ids, mask = batch
    grads = jax.grad(lambda p: lm.hidden_states(p, ids, mask, -3).sum())(lm.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    lm16 = F.random_frozen_lm("gpt2", 32, 2, 2, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(lm16.params))
    h16 = lm16.hidden_states(lm16.params, ids, mask, -1)
    h32 = lm.hidden_states(lm.params, ids, mask, -1)
    assert h16.dtype == jnp.float32
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(h16)[real], np.asarray(h32)[real], atol=0.1)
    assert float(jnp.abs(h16 - h32)[real].max()) > 0  # really computed in bfloat16
    logits = lm.logits(lm.params, ids, mask)
    assert logits.shape == (*ids.shape, lm.vocab_size) and logits.dtype == jnp.float32


def test_hidden_stats_count_only_real_tokens(batch, tmp_path):
    lm = F.random_frozen_lm("bert", 32, 2, 2)
    ids, mask = batch
    stats = F.compute_hidden_stats(lm, lm.params, ids, mask, layer=-1, batch_size=2)
    h = np.asarray(lm.hidden_states(lm.params, ids, mask, -1), np.float64)
    real = h[mask.astype(bool)]
    assert stats.count == int(mask.sum()) and stats.mean.shape == (32,)
    np.testing.assert_allclose(stats.mean, real.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats.std, real.std(0), rtol=1e-4)
    assert np.abs(stats.mean - h.reshape(-1, 32).mean(0)).max() > 1e-3  # pads would change it
    z = stats.normalize(real)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(stats.denormalize(z), real, atol=1e-4)
    back = F.HiddenStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(back.std, stats.std)
    stats.save(str(tmp_path))
    loaded = F.HiddenStats.load(str(tmp_path))
    assert loaded.layer == -1 and loaded.count == stats.count
    np.testing.assert_array_equal(loaded.mean, stats.mean)


def test_logical_partitioning_names():
    lm = F.random_frozen_lm("llama", 32, 2, 2)
    specs = lm.logical_axes()
    allowed = {"embed", "mlp", "heads", "kv", "vocab", "length", "latent", "norm", None}
    names = {
        n
        for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        for n in s
    }
    assert names <= allowed and {"embed", "heads", "kv", "mlp", "vocab", "norm"} <= names
    assert tuple(specs["layers_0"]["attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["layers_0"]["attn"]["out"]["kernel"]) == ("heads", "kv", "embed")


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    model = tf.BertModel(CONFIGS["bert"]())
    folder = str(tmp_path_factory.mktemp("bert_bad"))
    model.save_pretrained(folder)
    return folder


def _rewrite(folder, dst, edit):
    shutil.copytree(folder, dst)
    tensors = load_file(os.path.join(dst, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    return str(dst)


def test_missing_tensor_named(bert_folder, tmp_path, tokenizer):
    name = "encoder.layer.1.attention.self.key.weight"
    bad = _rewrite(bert_folder, tmp_path / "m", lambda t: t.pop(name))
    with pytest.raises(
        ConversionError, match=r"missing tensor.*layer\.1\.attention\.self\.key\.weight.*\(32, 32\)"
    ):
        F.load_frozen_lm(bad, tokenizer=tokenizer)


def test_wrong_shape_named(bert_folder, tmp_path, tokenizer):
    name = "encoder.layer.0.intermediate.dense.weight"
    bad = _rewrite(
        bert_folder, tmp_path / "s", lambda t: t.update({name: np.zeros((63, 32), np.float32)})
    )
    with pytest.raises(
        ConversionError, match=r"intermediate\.dense\.weight.*\(63, 32\).*\(64, 32\)"
    ):
        F.load_frozen_lm(bad, tokenizer=tokenizer)


def test_unsupported_architecture(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "t5", "d_model": 32}, f)
    with pytest.raises(ValueError, match=r"unsupported architecture 't5'.*gpt2.*llama"):
        F.load_frozen_lm(str(tmp_path))


def test_tokenizer_vocab_mismatch(tmp_path, tokenizer):
    cfg = tf.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=100,
    )
    tf.BertModel(cfg).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"tokenizer has 30522 tokens.*vocab_size is 100"):
        F.load_frozen_lm(str(tmp_path), tokenizer=tokenizer)


def test_layer_and_length_out_of_range(bert_folder, tokenizer):
    lm = F.load_frozen_lm(bert_folder, tokenizer=tokenizer)
    ids = np.ones((1, 8), np.int32)
    with pytest.raises(IndexError, match=r"layer index 3 is out of range.*2 blocks"):
        lm.hidden_states(lm.params, ids, ids, 3)
    with pytest.raises(IndexError, match=r"layer index -4"):
        lm.hidden_states(lm.params, ids, ids, -4)
    long = np.ones((1, 65), np.int32)
    with pytest.raises(ValueError, match=r"sequence length 65.*max positions 64"):
        lm.hidden_states(lm.params, long, long, -1)


def test_hub_name_offline_is_clear():
    with pytest.raises(RuntimeError, match=r"could not download 'nobody-xyz/no-such-model'"):
        F.load_frozen_lm("nobody-xyz/no-such-model")


def test_bin_and_sharded_checkpoints(bert_folder, tmp_path, tokenizer):
    """pytorch_model.bin (torch present) and sharded safetensors give the same params."""
    model = tf.BertModel.from_pretrained(bert_folder)
    os.makedirs(tmp_path / "bin")  # transformers v5 writes only safetensors: save the .bin here
    torch.save(model.state_dict(), str(tmp_path / "bin" / "pytorch_model.bin"))
    model.config.save_pretrained(str(tmp_path / "bin"))
    model.save_pretrained(str(tmp_path / "shards"), max_shard_size="1MB")
    assert os.path.exists(tmp_path / "bin" / "pytorch_model.bin")
    assert os.path.exists(tmp_path / "shards" / "model.safetensors.index.json")
    ref = F.load_frozen_lm(bert_folder, tokenizer=tokenizer).params
    for sub in ("bin", "shards"):
        params = F.load_frozen_lm(str(tmp_path / sub), tokenizer=tokenizer).params
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ref, params)
        assert all(jax.tree.leaves(same)), sub
