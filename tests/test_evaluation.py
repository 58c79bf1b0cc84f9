"""Evaluation metrics: gen PPL against a transformers PyTorch reference, entropy, frontier, MAUVE.

The scorer is a tiny random GPT-2 saved with save_pretrained next to a tiny WordLevel tokenizer
(no GPT-2 tokenizer is available offline); its position table (32) is shorter than the longest text,
so the windowed scoring of long texts is exercised too.
"""

import json
import math

import numpy as np
import pytest

from ldlm_jax import evaluation

_WORD_TEXT = (
    "the a of and to in is was he she it they we you that this with for on at by from his her "
    "their said unto lord god king people land house day night water fire light dark came went"
)
WORDS = tuple(_WORD_TEXT.split())
TEXTS = [
    "the lord said unto the people",
    "he went to the house of god and she came",
    "light",  # one token: nothing to score
    "",  # empty: nothing to score
    " ".join(WORDS[i % len(WORDS)] for i in range(0, 170, 3)),  # 57 tokens > 32 positions
    "they came by night with fire and water from the land",
]
N_POSITIONS = 32


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>", pad_token="[UNK]"
    )


def make_tiny_gpt2_with_tokenizer(folder, tokenizer):
    """Save a tiny random GPT-2 LM (vocab = len(tokenizer), 32 positions) and the tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def make_tiny_gpt2(folder):
    """Save a tiny random GPT-2 LM and a WordLevel tokenizer to `folder`; returns both."""
    tokenizer = build_tokenizer()
    return make_tiny_gpt2_with_tokenizer(folder, tokenizer), tokenizer


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model, tokenizer = make_tiny_gpt2(str(folder))
    return evaluation.load_scorer(str(folder)), model, tokenizer


def reference_nll(model, tokenizer, texts, context):
    """Per-token NLL sum and count, computed token by token with PyTorch: token j > 0 is scored in
    the window starting at ((j - 1) // (context - 1)) * (context - 1)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            cache = {}
            for j in range(1, len(ids)):
                start = ((j - 1) // (context - 1)) * (context - 1)
                if start not in cache:
                    window = torch.tensor([ids[start : start + context]])
                    cache[start] = torch.log_softmax(model(window).logits[0].double(), -1)
                total -= float(cache[start][j - 1 - start, ids[j]])
                count += 1
    return total, count


def test_gen_ppl_matches_pytorch(tiny_scorer):
    scorer, model, tokenizer = tiny_scorer
    result = evaluation.generative_perplexity(TEXTS, scorer, batch_size=4)
    total, count = reference_nll(model, tokenizer, TEXTS, N_POSITIONS)
    assert result["context"] == N_POSITIONS
    assert result["scored_tokens"] == count == sum(max(len(t.split()) - 1, 0) for t in TEXTS)
    assert result["num_empty"] == 2 and result["num_texts"] == len(TEXTS)
    assert math.isnan(result["per_text_nll"][2])
    np.testing.assert_allclose(result["gen_ppl"], math.exp(total / count), rtol=1e-4)
    # Random weights: near-uniform predictions, so the perplexity is close to the vocab size.
    assert 0.5 * scorer.vocab_size < result["gen_ppl"] < 2 * scorer.vocab_size


def test_gen_ppl_independent_of_batching(tiny_scorer):
    scorer = tiny_scorer[0]
    a = evaluation.generative_perplexity(TEXTS, scorer, batch_size=4)
    b = evaluation.generative_perplexity(TEXTS[::-1], scorer, batch_size=8, context=16)
    c = evaluation.generative_perplexity(TEXTS[::-1], scorer, batch_size=8)
    np.testing.assert_allclose(a["gen_ppl"], c["gen_ppl"], rtol=1e-6)
    assert b["scored_tokens"] == a["scored_tokens"]  # shorter windows, same tokens scored
    assert b["gen_ppl"] != a["gen_ppl"]  # ... with less context


def test_unencodable_text_names_the_sample(tiny_scorer):
    scorer = tiny_scorer[0]
    with pytest.raises(evaluation.ScorerError, match=r"sample 1 .*unknown token"):
        evaluation.generative_perplexity(["the lord", "the zebra"], scorer)


def test_unigram_entropy_by_hand():
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert evaluation.unigram_entropy([1, 1, 2, 3]) == pytest.approx(h, rel=1e-12)
    assert evaluation.unigram_entropy([7, 7, 7]) == 0.0
    assert evaluation.unigram_entropy(list(range(8))) == pytest.approx(math.log(8))
    assert evaluation.mean_unigram_entropy([[1, 1, 2, 3], [5, 5, 5], []]) == pytest.approx(h / 2)


def test_frontier_json_and_png(tmp_path):
    points = [
        {"steps": 50, "gen_ppl": 80.0, "entropy": 5.5},
        {"steps": 10, "gen_ppl": 200.0, "entropy": 5.7},
    ]
    evaluation.write_frontier(points, str(tmp_path / "f.json"), str(tmp_path / "f.png"))
    assert [p["steps"] for p in json.loads((tmp_path / "f.json").read_text())] == [10, 50]
    png = (tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_mauve_features_or_clear_message(tiny_scorer):
    import torch

    scorer, model, tokenizer = tiny_scorer
    feats = evaluation.scorer_features(TEXTS[:2], scorer, batch_size=8)
    assert feats.shape == (2, 32)
    with torch.no_grad():  # MAUVE's GPT-2 feature: last hidden state (after ln_f), last token
        ids = torch.tensor([tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]])
        ref = model(ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(feats[1], ref, rtol=1e-4, atol=1e-4)
    if not evaluation.mauve_available():
        with pytest.raises(ImportError, match="pip install mauve-text"):
            evaluation.mauve_score(TEXTS, TEXTS, scorer)
