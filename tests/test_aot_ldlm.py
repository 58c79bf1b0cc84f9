"""The real LDLM programs compiled ahead of time (issues 8 and 10), on this CPU-only machine.

For a v5p:2x2x2 slice (8 chips, described by libtpu; no TPU needed) the train step and the
default sampler of a shrunk configs/owt.py compile from abstract shapes under three mesh layouts:
pure data parallel (data=8, through ldlm_jax.aot), fsdp=4 x tensor=2 with 2 microbatches
(through `ldlm-train --config.compile_only=True --config.target_topology=v5p:2x2x2`), and
data=2 x fsdp=2 x tensor=2 (the sampler alone, through `ldlm-sample --compile-only`). Each must
fit the chip's HBM and predict a positive time; a config too large for the chip must fail with
the does-not-fit error naming its largest buffers. Then issue 8's check, shrunk: compile-only of
an OWT-shaped config on a 16-device CPU mesh (fsdp x data, in a subprocess since the device
count is fixed at jax import) prints per-device memory. `jax_disable_most_optimizations` does
not change TPU compiles (their numbers and time are the same with it), so only the CPU
subprocess sets it.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import REPO, shrink, shrink_overrides, tiny_config

from ldlm_jax import aot, tpu_compile
from ldlm_jax.cli import sample as sample_cli
from ldlm_jax.cli import train as train_cli
from ldlm_jax.config import load_config
from ldlm_jax.frozen_lm import frozen_lm_from_config
from ldlm_jax.ldlm import LDLM

TOPOLOGY = "v5p:2x2x2"
OWT = os.path.join(REPO, "configs", "owt.py")
V5P_HBM = 95 * 1024**3
SMALL = ("train.batch_size=16", "sampler.steps=4")  # 2 sequences per chip; a short sampler loop
TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_SKIP_MDS_QUERY")


@pytest.fixture(scope="module")
def libtpu():
    """Skip without libtpu (pip install -e '.[test]' brings it); restore libtpu's env after."""
    if not tpu_compile.libtpu_available():
        pytest.skip(tpu_compile.LIBTPU_INSTALL_HINT)
    saved = {key: os.environ.get(key) for key in (*TPU_ENV, "ALLOW_MULTIPLE_LIBTPU_LOAD")}
    yield
    for key, value in saved.items():  # do not leak libtpu settings into later subprocesses
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _overrides(*extra):
    return [f"--config.{o}" for o in shrink_overrides(load_config(OWT), *SMALL, *extra)]


def _step_times_ms(text):
    return [float(ms) for ms in re.findall(r"step time estimate: ([\d.]+) ms", text)]


@pytest.fixture(scope="module")
def data_parallel(libtpu):
    config = shrink(load_config(OWT), *SMALL)
    return aot.compile_programs(config, TOPOLOGY, log=None)


def test_data_parallel_train_step_fits_with_a_speed_estimate(data_parallel):
    report = data_parallel.reports["train_step"]
    text = tpu_compile.format_report(report)
    assert report.chip == "v5p" and report.num_devices == 8, text
    assert report.mesh_shape == {"data": 8, "fsdp": 1, "tensor": 1}
    assert report.hbm_bytes == V5P_HBM and report.fits and 0 < report.total_bytes < V5P_HBM, text
    assert report.alias_bytes > 0, text  # the donated state is reused for the new state
    assert report.step_seconds > 0 and report.flops_per_device > 0, text
    assert report.tokens_per_step == 16 * 16 and report.tokens_per_second > 0, text
    assert 0 < report.mfu <= 1 and 0 < report.hfu <= 1, text
    # Pure data parallel: every chip holds the whole state (params, EMA, two Adam moments).
    params = data_parallel.param_counts["total"]
    assert report.argument_bytes >= 4 * 4 * params, text
    assert data_parallel.param_counts["frozen_lm"] > 0


def test_data_parallel_sampler_fits_with_a_speed_estimate(data_parallel):
    report = data_parallel.reports["sampler"]
    text = tpu_compile.format_report(report)
    assert report.fits and report.total_bytes > 0, text
    assert report.sequences_per_step == 64 and report.sequences_per_second > 0, text
    assert report.step_seconds > 0, text
    assert any("3 more denoiser calls" in note for note in report.notes), text
    # The batch is sharded: each chip's known-latents argument [B, K, D] holds 64 / 8 sequences.
    latents = [shape for path, shape, _, _ in report.largest_args if path == "[3]"]
    assert latents == [(8, 16, 32)], text


def test_fsdp_tensor_through_ldlm_train(libtpu, capsys, tmp_path):
    workdir = tmp_path / "run"
    argv = ["--config", OWT, "--workdir", str(workdir), "--config.compile_only=True",
            f"--config.target_topology={TOPOLOGY}",
            *_overrides("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2",
                        "train.microbatches=2")]  # fmt: skip
    assert train_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mesh data=1 fsdp=4 tensor=2 over 8 tpu devices" in out
    assert out.count(" FITS") == 2 and "DOES NOT FIT" not in out, out
    assert "[train step" in out and "[sampler euler_maruyama x 4 steps, batch 64]" in out, out
    times = _step_times_ms(out)
    assert len(times) == 2 and min(times) > 0, out
    assert "tokens/s" in out and "MFU" in out and "sequences/s" in out
    assert "2 microbatches: the step's cost counted 2 times" in out  # XLA counted one
    assert "not measured" in out
    assert not workdir.exists()  # nothing ran, nothing was written


