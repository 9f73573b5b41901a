"""The shared layers: PyTorch's default initialisers, PReLU and cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fer_jax import models
from fer_jax.models import layers


def test_prelu_has_one_slope_per_channel():
  prelu = layers.PReLU()
  x = jnp.array([[-2.0, 3.0, -1.0]])
  variables = prelu.init(jax.random.key(0), x)
  np.testing.assert_allclose(variables["params"]["slope"], [0.25, 0.25, 0.25])
  y = prelu.apply({"params": {"slope": jnp.array([0.1, 0.2, 0.5])}}, x)
  np.testing.assert_allclose(y, [[-0.2, 3.0, -0.5]])
  np.testing.assert_array_equal(layers.prelu(x, jnp.array([0.1, 0.2, 0.5])), y)


@pytest.mark.parametrize("weights", [None, (0.2, 1.0, 3.0)])
def test_cross_entropy_is_pytorchs_with_and_without_class_weights(weights):
  logits = np.random.default_rng(0).normal(size=(6, 3))
  labels = np.array([0, 2, 1, 1, 0, 2])
  expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                               None if weights is None else torch.tensor(weights, dtype=torch.float64))
  np.testing.assert_allclose(models.cross_entropy(jnp.asarray(logits, jnp.float32), labels, weights),
                             expected.numpy(), rtol=1e-6)


def test_torch_dense_draws_weight_and_bias_from_plus_minus_one_over_root_fan_in():
  fan_in = 64
  params = layers.torch_dense(512, fan_in, "fc").init(jax.random.key(0), jnp.ones((1, fan_in)))["params"]
  bound = fan_in**-0.5
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.95 * bound
  # U(±b) has variance b²/3.
  np.testing.assert_allclose(np.var(params["kernel"]), bound**2 / 3, rtol=0.05)
