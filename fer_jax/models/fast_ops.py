"""What XLA compiles slowly, done another way: each form is the one measured faster on the platforms
that take it, the others keep lax's own, and the results equal lax's to rounding (tests/test_fast_ops.py).

* `conv_general_dilated` (`Conv`): on the CPU a 1×1 convolution's kernel gradient is one matrix product
  (SCAN-CCI's ResNet-50 step 1.2–1.3× as fast), a kernel larger than its map is one matrix product (DAN at 48²
  input 12× as fast), and every other convolution's input is stored once for its kernel gradient (DAN's
  transposes 275 → 97 ms).
* `stored`, `stored_on_cpu`, `stored_for_gradient`: a value computed once into a buffer of its own, where
  XLA:CPU would recompute it inside each reader (DAN 13.17 → 14.73 img/s, LHC-Net +8 %).
* `max_pool`: the gradient by taps on CPUs and CUDA GPUs instead of XLA's select-and-scatter (ResNet-18's
  stem pool at batch 16 on the CPU: 0.46 s; on an H200, 3.3 GB of DAN's step's memory traffic), XLA's own
  on TPUs (the taps estimated 26 % slower there).

The measurements are in docs/performance.md and BENCHMARKS.md.
"""

import functools

import flax.linen as nn
import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from fer_jax.models.layers import CONVOLUTION_OUTPUT, at_least_float32

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """lax.conv_general_dilated as nn.Conv calls it; on the CPU a 1×1 convolution's kernel gradient
  is one matrix product, and so is a kernel larger than its map (`_kernel_outgrows_map`).

  XLA:CPU differentiates a convolution's kernel by another convolution whose window is the whole
  activation map. For a 1×1 kernel that is a [channels in, positions] × [positions, channels out]
  product, which runs faster as one dot (SCAN-CCI's ResNet-50 train step on the CPU: 1.2–1.3× as many
  images a second; docs/performance.md). Every other convolution is lax's, its input stored once
  for its gradient on the CPU (`stored_for_gradient`).
  """
  plain = _is_plain(lhs.shape, rhs.shape, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  pads = _pads(lhs.shape, rhs.shape, window_strides, padding) if plain else ()
  if plain and tuple(rhs.shape[:2]) == (1, 1) and pads == ((0, 0),) * 2:
    output = _pointwise_conv(lhs, rhs, tuple(window_strides), precision)
  elif plain and _kernel_outgrows_map(lhs.shape, rhs.shape, window_strides, pads):
    lax_conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                                 dimension_numbers=_NHWC, precision=precision)
    by_taps = functools.partial(_conv_by_taps, strides=tuple(window_strides), pads=pads, precision=precision)
    output = lax.platform_dependent(lhs, rhs, cpu=by_taps, default=lax_conv)
  else:
    output = lax.conv_general_dilated(stored_for_gradient(lhs), rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, feature_group_count, precision=precision)
  return checkpoint_name(output, CONVOLUTION_OUTPUT)


def stored(x):
  """x, computed once into a buffer of its own.

  XLA:CPU fuses a value's elementwise producers into each consumer, recomputing the value there. A
  consumer that reads it out of order (the transpose before a convolution's kernel gradient reads
  it with a stride of a whole map) or many times (the max pool gradient's tap map) then reads every
  producer's inputs that way: slower than reading x once stored. XLA fuses nothing across a
  conditional, so x goes through one; its other branch, taken only when x's first element is NaN,
  writes that element again: x either way, which XLA cannot tell.
  """
  first = x.reshape(-1)[0]
  as_float = first if jnp.issubdtype(x.dtype, jnp.inexact) else first.astype(float)  # XLA folds ints' i == i
  return lax.cond(jnp.isnan(as_float), lambda x: x.at[(0,) * x.ndim].set(first), lambda x: x, x)


def stored_on_cpu(x):
  """`stored` on CPUs; x as it is on other platforms."""
  return lax.platform_dependent(x, cpu=stored, default=lambda x: x)


@jax.custom_vjp
def stored_for_gradient(x):
  """x; under differentiation on the CPU, `stored`: for a convolution's kernel gradient, whose
  transpose would recompute x's producers (DAN's train step: the transposes fell from 275 to 97 ms),
  and for a ResNet-50 block's input, read by its 1×1 convolutions and its shortcut, which each
  recomputed the previous block's output from its three operands (docs/performance.md)."""
  return x


def _stored_for_gradient_forward(x):
  return stored_on_cpu(x), None


stored_for_gradient.defvjp(_stored_for_gradient_forward, lambda _, gradient: (gradient,))


