"""The shared layers: PyTorch's default initialisers and PReLU."""

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.models import layers


def test_prelu_has_one_slope_per_channel():
  prelu = layers.PReLU()
  x = jnp.array([[-2.0, 3.0, -1.0]])
  variables = prelu.init(jax.random.key(0), x)
  np.testing.assert_allclose(variables["params"]["slope"], [0.25, 0.25, 0.25])
  y = prelu.apply({"params": {"slope": jnp.array([0.1, 0.2, 0.5])}}, x)
  np.testing.assert_allclose(y, [[-0.2, 3.0, -0.5]])


def test_torch_dense_draws_weight_and_bias_from_plus_minus_one_over_root_fan_in():
  fan_in = 64
  params = layers.torch_dense(512, fan_in, "fc").init(jax.random.key(0), jnp.ones((1, fan_in)))["params"]
  bound = fan_in**-0.5
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.95 * bound
  # U(±b) has variance b²/3.
  np.testing.assert_allclose(np.var(params["kernel"]), bound**2 / 3, rtol=0.05)
