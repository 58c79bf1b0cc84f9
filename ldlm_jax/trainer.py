"""The training loop: one code path for one CPU, one GPU, or a TPU pod slice.

train(config, workdir) does, in order, failing early with a clear error where input is bad:
 1. mesh from config.mesh (sharding.ShardingError if it does not match the devices), batch
    divisibility, logical-axis rules for every parameter (abstract init, nothing allocated);
 2. the frozen LM (its params sharded by the same rules, never optimised), the LDLM container and
    the data iterator of this process's shard;
 3. auto-resume from WORKDIR/checkpoints (state, iterator, hidden stats) or a fresh start: hidden
    stats from config.frozen_lm.stats_sequences training sequences, state materialised sharded;
 4. ahead-of-time compile of the jitted step, logging memory_analysis and parameter counts
    (config.compile_only stops here). config.target_topology ('v5p:2x2x2', 'cpu:16', ...)
    instead compiles the train step and the default sampler for that target from abstract
    shapes before step 1, with no weights or data (ldlm_jax/aot.py), prints the reports, stops;
 5. the loop: step, NaN check (one step behind, so the host does not stall the device), metrics
    (metrics.jsonl, TensorBoard, tqdm), eval loss + decoded samples every train.eval_every,
    checkpoints every checkpoint.every, at the end, and on SIGTERM (then exit cleanly).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax import checkpointing, metrics_logging, train_eval, train_feed
from ldlm_jax import optimizer as optim
from ldlm_jax import sharding as shd
from ldlm_jax import train_state as ts
from ldlm_jax import train_step as tstep
from ldlm_jax.config import to_dict
from ldlm_jax.train_feed import DataError  # noqa: F401  (re-exported for the CLI)

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the message names the step."""


