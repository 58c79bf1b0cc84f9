"""ldlm-prepare-data: write a text corpus once into array_record shards (tfds) for training.

Examples:
  ldlm-prepare-data notes.txt more.jsonl --output /data/mine --validation-docs 100
  ldlm-prepare-data --bible --output /data/bible
  ldlm-prepare-data --config configs/owt.py --output gs://BUCKET/owt_data   # HF hub (network)
  ldlm-prepare-data --hf-dataset Skylion007/openwebtext --validation-docs 100000 --output DIR

Train on it with --config.data.source=prepared --config.data.paths=DIR. Documents keep their
input order; the validation split is the *last* documents. A rerun with the same inputs is a
no-op; see ldlm_jax/prepared_dataset.py for the layout.
"""

from __future__ import annotations

import argparse
import os
import sys

from ldlm_jax import corpora
from ldlm_jax.prepared_dataset import DocumentInput, prepare_documents


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-prepare-data",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", help="local .txt / .jsonl files (.jsonl: one JSON object per line)"
    )
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--config", default=None, help="config file: defaults for the flags below")
    parser.add_argument("--bible", action="store_true", help="the embedded King James Bible")
    parser.add_argument(
        "--hf-dataset", default=None, help="HF hub dataset name (needs `datasets` and network)"
    )
    parser.add_argument("--hf-split", default="train", help="split of --hf-dataset to read")
    parser.add_argument("--text-field", default=None, help="JSON / HF field with the text")
    parser.add_argument(
        "--text-unit",
        choices=corpora.TEXT_UNITS,
        default=None,
        help=".txt documents: each line, each blank-line separated paragraph, or each file",
    )
    parser.add_argument(
        "--validation-docs", type=int, default=None, help="hold out the last N documents"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=None, help="or the last fraction of them"
    )
    parser.add_argument(
        "--skip-invalid-utf8", action="store_true", help="skip lines that are not UTF-8"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return parser


def _local_input(paths, text_field, unit, skip) -> DocumentInput:
    files = [os.path.abspath(p) for p in paths]
    for path in files:  # fail on a missing / empty file before counting anything
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            what = "empty" if os.path.isfile(path) else "not found"
            raise corpora.CorpusError(f"data file {what}: {path}")
    describe = {
        "files": [[p, os.path.getsize(p), int(os.path.getmtime(p))] for p in files],
        "text_field": text_field,
        "text_unit": unit,
        "skip_invalid_utf8": skip,
    }
    return DocumentInput(lambda: corpora.iter_documents(files, text_field, unit, skip), describe)


def _hf_input(name: str, split: str, text_field: str) -> DocumentInput:
    try:
        import datasets  # lazily: only this path needs it
    except ImportError as error:
        raise corpora.CorpusError(
            f"reading the HF dataset {name!r} needs the `datasets` package: pip install datasets"
        ) from error
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # hub / network / cache errors come in many types
        raise corpora.CorpusError(
            f"cannot load HF dataset {name!r} split {split!r} ({type(error).__name__}: {error}); "
            "this needs network access or a local HF datasets cache"
        ) from error
    if text_field not in data.column_names:
        raise corpora.CorpusError(
            f"HF dataset {name}[{split}] has no field {text_field!r} ({data.column_names}); "
            "pass --text-field"
        )

    def iterate():
        for row in data:
            text = row[text_field]
            if text and text.strip():
                yield text

    return DocumentInput(iterate, {"hf_dataset": name, "split": split, "field": text_field})


def _resolve(args) -> tuple[DocumentInput, float, int]:
    config = None
    if args.config:
        from ldlm_jax.config import load_config

        config = load_config(args.config)
    d = config.data if config is not None else None
    text_field = args.text_field or (d.text_field if d else "text")
    unit = args.text_unit or (d.text_unit if d else "line")
    skip = args.skip_invalid_utf8 or bool(d and d.skip_invalid_utf8)
    fraction = args.validation_fraction
    docs = args.validation_docs
    if fraction is None and docs is None:
        fraction, docs = (d.validation_fraction, d.validation_docs) if d else (0.01, 0)
    fraction, docs = fraction or 0.0, docs or 0
    chosen = sum(bool(x) for x in (args.inputs, args.bible, args.hf_dataset))
    if chosen > 1:
        raise SystemExit("ldlm-prepare-data: give files, --bible or --hf-dataset, not several")
    if not chosen and d is not None:
        if d.hf_dataset:
            return _hf_input(d.hf_dataset, args.hf_split, text_field), fraction, docs
        if d.source == "bible":
            args.bible = True
        elif d.source == "text_files" and d.paths:
            args.inputs = corpora.split_paths(d.paths)
    if args.bible:
        path = corpora.bible_path()
        describe = {"bible": path, "size": os.path.getsize(path)}
        return DocumentInput(lambda: corpora.iter_jsonl(path, "text"), describe), fraction, docs
    if args.hf_dataset:
        return _hf_input(args.hf_dataset, args.hf_split, text_field), fraction, docs
    if args.inputs:
        return _local_input(args.inputs, text_field, unit, skip), fraction, docs
    raise SystemExit(
        "ldlm-prepare-data: no input: give .txt/.jsonl files, --bible, --hf-dataset NAME or a "
        "--config whose data.hf_dataset / data.paths names one"
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        document_input, fraction, docs = _resolve(args)
        manifest = prepare_documents(
            document_input,
            args.output,
            validation_fraction=fraction,
            validation_docs=docs,
            progress=not args.no_progress,
        )
    except (corpora.CorpusError, OSError) as error:
        print(f"ldlm-prepare-data: {error}", file=sys.stderr)
        return 1
    verb = "already prepared (nothing redone)" if manifest["reused"] else "prepared"
    print(
        f"ldlm-prepare-data: {verb}: {manifest['train']} train + {manifest['validation']} "
        f"validation documents in {manifest['path']}\n"
        f"train with --config.data.source=prepared --config.data.paths={args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
