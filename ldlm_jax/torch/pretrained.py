"""LDLMTorch: an exported LDLM (ldlm-export-torch OUT) loaded and sampled in PyTorch alone.

    from ldlm_jax.torch import LDLMTorch
    model = LDLMTorch.from_pretrained("OUT")            # model.safetensors + config.json
    samples = model.generate(num=4, steps=100, sampler="euler_maruyama", seed=0)
    print(samples[0]["text"])

Nothing here imports jax. Weights come from safetensors (no pickle); the frozen LM is rebuilt by
transformers (GPT2Model / BertModel / LlamaModel / Qwen2Model) from OUT/frozen_lm, and only
encoding text needs it (sampling starts from noise).
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ldlm_jax.torch import sampling
from ldlm_jax.torch.modules import Denoiser, Encoder, LatentDecoder, TokenDecoder

FORMAT, VERSION = "ldlm_jax.torch", 1
LM_CLASSES = {
    "gpt2": "GPT2Model",
    "bert": "BertModel",
    "llama": "LlamaModel",
    "qwen2": "Qwen2Model",
}


class ExportFormatError(ValueError):
    """The folder is not a loadable ldlm_jax.torch export (names the cause and the fix)."""


def read_config(folder: str) -> dict:
    """OUT/config.json, checked for the format and version this code reads."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ExportFormatError(f"{folder}: no config.json; write it with ldlm-export-torch")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportFormatError(f"{path} is not an {FORMAT} v{VERSION} export")
    return meta


def load_hf_frozen_lm(folder: str):
    """OUT/frozen_lm (HF save_pretrained layout) -> (transformers base model in eval mode, tok)."""
    import transformers

    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ExportFormatError(f"{folder}: no frozen LM config.json (re-export the model)")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in LM_CLASSES:
        raise ExportFormatError(
            f"frozen LM model_type {model_type!r} is not supported by ldlm_jax.torch; "
            f"supported: {sorted(LM_CLASSES)}"
        )
    cls = getattr(transformers, LM_CLASSES[model_type])
    kwargs = {"add_pooling_layer": False} if model_type == "bert" else {}
    model = cls.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


class LDLMNetworksTorch(nn.Module):
    """The four trainable networks, built from the `model` section of config.json (torch_export
    .model_spec): encoder, denoiser, latent_decoder, token_decoder."""

    def __init__(self, spec: dict):
        super().__init__()
        s = spec
        enc, den, ldec, tdec = s["encoder"], s["denoiser"], s["latent_decoder"], s["token_decoder"]
        k, seq_len, dz = s["num_latents"], s["seq_len"], s["latent_dim"]
        self.encoder = Encoder(
            s["lm_dim"],
            k,
            seq_len,
            dz,
            enc["num_layers"],
            enc["num_heads"],
            enc["mlp_dim"],
            s["perceiver_local_bias"],
        )
        self.denoiser = Denoiser(
            den["width"],
            den["num_layers"],
            den["num_heads"],
            den["mlp_dim"],
            den["rope_theta"],
            den["time_max_period"],
            den["time_mlp_dim"],
            den["unet_skips"],
        )
        self.latent_decoder = LatentDecoder(
            seq_len,
            k,
            dz,
            s["lm_dim"],
            ldec["width"],
            ldec["num_layers"],
            ldec["num_heads"],
            ldec["mlp_dim"],
            s["perceiver_local_bias"],
        )
        self.token_decoder = TokenDecoder(
            s["lm_dim"],
            s["vocab_size"],
            seq_len,
            tdec["width"],
            tdec["num_layers"],
            tdec["num_heads"],
            tdec["mlp_dim"],
        )

    def encode(self, h, mask):
        """h [B, L, Dh], mask [B, L] -> z0 [B, K, Dz]."""
        return self.encoder(h, mask)

    def denoise(self, z_t, t, self_cond):
        """z_t [B, K, Dz], t [B], self_cond [B, K, Dz] -> x0_hat [B, K, Dz]."""
        return self.denoiser(z_t, t, self_cond)

    def decode_hidden(self, z):
        """z [B, K, Dz] -> h_hat [B, L, Dh]."""
        return self.latent_decoder(z)

    def decode_tokens(self, h_hat, mask=None):
        """h_hat [B, L, Dh] -> logits [B, L, V]."""
        return self.token_decoder(h_hat, mask)


