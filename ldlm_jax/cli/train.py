"""ldlm-train: train an LDLM (one CPU, one GPU or a TPU pod slice; the same code).

  ldlm-train                                  # configs/demo.py, workdir ./workdirs/demo
  ldlm-train --config configs/tiny.py:random_lm --workdir /tmp/t --config.train.steps=20
  ldlm-train --config configs/owt.py --workdir gs://bucket/run --config.mesh.fsdp=8
  ldlm-train --config configs/owt.py --config.compile_only=True --config.target_topology=v5p:2x2x2

A workdir that already holds a checkpoint is resumed. Multi-host: start one process per host with
the same flags; jax.distributed is initialised from --coordinator/--num-processes/--process-id,
from JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), from SLURM or on a
multi-worker TPU slice. Exit status: 0 done (or preempted after saving), 1 the loss diverged
(the last good checkpoint is kept), 2 bad input (config, mesh, data, launch).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EPILOG = """config overrides (repeatable, any key of ldlm_jax/config.py base_config):
  --config.train.steps=N        total optimiser steps
  --config.train.batch_size=B   global batch (sequences), split over the data/fsdp mesh axes
  --config.train.seed=S         initialisation, noise and data order
  --config.checkpoint.every=N   save every N steps (also at the end and on SIGTERM)
  --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1   mesh axis sizes (-1 fills)
  --config.model.dtype=float32  compute dtype (master weights stay float32)
  --config.model.remat=full     recompute each layer in the backward pass (less activation memory)
  --config.compile_only=True    compile, log memory and parameter counts, exit
  --config.target_topology=T    with compile_only: compile the train step and the default sampler
                                for target T from abstract shapes (no weights, no data) and print
                                per-device memory vs HBM, XLA's FLOPs, estimated step time,
                                tokens/s and MFU; T = v5p:2x2x2, v5e:4x4, ... (needs libtpu, no
                                TPU) or cpu:N (N host CPU devices, set by XLA_FLAGS). Exit 2 with
                                the largest buffers named if it does not fit.
An unknown key or a value of the wrong type is an error naming the key.

outputs in WORKDIR: checkpoints/<step>/, metrics.jsonl (one JSON object per logged step),
tensorboard/ (events), samples_step_<N>.jsonl (decoded samples at eval steps)."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def resolve_config_path(spec: str) -> str:
    """`path[:variant]` with path as given, or relative to the repository / installed package."""
    path, sep, variant = spec.partition(":")
    candidates = [Path(path), _repo_root() / path, Path(__file__).resolve().parents[1] / path]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate) + sep + variant
    return spec  # load_config names the missing file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldlm-train",
        description=__doc__.split("\n\n")[0]
        + " Trains from scratch, or resumes the latest checkpoint in --workdir.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="configs/demo.py",
        help="config file, optionally with a variant: configs/tiny.py:random_lm "
        "(default: configs/demo.py; relative paths also resolve against the repository)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where checkpoints and logs go; local or gs:// (default: ./workdirs/<config name>)",
    )
    group = parser.add_argument_group("multi-process launch (usually from the environment)")
    group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num-processes", type=int, default=None, help="total processes")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")
    group.add_argument(
        "--init-timeout",
        type=int,
        default=300,
        help="seconds to wait for all processes to join (default 300)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(other args, ['a.b=v', ...]): `--config.a.b=v` and `--config.a.b v` forms."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" in arg:
                overrides.append(arg[len("--config.") :])
            elif i + 1 < len(argv):
                overrides.append(arg[len("--config.") :] + "=" + argv[i + 1])
                i += 1
            else:
                overrides.append(arg[len("--config.") :])  # load_config explains the form
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


class _Stderr:
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def _setup_logging(level: str) -> None:
    import jax

    primary = jax.process_index() == 0
    logging.basicConfig(
        level=getattr(logging, level) if primary else logging.WARNING,
        format=f"%(asctime)s [p{jax.process_index()}] %(levelname)s %(name)s: %(message)s",
        stream=_Stderr(),
        force=True,
    )
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)

    from ldlm_jax import distributed
    from ldlm_jax.config import ConfigError, load_config

    def fail(message: str, code: int = 2) -> int:
        print(f"ldlm-train: error: {message}", file=sys.stderr)
        return code

    try:
        distributed.initialize(
            args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout
        )
    except distributed.DistributedInitError as error:
        return fail(str(error))
    _setup_logging(args.log_level)
    try:
        config = load_config(resolve_config_path(args.config), overrides)
    except ConfigError as error:
        return fail(str(error))
    workdir = args.workdir or os.path.join("workdirs", config.name)

    from ldlm_jax import trainer
    from ldlm_jax.checkpointing import CheckpointMismatchError
    from ldlm_jax.sharding import ShardingError
    from ldlm_jax.tpu_topology import TpuCompileError

    try:
        result = trainer.train(config, workdir)
    except (
        ConfigError,
        ShardingError,
        FileNotFoundError,
        CheckpointMismatchError,
        TpuCompileError,  # a bad target, or a program that does not fit its HBM
    ) as error:
        return fail(str(error))
    except trainer.TrainingDivergedError as error:
        return fail(str(error), code=1)
    except trainer.DataError as error:
        return fail(str(error))
    logging.getLogger("ldlm-train").info(
        "stopped (%s) at step %d; workdir %s", result.stopped, result.step, workdir
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
