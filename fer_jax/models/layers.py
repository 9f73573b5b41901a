"""The layers the methods share: PyTorch's default initialisers and Linear, its BatchNorm defaults,
PReLU, the dtype of what stays out of low precision, and config.model.remat's policies. The convolution
and max pool the methods call, with their faster gradients, are in fast_ops.py."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax import errors
from fer_jax.models.batch_norm import BATCH_STATISTICS, BatchNorm

# fast_ops.conv_general_dilated names every convolution's output so (jax.ad_checkpoint.checkpoint_name):
# config.model.remat "elementwise" keeps it, the 1×1 convolutions (a custom_vjp on the CPU) included.
CONVOLUTION_OUTPUT = "convolution_output"

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


# config.model.remat: what each residual or transformer block computes again in the backward pass
# instead of keeping it from the forward pass, for less memory at the cost of compute:
# "elementwise" keeps its convolutions' and matrix products' outputs and recomputes the rest
# (BatchNorm, activations, sums), "blocks" keeps only its input. Both keep the BatchNorms' batch
# statistics (a few numbers a channel). Same variables and values either way.
REMAT_POLICIES = {
    "none": None,
    "elementwise": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable,
        jax.checkpoint_policies.save_only_these_names(CONVOLUTION_OUTPUT, BATCH_STATISTICS)),
    "blocks": jax.checkpoint_policies.save_only_these_names(BATCH_STATISTICS)}


def rematerialised(module_class: type[nn.Module], remat: str, **options) -> type[nn.Module]:
  """`module_class` as config.model.remat (REMAT_POLICIES) has it; `options` are nn.remat's
  (`static_argnums` counts the module as argument 0, `methods` names methods besides __call__)."""
  policy = errors.chosen(REMAT_POLICIES, remat, "model.remat")
  return module_class if policy is None else nn.remat(module_class, policy=policy, **options)


def torch_batch_norm(train: bool, dtype: Any, name: str) -> BatchNorm:
  """PyTorch BatchNorm1d/2d defaults: momentum 0.1 (Flax 0.9), eps 1e-5."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def prelu(x, slope):
  """PyTorch's PReLU: x where it is ≥ 0, else slope·x, the slopes (one per channel) in x's dtype."""
  return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def prelu_slope(module: nn.Module, channels: int):
  """PyTorch nn.PReLU(channels)'s parameter, `module`'s "slope": one per channel, initialised to 0.25."""
  return module.param("slope", nn.initializers.constant(0.25), (channels,))


class PReLU(nn.Module):
  """PyTorch nn.PReLU(C)."""

  @nn.compact
  def __call__(self, x):
    return prelu(x, prelu_slope(self, x.shape[-1]))
