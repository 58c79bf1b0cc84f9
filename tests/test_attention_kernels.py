"""The attention kernels (ldlm_jax.attention_kernels) and the TPU-friendly RoPE.

The Pallas flash-attention kernel runs here in the Pallas TPU interpreter on CPU: its outputs and
gradients must match the XLA kernel's for self-attention with a key mask and for Perceiver-shaped
attention (kv twice as long as q), on one device and per shard under an 8-device mesh, and the
frozen LMs' hidden states must match with it (causal GPT-2 and Llama, bidirectional BERT). Bad
choices fail before any compile with the cause and the fix. With libtpu, a flash-attention
backward compiled for v5p gets its missing FLOPs added from the kernel schedule, and moves fewer
bytes than the XLA kernel.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from train_utils import tiny_config

from ldlm_jax import attention_kernels, sharding, tpu_compile
from ldlm_jax.config import ConfigError
from ldlm_jax.frozen_lm import random_frozen_lm
from ldlm_jax.layers import Attention, apply_rope
from ldlm_jax.ldlm import LDLM

B, L, HEADS, WIDTH = 2, 128, 2, 128  # head_dim 64, as at paper scale
RULES = [("batch", ("data", "fsdp")), ("heads", "tensor")]


def _inputs(kv_len=L):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x_q = jax.random.normal(keys[0], (B, L, WIDTH))
    x_kv = jax.random.normal(keys[1], (B, kv_len, WIDTH))
    mask = jnp.ones((B, kv_len), jnp.int32).at[1, kv_len - 40 :].set(0)  # row 1 padded
    return x_q, x_kv, mask


def _loss_and_grads(kernel, x_q, x_kv, mask, rope):
    layer = Attention(HEADS, rope_theta=1e4 if rope else 0.0, qk_norm=not rope, kernel=kernel)
    params = Attention(HEADS, rope_theta=1e4 if rope else 0.0, qk_norm=not rope).init(
        jax.random.PRNGKey(1), x_q, x_kv, mask
    )

    def loss(p, x):
        out = layer.apply(p, x, x_kv, mask)
        return jnp.sum(out * jnp.cos(out)), out  # a non-linear read-out of every output

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x_q)
    return out, grads


@pytest.mark.parametrize("rope", [True, False], ids=["self_attention_rope", "perceiver_qk_norm"])
def test_flash_matches_xla_outputs_and_gradients(rope):
    x_q, x_kv, mask = _inputs(L if rope else 2 * L)
    want_out, want_grads = jax.jit(_loss_and_grads, static_argnums=(0, 4))(
        "xla", x_q, x_kv, mask, rope
    )
    with pltpu.force_tpu_interpret_mode():
        got_out, got_grads = jax.jit(_loss_and_grads, static_argnums=(0, 4))(
            "flash", x_q, x_kv, mask, rope
        )
    np.testing.assert_allclose(got_out, want_out, rtol=2e-5, atol=2e-5)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got / scale, want / scale, atol=5e-5)


def test_flash_per_shard_under_an_8_device_mesh_matches_one_device():
    x_q, x_kv, mask = _inputs()
    layer = Attention(HEADS, kernel="flash")
    params = Attention(HEADS).init(jax.random.PRNGKey(1), x_q, x_kv, mask)
    with pltpu.force_tpu_interpret_mode():
        single = jax.jit(layer.apply)(params, x_q, x_kv, mask)
        mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4}, jax.devices()[:8])
        heads_mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
        for m in (mesh, heads_mesh):
            apply = jax.jit(sharding.with_activation_rules(layer.apply, RULES))
            with jax.set_mesh(m):
                spec = NamedSharding(m, P(("data", "fsdp")))
                sharded = apply(params, *(jax.device_put(a, spec) for a in (x_q, x_kv, mask)))
                text = apply.lower(params, x_q, x_kv, mask).as_text()
            assert "shard_map" in text or "sdy.manual_computation" in text
            np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_frozen_lm_hidden_states_match_with_the_flash_kernel(arch):
    """Causal (GPT-2, Llama with RoPE) and bidirectional (BERT) frozen LMs, right-padded rows."""
    lm = random_frozen_lm(arch, width=128, layers=2, heads=2)
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 128), 1, 1000)
    mask = jnp.ones((2, 128), jnp.int32).at[1, 90:].set(0)
    layer = -1 if arch == "bert" else 2

    def hidden(kernel):
        return jax.jit(lambda p, i, m: lm.hidden_states(p, i, m, layer, kernel))(
            lm.params, ids, mask
        )

    want = hidden("xla")
    with pltpu.force_tpu_interpret_mode():
        got = hidden("flash")
    real = mask.astype(bool)  # padded queries are not compared (no caller reads them)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_rope_matmul_form_equals_the_rotate_half_formula():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 3, 64)).astype(jnp.bfloat16)
    positions = jnp.arange(16)
    half = 32
    freqs = 1e4 ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    want = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    for rotate_by_matmul in (False, True):
        got = apply_rope(x, positions, 1e4, rotate_by_matmul)
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, want)


def test_kernel_choice_and_errors_before_compile():
    assert attention_kernels.resolve_kernel("auto", "cpu") == "xla"
    assert attention_kernels.resolve_kernel("auto", "tpu") == "auto"
    assert attention_kernels.resolve_kernel("flash", "tpu") == "flash"
    with pytest.raises(ValueError, match="Pallas TPU kernel.*runs on cpu.*'auto'"):
        attention_kernels.resolve_kernel("flash", "cpu")
    with pytest.raises(ConfigError, match="model.attention"):
        tiny_config("model.attention=pallas")
    with pytest.raises(ValueError, match="model.attention='flash'"):
        LDLM(tiny_config("model.attention=flash"), lm_dim=16, vocab_size=32)
    assert attention_kernels.flash_block(1024) == 512 and attention_kernels.flash_block(384) == 128
    assert attention_kernels.flash_block(100) == 0
    x = jnp.zeros((1, 100, 2, 8))
    with pytest.raises(ValueError, match="query length of 100.*multiple of 128"):
        jax.eval_shape(lambda a: attention_kernels.attention(a, a, a, kernel="flash"), x)
    bias = jnp.zeros((2, 128, 128))
    y = jnp.zeros((1, 128, 2, 8))
    with pytest.raises(ValueError, match="attention bias"):
        attention_kernels.attention(y, y, y, bias=bias, kernel="flash")
    # 'auto' falls back to XLA for shapes the kernel cannot take, and for keys shorter than
    # FLASH_AUTO_MIN_LENGTH, where XLA moves fewer bytes (no Pallas call at all).
    short = jnp.zeros((1, 256, 2, 8))
    for a in (x, short):
        auto = jax.jit(lambda a: attention_kernels.attention(a, a, a, kernel="auto"))
        text = auto.lower(a).as_text()
        assert "tpu_custom_call" not in text and "pallas" not in text
    assert attention_kernels.use_flash("auto", 256, 512) and attention_kernels.use_flash(
        "flash", 128, 128
    )
    assert not attention_kernels.use_flash("auto", 512, 256)


@pytest.fixture(scope="module")
def v5p_devices():
    if not tpu_compile.libtpu_available():
        pytest.skip(tpu_compile.LIBTPU_INSTALL_HINT)
    saved = {k: os.environ.get(k) for k in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")}
    for key in ("TPU_SKIP_MDS_QUERY", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
        saved[key] = os.environ.get(key)
    yield tpu_compile.topology_devices("v5p:2x2x2")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_flash_backward_cost_is_added_and_moves_fewer_bytes_on_v5p(v5p_devices):
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}, v5p_devices)
    batch, length, heads, head_dim = 16, 1024, 4, 64  # the paper-scale length
    shape = jax.ShapeDtypeStruct(
        (batch, length, heads, head_dim), jnp.bfloat16, sharding=NamedSharding(mesh, P("data"))
    )
    reports = {}
    for kernel in ("xla", "flash"):

        def grads(q, k, v, kernel=kernel):
            def loss(q, k, v):
                out = attention_kernels.attention(q, k, v, kernel=kernel)
                return jnp.sum(out.astype(jnp.float32))

            return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

        fn = sharding.with_activation_rules(grads, RULES)
        reports[kernel] = tpu_compile.compile_for_target(fn, (shape,) * 3, mesh=mesh)
    xla, flash = reports["xla"], reports["flash"]
    text = tpu_compile.format_report(flash)
    assert any("3 flash-attention kernels" in note for note in flash.notes), text
    # Per device: 2 sequences. Forward q k^T and P v, backward 7 matmuls of the same size.
    matmul = 2.0 * (batch // 8) * heads * length * length * head_dim
    assert 9 * matmul <= flash.flops_per_device <= 9.3 * matmul, text
    assert flash.bytes_accessed_per_device < 0.6 * xla.bytes_accessed_per_device, (
        text,
        tpu_compile.format_report(xla),
    )


def test_attention_benchmark_compiles_both_kernels_for_v5p(v5p_devices, capsys):
    """`python -m ldlm_jax.bench.attention_aot` (part 1, one length): at L = 1024 the flash kernel
    is estimated faster than XLA, and the matmul RoPE moves fewer bytes than the sliced one."""
    from ldlm_jax.bench import attention_aot

    assert attention_aot.main(["--chip", "v5p", "--lengths", "1024", "--skip-cpu"]) == 0
    out = capsys.readouterr().out
    ratio = re.search(r"L = 1024: .* XLA / flash ([\d.]+)", out)
    rope = re.search(r"sliced / matmul ([\d.]+)", out)
    assert ratio and float(ratio.group(1)) > 1 and rope and float(rope.group(1)) > 1, out
    assert "QK RMSNorm" in out and "not measured runs" in out, out
