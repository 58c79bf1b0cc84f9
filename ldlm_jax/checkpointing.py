"""Checkpoints: orbax CheckpointManager with one Composite item per concept.

Layout of WORKDIR/checkpoints/<step>/ (WORKDIR may be local or gs://; paths go through
etils.epath, never os.path):
  state/         StandardSave of the TrainState (params, opt_state, ema_params, adaptive_state,
                 step, rng), each array saved from its shards (tensorstore/OCDBT)
  data/          JSON: {'process_count': P, 'processes': [iterator state of process 0..P-1]}
  config/        JSON: the run's config (ldlm_jax.config.to_dict)
  hidden_stats/  JSON: {'mean': [D], 'std': [D]} frozen-LM hidden-state normalisation
Saving is asynchronous (checkpoint.async_save) and keeps the last checkpoint.keep steps.
Restoring takes an abstract TrainState whose ShapeDtypeStructs carry the target shardings, so a
checkpoint written on one mesh restores onto another. A latest checkpoint that cannot be read
(corrupt or partial) is moved aside to WORKDIR/corrupt_checkpoints/<step> with a warning, and
the previous one is tried: nothing already saved is deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

ITEMS = ("state", "data", "config", "hidden_stats")


@dataclasses.dataclass
class Restored:
    """What a checkpoint gives back: the TrainState (sharded like the target), this process's
    data-iterator state (or None), the saved config dict and hidden stats {'mean','std'}."""

    step: int
    state: Any
    data_state: Any
    config: dict
    hidden_stats: dict[str, np.ndarray]


def _gather_json(value: Any) -> list:
    """Every process's JSON-able `value`, in process order (on every process)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: raw.size] = raw
    gathered = multihost_utils.process_allgather(padded)
    lengths = np.asarray(lengths).reshape(-1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, lengths, strict=True)]


def _handlers() -> dict:
    return dict(
        state=ocp.StandardCheckpointHandler(),
        data=ocp.JsonCheckpointHandler(),
        config=ocp.JsonCheckpointHandler(),
        hidden_stats=ocp.JsonCheckpointHandler(),
    )


class CheckpointMismatchError(ValueError):
    """The checkpoint is readable but holds a differently shaped state (another config)."""


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def check_compatible(saved_tree, abstract_state, step: int) -> None:
    """CheckpointMismatchError unless the saved state has the target's arrays and shapes."""
    saved, wanted = _leaf_shapes(saved_tree), _leaf_shapes(abstract_state)
    if saved == wanted:
        return
    missing = sorted(set(wanted) - set(saved))[:3]
    extra = sorted(set(saved) - set(wanted))[:3]
    shapes = [
        f"{k}: saved {saved[k]} vs config {wanted[k]}"
        for k in sorted(set(saved) & set(wanted))
        if saved[k] != wanted[k]
    ][:3]
    raise CheckpointMismatchError(
        f"checkpoint step {step} does not match this config's train state (missing {missing}, "
        f"unexpected {extra}, shapes {shapes}). It was written by a different model config: "
        "train in a new --workdir, or resume with the config saved in the checkpoint."
    )


