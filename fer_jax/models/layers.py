"""Layers the methods share: PyTorch's default initialisers, BatchNorm and PReLU."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.backbones.batch_norm import BatchNorm

# PyTorch's Conv and Linear weights (kaiming_uniform_(a=√5)): U(±1/√fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def at_least_float32(dtype: Any):
  """The dtype of the parts kept out of low precision (parameters, BatchNorm statistics,
  attention heads, logits, losses): float32 for bfloat16 and float32 models, float64 for the
  float64 reference mode."""
  return jnp.promote_types(dtype, jnp.float32)


def torch_bias_init(fan_in: int):
  """PyTorch's Conv and Linear biases: U(±1/√fan_in), with the fan-in of the weight."""
  bound = fan_in**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_dense(features: int, fan_in: int, name: str, dtype: Any = None) -> nn.Dense:
  """nn.Linear(fan_in, features) as PyTorch initialises it."""
  return nn.Dense(features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in),
                  dtype=dtype, name=name)


def torch_batch_norm(train: bool, dtype: Any, name: str) -> BatchNorm:
  """PyTorch BatchNorm1d/2d defaults: momentum 0.1 (Flax 0.9), eps 1e-5."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class PReLU(nn.Module):
  """PyTorch nn.PReLU(C): one slope per channel, initialised to 0.25."""

  @nn.compact
  def __call__(self, x):
    slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)
