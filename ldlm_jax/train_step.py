"""One pure train step: gradient accumulation, clipping + AdamW, EMA, adaptive timestep update.

`make_train_step` returns `train_step(state, batch, frozen_params, hidden_stats) -> (state,
metrics)`, a pure function of arrays; `jit_train_step` wraps it in one `jax.jit` with in/out
shardings and the state donated (MaxText style). It carries config.logical_axis_rules
(sharding.with_activation_rules), so lowered under a jax.set_mesh its activations are sharded by
the same rules as the parameters. The compute dtype is the model's business
(config.model.dtype inside the networks); the master weights, gradients, optimiser moments and
EMA stay float32.

Microbatches: the global batch [B, L] is viewed as [M, B/M, L] by taking every M-th example
(reshape to [B/M, M, L], swap), so each device keeps its own rows in every microbatch and no
data moves; a lax.scan sums the gradients. The loss is a mean per microbatch, so the result
equals the full-batch step when each microbatch mean weighs equally (same-sized microbatches).

The step's RNG is `fold_in(state.rng, state.step)`: a run resumed from a checkpoint draws the same
noise as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ldlm_jax import sharding as shd
from ldlm_jax.optimizer import ema_update
from ldlm_jax.train_state import TrainState

# loss_fn(params, frozen_params, hidden_stats, batch, rng, step, adaptive_state) -> (loss, aux)
LossFn = Callable[..., tuple[jax.Array, dict]]


def _update_adaptive(config) -> Callable | None:
    try:
        from ldlm_jax.adaptive_timesteps import update_adaptive_state
    except ImportError:
        return None
    return lambda state, t, losses: update_adaptive_state(
        state, t, losses, config.recipe.adaptive_ema_decay
    )


def split_microbatches(batch: dict, microbatches: int, mesh: Mesh | None, axes) -> dict:
    """{name: [B, ...]} -> {name: [M, B/M, ...]}; microbatch m holds examples m, m+M, ..."""

    def split(x):
        b = x.shape[0]
        x = x.reshape(b // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            first = None if not axes else axes[0] if len(axes) == 1 else axes
            spec = PartitionSpec(None, first, *([None] * (x.ndim - 2)))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return x

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    config,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, dict, Any, dict], tuple[TrainState, dict]]:
    """The pure step. Args of the returned function:
      state: TrainState (donated).
      batch: {'input_ids': int32 [B, L], 'attention_mask': int32 [B, L]} (global arrays).
      frozen_params: the frozen LM's params (not optimised).
      hidden_stats: {'mean': f32 [D], 'std': f32 [D]} hidden-state normalisation.
    Returns (new state, metrics {name: f32 scalar}): 'loss', the model's loss terms, 'gamma',
    'grad_norm' (before clipping), 'param_norm', 'lr'.
    """
    microbatches = int(config.train.microbatches)
    ema_decay = float(config.train.ema_decay)
    axes = shd.batch_axes(config.logical_axis_rules)
    update_adaptive = _update_adaptive(config)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(params, frozen_params, hidden_stats, batch, rng, step, adaptive_state):
        (loss, aux), grads = grad_fn(
            params, frozen_params, hidden_stats, batch, rng, step, adaptive_state
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.get("metrics", {}).items()}
        metrics["loss"] = loss.astype(jnp.float32)
        extra = {k: aux[k] for k in ("t", "per_example_diffusion_loss") if k in aux}
        return grads, metrics, extra

    def train_step(state: TrainState, batch: dict, frozen_params: Any, hidden_stats: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        args = (frozen_params, hidden_stats)
        if microbatches == 1:
            grads, metrics, extra = one(
                state.params, *args, batch, rng, state.step, state.adaptive_state
            )
        else:
            micro = split_microbatches(batch, microbatches, mesh, axes)
            rngs = jax.random.split(rng, microbatches)
            zeros = jax.tree.map(jnp.zeros_like, state.params)

            def body(acc, inputs):
                mb, mb_rng = inputs
                g, m, e = one(state.params, *args, mb, mb_rng, state.step, state.adaptive_state)
                return jax.tree.map(jnp.add, acc, g), (m, e)

            grads, (metrics, extra) = jax.lax.scan(body, zeros, (micro, rngs))
            grads = jax.tree.map(lambda g: g / microbatches, grads)
            metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
            extra = jax.tree.map(lambda e: e.reshape(-1, *e.shape[2:]), extra)

        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        adaptive_state = state.adaptive_state
        if update_adaptive is not None and "t" in extra and "per_example_diffusion_loss" in extra:
            adaptive_state = update_adaptive(
                adaptive_state,
                jax.lax.stop_gradient(extra["t"]),
                jax.lax.stop_gradient(extra["per_example_diffusion_loss"]),
            )
        metrics.update(
            grad_norm=grad_norm,
            param_norm=optax.global_norm(params),
            lr=jnp.asarray(lr_schedule(state.step), jnp.float32),
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, ema_decay),
            adaptive_state=adaptive_state,
        )
        return new_state, metrics

    # Traced under the config's rules: the activations' constraints apply on any jax.set_mesh.
    return shd.with_activation_rules(train_step, config.logical_axis_rules)


def jit_train_step(
    train_step: Callable,
    state_shardings: Any,
    batch_sharding: NamedSharding,
    frozen_shardings: Any,
    mesh: Mesh,
):
    """jax.jit with in/out shardings; the state (argument 0) is donated."""
    replicated = shd.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, frozen_shardings, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(loss_fn: LossFn, use_ema: bool = True) -> Callable:
    """eval_step(state, batch, frozen_params, hidden_stats, rng) -> metrics {name: f32 scalar}:
    the training losses on held-out data with the EMA (or live) params, no update."""

    def eval_step(state: TrainState, batch, frozen_params, hidden_stats, rng):
        params = state.ema_params if use_ema else state.params
        loss, aux = loss_fn(
            params, frozen_params, hidden_stats, batch, rng, state.step, state.adaptive_state
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.get("metrics", {}).items()}
        metrics["loss"] = loss.astype(jnp.float32)
        return metrics

    return eval_step