def test_flash_attention_in_the_real_step_under_fsdp_x_tensor(libtpu):
    """At L = 512 (>= FLASH_AUTO_MIN_LENGTH, a multiple of 128), model.attention='auto' puts flash
    attention in every attention layer of the TPU programs (encoder, denoiser, decoders, frozen
    LM), run per shard over batch (data, fsdp) and heads (tensor); the report adds the backward
    FLOPs."""
    overrides = ("data.seq_len=512", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2")
    config = shrink(load_config(OWT), *SMALL, *overrides)
    result = aot.compile_programs(config, TOPOLOGY, log=None)
    train, sampler = result.reports["train_step"], result.reports["sampler"]
    text = tpu_compile.format_report(train)
    assert train.fits and train.step_seconds > 0 and 0 < train.mfu <= 1, text
    # Forward, dq and dkv kernels for 5 trainable layers (1 encoder, 2 denoiser, 1 + 1 decoder),
    # a forward for each denoiser layer in the self-conditioning pass, and one per block of the
    # 2-layer frozen LM.
    kernels = [int(n.split()[0]) for n in train.notes if "flash-attention kernels" in n]
    assert kernels == [3 * 5 + 2 + 2], text
    assert any("flash-attention kernels" in n for n in sampler.notes), sampler.notes
    plain = shrink(load_config(OWT), *SMALL, *overrides, "model.attention=xla")
    assert aot.model_flops(config, aot.target_mesh(config, TOPOLOGY)) == aot.model_flops(
        plain, aot.target_mesh(plain, TOPOLOGY)
    )  # MFU credits the model's math, whichever kernel runs it


def test_too_large_config_does_not_fit(libtpu, capsys, tmp_path):
    # 2 x 16 GiB of float32 token-decoder MLP weights, replicated with their EMA and Adam
    # moments: ~150 GiB per chip against v5p's 95 GiB.
    argv = ["--config", OWT, "--workdir", str(tmp_path), "--config.compile_only=True",
            f"--config.target_topology={TOPOLOGY}",
            *_overrides("model.token_decoder.mlp_dim=134217728")]  # fmt: skip
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: train step.* does not fit on v5p.*needs [\d.]+ GiB of", err), err
    assert "['token_decoder']['layer_0']['mlp']" in err and "16.000 GiB" in err, err
    assert "fix:" in err


def test_ldlm_sample_compile_only(libtpu, capsys):
    argv = ["--config", OWT, "--compile-only", "--target-topology", TOPOLOGY, "--batch-size",
            "16", *_overrides("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")]  # fmt: skip
    assert sample_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[sampler euler_maruyama x 4 steps, batch 16]" in out, out
    assert "mesh data=2 fsdp=2 tensor=2" in out and " FITS" in out, out
    assert _step_times_ms(out)[0] > 0 and "sequences/s" in out


def test_ldlm_sample_compile_only_needs_a_config(capsys):
    assert sample_cli.main(["--compile-only"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert sample_cli.main(["--config", OWT]) == 2
    assert "need --compile-only" in capsys.readouterr().err


def test_cpu_target_names_the_device_count_fix():
    with pytest.raises(tpu_compile.TpuCompileError, match="xla_force_host_platform_device_count"):
        tpu_compile.target_devices("cpu:4096")
    assert len(tpu_compile.target_devices("cpu:8")) == 8
    assert not tpu_compile.is_tpu_target("cpu:16") and tpu_compile.is_tpu_target(TOPOLOGY)


def test_owt_shaped_compile_only_on_16_cpu_devices(tmp_path):
    """Issue 8, shrunk: `ldlm-train --config configs/owt.py --config.compile_only=True
    --config.target_topology=cpu:16` on a data=4 x fsdp=4 CPU mesh prints per-device memory."""
    overrides = _overrides("train.batch_size=32", "mesh.data=4", "mesh.fsdp=4", "sampler.steps=2")
    script = (
        "import sys, jax\n"
        "jax.config.update('jax_disable_most_optimizations', True)\n"
        "from ldlm_jax.cli import train\n"
        f"sys.exit(train.main({['--config', OWT, '--workdir', str(tmp_path / 'run')]!r} + "
        f"['--config.compile_only=True', '--config.target_topology=cpu:16'] + {overrides!r}))\n"
    )
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    env = dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=16")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "mesh data=4 fsdp=4 tensor=1 over 16 cpu devices" in out, out
    memory = re.findall(r"memory per device: total ([\d.]+) (MiB|GiB)", out)
    assert len(memory) == 2 and all(float(v) > 0 for v, _ in memory), out
    assert "[train step, batch 32 x 16" in out, out
    assert "no HBM size to check against" in out.split("\n")[2], out  # CPU: nothing to fit


def test_remat_keeps_params_loss_and_gradients():
    """model.remat (what the does-not-fit hint suggests) trades compute for memory only."""
    ids = jnp.ones((2, 16), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}
    frozen = frozen_lm_from_config(tiny_config())
    results = {}
    jax.config.update("jax_disable_most_optimizations", True)  # behaviour, not speed
    try:
        for remat in ("none", "full", "dots"):
            model = LDLM(tiny_config(f"model.remat={remat}"), frozen)
            params = model.init_params(jax.random.PRNGKey(0))

            def loss(p, model=model):
                return model.loss(p, frozen.params, None, batch, jax.random.PRNGKey(1), 0)[0]

            results[remat] = (params, *jax.jit(jax.value_and_grad(loss))(params))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    p0, l0, g0 = results.pop("none")
    for p1, l1, g1 in results.values():
        assert jax.tree.structure(p0) == jax.tree.structure(p1)
        assert float(l0) == pytest.approx(float(l1), rel=1e-6)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
