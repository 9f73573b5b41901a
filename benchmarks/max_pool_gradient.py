"""The gradient of the max pools the backbones use, on the CPU: XLA's own (the transpose of
lax.reduce_window, select-and-scatter) against fer_jax's (`fast_ops.max_pool`: each window's first
maximum by taps), and PyTorch's `max_pool2d` forward and backward where it is installed.

  python benchmarks/max_pool_gradient.py [--batch 16] [--repeats 10]

Prints milliseconds per gradient and the largest difference between the two JAX gradients, on
ReLU'd inputs rounded to a coarse grid so that windows hold equal maxima.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cpu_convolutions import seconds  # the sibling script: run from the repository root as above
from fer_jax.models import fast_ops

# name, input (height, width, channels), window, strides, padding
POOLS = [("ResNet stem, 3×3 stride 2 (DAN, SCAN-CCI)", (112, 112, 64), (3, 3), (2, 2), ((1, 1), (1, 1))),
         ("ResNet-v2 stem, 3×3 stride 2 valid (LHC-Net)", (114, 114, 64), (3, 3), (2, 2), "VALID"),
         ("LHC module key, 3×3 stride 1 same", (14, 14, 256), (3, 3), (1, 1), "SAME")]


def gradient(pool):
  return jax.jit(lambda x, dy: jax.vjp(pool, x)[1](dy)[0])


def torch_milliseconds(x, dy, window, strides, padding, repeats: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  if isinstance(padding, str):
    padding = ((0, 0), (0, 0)) if padding == "VALID" else ((window[0] // 2,) * 2, (window[1] // 2,) * 2)
  x = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)).requires_grad_()
  dy = torch.from_numpy(np.array(dy).transpose(0, 3, 1, 2))

  def run():
    x.grad = None
    torch.nn.functional.max_pool2d(x, window, strides, (padding[0][0], padding[1][0])).backward(dy)
  return seconds(run, repeats=repeats) * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, batch {args.batch}, float32; ms per gradient")
  for name, shape, window, strides, padding in POOLS:
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (args.batch, *shape)))
    x = jnp.round(x * 4) / 4
    xla = gradient(lambda x: nn.max_pool(x, window, strides, padding))
    ours = gradient(lambda x: fast_ops.max_pool(x, window, strides, padding))
    dy = jax.random.normal(jax.random.key(1), jax.eval_shape(lambda x: nn.max_pool(x, window, strides, padding),
                                                             x).shape)
    difference = float(jnp.max(jnp.abs(xla(x, dy) - ours(x, dy))))
    milliseconds = lambda step: seconds(step, x, dy, repeats=args.repeats) * 1e3
    line = f"{name}, {args.batch}×{shape}: XLA {milliseconds(xla):.1f}, fer_jax {milliseconds(ours):.1f}"
    torch_time = torch_milliseconds(x, dy, window, strides, padding, args.repeats)
    if torch_time is not None:
      line += f", PyTorch forward + backward {torch_time:.1f}"
    print(f"{line}; largest difference {difference:.1e}", flush=True)


if __name__ == "__main__":
  main()
