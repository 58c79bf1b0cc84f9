"""Sharding as data: the (data, fsdp, tensor) mesh and the logical-axis-rules table.

Every parameter is created with logical axis names (layers.py, lm_layers.py); `config.mesh`
gives the mesh axis sizes (one may be -1: fill with the remaining devices) and
`config.logical_axis_rules` maps each logical name to mesh axes. From the boxed abstract
parameters (`jax.eval_shape(init)`) we derive one PartitionSpec per parameter:
- a logical name without a rule is an error naming it (and the parameter);
- a dimension not divisible by the product of its mesh axes is replicated, with a warning naming
  the parameter (e.g. 6 heads on a tensor axis of 4);
- a mesh axis already used by an earlier dimension of the same array is not reused.
Batches are laid out along the mesh axes of the logical name 'batch'.

Activations follow the same rules: the networks call `constrain(x, names)` at block boundaries,
which becomes `jax.lax.with_sharding_constraint` when rules are active (`activation_rules`, or a
function wrapped by `with_activation_rules`: the train step, eval step and sampler built from a
config carry its rules) and an Auto mesh with the (data, fsdp, tensor) axes and several devices
is set (`jax.set_mesh`, which the trainer, generation and AOT compiler enter); otherwise (unit
tests, one device, params init under eval_shape) it returns x unchanged. Rules are read while
tracing, so a jitted function keeps the rules it was first traced with.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

log = logging.getLogger(__name__)


class ShardingError(ValueError):
    """The mesh or the logical-axis rules do not fit the devices, the batch or the parameters."""


def resolve_mesh_shape(mesh_sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Axis sizes (data, fsdp, tensor) from config.mesh, filling the one -1 axis.

    Raises ShardingError (naming the sizes and the device count) when they do not multiply out.
    """
    sizes = [int(mesh_sizes[a]) for a in MESH_AXES]
    given = "x".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ShardingError(
                f"mesh {given} cannot fill {num_devices} devices: {num_devices} is not divisible "
                f"by {fixed}; change --config.mesh.* so the fixed axes divide the device count"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ShardingError(
            f"mesh {given} needs {fixed} devices but {num_devices} are available; set the sizes "
            "so that data*fsdp*tensor equals the device count, or use -1 on one axis to fill"
        )
    return tuple(sizes)


def make_mesh(mesh_sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor), Auto axis types (GSPMD propagation).

    Args:
      mesh_sizes: config.mesh (sizes, one may be -1).
      devices: explicit devices (e.g. a TPU topology for AOT compilation, or a subset);
        default: all of jax.devices() through jax.make_mesh (which picks a good device order).
    """
    if devices is None:
        shape = resolve_mesh_shape(mesh_sizes, jax.device_count())
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    shape = resolve_mesh_shape(mesh_sizes, len(devices))
    array = np.asarray(list(devices), dtype=object).reshape(shape)
    return Mesh(array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_table(rules: Sequence) -> dict[str, tuple[str, ...]]:
    """config.logical_axis_rules -> {logical name: tuple of mesh axes} (empty tuple: replicate)."""
    table: dict[str, tuple[str, ...]] = {}
    for entry in rules:
        if len(entry) != 2:
            raise ShardingError(f"logical_axis_rules entry {entry!r} must be (name, mesh axes)")
        name, axes = entry
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        axes = tuple(axes)
        for axis in axes:
            if axis not in MESH_AXES:
                raise ShardingError(
                    f"logical_axis_rules maps {name!r} to unknown mesh axis {axis!r}; "
                    f"mesh axes are {MESH_AXES}"
                )
        table[name] = axes
    return table


def _table(rules: Sequence | Mapping) -> Mapping[str, tuple[str, ...]]:
    return rules if isinstance(rules, Mapping) else rules_table(rules)


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    rules: Mapping[str, tuple[str, ...]],
    mesh: Mesh | AbstractMesh,
    what: str = "array",
    warn: bool = True,
) -> PartitionSpec:
    """The PartitionSpec of one array from its logical names.

    Args:
      names: one logical name (or None: replicated) per dimension.
      shape: the array shape (for the divisibility check).
      rules: rules_table(config.logical_axis_rules).
      mesh: the mesh or abstract mesh (its axis sizes decide divisibility).
      what: the parameter path, named in errors and warnings.
      warn: log a replicated (not divisible) dimension as a warning (else at debug level).
    """
    if len(names) != len(shape):
        raise ShardingError(f"{what}: {len(names)} logical names {names} for shape {shape}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ShardingError(
                f"logical axis {name!r} (of {what}) has no rule in config.logical_axis_rules; "
                f"add e.g. ({name!r}, None) to replicate it or ({name!r}, 'fsdp') to shard it"
            )
        axes = tuple(a for a in rules[name] if a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if size > 1 and dim % size:
            (log.warning if warn else log.debug)(
                "replicating dim %r (size %d) of %s: not divisible by mesh axes %s (size %d)",
                name,
                dim,
                what,
                axes,
                size,
            )
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _is_boxed(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def partition_specs(boxed_tree: Any, mesh: Mesh, rules: Sequence | Mapping) -> Any:
    """One PartitionSpec per leaf of a (possibly boxed, possibly abstract) parameter tree.

    Leaves boxed with nn.Partitioned use their logical names; plain leaves (no metadata) are
    replicated. The returned tree has the structure of the unboxed tree.
    """
    table = _table(rules)

    def one(path, leaf):
        if _is_boxed(leaf):
            value = leaf.value
            return logical_to_spec(leaf.names, value.shape, table, mesh, _path_name(path))
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(one, boxed_tree, is_leaf=_is_boxed)


def named_shardings(specs: Any, mesh: Mesh) -> Any:
    """PartitionSpec tree -> NamedSharding tree over `mesh`."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated NamedSharding (scalars, RNG keys, adaptive-timestep state)."""
    return NamedSharding(mesh, PartitionSpec())


def unbox(tree: Any) -> Any:
    """Strip nn.Partitioned boxes (works on concrete and abstract trees)."""
    return nn.meta.unbox(tree)


def batch_axes(rules: Sequence | Mapping) -> tuple[str, ...]:
    """The mesh axes the logical 'batch' axis is split over (e.g. ('data', 'fsdp'))."""
    table = rules if isinstance(rules, Mapping) else rules_table(rules)
    if "batch" not in table:
        raise ShardingError(
            "logical axis 'batch' has no rule in config.logical_axis_rules; "
            "add ('batch', ('data', 'fsdp'))"
        )
    return table["batch"]


def batch_sharding(mesh: Mesh, rules: Sequence | Mapping, ndim: int = 2) -> NamedSharding:
    """NamedSharding of a batch array [batch, ...]: the first dim over the 'batch' mesh axes."""
    axes = batch_axes(rules)
    first = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def check_batch_divisible(
    batch_size: int, microbatches: int, mesh: Mesh, rules: Sequence | Mapping, process_count: int
) -> None:
    """Raise ShardingError unless each microbatch splits evenly over the batch mesh axes and
    the global batch splits evenly over the processes that feed it."""
    axes = batch_axes(rules)
    shards = math.prod(mesh.shape[a] for a in axes)
    micro = batch_size // microbatches
    if micro % shards:
        raise ShardingError(
            f"train.batch_size={batch_size} / train.microbatches={microbatches} = {micro} "
            f"examples per microbatch is not divisible by the batch mesh axes {axes} "
            f"(size {shards}); pick a batch size that is a multiple of {shards * microbatches}"
        )
    if batch_size % process_count:
        raise ShardingError(
            f"train.batch_size={batch_size} is not divisible by the {process_count} processes "
            "that each feed a shard of it"
        )


_ACTIVATION_RULES: contextvars.ContextVar[Mapping[str, tuple[str, ...]] | None] = (
    contextvars.ContextVar("ldlm_jax_activation_rules", default=None)
)


@contextlib.contextmanager
def activation_rules(rules: Sequence | Mapping) -> Iterator[Mapping[str, tuple[str, ...]]]:
    """Within this context, `constrain` maps logical names through `rules`
    (config.logical_axis_rules or a rules_table) onto the ambient mesh. Yields the table."""
    token = _ACTIVATION_RULES.set(_table(rules))
    try:
        yield _ACTIVATION_RULES.get()
    finally:
        _ACTIVATION_RULES.reset(token)


def with_activation_rules(fn: Callable, rules: Sequence | Mapping) -> Callable:
    """`fn` run (traced) inside activation_rules(rules): a function built from a config keeps
    that config's rules for whichever mesh it is later lowered on."""
    table = _table(rules)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with activation_rules(table):
            return fn(*args, **kwargs)

    return wrapped


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """An activation x (any shape and dtype) constrained to the sharding of its logical names.

    Applied only while rules are active (activation_rules) and an Auto mesh with the axes
    (data, fsdp, tensor) and more than one device is set (jax.set_mesh); otherwise x itself.
    Dimensions are mapped as for parameters (logical_to_spec): one not divisible by its mesh
    axes is replicated (logged at debug level), a mesh axis is used by one dimension only.
    """
    spec = activation_spec(names, x.shape)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def activation_spec(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
    """The PartitionSpec `constrain` would give an activation of `shape` with logical `names`, or
    None where it would leave it alone (no active rules, no multi-device Auto mesh). For code
    that must name the split itself, e.g. a Pallas kernel run per shard under shard_map."""
    rules = _ACTIVATION_RULES.get()
    mesh = jax.sharding.get_abstract_mesh()
    if (
        rules is None
        or mesh.empty
        or mesh.size == 1
        or not set(MESH_AXES) <= set(mesh.axis_names)
        or not mesh.are_all_axes_auto
    ):
        return None
    what = f"activation {tuple(names)}"
    return logical_to_spec(tuple(names), tuple(shape), rules, mesh, what, warn=False)


def describe_mesh(mesh: Mesh) -> str:
    """'data=2 fsdp=2 tensor=2 over 8 cpu devices'."""
    axes = " ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
    platform = mesh.devices.flat[0].platform
    return f"{axes} over {mesh.devices.size} {platform} devices"


def specs_to_json(specs: Any) -> dict[str, str]:
    """A flat {param path: "PartitionSpec('fsdp', 'tensor')"} view of a PartitionSpec tree."""
    flat = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )[0]
    return {_path_name(path): str(spec) for path, spec in flat}