@dataclasses.dataclass
class TrainResult:
    """What one train() call did. losses / batch_hashes: {step (1-based, = state.step after the
    update): value} for the steps run in this call; stopped: 'done', 'stop_at', 'preempted',
    'compile_only'."""

    step: int
    losses: dict[int, float]
    batch_hashes: dict[int, str]
    stopped: str
    workdir: str
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    memory: dict[str, int] = dataclasses.field(default_factory=dict)
    param_counts: dict[str, int] = dataclasses.field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM (preemption); the loop saves a checkpoint and returns."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint and stopping after this step")
        self.set = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _agreed(flag: bool) -> bool:
    """True if any process has `flag` set (all processes then act together)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _preemption_notice(checkpointer, step: int) -> bool:
    """True at the step where jax's preemption service (Cloud TPU maintenance events, multi-host
    runs) asks every process to checkpoint; False where the service is not running."""
    if jax.process_count() == 1:
        return False
    try:
        return bool(checkpointer.manager.reached_preemption(step))
    except Exception:  # no preemption sync manager on this platform
        return False


def _frozen_shardings(frozen_lm, mesh, rules) -> Any:
    """NamedShardings for the frozen LM's params from its modules' logical names."""
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    boxed = jax.eval_shape(frozen_lm.module.init, jax.random.PRNGKey(0), ids)["params"]
    shardings = shd.named_shardings(shd.partition_specs(boxed, mesh, rules), mesh)
    if jax.tree.structure(shardings) != jax.tree.structure(frozen_lm.params):
        raise shd.ShardingError("frozen LM params do not match its module's parameter tree")
    return shardings


def _log_memory(compiled) -> dict[str, int]:
    try:
        memory = compiled.memory_analysis()
    except Exception:  # not every backend has one
        return {}
    fields = ("argument", "output", "temp", "alias", "generated_code")
    out = {f: int(getattr(memory, f"{f}_size_in_bytes", 0) or 0) for f in fields}
    log.info(
        "compiled train step, per device: %s MiB",
        ", ".join(f"{k} {v / 2**20:.1f}" for k, v in out.items()),
    )
    return out


def _batch_hash(batch: dict) -> str:
    return hashlib.md5(np.ascontiguousarray(batch["input_ids"]).tobytes()).hexdigest()[:16]


def _host(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _compile_for_target(config, workdir: str) -> TrainResult:
    """config.target_topology ('v5p:2x2x2', 'v5e:4x4', 'cpu:16', ...): compile the train step and
    the default sampler for that target from abstract shapes (ldlm_jax/aot.py) and print their
    memory and speed reports; no weights, data or checkpoints are read and nothing runs.
    Raises tpu_compile.DoesNotFitError (naming the largest buffers) when a program does not fit."""
    from ldlm_jax import aot

    result = aot.compile_programs(config, config.target_topology)
    train = result.reports["train_step"]
    memory = dict(
        argument=train.argument_bytes,
        output=train.output_bytes,
        temp=train.temp_bytes,
        alias=train.alias_bytes,
        generated_code=train.generated_code_bytes,
    )
    log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in result.param_counts.items()))
    return TrainResult(0, {}, {}, "compile_only", workdir, {}, memory, result.param_counts)


def train(
    config,
    workdir: str,
    *,
    devices=None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train (or resume) the LDLM of `config` in `workdir`.

    Args:
      config: a validated, locked ConfigDict (config.load_config).
      workdir: local path or gs:// path; checkpoints, metrics.jsonl, tensorboard/, samples.
      devices: the devices of the mesh (default: all); e.g. [jax.devices()[0]] for one device.
      stop_at: stop (and save) once this step is reached, as if preempted there (tests).
    Returns:
      TrainResult. Raises TrainingDivergedError on a NaN/inf loss (the last good checkpoint stays
      the newest), sharding.ShardingError / config.ConfigError / data errors before compiling.
    """
    workdir = str(workdir)
    if config.target_topology:  # compile for a TPU slice (or CPU mesh) from abstract shapes
        return _compile_for_target(config, workdir)
    rules = shd.rules_table(config.logical_axis_rules)
    mesh = shd.make_mesh(dict(config.mesh), devices)
    shd.check_batch_divisible(
        config.train.batch_size, config.train.microbatches, mesh, rules, jax.process_count()
    )
    log.info("mesh %s", shd.describe_mesh(mesh))

    from ldlm_jax.frozen_lm import frozen_lm_from_config
    from ldlm_jax.ldlm import LDLM

    frozen_lm = frozen_lm_from_config(config)
    model = LDLM(config, frozen_lm)
    optimizer, lr_schedule = optim.make_optimizer(config)
    init_fn = ts.make_init_fn(functools.partial(model.init_params, unbox=False), optimizer, config)
    rng = jax.random.PRNGKey(config.train.seed)
    abstract_boxed, state_sh = ts.state_shardings(init_fn, rng, mesh, rules)  # rule errors here
    counts = ts.parameter_counts(abstract_boxed.params)
    counts["frozen_lm"] = ts.parameter_counts(frozen_lm.params)["total"]
    log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in counts.items()))

    step_fn = tstep.make_train_step(model.loss, optimizer, lr_schedule, config, mesh)
    tokens_per_step = config.train.batch_size * config.data.seq_len
    abstract_batch = train_feed.abstract_batch(config)
    train_feed.validate_data(config, frozen_lm)  # data errors here, before any compile
    feed = train_feed.DataFeed(config, frozen_lm.tokenizer, mesh, rules)
    frozen_params = jax.device_put(frozen_lm.params, _frozen_shardings(frozen_lm, mesh, rules))
    checkpointer = checkpointing.Checkpointer(
        workdir, config.checkpoint.keep, config.checkpoint.async_save
    )
    restored = checkpointer.restore_latest(
        ts.abstract_state(init_fn, rng, state_sh, abstract_boxed)
    )
    if restored is not None:
        state, hidden_stats = restored.state, restored.hidden_stats
        feed.set_state(restored.data_state)
        log.info("resumed from step %d in %s", restored.step, checkpointer.directory)
    else:
        hidden_stats = train_feed.initial_hidden_stats(config, frozen_lm)
        state, _ = ts.create_train_state(init_fn, rng, mesh, rules, state_sh)
    stats_dev = jax.device_put(
        {k: np.asarray(v, np.float32) for k, v in hidden_stats.items()}, shd.replicated(mesh)
    )
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen_params)
    jitted = tstep.jit_train_step(step_fn, state_sh, feed.sharding, frozen_sh, mesh)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        lowered = jitted.lower(state, abstract_batch, frozen_params, stats_dev)
        lowered_flops = metrics_logging.step_flops(lowered)  # global: before partitioning
        compiled = lowered.compile()
    log.info("compiled the train step in %.1f s", time.perf_counter() - start)
    memory = _log_memory(compiled)
    first_step = int(jax.device_get(state.step))
    if config.compile_only:
        checkpointer.close()
        return TrainResult(first_step, {}, {}, "compile_only", workdir, {}, memory, counts)

    primary = jax.process_index() == 0
    logger = metrics_logging.MetricsLogger(
        workdir, config.train.steps, first_step, primary, config.train.progress_bar
    )
    peak, peak_source = metrics_logging.peak_flops_per_device()
    log.info("peak %.3g FLOP/s per device (%s); step FLOPs %s", peak, peak_source, lowered_flops)
    evaluator = train_eval.Evaluator(config, model, mesh, rules, workdir, logger)
    stop = _StopFlag()
    stop.install()
    result = TrainResult(first_step, {}, {}, "done", workdir, {}, memory, counts)

    def save(step_number: int) -> None:
        checkpointer.save(step_number, state, feed.get_state(), to_dict(config), hidden_stats)

    def check(step_number: int, metrics: dict[str, float]) -> None:
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            checkpointer.wait()
            last = checkpointer.latest_step()
            raise TrainingDivergedError(
                f"loss is {metrics['loss']} (grad_norm {metrics['grad_norm']}) at step "
                f"{step_number}: stopping. The last good checkpoint is step {last} in "
                f"{checkpointer.directory}; lower train.learning_rate or check the data."
            )
        result.losses[step_number] = metrics["loss"]
        result.last_metrics = metrics

    total = config.train.steps if stop_at is None else min(stop_at, config.train.steps)
    pending = None  # (step, device metrics) not yet checked
    window_start, window_steps = time.perf_counter(), 0
    try:
        with jax.set_mesh(mesh):
            step = first_step
            while step < total:
                batch = feed.next()
                state, metrics = compiled(state, batch.arrays, frozen_params, stats_dev)
                step += 1
                result.batch_hashes[step] = batch.hash
                if pending is not None:
                    check(pending[0], _host(pending[1]))
                pending = (step, metrics)
                window_steps += 1
                logger.advance()
                due_log = step % config.train.log_every == 0 or step == total
                due_save = step % config.checkpoint.every == 0 or step == total
                due_eval = config.train.eval_every > 0 and step % config.train.eval_every == 0
                preempted = _agreed(stop.set) or _preemption_notice(checkpointer, step)
                if due_log or due_save or due_eval or preempted:
                    host = _host(metrics)
                    check(step, host)
                    pending = None
                    if due_log:
                        elapsed = time.perf_counter() - window_start
                        host["tokens_per_sec"] = window_steps * tokens_per_step / elapsed
                        host["steps_per_sec"] = window_steps / elapsed
                        if lowered_flops:
                            host["mfu"] = (
                                lowered_flops * window_steps / elapsed / (peak * mesh.devices.size)
                            )
                        logger.write(step, host)
                        window_start, window_steps = time.perf_counter(), 0
                    if due_eval:
                        evaluator.run(step, state, frozen_params, stats_dev)
                    if due_save or preempted:
                        save(step)
                    if preempted:
                        result.stopped = "preempted"
                        break
            if pending is not None:
                check(pending[0], _host(pending[1]))
            if stop_at is not None and step == stop_at and step < config.train.steps:
                result.stopped = "stop_at"
            result.step = step
    finally:
        stop.uninstall()
        logger.close()
        checkpointer.close()
    return result
