"""Generation: a trained LDLM checkpoint -> latents -> tokens -> text.

load_generator(workdir) restores the config, the trainable params (EMA by default), the adaptive
timestep state and the hidden-state statistics, and rebuilds the frozen LM. generate() runs the
reverse-time sampler (ldlm_jax.samplers) inside one jit whose weights are arguments (a new
checkpoint of the same config does not recompile), batch sharded over the mesh (activations too,
by config.logical_axis_rules: the jitted functions carry the rules, generate sets the mesh), then
z0 -> latent decoder -> token decoder -> argmax, cut at the first end-of-sequence token ([SEP] for
BERT-style tokenizers), detokenised.

Prefix prompts and infilling hold latents fixed: the known tokens are encoded (frozen LM ->
normalise -> encoder, attending only to the known positions) and the sampler keeps the latents at
those positions (known_latents / known_mask). That needs one latent per token (K = L). The known
tokens are also written back into the decoded ids, so a prompt always survives verbatim.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import adaptive_timesteps
from ldlm_jax import sharding as shd
from ldlm_jax.config import latent_count

MAX_DEFAULT_BATCH = 64


class GenerationError(ValueError):
    """Bad generation input: no checkpoint, a prompt too long, K < L with a prompt, ..."""


@dataclasses.dataclass(eq=False)
class Generator:
    """Everything needed to sample: the LDLM container and the restored arrays.

    params: trainable params (EMA or raw); frozen_params: the frozen LM's params; hidden_stats:
    {'mean', 'std'} [Dh] float32 or None; adaptive_state: the adaptive-timestep bins (for the
    'adaptive' time grid) or None.
    """

    config: Any
    ldlm: Any
    params: Any
    frozen_params: Any
    hidden_stats: dict | None
    adaptive_state: dict | None
    mesh: Any
    workdir: str = ""
    step: int = 0
    weights: str = "ema"
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def tokenizer(self):
        return self.ldlm.frozen_lm.tokenizer

    @property
    def seq_len(self) -> int:
        return int(self.config.data.seq_len)

    @property
    def num_latents(self) -> int:
        return int(latent_count(self.config))

    @property
    def eos_id(self) -> int | None:
        """The id that ends a sample: [SEP] for BERT tokenizers, else EOS (None: never cut)."""
        tok = self.tokenizer
        for ident in (getattr(tok, "sep_token_id", None), getattr(tok, "eos_token_id", None)):
            if ident is not None:
                return int(ident)
        return None


# ----------------------------------------------------------------------------- loading


def check_workdir(workdir: str) -> int:
    """The latest checkpoint step in workdir; GenerationError if it holds none (no arrays read)."""
    from etils import epath

    from ldlm_jax import checkpointing

    if not epath.Path(workdir).is_dir():
        raise GenerationError(f"workdir {workdir!r} does not exist")
    step = checkpointing.latest_step(workdir)
    if step is None:
        raise GenerationError(
            f"workdir {workdir!r} holds no checkpoint: train first (ldlm-train --workdir "
            f"{workdir} ...) or point --workdir at a training run"
        )
    return int(step)


def read_config(workdir: str, step: int | None = None):
    """The locked ConfigDict saved with a checkpoint (latest unless `step`); reads no arrays."""
    import orbax.checkpoint as ocp

    from ldlm_jax import checkpointing
    from ldlm_jax.config import from_dict

    step = check_workdir(workdir) if step is None else step
    manager = checkpointing._read_only_manager(workdir)
    out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = from_dict(out["config"])
    config.lock()
    return config


def load_generator(workdir: str, *, raw_weights: bool = False, step: int | None = None):
    """Restore a Generator from a training workdir (latest checkpoint unless `step`) with
    checkpointing.restore_for_inference; params and stats are replicated over the mesh of the
    saved config (sampling shards the batch only)."""
    from ldlm_jax import checkpointing
    from ldlm_jax.frozen_lm import frozen_lm_from_config
    from ldlm_jax.ldlm import LDLM

    check_workdir(workdir)
    restored = checkpointing.restore_for_inference(workdir, step=step, use_ema=not raw_weights)
    config = restored["config"]
    frozen_lm = frozen_lm_from_config(config)
    ldlm = LDLM(config, frozen_lm)
    mesh = shd.make_mesh(dict(config.mesh))
    replicated = shd.replicated(mesh)
    stats = restored.get("hidden_stats")
    adaptive = restored.get("adaptive_state")
    return Generator(
        config=config,
        ldlm=ldlm,
        params=jax.device_put(restored["params"], replicated),
        frozen_params=jax.device_put(frozen_lm.params, replicated),
        hidden_stats=None if stats is None else jax.device_put(stats, replicated),
        adaptive_state=None if adaptive is None else jax.device_put(adaptive, replicated),
        mesh=mesh,
        workdir=workdir,
        step=int(restored.get("step", 0)),
        weights="raw" if raw_weights else "ema",
    )


# ----------------------------------------------------------------------------- prompts


def prompt_template(gen: Generator, prompt: str | None) -> np.ndarray:
    """Known-token template [L] int32: the prompt's ids at the start, -1 where free.

    The prompt is tokenised as training rows are (a BERT tokenizer's leading [CLS] kept, the
    trailing [SEP] dropped so the sample can continue)."""
    template = np.full((gen.seq_len,), -1, np.int32)
    if not prompt:
        return template
    tok = gen.tokenizer
    ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    if len(ids) > 1 and gen.eos_id is not None and ids[-1] == gen.eos_id:
        ids = ids[:-1]
    if len(ids) >= gen.seq_len:
        raise GenerationError(
            f"the prompt is {len(ids)} tokens, but samples are {gen.seq_len} tokens "
            f"(data.seq_len): shorten the prompt to at most {gen.seq_len - 1} tokens"
        )
    template[: len(ids)] = ids
    return template


def _check_known(gen: Generator, template: np.ndarray) -> None:
    if (template >= 0).any() and gen.num_latents != gen.seq_len:
        raise GenerationError(
            f"prompts and infilling hold one latent per known token, so they need K = L; this "
            f"model has K={gen.num_latents} latents for L={gen.seq_len} tokens "
            "(train with model.latent_count=0)"
        )


# ----------------------------------------------------------------------------- sampling


def sampling_batch(num: int, batch_size: int | None = None) -> int:
    """Sequences per sampler call for `num` samples, before generate rounds it up to the
    data-parallel size: batch_size, or min(num, MAX_DEFAULT_BATCH)."""
    return min(num, MAX_DEFAULT_BATCH) if batch_size is None else int(batch_size)


def _batch_sharding(gen: Generator, ndim: int):
    return shd.batch_sharding(gen.mesh, gen.config.logical_axis_rules, ndim)


def _data_parallel(gen: Generator) -> int:
    axes = shd.batch_axes(gen.config.logical_axis_rules)
    return int(np.prod([gen.mesh.shape[a] for a in axes]))


def _sample_fn(gen: Generator, sampler, steps, time_grid, t_min, temperature, self_cond):
    """jit(params, adaptive_state, rng, known_latents [B,K,D], known_mask [B,K]) -> ids [B,L]."""
    key = (sampler, steps, time_grid, t_min, temperature, self_cond)
    if key in gen._cache:
        return gen._cache[key]
    from ldlm_jax import samplers

    ldlm, floor = gen.ldlm, float(gen.config.recipe.adaptive_floor)
    latent_sharding = _batch_sharding(gen, 3)

    def run(params, adaptive_state, rng, known_latents, known_mask):
        warp = None
        if time_grid == "adaptive":
            warp = functools.partial(adaptive_timesteps.time_warp, adaptive_state, floor=floor)
        z0 = samplers.sample_latents(
            ldlm.denoise_fn(params),
            ldlm.schedule,
            known_latents.shape,
            rng,
            sampler=sampler,
            steps=steps,
            t_min=t_min,
            time_warp=warp,
            temperature=temperature,
            self_cond=self_cond,
            known_latents=known_latents,
            known_mask=known_mask,
            sharding=latent_sharding,
        )
        logits = ldlm.decode_tokens(params, ldlm.decode_hidden(params, z0))
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    run = shd.with_activation_rules(run, gen.config.logical_axis_rules)
    fn = jax.jit(run, out_shardings=_batch_sharding(gen, 2))
    gen._cache[key] = fn
    return fn


def _encode_known(gen: Generator, template: np.ndarray, batch: int):
    """Latents of the known tokens: ([B,K,D] float32, [B,K] bool), zeros/False where free."""
    shape = (batch, gen.num_latents, int(gen.config.model.latent_dim))
    known = template >= 0
    if not known.any():
        return np.zeros(shape, np.float32), np.zeros(shape[:2], bool)
    if "encode" not in gen._cache:

        def encode(params, frozen_params, stats, ids, mask):
            h = gen.ldlm.hidden(frozen_params, stats, ids, mask)
            return gen.ldlm.encode(params, h, mask)

        rules = gen.config.logical_axis_rules
        gen._cache["encode"] = jax.jit(shd.with_activation_rules(encode, rules))
    ids = np.where(known, template, gen.ldlm.frozen_lm.pad_token_id)[None].astype(np.int32)
    z = gen._cache["encode"](
        gen.params, gen.frozen_params, gen.hidden_stats, ids, known[None].astype(np.int32)
    )
    z = np.broadcast_to(np.asarray(z, np.float32), shape)
    return np.ascontiguousarray(z), np.broadcast_to(known[None], shape[:2]).copy()


def cut_at_eos(ids: Sequence[int], eos_id: int | None, start: int = 1) -> list[int]:
    """ids up to (not including) the first eos_id at or after position `start`."""
    ids = [int(i) for i in ids]
    if eos_id is None:
        return ids
    for i in range(start, len(ids)):
        if ids[i] == eos_id:
            return ids[:i]
    return ids


def generate(
    gen: Generator,
    *,
    num: int,
    steps: int,
    sampler: str = "euler_maruyama",
    seed: int = 0,
    prompt: str | None = None,
    template: np.ndarray | None = None,
    batch_size: int | None = None,
    time_grid: str = "uniform",
    t_min: float = 0.05,
    temperature: float = 1.0,
    self_cond: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Sample `num` texts.

    Args:
      gen: a Generator (load_generator).
      num, steps, sampler, seed, time_grid, t_min, temperature, self_cond: sampler settings.
      prompt: prefix text held fixed (K = L only), or None.
      template: instead of a prompt, [L] int32 known token ids (-1 = generate): infilling.
      batch_size: sequences per jitted call (rounded up to the data-parallel size).
    Returns:
      One dict per sample: text, token_ids (cut at EOS), num_tokens and the settings.
    """
    from ldlm_jax.cli.sample import check_settings

    settings = dict(
        sampler=sampler,
        steps=int(steps),
        time_grid=time_grid,
        t_min=float(t_min),
        temperature=float(temperature),
        self_cond=bool(self_cond),
        seed=int(seed),
    )
    check_settings(settings)
    if num < 1:
        raise GenerationError(f"num must be >= 1, got {num}")
    if template is None:
        template = prompt_template(gen, prompt)
    template = np.asarray(template, np.int32)
    if template.shape != (gen.seq_len,):
        raise GenerationError(f"template must have shape ({gen.seq_len},), got {template.shape}")
    _check_known(gen, template)
    if time_grid == "adaptive" and gen.adaptive_state is None:
        raise GenerationError("the 'adaptive' time grid needs the checkpoint's adaptive state")
    dp = _data_parallel(gen)
    batch = sampling_batch(num, batch_size)
    batch = max(dp, -(-batch // dp) * dp)
    fn = _sample_fn(gen, sampler, int(steps), time_grid, float(t_min), temperature, self_cond)
    adaptive = gen.adaptive_state
    if adaptive is None:
        adaptive = adaptive_timesteps.init_adaptive_state(int(gen.config.recipe.adaptive_bins))
    rng = jax.random.PRNGKey(seed)
    batches = range(-(-num // batch))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"sampling ({steps} steps)", unit="batch")
    rows = []
    with jax.set_mesh(gen.mesh):  # the mesh the activation constraints are laid over
        known_latents, known_mask = _encode_known(gen, template, batch)
        known_latents = jax.device_put(known_latents, _batch_sharding(gen, 3))
        known_mask = jax.device_put(known_mask, _batch_sharding(gen, 2))
        for b in batches:
            ids = np.asarray(
                fn(gen.params, adaptive, jax.random.fold_in(rng, b), known_latents, known_mask)
            )
            rows.extend(ids[: num - len(rows)])
    known = template >= 0
    start = int(known.nonzero()[0].max()) + 1 if known.any() else 1
    pad = gen.ldlm.frozen_lm.pad_token_id
    samples = []
    for i, row in enumerate(rows):
        row = np.where(known, template, row)
        ids = cut_at_eos(row, gen.eos_id, start)
        while len(ids) > start and ids[-1] == pad:  # no EOS generated: drop trailing pads
            ids.pop()
        text = gen.tokenizer.decode(ids, skip_special_tokens=True)
        samples.append(
            dict(
                index=i,
                text=text,
                token_ids=ids,
                num_tokens=len(ids),
                prompt=prompt,
                **settings,
                batch_size=batch,
                weights=gen.weights,
                checkpoint_step=gen.step,
            )
        )
    return samples


def write_samples(samples: Sequence[dict], path: str) -> str:
    """One JSON object per line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    return path


def read_samples(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
