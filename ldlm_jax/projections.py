"""The vocabulary-wide output projection with a hand-written gradient, and its weights.

nn.DenseGeneral creates its weights and applies them in one call, and JAX differentiates the
product. For the token decoder's head (x [N, D] @ W [D, V] + b, V ~ 30-50k) XLA's CPU backend
turned that derivative into a transpose of the [N, V] cotangent to [V, N], a matmul off the
YNNPACK path and a column-by-column reduction for db; here the weights and the matmul are apart:

  DenseKernel   creates 'kernel' (and 'bias') exactly as nn.DenseGeneral does: same names,
                shapes, initial values (the kernel drawn flat as [prod(in), prod(out)], then
                reshaped) and logical axes; returns them unapplied.
  head_linear   x @ W + b (the forward as nn.DenseGeneral computes it), with the VJP written as
                three plain matmuls: dx = g W^T, dW = x^T g, db = 1^T g (float32 accumulation).
                The demo train step on 2 CPU cores (N = 2048 tokens, V = 30522), two A/B pairs
                of `python -m ldlm_jax.bench.train_step`: 1,194 -> 1,389 and 1,188 -> 1,693
                tok/s, the same loss (tests/test_projections.py checks the gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

Dtype = Any


class DenseKernel(nn.Module):
    """The weights of an nn.DenseGeneral over `in_features` input dims, without the matmul.

    Call (in_features: tuple of ints) -> (kernel [*in_features, *features] param_dtype,
    bias [*features] param_dtype or None). `axes` names every kernel dim, `bias_axes` every bias
    dim (both as nn.with_logical_partitioning takes them); `kernel_init` is the plain initializer.
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]
    kernel_init: Any  # the caller's (layers.Dense passes its own), so the two cannot drift
    use_bias: bool = False
    bias_axes: tuple[str, ...] = ("norm",)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: Sequence[int]):
        in_features, features = tuple(in_features), tuple(self.features)
        flat = (int(np.prod(in_features)), int(np.prod(features)))
        boxed_init = nn.with_logical_partitioning(self.kernel_init, tuple(self.axes))

        def kernel_init(rng, shape, dtype):  # nn.DenseGeneral's kernel_init_wrap
            kernel = boxed_init(rng, flat, dtype)
            return meta.replace_boxed(kernel, jnp.reshape(kernel.unbox(), shape))

        kernel = self.param("kernel", kernel_init, in_features + features, self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes))
            bias = self.param("bias", bias_init, features, self.param_dtype)
        return kernel, bias


@jax.custom_vjp
def head_linear(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x [..., D] @ kernel [D, V] + bias [V] -> [..., V], all in x's dtype; gradient: see top."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias


def _head_fwd(x, kernel, bias):
    return head_linear(x, kernel, bias), (x, kernel)


def _head_bwd(residuals, g):
    x, kernel = residuals
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dx = jax.lax.dot_general(g2, kernel, (((1,), (1,)), ((), ())))  # [N, D]
    dkernel = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())))  # [D, V]
    ones = jnp.ones((g2.shape[0],), g2.dtype)
    dbias = jnp.dot(ones, g2, preferred_element_type=jnp.float32).astype(g2.dtype)  # [V]
    return dx.reshape(x.shape), dkernel, dbias


head_linear.defvjp(_head_fwd, _head_bwd)
