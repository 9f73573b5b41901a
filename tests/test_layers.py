"""The shared layers: the convolution, the max pool, PyTorch's default initialisers and PReLU."""

import flax.linen as nn
import jax
from jax import export
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

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


CONVOLUTIONS = [  # input, kernel, strides, padding: the kinds the backbones and heads use
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),
    ((2, 15, 15, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3))),
    ((2, 8, 8, 6), (1, 1, 6, 4), (2, 2), "VALID"),
    ((2, 8, 7, 6), (1, 3, 6, 4), (1, 1), ((0, 0), (1, 1))),
    ((2, 8, 7, 6), (3, 1, 6, 4), (1, 1), "SAME"),
    ((2, 10, 10, 4), (3, 3, 4, 4), (2, 2), "SAME"),
    ((2, 9, 8, 3), (3, 2, 3, 4), (2, 1), "SAME"),
]


def _loss(conv, strides, padding):
  return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel, strides, padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))))


@pytest.fixture
def taps_at_every_size(monkeypatch):
  """The kernel gradient by taps for these small convolutions too."""
  monkeypatch.setattr(layers, "TAP_GRADIENT_MIN_FLOPS", 0)


@pytest.mark.parametrize("row_channels", [layers.TAP_ROW_CHANNELS, 0], ids=["a kernel row a product", "a tap a product"])
@pytest.mark.parametrize("band_bytes", [layers.TAP_GRADIENT_BAND_BYTES, 1], ids=["one band", "a band per row"])
@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", CONVOLUTIONS)
def test_conv_gradients_on_the_cpu_equal_lax(x_shape, kernel_shape, strides, padding, band_bytes, row_channels,
                                             taps_at_every_size, monkeypatch):
  """The kernel gradient computed tap by tap or a kernel row at a time, over the whole map or a band
  of output rows at a time, equals XLA's to float64 rounding; the rest is lax's."""
  monkeypatch.setattr(layers, "TAP_GRADIENT_BAND_BYTES", band_bytes)
  monkeypatch.setattr(layers, "TAP_ROW_CHANNELS", row_channels)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), x_shape, jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape, jnp.float64)
    expected = jax.grad(_loss(lax.conv_general_dilated, strides, padding), (0, 1))(x, kernel)
    gradients = jax.jit(jax.grad(_loss(layers.conv_general_dilated, strides, padding), (0, 1)))(x, kernel)
  np.testing.assert_array_equal(gradients[0], expected[0])
  np.testing.assert_allclose(gradients[1], expected[1], rtol=0, atol=1e-13 * np.abs(expected[1]).max())


def test_conv_keeps_its_dtype_and_flax_names(taps_at_every_size):
  conv = layers.Conv(4, (3, 3), dtype=jnp.bfloat16)
  x = jnp.ones((1, 6, 6, 3))
  variables = conv.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"kernel": (3, 3, 3, 4), "bias": (4,)}}
  kernel_gradient = jax.grad(lambda v: jnp.sum(conv.apply(v, x).astype(jnp.float32)))(variables)["params"]["kernel"]
  assert kernel_gradient.dtype == jnp.float32 and conv.apply(variables, x).dtype == jnp.bfloat16


def _convolutions_lowered(platform: str, x_shape, kernel_shape, op: str = "stablehlo.convolution") -> int:
  """`op`s in the gradient of a "SAME" convolution lowered for `platform`."""
  grad = jax.jit(jax.grad(_loss(layers.conv_general_dilated, (1, 1), "SAME"), (0, 1)))
  shapes = (jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(kernel_shape, jnp.float32))
  return export.export(grad, platforms=[platform])(*shapes).mlir_module().count(op)


def test_conv_kernel_gradient_is_xla_s_own_on_accelerators(taps_at_every_size):
  """Lowered for CUDA or TPU, the train step's kernel gradient is a convolution (cuDNN's and the
  TPU's are fast); lowered for the CPU, it is matrix products."""
  for platform, convolutions in (("cuda", 3), ("tpu", 3), ("cpu", 2)):
    assert _convolutions_lowered(platform, (2, 8, 8, 3), (3, 3, 3, 4)) == convolutions, platform


def test_conv_kernel_gradient_bands_are_the_most_rows_dividing_the_height_that_fit():
  """Rows of 16 images × 56 positions × (64 + 64) channels × 4 bytes = 448 KiB: 8 of them fit 4 MiB
  and divide 56; bfloat16 halves the bytes (14 rows); a row over the budget still makes a band."""
  assert layers.TAP_GRADIENT_BAND_BYTES == 4 * 2**20
  assert layers._band_rows((16, 56, 56, 64), (3, 3, 64, 64), jnp.float32) == 8
  assert layers._band_rows((16, 56, 56, 64), (3, 3, 64, 64), jnp.bfloat16) == 14
  assert layers._band_rows((16, 7, 7, 512), (3, 3, 512, 512), jnp.float32) == 7
  assert layers._band_rows((512, 56, 56, 64), (3, 3, 64, 64), jnp.float32) == 1


