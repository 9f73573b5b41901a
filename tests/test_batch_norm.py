"""Our BatchNorm against PyTorch's (running statistics) and Flax's (everything else)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from fer_jax.models.backbones.batch_norm import BatchNorm

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


def test_everything_but_the_running_variance_matches_flax():
  ours = _train_step(BatchNorm(use_running_average=False, momentum=0.9), X)
  flax_ = _train_step(nn.BatchNorm(use_running_average=False, momentum=0.9), X)
  np.testing.assert_allclose(ours[1], flax_[1], atol=1e-6)
  np.testing.assert_allclose(ours[2]["mean"], flax_[2]["mean"], rtol=1e-6)
  count = 4 * 5 * 6
  old_var = ours[0]["batch_stats"]["var"]
  batch_var = (flax_[2]["var"] - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(ours[2]["var"], 0.9 * old_var + 0.1 * batch_var * count / (count - 1), rtol=1e-5)
  frozen = [module.apply(ours[0], X) for module in (BatchNorm(use_running_average=True),
                                                    nn.BatchNorm(use_running_average=True))]
  np.testing.assert_allclose(frozen[0], frozen[1], atol=1e-6)


def test_names_dtypes_and_initial_values():
  module = BatchNorm(use_running_average=False, dtype=jnp.bfloat16, use_scale=False)
  variables = module.init(jax.random.key(0), X)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"bias": (8,)},
                                                "batch_stats": {"mean": (8,), "var": (8,)}}
  y, _ = module.apply(variables, X, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  assert BatchNorm(use_running_average=True).apply(variables | {"params": {"bias": jnp.zeros(8), "scale": jnp.ones(8)}},
                                                   X.astype(jnp.bfloat16)).dtype == jnp.float32
