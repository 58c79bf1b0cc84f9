"""Corpora prepared once into array_record shards by a tfds builder (ldlm-prepare-data).

`LdlmText` is a tfds GeneratorBasedBuilder whose examples are {'text': tfds Text} (read back as
{'text': bytes}, the same layout as tfds 'lm1b'), with a 'train' split and a 'validation' split
made of the *last* documents of the input (OpenWebText: the last 100k documents). The order of the
input is kept (no tfds shuffling): the training pipeline shuffles per seed and epoch.

Layout: OUTPUT/ldlm_text/1.0.0/{dataset_info.json, ldlm_text-train.array_record-000NN-of-000MM,
...} plus OUTPUT/ldlm_prepare.json (the inputs' fingerprint and counts). Preparing is idempotent: a
rerun with the same inputs finds the manifest and does nothing; other inputs into the same
OUTPUT are an error. tfds writes into a temporary folder and renames it when done, so an
interrupted run leaves nothing half-written and simply starts again.

Read back with `open_prepared(OUTPUT, split)` (tfds.builder_from_directory(...).as_data_source,
no TensorFlow) or `tfds.data_source('ldlm_text', data_dir=OUTPUT)` once this module is imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow_datasets as tfds

from ldlm_jax.corpora import CorpusError, TextFieldSource, validation_count

NAME = "ldlm_text"
VERSION = "1.0.0"
MANIFEST = "ldlm_prepare.json"


@dataclasses.dataclass
class DocumentInput:
    """Where documents come from: `iterate()` yields them in order; `describe` identifies the
    input (files with sizes and mtimes, a hub name, ...) for the rerun check."""

    iterate: Callable[[], Iterator[str]]
    describe: dict[str, Any]
    count: int | None = None  # known up front (HF datasets); else counted by one pass


class LdlmText(tfds.core.GeneratorBasedBuilder):
    """Text documents -> {'text'} examples in 'train' and 'validation' (the last documents)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Documents prepared by ldlm-prepare-data."}

    def __init__(self, *, document_input: DocumentInput | None = None, held_out: int = 0, **kw):
        self._document_input, self._held_out = document_input, held_out
        self._total = None
        super().__init__(**kw)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            description="Text documents for ldlm_jax (see ldlm_jax/prepared_dataset.py).",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if self._document_input is None:
            raise CorpusError("LdlmText needs document_input to prepare (use prepare_documents)")
        total = self._total
        splits = {"train": self._generate_examples(0, total - self._held_out)}
        if self._held_out:
            splits["validation"] = self._generate_examples(total - self._held_out, total)
        return splits

    def _generate_examples(self, start: int, stop: int):
        for index, text in enumerate(self._document_input.iterate()):
            if index >= stop:
                break
            if index >= start:
                yield index, {"text": text}


def _count(document_input: DocumentInput, progress: bool) -> int:
    if document_input.count is not None:
        return document_input.count
    from tqdm.auto import tqdm

    total = 0
    for _ in tqdm(document_input.iterate(), desc="counting documents", disable=not progress):
        total += 1
    return total


def fingerprint(describe: dict[str, Any], held_out_spec: dict[str, Any]) -> str:
    text = json.dumps({"input": describe, "held_out": held_out_spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_manifest(output: str) -> dict[str, Any] | None:
    path = os.path.join(output, MANIFEST)
    if not tfds.core.Path(path).exists():
        return None
    return json.loads(tfds.core.Path(path).read_text())


def prepare_documents(
    document_input: DocumentInput,
    output: str,
    *,
    validation_fraction: float = 0.0,
    validation_docs: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the documents into OUTPUT as array_record shards (train + held-out validation).

    Returns the manifest: {'fingerprint', 'input', 'documents', 'train', 'validation', 'path',
    'reused'} ('reused' True when OUTPUT already held these inputs: nothing was redone).
    """
    held_spec = {"fraction": validation_fraction, "docs": validation_docs}
    print_ = fingerprint(document_input.describe, held_spec)
    manifest = read_manifest(output)
    data_path = os.path.join(output, NAME, VERSION)
    if manifest is not None:
        if manifest.get("fingerprint") != print_:
            raise CorpusError(
                f"{output} already holds data prepared from other inputs "
                f"({manifest.get('input')}); choose a new --output or delete that folder"
            )
        if tfds.core.Path(data_path, "dataset_info.json").exists():
            return {**manifest, "reused": True}
    total = _count(document_input, progress)
    if total == 0:
        raise CorpusError(f"no documents in {document_input.describe}")
    held = validation_count(total, validation_fraction, validation_docs)
    builder = LdlmText(
        document_input=document_input,
        held_out=held,
        data_dir=output,
        file_format="array_record",
    )
    builder._total = total
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        )
    )
    splits = builder.info.splits
    manifest = {
        "fingerprint": print_,
        "input": document_input.describe,
        "held_out": held_spec,
        "documents": total,
        "train": splits["train"].num_examples,
        "validation": splits["validation"].num_examples if held else 0,
        "path": data_path,
    }
    tfds.core.Path(output, MANIFEST).write_text(json.dumps(manifest, indent=1))
    return {**manifest, "reused": False}


def resolve_prepared(path: str) -> str:
    """The version folder (holding dataset_info.json) of a prepared OUTPUT or of that folder."""
    candidates = [path, os.path.join(path, NAME, VERSION)]
    for candidate in candidates:
        if tfds.core.Path(candidate, "dataset_info.json").exists():
            return candidate
    raise CorpusError(
        f"no prepared dataset in {path!r} (expected {os.path.join(path, NAME, VERSION)}/"
        "dataset_info.json): run ldlm-prepare-data --output PATH first"
    )


def open_prepared(path: str, split: str) -> TextFieldSource:
    """Random-access documents (str) of one split of a prepared folder (any tfds folder whose
    examples hold a 'text' feature works, e.g. a copy of lm1b/1.1.0)."""
    folder = resolve_prepared(path)
    builder = tfds.builder_from_directory(folder)
    splits = builder.info.splits
    if split not in splits:
        raise CorpusError(f"{folder} has no split {split!r} (it has {sorted(splits)})")
    source = builder.as_data_source(split=split)
    return TextFieldSource(source, "text", name=f"{folder}[{split}]")


__all__ = [
    "DocumentInput",
    "LdlmText",
    "MANIFEST",
    "open_prepared",
    "prepare_documents",
    "read_manifest",
    "resolve_prepared",
]
