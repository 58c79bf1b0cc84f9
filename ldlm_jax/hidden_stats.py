"""Per-dimension mean/std of a frozen LM hidden layer over non-pad tokens of a text sample.

LDLM normalises the frozen LM's hidden states h per dimension before encoding them: GPT-2's
residual stream has a few huge outlier dimensions. The statistics are computed once, frozen, and
saved with the params / checkpoint (to_dict / from_dict, or save / load as hidden_stats.npz).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

STD_FLOOR = 1e-6  # a dimension that never varies is left unscaled rather than divided by ~0


@dataclasses.dataclass
class HiddenStats:
    """mean, std: float32 [D]; layer: the HF hidden_states index they describe (None: unknown);
    count: number of tokens they were computed from."""

    mean: np.ndarray
    std: np.ndarray
    layer: int | None = None
    count: int = 0

    def to_dict(self) -> dict:
        """{'mean': [D] float32, 'std': [D] float32} (arrays only: checkpoint friendly)."""
        return {"mean": np.asarray(self.mean, np.float32), "std": np.asarray(self.std, np.float32)}

    @classmethod
    def from_dict(cls, d, layer: int | None = None) -> HiddenStats:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32), layer)

    def normalize(self, h):
        """h [..., D] -> (h - mean) / std, same array type."""
        return (h - self.mean) / self.std

    def denormalize(self, h_norm):
        """Inverse of normalize: h_norm [..., D] -> h_norm * std + mean."""
        return h_norm * self.std + self.mean

    @staticmethod
    def path(folder: str) -> str:
        return os.path.join(folder, "hidden_stats.npz")

    def save(self, folder: str) -> str:
        path = self.path(folder)
        layer = -(10**9) if self.layer is None else self.layer
        np.savez(path, mean=self.mean, std=self.std, layer=layer, count=self.count)
        return path

    @classmethod
    def load(cls, folder: str) -> HiddenStats:
        with np.load(cls.path(folder)) as z:
            layer = int(z["layer"])
            return cls(
                z["mean"].astype(np.float32),
                z["std"].astype(np.float32),
                None if layer == -(10**9) else layer,
                int(z["count"]),
            )


def compute_hidden_stats(
    frozen_lm, params, input_ids, attention_mask, layer: int, batch_size: int = 16
) -> HiddenStats:
    """Mean/std per dimension of hidden_states[layer] over the tokens where attention_mask is 1.

    input_ids, attention_mask: int [N, L]. Runs the jitted frozen LM in batches of batch_size
    (the last batch padded with masked rows, so one compile); accumulates in float64 with Chan's
    parallel update, so GPT-2's large-offset dimensions keep their precision."""
    input_ids = np.asarray(input_ids, np.int32)
    attention_mask = np.asarray(attention_mask, np.int32)
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(
            f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be "
            "[N, L]"
        )
    fn = frozen_lm.jitted_hidden_states(layer)
    count, mean, m2 = 0, None, None
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start : start + batch_size]
        mask = attention_mask[start : start + batch_size]
        pad = batch_size - len(ids)
        if pad:
            ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), np.int32)])
            mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.int32)])
        h = np.asarray(fn(params, ids, mask), np.float64)[mask.astype(bool)]
        if len(h) == 0:
            continue
        b_mean, b_m2 = h.mean(0), ((h - h.mean(0)) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = len(h), b_mean, b_m2
            continue
        total = count + len(h)
        delta = b_mean - mean
        mean = mean + delta * len(h) / total
        m2 = m2 + b_m2 + delta**2 * count * len(h) / total
        count = total
    if count == 0:
        raise ValueError("attention_mask has no real tokens: cannot compute hidden-state stats")
    std = np.maximum(np.sqrt(m2 / count), STD_FLOOR)
    return HiddenStats(mean.astype(np.float32), std.astype(np.float32), layer, count)
