"""Our BatchNorm against PyTorch's (running statistics, gradients), Flax's two-pass form (everything
else) and float64 NumPy (the batch variance of inputs whose mean dwarfs their spread, whole or in
shares as on several devices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest
import torch

from fer_jax import mesh as mesh_lib
from fer_jax.models import batch_norm
from fer_jax.models.batch_norm import BatchNorm, normalise_batch, sharded_batch_moments

X = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 8)).astype(np.float32)  # NHWC


def _train_step(module, x):
  variables = module.init(jax.random.key(0), x)
  variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)},
               "batch_stats": {"mean": jnp.linspace(0.0, 1.0, 8), "var": jnp.linspace(1.0, 3.0, 8)}}
  y, updates = module.apply(variables, x, mutable=["batch_stats"])
  return variables, y, updates["batch_stats"]


def test_running_statistics_follow_pytorch():
  variables, y, stats = _train_step(BatchNorm(use_running_average=False, momentum=0.9), X)
  torch_bn = torch.nn.BatchNorm2d(8, momentum=0.1, eps=1e-5)
  with torch.no_grad():
    torch_bn.weight.copy_(torch.tensor(np.asarray(variables["params"]["scale"])))
    torch_bn.bias.copy_(torch.tensor(np.asarray(variables["params"]["bias"])))
    torch_bn.running_mean.copy_(torch.tensor(np.asarray(variables["batch_stats"]["mean"])))
    torch_bn.running_var.copy_(torch.tensor(np.asarray(variables["batch_stats"]["var"])))
    expected = torch_bn.train()(torch.tensor(X).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(y, expected, atol=1e-5)
  np.testing.assert_allclose(stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-6)
  np.testing.assert_allclose(stats["var"], torch_bn.running_var.numpy(), rtol=1e-5)
  assert batch_norm.unbiased_variance(jnp.float32(2.0), 5) == 2.5 and batch_norm.unbiased_variance(2.0, 1) == 2.0


def test_everything_but_the_running_variance_matches_flax():
  ours = _train_step(BatchNorm(use_running_average=False, momentum=0.9), X)
  flax_ = _train_step(nn.BatchNorm(use_running_average=False, momentum=0.9, use_fast_variance=False), X)
  np.testing.assert_allclose(ours[1], flax_[1], atol=1e-6)
  np.testing.assert_allclose(ours[2]["mean"], flax_[2]["mean"], rtol=1e-6)
  count = 4 * 5 * 6
  old_var = ours[0]["batch_stats"]["var"]
  batch_var = (flax_[2]["var"] - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(ours[2]["var"], 0.9 * old_var + 0.1 * batch_var * count / (count - 1), rtol=1e-5)
  frozen = [module.apply(ours[0], X) for module in (BatchNorm(use_running_average=True),
                                                    nn.BatchNorm(use_running_average=True))]
  np.testing.assert_allclose(frozen[0], frozen[1], atol=1e-6)


def _torch_batch_norm(variables):
  torch_bn = torch.nn.BatchNorm2d(8, momentum=0.1, eps=1e-5)
  with torch.no_grad():
    torch_bn.weight.copy_(torch.tensor(np.asarray(variables["params"]["scale"])))
    torch_bn.bias.copy_(torch.tensor(np.asarray(variables["params"]["bias"])))
  return torch_bn.train()


def test_gradients_follow_pytorch():
  """The written-out gradient (`normalise_batch`): gradients of a weighted sum of the outputs are
  PyTorch's."""
  module = BatchNorm(use_running_average=False)
  variables, _, _ = _train_step(module, X)
  weights = np.random.default_rng(1).normal(size=X.shape).astype(np.float32)

  def objective(params, x):
    y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
    return jnp.sum(y * weights)
  param_grads, x_grad = jax.grad(objective, argnums=(0, 1))(variables["params"], X)
  torch_bn = _torch_batch_norm(variables)
  torch_x = torch.tensor(X).permute(0, 3, 1, 2).requires_grad_()
  (torch_bn(torch_x) * torch.tensor(weights).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_allclose(x_grad, torch_x.grad.permute(0, 2, 3, 1).numpy(), atol=2e-5)
  np.testing.assert_allclose(param_grads["scale"], torch_bn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(param_grads["bias"], torch_bn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mean_over_std", [1e2, 1e3, 1e4])
def test_batch_variance_is_exact_when_the_mean_dwarfs_the_spread(dtype, mean_over_std):
  """E[x²] − E[x]² in float32 is off by 0.25 % (ratio 1e2) to 3000 % (1e4) on such inputs
  (benchmarks/batch_norm_variance.py); the two-pass form stays within float32 rounding of float64
  NumPy on the same (rounded) values, its error (ε·mean/std)² from the rounded mean reaching 2e-5 at
  1e4. bfloat16 holds no spread below mean·2⁻⁸, so its input is drawn at 2⁻⁵ of the mean's size."""
  std = 1.0 if dtype == jnp.float32 else 2.0**-5 * mean_over_std
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(mean_over_std, std, (8, 7, 7, 8)) * np.linspace(0.5, 2.0, 8), dtype)
  module = BatchNorm(use_running_average=False, momentum=0.0)
  variables = module.init(jax.random.key(0), x)
  y, updates = module.apply(variables, x, mutable=["batch_stats"])
  values = np.asarray(x.astype(jnp.float32), np.float64)
  count = values.size // 8
  exact_var = np.var(values, axis=(0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["var"], exact_var * count / (count - 1),
                             rtol=1e-5 if mean_over_std < 1e4 else 1e-4)
  expected = (values - values.mean(axis=(0, 1, 2))) / np.sqrt(exact_var + 1e-5)
  # The mean's rounding error, ~ε·mean, shifts every output by ~ε·mean/std.
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=1e-4 + 1e-6 * mean_over_std / std)


def test_statistics_combined_from_shares_are_the_whole_batchs_and_so_is_their_gradient():
  """sharded_batch_moments over 8 shares of the batch (the arithmetic of 8 devices, here on one) at
  mean/std 1e4: mean and variance against float64 NumPy, and autodiff's gradient (SCAN-CCI's region
  units differentiate their statistics) against d mean/dx = 1/n and d var/dx = 2(x − mean)/n."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1e4, 1.0, (16, 14, 14, 8)) * np.linspace(0.5, 2.0, 8), jnp.float32)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])

  def moments(x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return sharded_batch_moments(x, (0, 1, 2), 8)

  values = np.asarray(x, np.float64)
  mean, var = jax.jit(moments)(x)
  np.testing.assert_allclose(mean, values.mean((0, 1, 2)), rtol=1e-7)
  np.testing.assert_allclose(var, values.var((0, 1, 2)), rtol=1e-6)
  u, w = rng.normal(size=8), rng.normal(size=8)
  weighted = lambda mean, var: jnp.sum(u * mean) + jnp.sum(w * var)  # noqa: E731
  gradient = jax.jit(jax.grad(lambda x: weighted(*moments(x))))(x)
  count = values.size // 8
  expected = u / count + w * 2 * (values - values.mean((0, 1, 2))) / count
  np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-4 * np.max(np.abs(expected)))


def test_names_dtypes_and_initial_values():
  module = BatchNorm(use_running_average=False, dtype=jnp.bfloat16, use_scale=False)
  variables = module.init(jax.random.key(0), X)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"bias": (8,)},
                                                "batch_stats": {"mean": (8,), "var": (8,)}}
  y, _ = module.apply(variables, X, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  assert BatchNorm(use_running_average=True).apply(variables | {"params": {"bias": jnp.zeros(8), "scale": jnp.ones(8)}},
                                                   X.astype(jnp.bfloat16)).dtype == jnp.float32


def _plain_normalisation(x, scale, bias, epsilon=1e-5):
  """The forward formulas, left to autodiff (the gradient also through the variance's mean)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * lax.rsqrt(var + epsilon) * scale + bias, mean, var


def test_the_written_out_gradient_is_autodiffs_in_float64():
  """Cotangents on all three outputs (the statistics' are zero in training, where only the running
  averages read them, but the gradient must still be right), against autodiff of the plain formulas."""
  rng = np.random.default_rng(2)
  x, weights = (rng.normal(2.0, 3.0, size=(4, 5, 6, 8)) for _ in range(2))
  scale, bias, mean_weights, var_weights = (rng.normal(size=8) for _ in range(4))

  def objective(normalise):
    def value(x, scale, bias):
      y, mean, var = normalise(x, scale, bias)
      return jnp.sum(y * weights) + jnp.sum(mean * mean_weights) + jnp.sum(var * var_weights)
    return value
  with jax.enable_x64(True):
    ours = jax.grad(objective(lambda *a: normalise_batch(*a, 1e-5)), argnums=(0, 1, 2))(x, scale, bias)
    plain = jax.grad(objective(_plain_normalisation), argnums=(0, 1, 2))(x, scale, bias)
  for got, expected in zip(ours, plain):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_a_bfloat16_input_gets_a_bfloat16_gradient_computed_in_float32():
  """The centred input is kept in the input's dtype: the gradient is float32's to bfloat16 rounding."""
  x, weights = jnp.asarray(X, jnp.bfloat16), np.random.default_rng(3).normal(size=X.shape)
  ones, zeros = jnp.ones(8, jnp.float32), jnp.zeros(8, jnp.float32)
  gradient = jax.grad(lambda x: jnp.sum(normalise_batch(x, ones, zeros, 1e-5)[0] * weights))(x)
  expected = jax.grad(lambda x: jnp.sum(_plain_normalisation(x, ones, zeros)[0] * weights))(x.astype(jnp.float32))
  assert gradient.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(gradient, np.float32), expected, rtol=0, atol=2**-7 * np.abs(expected).max())
