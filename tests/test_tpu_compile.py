"""Ahead-of-time compilation machinery (ldlm_jax.tpu_compile) on a toy program, for 'v5p:2x2x2'.

A toy sharded MLP train step is compiled under two mesh layouts (pure data parallel, and
fsdp x tensor); the reports must fit in HBM and predict a positive step time, and a deliberately
huge model must raise DoesNotFitError. Without libtpu the same tests run on a CPU mesh of the
same shape with the v5p chip numbers. The real LDLM train step and sampler are compiled for the
slice in tests/test_aot_ldlm.py.
"""

import os

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ldlm_jax import tpu_compile
from ldlm_jax.config import base_config

TOPOLOGY = "v5p:2x2x2"
BATCH, SEQ, EMBED, MLP = 32, 16, 128, 256


@pytest.fixture(scope="module")
def devices():
    """TPU devices of the target slice, or 8 CPU devices if libtpu is missing (fallback)."""
    saved = {k: os.environ.get(k) for k in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")}
    for key in ("TPU_SKIP_MDS_QUERY", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
        saved[key] = os.environ.get(key)
    if tpu_compile.libtpu_available():
        result = tpu_compile.topology_devices(TOPOLOGY)
    else:  # documented fallback: same mesh shape on CPU, v5p numbers passed explicitly
        result = jax.devices("cpu")[:8]
    yield result
    for key, value in saved.items():  # do not leak libtpu settings into later subprocesses
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _chip(devices):
    return None if devices[0].platform == "tpu" else "v5p"


def _train_step(params, batch):
    """One SGD step of a 2-layer MLP autoencoder. params: w1 [embed, mlp], w2 [mlp, embed];
    batch: [batch, length, embed] bfloat16."""

    def loss_fn(p):
        x = batch.astype(jnp.float32)
        h = jax.nn.gelu(jnp.einsum("ble,em->blm", x, p["w1"]))
        y = jnp.einsum("blm,me->ble", h, p["w2"])
        return jnp.mean((y - x) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    new = jax.tree.map(lambda w, g: w - 1e-3 * g, params, grads)
    return new, loss


def _abstract(mesh, embed, mlp, param_specs, batch_spec, batch=BATCH):
    params = {
        "w1": jax.ShapeDtypeStruct(
            (embed, mlp), jnp.float32, sharding=NamedSharding(mesh, param_specs[0])
        ),
        "w2": jax.ShapeDtypeStruct(
            (mlp, embed), jnp.float32, sharding=NamedSharding(mesh, param_specs[1])
        ),
    }
    x = jax.ShapeDtypeStruct(
        (batch, SEQ, embed), jnp.bfloat16, sharding=NamedSharding(mesh, batch_spec)
    )
    return params, x


LAYOUTS = {
    "data_parallel": ({"data": -1, "fsdp": 1, "tensor": 1}, (P(), P()), P("data")),
    "fsdp_tensor": (
        {"data": 1, "fsdp": -1, "tensor": 2},
        (P("fsdp", "tensor"), P("tensor", "fsdp")),
        P(("data", "fsdp")),
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_toy_train_step_fits_and_has_a_speed_estimate(devices, layout):
    sizes, param_specs, batch_spec = LAYOUTS[layout]
    mesh = tpu_compile.make_target_mesh(sizes, devices)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.devices.size == 8 and -1 not in mesh.devices.shape
    params, x = _abstract(mesh, EMBED, MLP, param_specs, batch_spec)
    tokens = BATCH * SEQ
    model_flops = 6 * (2 * EMBED * MLP) * tokens
    report = tpu_compile.compile_for_target(
        _train_step,
        (params, x),
        out_shardings=(jax.tree.map(lambda a: a.sharding, params), NamedSharding(mesh, P())),
        donate_argnums=(0,),
        tokens_per_step=tokens,
        model_flops_per_step=model_flops,
        chip=_chip(devices),
    )
    text = tpu_compile.format_report(report)
    assert report.chip == "v5p" and report.hbm_bytes == 95 * 1024**3
    assert report.fits and 0 < report.total_bytes < report.hbm_bytes, text
    # Arguments: the parameter shard plus the batch shard on each device.
    param_bytes = 2 * EMBED * MLP * 4 // (1 if layout == "data_parallel" else 8)
    assert report.argument_bytes >= param_bytes + BATCH * SEQ * EMBED * 2 // 8, text
    assert report.step_seconds is not None and report.step_seconds > 0, text
    assert report.tokens_per_second > 0 and 0 < report.mfu <= 1.0, text
    assert report.flops_per_device > 0
    if devices[0].platform == "tpu":
        assert report.alias_bytes > 0, text  # the donated params are reused for the new params
    assert "FITS" in text and "tokens/s" in text


def test_huge_model_raises_does_not_fit(devices):
    mesh = tpu_compile.make_target_mesh({"data": -1}, devices)
    # Replicated f32 weights of 2 x 48 GiB: no v5p chip (95 GiB HBM) holds them with gradients.
    params, x = _abstract(mesh, 16384, 786432, (P(), P()), P("data"), batch=8)
    with pytest.raises(tpu_compile.DoesNotFitError, match=r"does not fit[\s\S]*\['w1'\]"):
        tpu_compile.compile_for_target(_train_step, (params, x), chip=_chip(devices))


def test_memory_check_against_a_smaller_chip(devices):
    """A program that fits a v5p chip but not v5e's 16 GiB is caught by our HBM table."""
    mesh = tpu_compile.make_target_mesh({"data": -1}, devices)
    params, x = _abstract(mesh, 8192, 327680, (P(), P()), P("data"), batch=8)  # 2 x 10 GiB
    with pytest.raises(tpu_compile.DoesNotFitError, match=r"v5e[\s\S]*largest"):
        tpu_compile.compile_for_target(_train_step, (params, x), chip="v5e")


def test_names_meshes_and_errors():
    chip, dims = tpu_compile.parse_topology("v5e:4x4")
    assert chip.name == "v5e" and dims == (4, 4) and chip.hbm_bytes == 16 * 1024**3
    assert tpu_compile.accelerator_type("v5p:2x2x2") == "v5p-16"
    assert tpu_compile.accelerator_type("v5e:4x4") == "v5litepod-16"
    assert tpu_compile.accelerator_type("v4:2x2x2") == "v4-16"
    assert tpu_compile.accelerator_type("v6e:2x2") == "v6e-4"
    with pytest.raises(tpu_compile.TpuCompileError, match="unknown TPU topology"):
        tpu_compile.parse_topology("v9:2x2")
    assert tpu_compile.resolve_mesh_sizes(base_config().mesh, 16) == (16, 1, 1)
    assert tpu_compile.resolve_mesh_sizes({"data": 2, "fsdp": -1, "tensor": 2}, 16) == (2, 4, 2)
    with pytest.raises(tpu_compile.TpuCompileError, match="does not tile"):
        tpu_compile.resolve_mesh_sizes({"data": 3, "fsdp": -1, "tensor": 1}, 8)


def test_xla_oom_messages_and_loop_correction(devices):
    need, have = tpu_compile.parse_xla_oom(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (71.53G) exceeds available HBM (15.75G)."
    )
    assert need == int(71.53 * 2**30) and have == int(15.75 * 2**30)
    assert tpu_compile.parse_xla_oom("Used 20.5G of 15.75G hbm.")[0] == int(20.5 * 2**30)
    assert tpu_compile.parse_xla_oom("some other error") == (None, None)
    mesh = tpu_compile.make_target_mesh({"data": -1}, devices)
    params, x = _abstract(mesh, EMBED, MLP, (P(), P()), P("data"))
    kw = dict(tokens_per_step=BATCH * SEQ, sequences_per_step=BATCH, chip=_chip(devices))
    report = tpu_compile.compile_for_target(_train_step, (params, x), label="toy", **kw)
    more = tpu_compile.add_repeated(report, report, 3, "three more")
    assert more.flops_per_device == pytest.approx(4 * report.flops_per_device)
    assert more.step_seconds == pytest.approx(4 * report.step_seconds)
    assert more.sequences_per_second == pytest.approx(report.sequences_per_second / 4)
    assert more.notes[-1] == "three more" and more.total_bytes == report.total_bytes
    assert "[toy]" in tpu_compile.format_report(more) and more.to_json()["fits"]
