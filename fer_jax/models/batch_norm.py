"""BatchNorm as PyTorch and Keras (fused, 4-D) run it: the running variance is updated with
the unbiased batch variance, n / (n − 1) times the one used to normalise the batch.

Flax's `nn.BatchNorm` keeps the biased one, and by default computes it as E[x²] − E[x]², which
loses every digit of the variance once mean²/variance nears 1/ε (ε = 2⁻²³ in float32). Here the
statistics are in at least float32 and in two passes (`batch_moments`), Flax's
`use_fast_variance=False`; over a batch split across devices, two passes over each device's share
and one collective round to combine them (`sharded_batch_moments`). The variable names are Flax's
(params `scale`, `bias`; batch_stats `mean`, `var`), so checkpoints and converters do not change.
Training-mode normalisation has its gradient written out (`normalise_batch`), as PyTorch's and
cuDNN's BatchNorm do.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

# The batch mean and variance are named so (jax.ad_checkpoint.checkpoint_name): every
# config.model.remat policy keeps them, so that a block computed again in the backward pass
# normalises with them instead of reducing its batch (and all-reducing it across devices) again.
BATCH_STATISTICS = "batch_statistics"
# Where a batch split over devices keeps the two global passes (two collective rounds a layer) rather
# than `sharded_batch_moments`'s one round: see `batch_moments`.
TWO_ROUND_PLATFORMS = ("tpu",)


def batch_moments(x, axes):
  """Mean and biased variance of `x` over `axes`, the batch axis 0 among them: the variance is the mean
  of squared deviations from the mean, exact to rounding whatever the mean's size against the spread
  (benchmarks/batch_norm_variance.py). The mean is a constant in the squared deviations: their
  gradient through it is zero (Σ(x − mean) = 0), and autodiff skips it.

  Traced under a mesh whose "data" axis splits the batch over several devices (the train step's),
  `sharded_batch_moments` computes them in one collective round instead of two, except on
  TWO_ROUND_PLATFORMS, TPUs: there XLA's TPU compiler merges the all-reduces of parallel layers but not the all-gathers, and
  spreads the combination over many small kernels (DAN on 8 v5e chips: 64 collective ops before, 91
  after, 5 % more estimated kernel time and 28 % more planned memory; docs/performance.md)."""
  shards = _batch_shards()
  if shards > 1 and x.shape[0] % shards == 0:
    two_passes = lambda whole: _two_passes(whole, axes)  # noqa: E731
    return lax.platform_dependent(x, **dict.fromkeys(TWO_ROUND_PLATFORMS, two_passes),
                                  default=lambda whole: sharded_batch_moments(whole, axes, shards))
  return _two_passes(x, axes)


def _two_passes(x, axes):
  mean = jnp.mean(x, axes, keepdims=True)
  return jnp.squeeze(mean, axes), jnp.mean(jnp.square(x - lax.stop_gradient(mean)), axes)


def sharded_batch_moments(x, axes, shards: int):
  """`batch_moments` of x, whose axis 0 is split into `shards` equal shares, one a device: each
  device takes the two passes over its share, then one all-gather brings every share's rounded mean
  m, mean deviation from it s and mean squared deviation q to every device, which combines them
  (Chan, Golub and LeVeque's parallel formula for equal shares: the variance is the shares' mean
  variance q − s² plus the variance of their means m + s). A global two-pass all-reduces twice, the
  second waiting for the first. The corrections s keep the float32 rounding of each share's mean
  (ε·|mean|) out of the variance of the means, which is taken in one pass over their differences
  from the first share's m (as small as the means' spread, so nothing cancels). The m must be the
  very values the deviations were taken from, but XLA recomputes a mean (a sum times 1/n) inside
  each consumer, where a fused multiply-add may skip its rounding (on the CPU the variance's error
  at mean/std 10⁴ rose from 1.5e-7 to 2.4e-5): so m is rounded explicitly, to 16 bits of mantissa,
  an operation every consumer repeats exactly."""
  if 0 not in axes:
    raise ValueError(f"BatchNorm over axes {axes} of a batch split on axis 0: the axes must include 0")
  grouped = lax.with_sharding_constraint(x.reshape(shards, -1, *x.shape[1:]), P("data"))
  inner = tuple(axis + 1 for axis in axes)
  rounded = lax.reduce_precision(lax.stop_gradient(jnp.mean(grouped, inner, keepdims=True)), 8, 16)
  deviations = grouped - rounded
  shares = jnp.stack([jnp.squeeze(rounded, inner), jnp.mean(deviations, inner),
                      jnp.mean(jnp.square(deviations), inner)])
  share_means, corrections, squares = lax.with_sharding_constraint(shares, P())  # the one all-gather
  offsets = share_means - share_means[0] + corrections  # each share's mean less the first share's m
  offset, offset_square, within = jnp.mean(
      jnp.stack([offsets, jnp.square(offsets), squares - jnp.square(corrections)]), 1)
  return share_means[0] + offset, within + offset_square - jnp.square(offset)


def _batch_shards() -> int:
  """The size of the "data" axis of the mesh being traced under (jax.sharding.use_abstract_mesh), else 1."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else dict(mesh.shape).get("data", 1)


