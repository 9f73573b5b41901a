import numpy as np

from fer_jax import linear_baseline


def test_ridge_separates_linear_classes_and_fails_on_xor():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  y = (x[:, 0] > 0).astype(int)
  assert linear_baseline.ridge_accuracy(x[:150], y[:150], x[150:], y[150:], 2, 1.0) > 0.9
  xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
  assert linear_baseline.ridge_accuracy(x[:150], xor[:150], x[150:], xor[150:], 2, 1.0) < 0.75
