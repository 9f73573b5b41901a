"""Layers the methods share: the convolution, PyTorch's default initialisers, BatchNorm and PReLU."""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fer_jax.models.backbones.batch_norm import BatchNorm

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """lax.conv_general_dilated as nn.Conv calls it, with another kernel gradient on the CPU.

  XLA:CPU computes the gradient of a 2-D convolution's kernel as a convolution with the
  activations' spatial size as window, up to 10× slower than the forward pass on large maps
  (ResNet-18's 56×56 stage: 5 GFLOP/s; docs/performance.md). There it is one matrix product per
  kernel position (per kernel row where channels are few) instead, for gradients of
  TAP_GRADIENT_MIN_FLOPS or more; elsewhere, and for grouped or dilated convolutions, XLA's own
  gradient. The forward pass and the input gradient are lax's.
  """
  pads = _padding_for_taps(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count)
  if pads is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision)
  return _conv(lhs, rhs, tuple(window_strides), pads, precision)


def _padding_for_taps(x_shape, kernel_shape, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                      feature_group_count):
  """The explicit padding of a convolution whose kernel gradient goes by taps: undilated,
  ungrouped, 2-D NHWC/HWIO, of static shape (an exported model's symbolic batch is inference
  only) and of TAP_GRADIENT_MIN_FLOPS or more; None for any other."""
  ones = (None, (1, 1))
  if (len(x_shape) != 4 or feature_group_count != 1 or lhs_dilation not in ones or rhs_dilation not in ones
      or not all(isinstance(size, int) for size in x_shape)
      or lax.conv_dimension_numbers(x_shape, kernel_shape, dimension_numbers)
      != lax.conv_dimension_numbers(x_shape, kernel_shape, _NHWC)):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], strides, padding)
  padding = tuple(tuple(pad) for pad in padding)
  return padding if _kernel_gradient_flops(x_shape, kernel_shape, strides, padding) >= TAP_GRADIENT_MIN_FLOPS else None


# Below this many FLOPs the two kernel gradients differ by under 1 ms a step on the CPU while the
# products add compile time (DAN's train step at 32 px: 18 s → 25 s); docs/performance.md.
TAP_GRADIENT_MIN_FLOPS = 1e8


def _kernel_gradient_flops(x_shape, kernel_shape, strides, padding) -> int:
  height, width, channels, features = kernel_shape
  out_height, out_width = (
      (size + low + high - side) // stride + 1
      for size, (low, high), side, stride in zip(x_shape[1:3], padding, (height, width), strides))
  return 2 * x_shape[0] * out_height * out_width * height * width * channels * features


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _conv_forward(x, kernel, strides, padding, precision):
  return _conv(x, kernel, strides, padding, precision), (x, kernel)


def _conv_backward(strides, padding, precision, residuals, output_gradient):
  x, kernel = residuals
  conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=padding,
                           dimension_numbers=_NHWC, precision=precision)
  input_gradient, = jax.vjp(lambda x: conv(x, kernel), x)[1](output_gradient)
  xla_kernel_gradient = lambda x, dy: jax.vjp(lambda k: conv(x, k), kernel)[1](dy)[0]
  tap_kernel_gradient = functools.partial(_kernel_gradient_by_taps, kernel_shape=kernel.shape,
                                          kernel_dtype=kernel.dtype, strides=strides, padding=padding,
                                          precision=precision)
  kernel_gradient = lax.platform_dependent(x, output_gradient, cpu=tap_kernel_gradient,
                                           default=xla_kernel_gradient)
  return input_gradient, kernel_gradient


_conv.defvjp(_conv_forward, _conv_backward)