def _is_plain(x_shape, kernel_shape, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count) -> bool:
  """An undilated, ungrouped 2-D NHWC/HWIO convolution of static shape (an exported model's symbolic batch is
  inference only)."""
  ones = (None, (1, 1))
  return (len(x_shape) == 4 and feature_group_count == 1 and lhs_dilation in ones and rhs_dilation in ones
          and all(isinstance(size, int) for size in x_shape)
          and lax.conv_dimension_numbers(x_shape, kernel_shape, dimension_numbers)
          == lax.conv_dimension_numbers(x_shape, kernel_shape, _NHWC))


def _pads(x_shape, kernel_shape, strides, padding) -> tuple[tuple[int, int], ...]:
  """The (before, after) zeros of each spatial dimension that `padding` ("SAME", "VALID" or the pairs) stands for."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], kernel_shape[:2], strides, padding))
  return tuple(tuple(pad) for pad in padding)


def _kernel_outgrows_map(x_shape, kernel_shape, strides, pads) -> bool:
  """A kernel of more than one row and column, taller or wider than the map it slides over (with no negative padding,
  into a map of at least one position): XLA:CPU runs such a convolution 50–100 times slower than the same work as
  one matrix product (a 3×3 on ResNet-18's last 2×2 map at 48² or 64² input; docs/performance.md), and as fast where
  the kernel fits."""
  (height, width), (rows, columns) = x_shape[1:3], kernel_shape[:2]
  sizes = _output_sizes(x_shape, kernel_shape, strides, pads)
  return (rows > 1 and columns > 1 and (rows > height or columns > width)
          and min(min(pad) for pad in pads) >= 0 and min(sizes) > 0)


def _output_sizes(x_shape, kernel_shape, strides, pads) -> tuple[int, int]:
  return tuple((x_shape[axis + 1] + sum(pads[axis]) - kernel_shape[axis]) // strides[axis] + 1 for axis in (0, 1))


def _conv_by_taps(x, kernel, strides, pads, precision):
  """The convolution as one matrix product: the windows of the padded input that each kernel tap sees, side by side
  ([batch, height', width', taps × channels in]), times those taps of the kernel as [taps × channels in, channels
  out], in their dtype as lax's convolution (a bfloat16 product's gradients bfloat16 too; XLA:CPU sums it in
  float32). A tap whose window holds only padding adds nothing and is left out (8 of a 3×3's 9 over a 1×1 map)."""
  height, width = _output_sizes(x.shape, kernel.shape, strides, pads)
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))

  def sees_input(tap: int, axis: int, size: int) -> bool:
    first = pads[axis][0]
    return any(first <= tap + k * strides[axis] < first + x.shape[axis + 1] for k in range(size))

  taps = [(i, j) for i in range(kernel.shape[0]) for j in range(kernel.shape[1])
          if sees_input(i, 0, height) and sees_input(j, 1, width)]
  windows = [_tap_window(padded, i, j, height, width, strides) for i, j in taps]
  every_tap = len(taps) == kernel.shape[0] * kernel.shape[1]  # the kernel as it lies: no gradient to gather back
  rows = kernel.reshape(-1, kernel.shape[3]) if every_tap else jnp.concatenate([kernel[i, j] for i, j in taps])
  return jnp.dot(jnp.concatenate(windows, axis=-1), rows, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pointwise_conv(x, kernel, strides, precision):
  return lax.conv_general_dilated(x, kernel, strides, "VALID", dimension_numbers=_NHWC, precision=precision)


def _pointwise_conv_forward(x, kernel, strides, precision):
  return _pointwise_conv(x, kernel, strides, precision), (x, kernel)


def _pointwise_conv_backward(strides, precision, residuals, output_gradient):
  x, kernel = residuals
  conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding="VALID",
                           dimension_numbers=_NHWC, precision=precision)
  input_gradient, = jax.vjp(lambda x: conv(x, kernel), x)[1](output_gradient)
  xla_kernel_gradient = lambda x, dy: jax.vjp(lambda k: conv(x, k), kernel)[1](dy)[0]
  product_kernel_gradient = lambda x, dy: _pointwise_kernel_gradient(x, dy, strides, precision).astype(kernel.dtype)
  kernel_gradient = lax.platform_dependent(x, output_gradient, cpu=product_kernel_gradient,
                                           default=xla_kernel_gradient)
  return input_gradient, kernel_gradient


_pointwise_conv.defvjp(_pointwise_conv_forward, _pointwise_conv_backward)


