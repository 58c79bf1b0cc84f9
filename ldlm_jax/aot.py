"""The LDLM programs compiled ahead of time for a target: the train step and the default sampler.

`compile_programs(config, target)` lays config.mesh over the target's devices
(tpu_topology.target_devices: a TPU slice such as 'v5p:2x2x2' or 'v5e:4x4', 'cpu:16', or '' for
the local devices) and compiles, from abstract shapes only (no weights, no data, nothing
allocated; a hub frozen LM needs only its HF config):

  train_step  the trainer's step (train_step.make_train_step) with the trainer's shardings: the
              state sharded by config.logical_axis_rules and donated, the activations
              constrained by the same rules (sharding.constrain), the global batch
              [train.batch_size, data.seq_len] over the 'batch' mesh axes, the frozen LM's params
              sharded by the same rules. Reports tokens/s and MFU. MFU's model FLOPs are XLA's
              count of the same step lowered with model.remat='none' (recomputation is not model
              work; the self-conditioning lax.cond is counted at its costlier branch, as in the
              compiled step's own count). With train.microbatches = M > 1 XLA counts one
              microbatch of the accumulation loop, so the step's cost is taken M times.
  sampler     the program ldlm-sample runs (generation's jitted sampler: config.sampler settings,
              Euler-Maruyama for 200 steps by default, weights and adaptive state as replicated
              arguments, the batch sharded over the 'batch' mesh axes, then latent decoder ->
              token decoder -> argmax). Reports sequences/s. XLA's cost analysis counts the
              sampler loop's body once, so one denoiser call, compiled alone on the same mesh,
              is added steps - 1 times.

All numbers are compile-time estimates, not measurements (ldlm_jax/compile_report.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ldlm_jax import sharding as shd
from ldlm_jax import tpu_compile
from ldlm_jax.compile_report import CompileReport, add_repeated, format_report

DEFAULT_SAMPLER_BATCH = 64  # generation.MAX_DEFAULT_BATCH: ldlm-sample's default batch


@dataclasses.dataclass
class AotResult:
    """reports: {'train_step': ..., 'sampler': ...} (those compiled); param_counts: {network:
    count, 'total', 'frozen_lm'}; mesh: 'data=.. fsdp=.. tensor=.. over N tpu devices'."""

    target: str
    reports: dict[str, CompileReport]
    param_counts: dict[str, int]
    mesh: str


def _sds(x, sharding=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def abstract_frozen_lm(config):
    """The frozen LM of config.frozen_lm with ShapeDtypeStruct params and no tokenizer (its HF
    config from a local folder, the MiniLM package, the hub, or GPT-2 small's defaults); cached
    per config.frozen_lm, so a hub name is looked up once per process."""
    from ldlm_jax.cli.info import abstract_frozen_lm as build

    key = repr(sorted(config.frozen_lm.to_dict().items()))
    if key not in _FROZEN_LMS:
        _FROZEN_LMS[key] = build(config)
    return _FROZEN_LMS[key]


_FROZEN_LMS: dict = {}


def frozen_shardings(frozen_lm, mesh, rules):
    """NamedShardings of the frozen LM's params from its modules' logical names."""
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(frozen_lm.module.init, jax.random.PRNGKey(0), ids)["params"]
    return shd.named_shardings(shd.partition_specs(boxed, mesh, rules), mesh)


def target_mesh(config, target: str):
    """config.mesh laid over the devices of `target` (see the module docstring)."""
    devices = tpu_compile.target_devices(target)
    return tpu_compile.make_target_mesh(dict(config.mesh), devices)


def _model_and_state(config, mesh, rules):
    from ldlm_jax import optimizer as optim
    from ldlm_jax import train_state as ts
    from ldlm_jax.ldlm import LDLM

    frozen_lm = abstract_frozen_lm(config)
    model = LDLM(config, frozen_lm, platform=mesh.devices.flat[0].platform)
    optimizer, lr_schedule = optim.make_optimizer(config)
    init_fn = ts.make_init_fn(functools.partial(model.init_params, unbox=False), optimizer, config)
    boxed, state_sh = ts.state_shardings(init_fn, jax.random.PRNGKey(0), mesh, rules)
    return model, optimizer, lr_schedule, boxed, state_sh


def train_step_program(config, mesh):
    """(step_fn, abstract args, state shardings, param counts) of the trainer's step on `mesh`.

    args = (state, batch {'input_ids', 'attention_mask': int32 [B, L]}, frozen params,
    hidden stats {'mean', 'std': float32 [Dh]}), each a ShapeDtypeStruct with its sharding.
    Raises sharding.ShardingError when the batch does not split over the mesh."""
    from ldlm_jax import train_feed
    from ldlm_jax import train_state as ts
    from ldlm_jax import train_step as tstep

    rules = shd.rules_table(config.logical_axis_rules)
    shd.check_batch_divisible(config.train.batch_size, config.train.microbatches, mesh, rules, 1)
    model, optimizer, lr_schedule, boxed, state_sh = _model_and_state(config, mesh, rules)
    step_fn = tstep.make_train_step(model.loss, optimizer, lr_schedule, config, mesh)
    state = jax.tree.map(_sds, shd.unbox(boxed), state_sh)
    frozen = model.frozen_lm
    frozen_params = jax.tree.map(_sds, frozen.params, frozen_shardings(frozen, mesh, rules))
    batch = train_feed.abstract_batch(config, shd.batch_sharding(mesh, rules))
    stat = jax.ShapeDtypeStruct((model.lm_dim,), jnp.float32, sharding=shd.replicated(mesh))
    counts = ts.parameter_counts(boxed.params)
    counts["frozen_lm"] = ts.parameter_counts(frozen.params)["total"]
    args = (state, batch, frozen_params, {"mean": stat, "std": stat})
    return step_fn, args, state_sh, counts


def model_flops(config, mesh) -> float | None:
    """Global FLOPs of one train step as XLA counts them before partitioning, with remat off,
    one microbatch (XLA would count the accumulation loop's body once) and XLA attention."""
    from ldlm_jax import metrics_logging
    from ldlm_jax.config import from_dict, to_dict

    plain = from_dict(to_dict(config))
    plain.model.remat = "none"
    plain.model.attention = "xla"  # the same math; XLA counts a Pallas kernel's FLOPs poorly
    plain.train.microbatches = 1
    step_fn, args, _, _ = train_step_program(plain, mesh)
    unsharded = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    return metrics_logging.step_flops(jax.jit(step_fn).lower(*unsharded))


def compile_train_step(config, mesh, *, check_fits: bool = True) -> CompileReport:
    """Compile the train step for `mesh`'s devices; raises DoesNotFitError when HBM is short."""
    return _compile_train_step(config, mesh, check_fits)[0]


def _compile_train_step(config, mesh, check_fits):
    step_fn, args, state_sh, counts = train_step_program(config, mesh)
    batch, length = config.train.batch_size, config.data.seq_len
    report = tpu_compile.compile_for_target(
        step_fn,
        args,
        out_shardings=(state_sh, shd.replicated(mesh)),
        donate_argnums=(0,),
        tokens_per_step=batch * length,
        sequences_per_step=batch,
        model_flops_per_step=model_flops(config, mesh),
        mesh=mesh,
        check_fits=check_fits,
        label=f"train step, batch {batch} x {length}, remat {config.model.remat}",
    )
    micro = int(config.train.microbatches)
    if micro > 1:  # XLA counted one microbatch of the accumulation scan (and the update once)
        body = dataclasses.replace(report, model_flops_per_step=None, compile_seconds=0.0)
        note = f"{micro} microbatches: the step's cost counted {micro} times (update included)"
        report = add_repeated(report, body, micro - 1, note)
    return report, counts


def sampler_batch(config, mesh, batch: int | None = None) -> int:
    """ldlm-sample's batch rule: `batch` (default 64) rounded up to the data-parallel size."""
    axes = shd.batch_axes(config.logical_axis_rules)
    dp = 1
    for axis in axes:
        dp *= mesh.shape[axis]
    batch = DEFAULT_SAMPLER_BATCH if batch is None else int(batch)
    return max(dp, -(-batch // dp) * dp)


def default_sampler_settings(config) -> dict:
    """config.sampler as generation.generate's keyword arguments (name -> sampler)."""
    s = config.sampler
    return dict(
        sampler=s.name,
        steps=int(s.steps),
        time_grid=s.time_grid,
        t_min=float(s.t_min),
        temperature=float(s.temperature),
        self_cond=bool(s.self_cond),
    )


def compile_sampler(
    config, mesh, *, batch: int | None = None, settings: dict | None = None, check_fits=True
) -> CompileReport:
    """Compile ldlm-sample's jitted sampler (and, for the loop correction, one denoiser call).

    Args:
      config, mesh: as for compile_train_step.
      batch: sequences per call before rounding (sampler_batch).
      settings: sampler, steps, time_grid, t_min, temperature, self_cond (default: config's).
    """
    from ldlm_jax import adaptive_timesteps, generation
    from ldlm_jax.cli.sample import check_settings
    from ldlm_jax.config import latent_count
    from ldlm_jax.ldlm import LDLM

    settings = {**default_sampler_settings(config), **(settings or {})}
    check_settings({**settings, "seed": 0})
    model = LDLM(config, abstract_frozen_lm(config), platform=mesh.devices.flat[0].platform)
    gen = generation.Generator(config, model, None, None, None, None, mesh)
    fn = generation._sample_fn(gen, **settings)  # the very function ldlm-sample runs
    replicated = shd.replicated(mesh)
    rules = config.logical_axis_rules
    b = sampler_batch(config, mesh, batch)
    shape = (b, latent_count(config), int(config.model.latent_dim))
    params = jax.tree.map(lambda a: _sds(a, replicated), model.abstract_params())
    adaptive = jax.eval_shape(
        lambda: adaptive_timesteps.init_adaptive_state(int(config.recipe.adaptive_bins))
    )
    adaptive = jax.tree.map(lambda a: _sds(a, replicated), adaptive)
    rng = _sds(jax.eval_shape(lambda: jax.random.PRNGKey(0)), replicated)
    latents = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=shd.batch_sharding(mesh, rules, 3))
    mask = jax.ShapeDtypeStruct(shape[:2], jnp.bool_, sharding=shd.batch_sharding(mesh, rules, 2))
    steps = settings["steps"]
    common = dict(mesh=mesh, check_fits=check_fits, sequences_per_step=b)
    report = tpu_compile.compile_for_target(
        fn,
        (params, adaptive, rng, latents, mask),
        tokens_per_step=b * config.data.seq_len,
        label=f"sampler {settings['sampler']} x {steps} steps, batch {b}",
        **common,
    )
    if steps <= 1:
        return report
    t = jax.ShapeDtypeStruct((b,), jnp.float32, sharding=shd.batch_sharding(mesh, rules, 1))
    denoise = shd.with_activation_rules(model.denoise, rules)  # as inside the sampler's loop
    body = tpu_compile.compile_for_target(
        lambda p, z, tt, sc: denoise(p, z, tt, sc),
        (params, latents, t, latents),
        out_shardings=latents.sharding,
        label="one denoiser call",
        **common,
    )
    note = f"XLA counts the loop body once: {steps - 1} more denoiser calls added"
    return add_repeated(report, body, steps - 1, note)


def compile_programs(
    config,
    target: str,
    *,
    sampler: bool = True,
    batch: int | None = None,
    settings: dict | None = None,
    check_fits: bool = True,
    log: Callable[[str], None] | None = print,
) -> AotResult:
    """Compile the train step and (sampler=True) the default sampler for `target`.

    Args:
      config: a validated config (config.mesh is laid over the target's devices).
      target: 'v5p:2x2x2', 'v5e:4x4', ..., 'cpu:16', 'cpu', or '' (local devices).
      batch, settings: the sampler's batch and settings (compile_sampler).
      log: called with each formatted report as soon as it is compiled (None: silent).
    Returns:
      AotResult. Raises DoesNotFitError (naming the largest buffers) as soon as one program does
      not fit, TpuCompileError for a bad target, ShardingError for a mesh that does not fit.
    """
    mesh = target_mesh(config, target)
    described = shd.describe_mesh(mesh)
    if log:
        log(f"compiling for {target or 'the local devices'}: mesh {described}")
    train, counts = _compile_train_step(config, mesh, check_fits)
    reports = {"train_step": train}
    if log:
        log(format_report(reports["train_step"]))
    if sampler:
        reports["sampler"] = compile_sampler(
            config, mesh, batch=batch, settings=settings, check_fits=check_fits
        )
        if log:
            log(format_report(reports["sampler"]))
    if log:
        log("(compile-time estimates from XLA's cost model, not measured runs)")
    return AotResult(target, reports, counts, described)


__all__ = [
    "AotResult",
    "abstract_frozen_lm",
    "compile_programs",
    "compile_sampler",
    "compile_train_step",
    "default_sampler_settings",
    "model_flops",
    "sampler_batch",
    "target_mesh",
    "train_step_program",
]
