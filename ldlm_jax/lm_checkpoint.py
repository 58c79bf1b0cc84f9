"""Read HF checkpoint folders without torch: safetensors (single or sharded, bfloat16 via
ml_dtypes) parsed directly; pytorch_model.bin only when torch is installed (weights_only=True).
"""

from __future__ import annotations

import json
import os

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not match its config (missing / wrongly shaped tensor) or is unreadable."""


_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _read_safetensors_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class TensorSource:
    """Read-only view of an HF checkpoint folder: names(), shape(name), get(name) -> float32 numpy.

    Reads model.safetensors (or its sharded index) directly (bfloat16 via ml_dtypes; no torch);
    falls back to pytorch_model.bin (or its index) only when torch is installed."""

    def __init__(self, folder: str):
        self.folder = folder
        self._shapes: dict[str, tuple] = {}
        self._where: dict[str, tuple] = {}
        self._torch: dict = {}
        st, st_index = os.path.join(folder, "model.safetensors"), "model.safetensors.index.json"
        pt, pt_index = os.path.join(folder, "pytorch_model.bin"), "pytorch_model.bin.index.json"
        if os.path.exists(st):
            self._add_safetensors(st)
        elif os.path.exists(os.path.join(folder, st_index)):
            for shard in self._shards(st_index):
                self._add_safetensors(os.path.join(folder, shard))
        elif os.path.exists(pt) or os.path.exists(os.path.join(folder, pt_index)):
            files = (
                [pt]
                if os.path.exists(pt)
                else [os.path.join(folder, s) for s in self._shards(pt_index)]
            )
            for f in files:
                self._add_torch(f)
        else:
            raise ConversionError(
                f"{folder}: no model.safetensors, model.safetensors.index.json or "
                "pytorch_model.bin: not an HF model folder"
            )

    def _shards(self, index_name: str) -> list[str]:
        with open(os.path.join(self.folder, index_name)) as f:
            return sorted(set(json.load(f)["weight_map"].values()))

    def _add_safetensors(self, path: str) -> None:
        try:
            header, start = _read_safetensors_header(path)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path}: unreadable safetensors file ({e})") from e
        for name, info in header.items():
            self._shapes[name] = tuple(info["shape"])
            self._where[name] = (path, start, info)

    def _add_torch(self, path: str) -> None:
        try:
            import torch
        except ImportError as e:
            raise ConversionError(
                f"{path} is a PyTorch checkpoint and torch is not installed: "
                "pip install torch==2.13.0, or convert the folder to safetensors"
            ) from e
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, t in state.items():
            self._shapes[name] = tuple(t.shape)
            self._torch[name] = t

    def names(self) -> set[str]:
        return set(self._shapes)

    def shape(self, name: str) -> tuple:
        return self._shapes[name]

    def get(self, name: str) -> np.ndarray:
        if name in self._torch:
            return self._torch[name].float().numpy()
        path, start, info = self._where[name]
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(start + begin)
            buf = f.read(end - begin)
        return np.frombuffer(buf, dtype).reshape(info["shape"]).astype(np.float32)
