"""BatchNorm as PyTorch and Keras (fused, 4-D) run it: the running variance is updated with
the unbiased batch variance, n / (n − 1) times the one used to normalise the batch.

Flax's `nn.BatchNorm` keeps the biased one, and by default computes it as E[x²] − E[x]², which
loses every digit of the variance once mean²/variance nears 1/ε (ε = 2⁻²³ in float32). Here the
statistics are in at least float32 and in two passes (`batch_statistics`), Flax's
`use_fast_variance=False`. The variable names are Flax's (params `scale`, `bias`; batch_stats
`mean`, `var`), so checkpoints and converters do not change.
"""

from typing import Any

import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from jax import lax

# The batch mean and variance are named so (jax.ad_checkpoint.checkpoint_name): every
# config.model.remat policy keeps them, so that a block computed again in the backward pass
# normalises with them instead of reducing its batch (and all-reducing it across devices) again.
BATCH_STATISTICS = "batch_statistics"


def batch_statistics(x, axes):
  """Mean and biased variance of `x` over `axes`, in at least float32: the variance is the mean of
  squared deviations from the mean, exact to rounding whatever the mean's size against the spread
  (benchmarks/batch_norm_variance.py). Its gradient through the mean, −2·mean(x − mean), is zero,
  so the mean enters it as a constant and the backward pass has one reduction less."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = checkpoint_name(jnp.mean(x, axes), BATCH_STATISTICS)
  return mean, checkpoint_name(jnp.mean(jnp.square(x - lax.stop_gradient(mean)), axes), BATCH_STATISTICS)


class BatchNorm(nn.Module):
  """Normalises over every axis but the last (the global batch under jit sharding)."""
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # once: the input's gradient sums in float32 too
    features = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      mean, var = batch_statistics(x, tuple(range(x.ndim - 1)))
      if not self.is_initializing():
        count = x.size // features
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    multiplier = lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      multiplier = multiplier * self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    y = (x - mean) * multiplier + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return y.astype(self.dtype or x.dtype)
