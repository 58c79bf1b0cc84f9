"""Two processes on localhost (2 x 4 CPU devices, jax.distributed over gloo) train the tiny
config through ldlm-train and match the single-process losses.

Each process feeds only its own data shard (process_index / process_count); the single-process
reference is fed the same global batches (shard 0 rows then shard 1 rows), so the losses must
agree to float32 reduction-order noise. The coordinator is 127.0.0.1 on a free port, with
initialization_timeout=60 and a hard wall-clock bound on the subprocesses.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from train_utils import REPO, TEST_OVERRIDES, TINY, TINY_EXTRA, tiny_config

from ldlm_jax import train_feed, trainer

STEPS = 3
OVERRIDES = (*TEST_OVERRIDES, *TINY_EXTRA, "mesh.data=8", "checkpoint.every=3")
LAUNCH = (
    "import sys; sys.path.insert(0, {tests!r}); import train_utils; "
    "from ldlm_jax.cli.train import main; sys.exit(main(sys.argv[1:]))"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mp"))
    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    code = LAUNCH.format(tests=os.path.join(REPO, "tests"))
    procs = []
    for pid in range(2):
        argv = [sys.executable, "-c", code, "--config", TINY, "--workdir", workdir,
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(pid), "--init-timeout", "60",
                *(f"--config.{o}" for o in OVERRIDES)]  # fmt: skip
        log = open(os.path.join(workdir, f"process_{pid}.log"), "w")  # noqa: SIM115
        procs.append((subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log), log))
    try:
        codes = [p.wait(timeout=420) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = {}
    for pid in range(2):
        with open(os.path.join(workdir, f"process_{pid}.log")) as f:
            logs[pid] = f.read()
    assert codes == [0, 0], logs[0][-3000:] + "\n----\n" + logs[1][-3000:]
    return workdir, logs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single process, 8 devices, fed the concatenation of the two processes' shards."""
    jax.config.update("jax_disable_most_optimizations", True)
    original_init = train_feed.DataFeed.__init__

    def merged_init(self, config, tokenizer, mesh, rules):
        original_init(self, config, tokenizer, mesh, rules)
        shards = [train_feed.make_iterator(config, tokenizer, i, 2) for i in range(2)]

        class Merged:
            def __next__(self):
                parts = [next(s) for s in shards]
                return {k: np.concatenate([p[k] for p in parts]) for k in train_feed.KEYS}

        self.iterator = Merged()

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_feed.DataFeed, "__init__", merged_init)
            config = tiny_config(*OVERRIDES)
            result = trainer.train(config, str(tmp_path_factory.mktemp("ref")), stop_at=STEPS)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    return result


def test_two_processes_match_single_process(two_process_run, reference):
    workdir, logs = two_process_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses)[:STEPS] == [1, 2, 3]
    for step in range(1, STEPS + 1):
        assert abs(losses[step] - reference.losses[step]) < 1e-4, (step, losses, reference.losses)
    # Both processes took part in the checkpoints; only process 0 logged at INFO.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    assert "[p0] INFO" in logs[0] and "INFO" not in logs[1]


def test_launch_detection(monkeypatch):
    from ldlm_jax import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert distributed.detect_launch() is None
    spec = distributed.detect_launch("127.0.0.1:1234", 2, 1)
    assert (spec.reason, spec.num_processes, spec.process_id) == ("flags", 2, 1)
    with pytest.raises(distributed.DistributedInitError, match="missing --process-id"):
        distributed.detect_launch("127.0.0.1:1234", 2, None)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:8476")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    spec = distributed.detect_launch()
    assert (spec.reason, spec.coordinator_address, spec.process_id) == ("env", "10.0.0.1:8476", 3)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert distributed.detect_launch().reason == "slurm"


def test_unreachable_coordinator_fails_readably_in_bounded_time(tmp_path):
    # Process 1 of 2 waits for a coordinator that never starts: a clear error after the timeout.
    argv = [sys.executable, "-m", "ldlm_jax.cli.train", "--config", TINY,
            "--workdir", str(tmp_path), "--coordinator", f"127.0.0.1:{_free_port()}",
            "--num-processes", "2", "--process-id", "1", "--init-timeout", "5"]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "jax.distributed.initialize failed" in out.stderr
    assert "coordinator=127.0.0.1:" in out.stderr
