"""projections.py: DenseKernel makes nn.DenseGeneral's exact weights, head_linear its exact
forward, and head_linear's hand-written gradient equals autodiff of the plain product."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldlm_jax.layers import Dense
from ldlm_jax.projections import head_linear


def test_head_dense_has_dense_generals_params_and_outputs():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 12))
    plain = Dense(37, ("embed", "vocab"), True)
    head = Dense(37, ("embed", "vocab"), True, head=True)
    p_plain = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), x))
    p_head = nn.meta.unbox(head.init(jax.random.PRNGKey(0), x))
    assert jax.tree.structure(p_plain) == jax.tree.structure(p_head)
    for a, b in zip(jax.tree.leaves(p_plain), jax.tree.leaves(p_head), strict=True):
        np.testing.assert_array_equal(a, b)
    # A nonzero bias, so the bias path is exercised too.
    p_head = jax.tree.map(lambda a: a + 0.1, p_head)
    np.testing.assert_allclose(head.apply(p_head, x), plain.apply(p_head, x), rtol=1e-6, atol=1e-6)
    boxed = head.init(jax.random.PRNGKey(0), x)["params"]["linear"]
    assert boxed["kernel"].names == ("embed", "vocab")


def test_head_linear_gradient_equals_autodiff():
    kx, kw, kb, kg = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(kx, (3, 4, 16))
    w = jax.random.normal(kw, (16, 50))
    b = jax.random.normal(kb, (50,))
    g = jax.random.normal(kg, (3, 4, 50))

    def loss(fn):
        return lambda x, w, b: jnp.sum(jnp.tanh(fn(x, w, b)) * g)

    ours = jax.grad(loss(head_linear), argnums=(0, 1, 2))(x, w, b)
    ref = jax.grad(loss(lambda x, w, b: x @ w + b), argnums=(0, 1, 2))(x, w, b)
    for a, r in zip(ours, ref, strict=True):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
