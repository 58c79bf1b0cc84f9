"""Tokenisation with the frozen LM's tokenizer: pad mode (LM1B style) and pack mode (OWT style).

Pad mode: one document per row. Each text is tokenised (with the tokenizer's own specials when
`add_special_tokens`: [CLS] ... [SEP] for BERT/MiniLM, <s> for Llama, nothing for GPT-2),
truncated to L and padded to L with the pad id; `attention_mask` is 1 on real tokens, 0 on pads.
A tokenizer without a pad token (GPT-2) pads with its EOS id; the mask is what matters.

Pack mode: documents are tokenised without specials, each followed by one separator token, and
the resulting stream is cut into rows of exactly L tokens (mask all ones); a document runs on into
the next row, so no token is lost. The separator is the EOS token (GPT-2's <|endoftext|>, the
paper's OWT setting); a tokenizer without one (BERT/MiniLM) uses [SEP]. Only a finite stream's
last row can be short: it is padded and its mask marks the pads.

`PackIterDataset` does the packing inside a grain pipeline. Its state is the parent's state
before the oldest element it still holds plus how many of that element's tokens were emitted, so
a restored iterator re-reads that one element and continues exactly.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np


class TokenizerError(ValueError):
    """The tokenizer lacks a token the chosen mode needs."""


def separator_id(tokenizer) -> int:
    """Pack mode's document separator: EOS if the tokenizer has one, else [SEP] (BERT)."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise TokenizerError(
        f"{type(tokenizer).__name__} has neither an EOS nor a SEP token; pack mode (data.mode="
        "'pack') needs one to separate documents: use data.mode='pad'"
    )


def pad_id(tokenizer) -> int:
    """The id written into padding positions: pad, else EOS, else 0 (the mask marks them)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_texts(tokenizer, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text, batched through the fast tokenizer (no padding, no truncation)."""
    if not len(texts):
        return []
    out = tokenizer(
        list(texts),
        add_special_tokens=add_special_tokens,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return out["input_ids"]


class PadTokenize:
    """texts [B] -> {'input_ids', 'attention_mask'} int32 [B, L]: one text per row, truncated to L
    and padded (a grain map over batches of texts)."""

    def __init__(self, tokenizer, seq_len: int, add_special_tokens: bool = True):
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.add_special_tokens = add_special_tokens
        self.pad = pad_id(tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        rows = encode_texts(self.tokenizer, texts, self.add_special_tokens)
        ids = np.full((len(rows), self.seq_len), self.pad, np.int32)
        mask = np.zeros((len(rows), self.seq_len), np.int32)
        for i, row in enumerate(rows):
            n = min(len(row), self.seq_len)
            ids[i, :n] = row[:n]
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}


class StreamTokenize:
    """texts [G] -> int32 [sum of lengths + G]: each text's tokens (no specials) then the
    separator; the token stream pack mode cuts into rows."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.separator = separator_id(tokenizer)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = encode_texts(self.tokenizer, texts, add_special_tokens=False)
        pieces = []
        for row in rows:
            pieces.append(np.asarray(row, np.int32))
            pieces.append(np.array([self.separator], np.int32))
        return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def pack_rows(stream: np.ndarray, seq_len: int, pad: int) -> dict[str, np.ndarray]:
    """A finite token stream [N] -> rows {'input_ids', 'attention_mask'} [ceil(N / L), L]; only
    the last row can hold pads (reference for tests and small corpora)."""
    rows = -(-len(stream) // seq_len)
    ids = np.full((rows * seq_len,), pad, np.int32)
    ids[: len(stream)] = stream
    mask = np.zeros((rows * seq_len,), np.int32)
    mask[: len(stream)] = 1
    return {"input_ids": ids.reshape(rows, seq_len), "attention_mask": mask.reshape(rows, seq_len)}


class PackIterDataset(grain.IterDataset):
    """Token streams [n] (from the parent) -> rows {'input_ids', 'attention_mask'} int32 [L]."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, pad: int):
        super().__init__(parent)
        self.seq_len, self.pad = seq_len, pad

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self.seq_len, self.pad)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self.seq_len})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, seq_len: int, pad: int):
        super().__init__(parent)
        self.seq_len, self.pad = seq_len, pad
        self._held: collections.deque = collections.deque()  # (parent state before, tokens)
        self._skip = 0  # tokens of _held[0] already emitted
        self._available = 0
        self._exhausted = False

    def _pull(self) -> bool:
        state = copy.deepcopy(self._parent.get_state())
        try:
            tokens = np.asarray(next(self._parent), np.int32)
        except StopIteration:
            self._exhausted = True
            return False
        self._held.append((state, tokens))
        self._available += len(tokens)
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        while self._available < self.seq_len and not self._exhausted and self._pull():
            pass
        if self._available == 0:
            raise StopIteration
        pieces, need = [], self.seq_len
        while need and self._held:
            tokens = self._held[0][1]
            piece = tokens[self._skip : self._skip + need]
            pieces.append(piece)
            need -= len(piece)
            self._skip += len(piece)
            self._available -= len(piece)
            if self._skip == len(tokens):
                self._held.popleft()
                self._skip = 0
        row = np.concatenate(pieces)
        ids = np.full((self.seq_len,), self.pad, np.int32)
        ids[: len(row)] = row
        mask = np.zeros((self.seq_len,), np.int32)
        mask[: len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def get_state(self) -> dict[str, Any]:
        if self._held:
            return {"parent": copy.deepcopy(self._held[0][0]), "skip": self._skip}
        return {"parent": self._parent.get_state(), "skip": 0}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._held.clear()
        self._available, self._exhausted = 0, False
        skip = int(state["skip"])
        # Re-read the element the saved position lies in and drop what was already emitted.
        while skip and self._pull():
            tokens = self._held[0][1]
            if skip < len(tokens):
                self._skip, self._available = skip, self._available - skip
                skip = 0
            else:  # cannot happen for a deterministic parent; stay exact anyway
                skip -= len(tokens)
                self._available -= len(tokens)
                self._held.popleft()


__all__ = [
    "PackIterDataset",
    "PadTokenize",
    "StreamTokenize",
    "TokenizerError",
    "encode_texts",
    "pad_id",
    "pack_rows",
    "separator_id",
]