def _kernel_gradient_by_taps(x, output_gradient, kernel_shape, kernel_dtype, strides, padding, precision):
  """∂L/∂kernel[i, j] = Σ over batch and output positions of x's window at tap (i, j) ⊗ ∂L/∂y:
  one [channels_in, positions] × [positions, channels_out] product per tap (per kernel row where
  channels are few, _taps_a_product), summed over bands of output rows small enough for the windows
  and ∂L/∂y of a band to stay in the CPU's caches."""
  height = kernel_shape[0]
  out_height = output_gradient.shape[1]
  padded = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)])
  band = _band_rows(output_gradient.shape, kernel_shape, x.dtype)
  band_taps = functools.partial(_taps_of_band, kernel_shape=kernel_shape, strides=strides, precision=precision)
  if band == out_height:
    return band_taps(padded, output_gradient).astype(kernel_dtype)
  in_rows = (band - 1) * strides[0] + height

  def add_band(index, total):
    rows = lax.dynamic_slice_in_dim(padded, index * band * strides[0], in_rows, axis=1)
    return total + band_taps(rows, lax.dynamic_slice_in_dim(output_gradient, index * band, band, axis=1))

  total = jnp.zeros(kernel_shape, at_least_float32(x.dtype))
  return lax.fori_loop(0, out_height // band, add_band, total).astype(kernel_dtype)


# The bytes of one tap's input window plus the output gradient per band (a kernel row's product joins
# up to TAP_ROW_CHANNELS channels of windows: more bytes), tuned on DAN's CPU train step at batch 16
# (2-core EPYC, 1 MiB L2 a core, 32 MiB L3): bands of 4 MiB in every convolution ran faster than
# whole maps, and than bands only where a map exceeds 16 MiB (docs/performance.md).
TAP_GRADIENT_BAND_BYTES = 4 * 2**20


def _band_rows(output_shape, kernel_shape, dtype) -> int:
  """The most output rows, a divisor of the output height, whose band fits TAP_GRADIENT_BAND_BYTES;
  the whole height where JAX has several devices: a batch sharded over them would be summed across
  devices once per band, inside the loop, and XLA:CPU may order the loops' all-reduces differently
  on different devices (an 8-device run stalled in its collectives)."""
  batch, out_height, out_width, features = output_shape
  if jax.device_count() > 1:
    return out_height
  row_bytes = batch * out_width * (kernel_shape[2] + features) * jnp.dtype(dtype).itemsize
  return max(rows for rows in range(1, out_height + 1)
             if out_height % rows == 0 and (rows == 1 or rows * row_bytes <= TAP_GRADIENT_BAND_BYTES))


def _tap_window(padded, i: int, j: int, out_height: int, out_width: int, strides):
  """The padded input's values that kernel or window tap (i, j) meets at every output position."""
  batch, _, _, channels = padded.shape
  return lax.slice(padded, (0, i, j, 0), (batch, i + strides[0] * (out_height - 1) + 1,
                                          j + strides[1] * (out_width - 1) + 1, channels), (1, *strides, 1))


def _taps_of_band(padded, output_gradient, kernel_shape, strides, precision):
  """The taps' products over the output rows of `output_gradient` and the padded input rows they see;
  a kernel row's taps in one product (their windows side by side) where the input has few channels."""
  height, width, channels, features = kernel_shape
  _, out_height, out_width, _ = output_gradient.shape
  gradient_rows = output_gradient.reshape(-1, features)
  taps_a_product = _taps_a_product(kernel_shape)
  products = []
  for i in range(height):
    for first in range(0, width, taps_a_product):
      windows = [_tap_window(padded, i, j, out_height, out_width, strides)
                 for j in range(first, first + taps_a_product)]
      window = jnp.concatenate(windows, axis=-1).reshape(-1, channels * taps_a_product)
      products.append(jnp.dot(window.T, gradient_rows, precision=precision,
                              preferred_element_type=at_least_float32(padded.dtype)))
  return jnp.concatenate(products).reshape(kernel_shape)


# A kernel row whose taps see at most this many input channels in all (the 7×7 stem's 7 × 3, a 3×3
# convolution's 3 × 64) is one product, its windows side by side: products of 3 or 64 rows leave the
# CPU's matrix kernels idle (DAN's train step at batch 16: +4 %, docs/performance.md).
TAP_ROW_CHANNELS = 256


def _taps_a_product(kernel_shape) -> int:
  """How many taps of a kernel row go into one product: the whole row where its channels are few."""
  _, width, channels, _ = kernel_shape
  return width if channels * width <= TAP_ROW_CHANNELS else 1


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def max_pool(x, window, strides=(1, 1), padding="VALID"):
  """nn.max_pool over NHWC maps, with another gradient on the CPU.

  XLA:CPU expands the gradient of a max pool (select-and-scatter) into a reduction over the
  window that carries four int32 position maps of the padded input, then a scatter: 0.46 s for
  ResNet-18's stem pool at batch 16 (docs/performance.md). There the gradient goes to each
  window's first maximum in row-major order, as XLA's and PyTorch's do, through one uint8 map of
  which tap won and shifted sums of the taps' shares; elsewhere it is XLA's own.
  """
  window, strides = tuple(window), tuple(strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  return _max_pool(x, window, strides, tuple(tuple(pad) for pad in padding))


def _reduce_window_max(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


_max_pool = jax.custom_vjp(_reduce_window_max, nondiff_argnums=(1, 2, 3))


def _max_pool_forward(x, window, strides, padding):
  pooled = _max_pool(x, window, strides, padding)
  return pooled, (x, pooled)


def _max_pool_backward(window, strides, padding, residuals, output_gradient):
  x, pooled = residuals
  xla_gradient = lambda x, pooled, dy: jax.vjp(lambda x: _reduce_window_max(x, window, strides, padding), x)[1](dy)[0]
  tap_gradient = functools.partial(_max_pool_gradient_by_taps, window=window, strides=strides, padding=padding)
  return lax.platform_dependent(x, pooled, output_gradient, cpu=tap_gradient, default=xla_gradient),


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def _max_pool_gradient_by_taps(x, pooled, output_gradient, window, strides, padding):
  """∂L/∂x: each output's gradient added at its window's first maximum. The padded input is
  assembled from one phase per stride offset (positions p + stride·a), each a sum of shifted taps."""
  padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)])
  batch, out_height, out_width, channels = pooled.shape
  taps = [(i, j) for i in range(window[0]) for j in range(window[1])]
  winner = jnp.full(pooled.shape, len(taps), np.min_scalar_type(len(taps)))
  for index, (i, j) in reversed(list(enumerate(taps))):
    tap = _tap_window(padded, i, j, out_height, out_width, strides)
    winner = jnp.where(tap == pooled, jnp.asarray(index, winner.dtype), winner)
  phase_height, phase_width = (-(-size // stride) for size, stride in zip(padded.shape[1:3], strides))
  zero = jnp.zeros((), output_gradient.dtype)
  phases = [[zero] * strides[1] for _ in range(strides[0])]
  for index, (i, j) in enumerate(taps):
    row, column = i // strides[0], j // strides[1]
    share = jnp.where(winner == index, output_gradient, zero)
    phases[i % strides[0]][j % strides[1]] = phases[i % strides[0]][j % strides[1]] + lax.pad(
        share, zero, [(0, 0, 0), (row, phase_height - row - out_height, 0),
                      (column, phase_width - column - out_width, 0), (0, 0, 0)])
  full = jnp.stack([jnp.stack([jnp.broadcast_to(phase, (batch, phase_height, phase_width, channels))
                               for phase in row], axis=3) for row in phases], axis=2)
  full = full.reshape(batch, phase_height * strides[0], phase_width * strides[1], channels)
  return full[:, padding[0][0]:padding[0][0] + x.shape[1], padding[1][0]:padding[1][0] + x.shape[2]]


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