def batch_statistics(x, axes):
  """`batch_moments` in at least float32, named for rematerialisation. Forward only:
  `normalise_batch` writes their gradient out."""
  mean, var = batch_moments(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axes)
  return checkpoint_name(mean, BATCH_STATISTICS), checkpoint_name(var, BATCH_STATISTICS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalise_batch(x, scale, bias, epsilon: float):
  """(y, mean, var): x [..., C] normalised with its batch statistics over every axis but the last,
  y = (x − mean)·rsqrt(var + ε)·scale + bias in at least float32, and those statistics.

  The gradient is the textbook one, from two sums per channel, Σdy and Σdy·(x − mean), and the
  centred input kept from the forward pass. Left to autodiff, XLA:CPU also wrote dy·scale·rsqrt(var + ε)
  out, for YNNPACK's reduce fusion takes no broadcast operand, and summed it a third time (ResNet-18's
  stem BatchNorm and ReLU, forward and backward: 55 → 41 ms, `benchmarks/batch_norm_gradient.py`;
  docs/performance.md).
  """
  return _normalise_batch_forward(x, scale, bias, epsilon)[0]


def _normalise_batch_forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean, var = batch_statistics(x, axes)
  centred = x.astype(mean.dtype) - mean
  multiplier = lax.rsqrt(var + epsilon)
  y = centred * (multiplier * scale) + bias
  return (y, mean, var), (centred.astype(x.dtype), multiplier, scale)


def _normalise_batch_backward(epsilon, residuals, cotangents):
  del epsilon
  centred, multiplier, scale = residuals
  y_gradient, mean_gradient, var_gradient = cotangents
  axes = tuple(range(centred.ndim - 1))
  count = centred.size // centred.shape[-1]
  input_dtype, centred = centred.dtype, centred.astype(y_gradient.dtype)
  y_sum = jnp.sum(y_gradient, axes)
  centred_sum = jnp.sum(y_gradient * centred, axes)
  x_gradient = ((multiplier * scale) * (y_gradient - y_sum / count)
                + centred * ((2 * var_gradient - multiplier**3 * scale * centred_sum) / count) + mean_gradient / count)
  return x_gradient.astype(input_dtype), multiplier * centred_sum, y_sum


normalise_batch.defvjp(_normalise_batch_forward, _normalise_batch_backward)


def unbiased_variance(var, count: int):
  """The unbiased variance of `count` values from their biased one `var`: n / (n − 1) times it (itself for
  one value); what the running variance moves towards."""
  return var * (count / max(count - 1, 1))


class BatchNorm(nn.Module):
  """Normalises over every axis but the last (the global batch under jit sharding)."""
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    features, precise = x.shape[-1], jnp.promote_types(x.dtype, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    scale = (self.param("scale", nn.initializers.ones, (features,), jnp.float32) if self.use_scale
             else jnp.ones((features,), jnp.float32))
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    if self.use_running_average:
      multiplier = lax.rsqrt(running_var.value + self.epsilon) * scale
      y = (x.astype(precise) - running_mean.value) * multiplier + bias
    else:
      y, mean, var = normalise_batch(x, scale, bias, self.epsilon)
      if not self.is_initializing():
        unbiased = unbiased_variance(var, x.size // features)
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    return y.astype(self.dtype or precise)
