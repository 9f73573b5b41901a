"""The kernel gradient of a ResNet-18's convolutions at 224² (the 7×7 stem, a 3×3 of each stage;
batch 16, float32): XLA's own (lax.conv_general_dilated's transpose) against fer_jax's
(`layers.conv_general_dilated`, matrix products of the kernel positions' windows on the CPU) over the
whole map at once, with a product per kernel position everywhere, and as fer_jax runs it (in bands of
output rows of up to `layers.TAP_GRADIENT_BAND_BYTES` of windows and output gradient, a kernel row a
product where its taps see at most `layers.TAP_ROW_CHANNELS` channels), and PyTorch's where it is
installed.

  python benchmarks/conv_kernel_gradient.py [--batch 16] [--repeats 5]

Prints GFLOP/s per stage (the forward convolution's FLOPs over the gradient's seconds) and the
largest difference between XLA's gradient and fer_jax's relative to the largest gradient entry.
"""

import argparse
import time

import jax
from jax import lax
import numpy as np

from fer_jax.models import layers

# input side, channels in, out, stride, kernel side
STAGES = [(224, 3, 64, 2, 7), (56, 64, 64, 1, 3), (56, 64, 128, 2, 3), (28, 128, 128, 1, 3), (14, 256, 256, 1, 3),
          (7, 512, 512, 1, 3)]
NHWC = ("NHWC", "HWIO", "NHWC")


def seconds(function, *args, repeats: int) -> float:
  jax.block_until_ready(function(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(function(*args))
  return (time.perf_counter() - start) / repeats


def kernel_gradient(conv, x, kernel, stride):
  pad = kernel.shape[0] // 2
  forward = lambda k: conv(x, k, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)
  return jax.jit(lambda dy: jax.vjp(forward, kernel)[1](dy)[0])


def with_layers_constant(name: str, value, measure):
  """measure() with fer_jax.models.layers.<name> set to value (the step is traced inside)."""
  saved = getattr(layers, name)
  setattr(layers, name, value)
  try:
    return measure()
  finally:
    setattr(layers, name, saved)


def torch_seconds(x, kernel, dy, stride, repeats: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  x, kernel, dy = (torch.from_numpy(np.array(a)) for a in (x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1),
                                                             dy.transpose(0, 3, 1, 2)))
  pad = kernel.shape[-1] // 2
  run = lambda: torch.ops.aten.convolution_backward(dy, x, kernel, None, (stride, stride), (pad, pad), (1, 1), False,
                                                    (0, 0), 1, (False, True, False))
  run()
  start = time.perf_counter()
  for _ in range(repeats):
    run()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, batch {args.batch}, float32; GFLOP/s of the kernel gradient")
  for size, channels, features, stride, side in STAGES:
    x = jax.random.normal(jax.random.key(0), (args.batch, size, size, channels))
    kernel = jax.random.normal(jax.random.key(1), (side, side, channels, features)) * 0.05
    dy = jax.random.normal(jax.random.key(2), (args.batch, size // stride, size // stride, features))
    flops = 2 * dy.size * side * side * channels
    xla, ours = (kernel_gradient(conv, x, kernel, stride) for conv in (lax.conv_general_dilated,
                                                                        layers.conv_general_dilated))
    difference = float(np.max(np.abs(xla(dy) - ours(dy))) / np.max(np.abs(xla(dy))))
    rate = lambda step: flops / seconds(step, dy, repeats=args.repeats) / 1e9
    as_run = rate(ours)
    measure_ours = lambda: rate(kernel_gradient(layers.conv_general_dilated, x, kernel, stride))
    whole_map = with_layers_constant("TAP_GRADIENT_BAND_BYTES", float("inf"), measure_ours)
    tap_by_tap = with_layers_constant("TAP_ROW_CHANNELS", 0, measure_ours)
    band = layers._band_rows(dy.shape, kernel.shape, dy.dtype)  # pylint: disable=protected-access
    grouped = ", a kernel row a product" if layers._taps_a_product(kernel.shape) > 1 else ""  # pylint: disable=protected-access
    line = (f"{side}×{side} {size}²×{channels}→{features} stride {stride}: XLA {rate(xla):.0f}, "
            f"fer_jax whole map {whole_map:.0f}, a tap a product {tap_by_tap:.0f}, "
            f"as run ({band} of {dy.shape[1]} rows a band{grouped}) {as_run:.0f}")
    torch_time = torch_seconds(x, kernel, dy, stride, args.repeats)
    if torch_time:
      line += f", PyTorch {flops / torch_time / 1e9:.0f}"
    print(f"{line}; relative difference {difference:.1e}", flush=True)


if __name__ == "__main__":
  main()