class Checkpointer:
    """Save / restore / auto-resume for one workdir.

    Args:
      workdir: local path or gs://bucket/path.
      keep: how many recent checkpoints to keep (config.checkpoint.keep).
      async_save: write in a background thread (config.checkpoint.async_save).
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = epath.Path(workdir)
        self.directory = self.workdir / "checkpoints"
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=self._options, item_handlers=_handlers()
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any,
        config_dict: dict,
        hidden_stats: dict,
    ) -> bool:
        """Start saving `step` (returns at once when async). Every process must call this."""
        data = {"process_count": jax.process_count(), "processes": _gather_json(data_state)}
        stats = {k: np.asarray(v, np.float32).tolist() for k, v in hidden_stats.items()}
        saved = self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(json.loads(json.dumps(config_dict))),
                hidden_stats=ocp.args.JsonSave(stats),
            ),
            force=True,
        )
        return bool(saved)

    def _restore_step(self, step: int, abstract_state: Any) -> Restored:
        try:
            saved = self.manager.item_metadata(step)["state"]
            saved = getattr(saved, "tree", saved)
        except Exception:  # unreadable metadata: let restore fail (corrupt) below
            saved = None
        if saved is not None:
            check_compatible(saved, abstract_state, step)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
                hidden_stats=ocp.args.JsonRestore(),
            ),
        )
        data = out["data"] or {}
        processes = data.get("processes", [])
        if data.get("process_count") == jax.process_count():
            data_state = processes[jax.process_index()]
        else:
            log.warning(
                "checkpoint %d was written by %s processes, this run has %d: the data iterators "
                "start afresh (examples may repeat or be skipped)",
                step,
                data.get("process_count"),
                jax.process_count(),
            )
            data_state = None
        stats = {k: np.asarray(v, np.float32) for k, v in (out["hidden_stats"] or {}).items()}
        return Restored(step, out["state"], data_state, out["config"], stats)

    def _quarantine(self, step: int) -> None:
        """Move an unreadable step aside (kept for inspection, out of the manager's way)."""
        if jax.process_index() == 0:
            source = self.directory / str(step)
            target = self.workdir / "corrupt_checkpoints" / f"{step}.{int(time.time())}"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
                log.warning("moved unreadable checkpoint %s to %s", source, target)
            except Exception as error:  # a read-only store: leave it, but say so
                log.warning("could not move unreadable checkpoint %s aside: %s", source, error)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self.manager.close()
        self.manager = self._new_manager()

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """Restore the newest readable checkpoint onto `abstract_state`'s shardings.

        Args:
          abstract_state: the TrainState as jax.ShapeDtypeStruct leaves with `sharding` set
            (train_state.abstract_state); the mesh may differ from the one that saved.
        Returns:
          Restored, or None when the workdir holds no readable checkpoint.
        """
        for step in reversed(self.all_steps()):
            try:
                return self._restore_step(step, abstract_state)
            except CheckpointMismatchError:
                raise  # a config problem, not a damaged file: touch nothing
            except Exception as error:  # orbax/tensorstore raise many types for bad files
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s); falling back to the "
                    "previous checkpoint",
                    step,
                    self.directory,
                    type(error).__name__,
                    str(error).splitlines()[0][:300] if str(error) else "",
                )
                self._quarantine(step)
        return None

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(
        epath.Path(workdir) / "checkpoints", options=options, item_handlers=_handlers()
    )


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint step in WORKDIR/checkpoints, or None (reads no arrays)."""
    if not (epath.Path(workdir) / "checkpoints").exists():
        return None
    return _read_only_manager(workdir).latest_step()


def restore_for_inference(workdir: str, step: int | None = None, use_ema: bool = True) -> dict:
    """Restore what sampling needs, without knowing the model in advance.

    Returns {'config': locked ConfigDict, 'params': EMA (or raw) params, 'adaptive_state',
    'hidden_stats': {'mean','std'} float32 [Dh], 'step': int}; arrays land on the first local
    device (the saved tree's own structure is the restore target).
    """
    from ldlm_jax.config import from_dict

    manager = _read_only_manager(workdir)
    step = manager.latest_step() if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    tree = manager.item_metadata(step)["state"]
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), tree
    )
    out = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            config=ocp.args.JsonRestore(),
            hidden_stats=ocp.args.JsonRestore(),
        ),
    )
    state = out["state"]
    stats = {k: np.asarray(v, np.float32) for k, v in (out["hidden_stats"] or {}).items()}
    config = from_dict(out["config"])
    config.lock()
    return {
        "config": config,
        "params": state["ema_params" if use_ema else "params"],
        "adaptive_state": state.get("adaptive_state") or None,
        "hidden_stats": stats or None,
        "step": int(np.asarray(state["step"])),
    }