class LDLMTorch(nn.Module):
    """The exported LDLM: networks (LDLMNetworksTorch), schedule, stats, frozen LM, tokenizer.

    Attributes: meta (config.json), networks, schedule, hidden_mean / hidden_std buffers [Dh]
    (None when the model was trained without normalisation), frozen_lm (transformers model or
    None), tokenizer.
    """

    def __init__(self, meta: dict, networks: LDLMNetworksTorch, frozen_lm=None, tokenizer=None):
        super().__init__()
        self.meta = meta
        self.networks = networks
        self.schedule = sampling.schedule_from_meta(meta)
        stats = meta.get("hidden_stats")
        self.normalize = bool(meta["frozen_lm"].get("normalize", True)) and bool(stats)
        self.register_buffer(
            "hidden_mean", torch.tensor(stats["mean"]) if stats else None, persistent=False
        )
        self.register_buffer(
            "hidden_std", torch.tensor(stats["std"]) if stats else None, persistent=False
        )
        adaptive = meta.get("adaptive")
        self.adaptive = None
        if adaptive:
            self.adaptive = {k: torch.tensor(adaptive[k]) for k in ("loss_ema", "seen")}
            self.adaptive_floor = float(adaptive.get("floor", 1e-3))
        self.frozen_lm = frozen_lm
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str, load_frozen_lm: bool = True) -> LDLMTorch:
        """Load OUT written by ldlm-export-torch (weights via safetensors, never pickle)."""
        from safetensors.torch import load_file

        meta = read_config(folder)
        sampling.schedule_from_meta(meta)  # an unsupported schedule fails before any loading
        networks = LDLMNetworksTorch(meta["model"])
        weights = os.path.join(folder, "model.safetensors")
        if not os.path.exists(weights):
            raise ExportFormatError(f"{folder}: no model.safetensors (re-export the model)")
        state = load_file(weights)
        missing, unexpected = networks.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportFormatError(
                f"{weights} does not match config.json: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}"
            )
        frozen_lm, tokenizer = None, None
        lm_folder = os.path.join(folder, meta["frozen_lm"].get("folder", "frozen_lm"))
        if load_frozen_lm:
            frozen_lm, tokenizer = load_hf_frozen_lm(lm_folder)
        elif os.path.isdir(lm_folder):
            import transformers

            tokenizer = transformers.AutoTokenizer.from_pretrained(lm_folder)
        return cls(meta, networks.eval(), frozen_lm, tokenizer).eval()

    # ------------------------------------------------------------------ the networks

    @property
    def seq_len(self) -> int:
        return int(self.meta["model"]["seq_len"])

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(K, Dz)."""
        return int(self.meta["model"]["num_latents"]), int(self.meta["model"]["latent_dim"])

    @torch.no_grad()
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised frozen-LM hidden_states[layer]: ids/mask int [B, L] -> [B, L, Dh] f32."""
        if self.frozen_lm is None:
            raise ValueError("load with from_pretrained(..., load_frozen_lm=True) to encode text")
        out = self.frozen_lm(
            input_ids=input_ids.long(),
            attention_mask=attention_mask.long(),
            output_hidden_states=True,
        )
        h = out.hidden_states[int(self.meta["frozen_lm"]["layer"])].float()
        if self.normalize:
            h = (h - self.hidden_mean) / self.hidden_std
        return h

    def encode(self, h, mask):
        """h [B, L, Dh], mask [B, L] -> z0 [B, K, Dz]."""
        return self.networks.encode(h, mask)

    def denoise(self, z_t, t, self_cond):
        """z_t [B, K, Dz], t [B], self_cond [B, K, Dz] -> x0_hat [B, K, Dz]."""
        return self.networks.denoise(z_t, t, self_cond)

    def decode_hidden(self, z):
        """z [B, K, Dz] -> h_hat [B, L, Dh]."""
        return self.networks.decode_hidden(z)

    def decode_tokens(self, h_hat, mask=None):
        """h_hat [B, L, Dh] -> logits [B, L, V]."""
        return self.networks.decode_tokens(h_hat, mask)

    @torch.no_grad()
    def reconstruct(self, input_ids, attention_mask) -> torch.Tensor:
        """Autoencoder round trip of token ids [B, L] -> argmax ids [B, L] (no noise)."""
        h = self.hidden(input_ids, attention_mask)
        z = self.encode(h, attention_mask)
        return self.decode_tokens(self.decode_hidden(z), attention_mask).argmax(-1)

    # ------------------------------------------------------------------ sampling

    def time_warp(self):
        """The adaptive grid's u -> t map, or None when the export has no adaptive state."""
        if self.adaptive is None:
            return None
        return lambda u: sampling.time_warp(self.adaptive, u, self.adaptive_floor)

    @torch.no_grad()
    def sample_tokens(self, batch: int = 1, *, noise=None, generator=None, **settings):
        """Token ids [B, L] (argmax of the decoded sample).

        noise: [steps + 1, B, K, Dz] injected standard normal draws (as the JAX sampler's), or
        None to draw from `generator`; settings: sampler, steps, t_min, temperature, self_cond,
        time_grid ('uniform' | 'adaptive'), known_latents / known_mask."""
        if settings.pop("time_grid", "uniform") == "adaptive":
            if self.adaptive is None:
                raise ValueError("the 'adaptive' time grid needs an export with adaptive state")
            settings["time_warp"] = self.time_warp()
        shape = (batch, *self.latent_shape) if noise is None else None
        device = next(self.networks.parameters()).device
        z0 = sampling.sample_latents(
            self.denoise,
            self.schedule,
            shape,
            noise=noise,
            generator=generator,
            device=device,
            **settings,
        )
        return self.decode_tokens(self.decode_hidden(z0)).argmax(-1)

    @torch.no_grad()
    def generate(
        self,
        num: int = 1,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int = 64,
        **settings,
    ) -> list[dict]:
        """Sample `num` texts with torch.Generator(seed) noise.

        steps / sampler default to the training config's sampler section; settings may set
        t_min, temperature, self_cond, time_grid ('uniform' | 'adaptive').
        Returns one dict per sample: text, token_ids (cut at the first EOS, trailing pads
        dropped), num_tokens, sampler, steps, seed.
        """
        s = dict(self.meta.get("sampler", {}))
        steps = int(steps if steps is not None else s.get("steps", 200))
        sampler = sampler or s.get("name", "euler_maruyama")
        for key in ("t_min", "temperature", "self_cond", "time_grid"):
            if key not in settings and key in s:
                settings[key] = s[key]
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        gen = torch.Generator().manual_seed(int(seed))
        tokens = self.meta["tokens"]
        rows = []
        while len(rows) < num:
            b = min(batch_size, num - len(rows))
            ids = self.sample_tokens(b, generator=gen, sampler=sampler, steps=steps, **settings)
            rows.extend(ids.tolist())
        samples = []
        for i, row in enumerate(rows):
            ids = cut_at_eos(row, tokens.get("eos_id"))
            while len(ids) > 1 and ids[-1] == tokens.get("pad_id"):
                ids.pop()
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer else ""
            samples.append(
                dict(
                    index=i,
                    text=text,
                    token_ids=ids,
                    num_tokens=len(ids),
                    sampler=sampler,
                    steps=steps,
                    seed=int(seed),
                )
            )
        return samples


def cut_at_eos(ids, eos_id, start: int = 1) -> list[int]:
    """ids up to (not including) the first eos_id at or after position `start`."""
    ids = [int(i) for i in ids]
    if eos_id is None:
        return ids
    for i in range(start, len(ids)):
        if ids[i] == eos_id:
            return ids[:i]
    return ids
