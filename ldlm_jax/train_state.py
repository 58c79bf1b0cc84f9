"""The train state and its sharded, abstract-first initialisation.

TrainState = {step, params, opt_state, ema_params, adaptive_state, rng}: everything the optimiser
changes, donated to and returned by the train step. The frozen LM's params and the hidden-state
statistics are separate (never optimised, never donated).

Initialisation never builds a full copy on one device: `jax.eval_shape(init)` gives the boxed
abstract state (with logical axis names), from which sharding.partition_specs derives one
NamedSharding per leaf; then `jax.jit(init, out_shardings=...)` materialises every leaf already
laid out across the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ldlm_jax import sharding as shd


@flax.struct.dataclass
class TrainState:
    """step int32 []; params / ema_params float32 pytrees; opt_state optax state; adaptive_state
    dict of float32 arrays (adaptive timestep bins); rng uint32 [2] base key (folded with step)."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    adaptive_state: Any
    rng: jax.Array


def _init_adaptive(config) -> Any:
    try:
        from ldlm_jax.adaptive_timesteps import init_adaptive_state
    except ImportError:  # the model workstream's module is not there yet: an empty state
        return {}
    return init_adaptive_state(config.recipe.adaptive_bins)


def make_init_fn(
    init_params: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    config,
) -> Callable[[jax.Array], TrainState]:
    """rng (uint32 [2]) -> TrainState, with params boxed by logical names where the model boxes
    them (optimiser moments and EMA inherit the boxes, hence the params' shardings)."""

    def init(rng: jax.Array) -> TrainState:
        param_rng, state_rng = jax.random.split(rng)
        params = init_params(param_rng)
        params = jax.tree.map(lambda p: p.astype(jnp.float32), params)  # float32 master weights
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            adaptive_state=_init_adaptive(config),
            rng=state_rng,
        )

    return init


def state_shardings(init_fn: Callable, rng: jax.Array, mesh: Mesh, rules) -> tuple[Any, Any]:
    """(abstract boxed TrainState, NamedSharding tree of the unboxed TrainState)."""
    abstract = jax.eval_shape(init_fn, rng)
    specs = shd.partition_specs(abstract, mesh, rules)
    return abstract, shd.named_shardings(specs, mesh)


def create_train_state(
    init_fn: Callable, rng: jax.Array, mesh: Mesh, rules, shardings: Any = None
) -> tuple[TrainState, Any]:
    """Materialise the TrainState sharded over `mesh`; returns (state, its shardings).
    `shardings` (from state_shardings) saves a second abstract evaluation."""
    if shardings is None:
        _, shardings = state_shardings(init_fn, rng, mesh, rules)
    rng = jax.device_put(rng, shd.replicated(mesh))
    with jax.set_mesh(mesh):
        state = jax.jit(lambda r: shd.unbox(init_fn(r)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_state(
    init_fn: Callable, rng: jax.Array, shardings: Any, abstract_boxed: Any = None
) -> TrainState:
    """The unboxed TrainState as ShapeDtypeStructs carrying `shardings` (restore targets)."""
    if abstract_boxed is None:
        abstract_boxed = jax.eval_shape(init_fn, rng)
    abstract = shd.unbox(abstract_boxed)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def parameter_counts(params: Any) -> dict[str, int]:
    """{top-level module name: parameter count} plus 'total' (works on abstract trees)."""
    params = shd.unbox(params)
    counts: dict[str, int] = {}
    items = params.items() if isinstance(params, dict) else [("params", params)]
    for name, sub in items:
        counts[str(name)] = sum(math.prod(x.shape) for x in jax.tree.leaves(sub))
    counts["total"] = sum(v for v in counts.values())
    return counts
