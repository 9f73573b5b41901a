"""The CPU's convolutions of ResNet-18 and ResNet-50 at 224² (batch 16, float32), and ResNet-18's last stage at
48² or 64² input (a 2×2 map) and 32² (1×1), forward, input gradient and kernel gradient, three ways: XLA with
JAX's default options (YNNPACK's convolution kernels), as fer_jax's steps compile them (`mesh.compiler_options`:
XLA's own kernels; a 1×1 kernel gradient one matrix product, and a kernel larger than its map one product,
`fast_ops.conv_general_dilated`), and PyTorch's where it is installed (oneDNN).

  python benchmarks/cpu_convolutions.py [--batch 16] [--repeats 5] [--maps 7 2 1]

Prints GFLOP/s per convolution and pass (the forward convolution's FLOPs over each pass's seconds),
and the largest difference between fer_jax's gradients and the default ones relative to the largest
gradient entry.
"""

import argparse
import time

import jax
from jax import lax
import numpy as np

from fer_jax import mesh as mesh_lib
from fer_jax.models import fast_ops

# input side, channels in, out, stride, kernel side: ResNet-18's stem and a 3×3 of each stage, then
# ResNet-50's 1×1 convolutions at 56² and a downsampling one
CONVOLUTIONS = [(224, 3, 64, 2, 7), (56, 64, 64, 1, 3), (56, 64, 128, 2, 3), (28, 128, 128, 1, 3),
                (14, 256, 256, 1, 3), (7, 512, 512, 1, 3), (56, 64, 256, 1, 1), (56, 256, 64, 1, 1),
                (56, 256, 512, 2, 1), (2, 512, 512, 1, 3), (1, 512, 512, 1, 3)]
NHWC = ("NHWC", "HWIO", "NHWC")
PASSES = ("forward", "input gradient", "kernel gradient")


def seconds(function, *args, repeats: int) -> float:
  jax.block_until_ready(function(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(function(*args))
  return (time.perf_counter() - start) / repeats


def jax_passes(conv, stride, pad, compiler_options):
  """The three passes of `conv`, each jitted alone: functions of (input, kernel, output gradient)."""
  forward = lambda x, k: conv(x, k, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)
  jit = lambda f: jax.jit(f, compiler_options=compiler_options)
  return (jit(lambda x, k, dy: forward(x, k)),
          jit(lambda x, k, dy: jax.vjp(lambda x: forward(x, k), x)[1](dy)[0]),
          jit(lambda x, k, dy: jax.vjp(lambda k: forward(x, k), k)[1](dy)[0]))


def torch_passes(x, kernel, dy, stride):
  try:
    import torch
  except ImportError:
    return None
  x, kernel, dy = (torch.from_numpy(np.array(a)) for a in (x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1),
                                                             dy.transpose(0, 3, 1, 2)))
  pad = kernel.shape[-1] // 2
  backward = lambda mask: lambda *_: torch.ops.aten.convolution_backward(
      dy, x, kernel, None, (stride, stride), (pad, pad), (1, 1), False, (0, 0), 1, mask)
  return (lambda *_: torch.nn.functional.conv2d(x, kernel, None, stride, pad),
          backward((True, False, False)), backward((False, True, False)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--maps", type=int, nargs="*", help="only the convolutions over maps of these sides")
  args = parser.parse_args()
  options = mesh_lib.compiler_options(mesh_lib.make_mesh())
  print(f"backend {jax.default_backend()}, batch {args.batch}, float32; GFLOP/s of "
        f"{', '.join(PASSES)}: JAX's default / fer_jax / PyTorch")
  for size, channels, features, stride, side in CONVOLUTIONS:
    if args.maps and size not in args.maps:
      continue
    x = jax.random.normal(jax.random.key(0), (args.batch, size, size, channels))
    kernel = jax.random.normal(jax.random.key(1), (side, side, channels, features)) * 0.05
    dy = jax.random.normal(jax.random.key(2), (args.batch, size // stride, size // stride, features))
    flops = 2 * dy.size * side * side * channels
    default = jax_passes(lax.conv_general_dilated, stride, side // 2, None)
    ours = jax_passes(fast_ops.conv_general_dilated, stride, side // 2, options)
    relative = lambda expected, value: float(np.max(np.abs(expected - value)) / np.max(np.abs(expected)))
    difference = max(relative(d(x, kernel, dy), o(x, kernel, dy)) for d, o in zip(default[1:], ours[1:]))
    ways = [default, ours, torch_passes(x, kernel, dy, stride)]
    rates = [[flops / seconds(step, x, kernel, dy, repeats=args.repeats) / 1e9 for step in way]
             for way in ways if way]
    by_pass = ", ".join(f"{name} {' / '.join(f'{way[index]:.0f}' for way in rates)}"
                        for index, name in enumerate(PASSES))
    print(f"{side}×{side} {size}²×{channels}→{features} stride {stride}: {by_pass}; "
          f"relative difference {difference:.1e}", flush=True)


if __name__ == "__main__":
  main()