def _pointwise_kernel_gradient(x, output_gradient, strides, precision):
  """∂L/∂kernel of a 1×1 convolution: [channels in, positions] × [positions, channels out] of the
  input it saw and ∂L/∂y, accumulated in at least float32."""
  seen = x[:, ::strides[0], ::strides[1]]
  gradient = jnp.dot(seen.reshape(-1, x.shape[3]).T, output_gradient.reshape(-1, output_gradient.shape[3]),
                     precision=precision, preferred_element_type=at_least_float32(x.dtype))
  return gradient[None, None]


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def centred_conv(features: int, kernel: int | tuple[int, ...], stride: int = 1, *, kernel_init, dtype, name: str,
                 use_bias: bool = False) -> nn.Conv:
  """`Conv` with `kernel // 2` zeros on each side (odd kernels), as the official networks pad theirs: a stride-1
  convolution keeps the size. `kernel` an int is square."""
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return Conv(features, kernel, (stride,) * len(kernel), padding=tuple(((k - 1) // 2,) * 2 for k in kernel),
              use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, name=name)


def max_pool(x, window, strides=(1, 1), padding="VALID"):
  """nn.max_pool over NHWC maps, with another gradient on CPUs and CUDA GPUs.

  XLA expands the gradient of a max pool (select-and-scatter) into a reduction over the window that
  carries four int32 position maps of the padded input, then a scatter: 0.46 s for ResNet-18's stem
  pool at batch 16 on the CPU, and on an H200 3.3 GB of DAN's step's memory traffic at batch 256
  (docs/performance.md). There the gradient goes to each window's first maximum in row-major order,
  as XLA's and PyTorch's do, through one uint8 map of which tap won and shifted sums of the taps'
  shares; elsewhere (TPUs, ROCm GPUs) it is XLA's own (compiled for a TPU v5e, the taps would make
  DAN's step 26 % slower by the compiler's estimate: BENCHMARKS.md). Measured on an H200, the taps'
  fusion took 1.4 ms of DAN's 16.8 ms bf16 step at batch 256; XLA's own gradient there is still to be
  timed against it (benchmarks/run_candidates.py, max_pool_xla_gradient).
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
  return _max_pool(x, window, strides, padding), x


# The gradient form of each platform (`default`: the others); benchmarks/compile_candidates.py swaps it.
MAX_POOL_GRADIENTS = {"cpu": "stored_taps", "cuda": "taps", "default": "xla"}


def _max_pool_backward(window, strides, padding, x, output_gradient):
  taps = functools.partial(_max_pool_gradient_by_taps, window=window, strides=strides, padding=padding)
  forms = {"taps": taps, "stored_taps": functools.partial(taps, materialise=stored),
           "xla": lambda x, dy: jax.vjp(lambda x: _reduce_window_max(x, window, strides, padding), x)[1](dy)[0]}
  return lax.platform_dependent(x, output_gradient,
                                **{platform: forms[form] for platform, form in MAX_POOL_GRADIENTS.items()}),


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def _tap_window(padded, i: int, j: int, out_height: int, out_width: int, strides):
  """The padded input's values that window tap (i, j) meets at every output position."""
  batch, _, _, channels = padded.shape
  return lax.slice(padded, (0, i, j, 0), (batch, i + strides[0] * (out_height - 1) + 1,
                                          j + strides[1] * (out_width - 1) + 1, channels), (1, *strides, 1))


def padded_for_pool(x, padding):
  """x padded with −∞ as a max pool's `padding` ((top, bottom), (left, right)) says."""
  return lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)])


def tap_winners(padded, output_shape, window, strides):
  """(the window's taps (i, j) in row-major order, the index of each window's first maximum among them
  as the smallest unsigned integers that hold it): taps compared with one another."""
  taps = [(i, j) for i in range(window[0]) for j in range(window[1])]
  windows = [_tap_window(padded, i, j, output_shape[1], output_shape[2], strides) for i, j in taps]
  best, winner = windows[0], jnp.zeros(output_shape, np.min_scalar_type(len(taps)))
  for index, tap in enumerate(windows[1:], start=1):
    better = tap > best
    best, winner = jnp.where(better, tap, best), jnp.where(better, jnp.asarray(index, winner.dtype), winner)
  return taps, winner


def _max_pool_gradient_by_taps(x, output_gradient, window, strides, padding, materialise=lambda value: value):
  """∂L/∂x: each output's gradient added at its window's first maximum. The padded input is
  assembled from one phase per stride offset (positions p + stride·a), each a sum of shifted taps.

  The winning tap is found by comparing the taps with one another (a tap wins where it exceeds every
  earlier one), never with the forward pass's maxima: XLA computes x's elementwise producers
  (a BatchNorm) once for the forward pass and again inside this gradient, rounded otherwise, and
  a window none of whose recomputed taps equalled its stored maximum lost its gradient. `materialise` is
  the CPU's `stored` (the tap map and the arriving gradient computed once); compiled for an H200 its
  conditional moved more bytes than it saved (DAN's step: 7.74 ms of roofline with it, 7.64 without)."""
  padded = padded_for_pool(x, padding)
  batch, out_height, out_width, channels = output_gradient.shape
  taps, winner = tap_winners(padded, output_gradient.shape, window, strides)
  winner = materialise(winner)
  output_gradient = materialise(output_gradient)
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