def test_conv_kernel_gradient_is_one_band_where_jax_has_several_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  assert layers._band_rows((16, 56, 56, 64), (3, 3, 64, 64), jnp.float32) == 56


def test_conv_kernel_gradient_by_taps_from_its_flop_threshold():
  """2 · 8·16·16 output positions · 3·3·64 · 64 = 151 MFLOP: by taps; a quarter of it: XLA's own."""
  assert layers.TAP_GRADIENT_MIN_FLOPS == 1e8
  assert _convolutions_lowered("cpu", (8, 16, 16, 64), (3, 3, 64, 64)) == 2
  assert _convolutions_lowered("cpu", (2, 16, 16, 64), (3, 3, 64, 64)) == 3


def test_conv_kernel_gradient_is_a_product_per_kernel_row_where_channels_are_few():
  """3 taps × 64 channels ≤ TAP_ROW_CHANNELS: a product per kernel row; 3 × 128: a product per tap;
  the 7×7 stem's rows of 7 × 3 channels: 7 products."""
  assert layers.TAP_ROW_CHANNELS == 256
  products = lambda x_shape, kernel_shape: _convolutions_lowered("cpu", x_shape, kernel_shape, "stablehlo.dot_general")
  assert products((8, 16, 16, 64), (3, 3, 64, 64)) == 3
  assert products((8, 16, 16, 128), (3, 3, 128, 128)) == 9
  assert products((8, 32, 32, 3), (7, 7, 3, 64)) == 7


POOLS = [  # input, window, strides, padding: ResNet's stem pool, ResNet-v2's (zero-padded), LHC-Net's key pool, others
    ((2, 12, 12, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 13, 11, 3), (3, 3), (2, 2), "VALID"),
    ((2, 7, 7, 4), (3, 3), (1, 1), "SAME"),
    ((2, 9, 8, 2), (2, 2), (2, 2), "SAME"),
    ((1, 10, 10, 2), (5, 5), (3, 3), "SAME"),
]


def _tied(shape, dtype=jnp.float32):
  """ReLU'd values on a coarse grid: most windows hold equal maxima (zeros or repeats)."""
  return jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(0), shape, dtype)) * 2) / 2


def _pool_loss(pool):
  def loss(x):
    y = pool(x)
    return jnp.sum(jnp.sin(y) * jnp.arange(1, y.size + 1).reshape(y.shape))
  return loss


@pytest.mark.parametrize("x_shape, window, strides, padding", POOLS)
def test_max_pool_and_its_gradient_on_the_cpu_equal_lax(x_shape, window, strides, padding):
  """Equal maxima too: the gradient goes to the window's first, as XLA's select-and-scatter does."""
  with jax.enable_x64(True):
    x = _tied(x_shape, jnp.float64)
    pool = lambda x: layers.max_pool(x, window, strides, padding)
    reference = lambda x: nn.max_pool(x, window, strides, padding)
    expected = jax.grad(_pool_loss(reference))(x)
    gradient = jax.jit(jax.grad(_pool_loss(pool)))(x)
    np.testing.assert_array_equal(jax.jit(pool)(x), reference(x))
  np.testing.assert_allclose(gradient, expected, rtol=0, atol=1e-13 * np.abs(expected).max())


def test_max_pool_gradient_goes_to_the_first_maximum_as_pytorch_s():
  import torch
  x = _tied((2, 12, 12, 3))
  loss = _pool_loss(lambda x: layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))
  gradient = jax.jit(jax.grad(loss))(x)
  x_torch = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)).requires_grad_()
  y = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
  weights = torch.arange(1, y.numel() + 1, dtype=torch.float32).reshape(y.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2)
  torch.sum(torch.sin(y) * weights).backward()
  np.testing.assert_allclose(gradient, x_torch.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-4)


def test_max_pool_gradient_is_xla_s_own_on_accelerators():
  grad = jax.jit(jax.grad(_pool_loss(lambda x: layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))))
  shape = jax.ShapeDtypeStruct((2, 12, 12, 3), jnp.float32)
  for platform, select_and_scatter in (("cuda", True), ("tpu", True), ("cpu", False)):
    module = export.export(grad, platforms=[platform])(shape).mlir_module()
    assert ("stablehlo.select_and_scatter" in module) == select_and_scatter, platform
