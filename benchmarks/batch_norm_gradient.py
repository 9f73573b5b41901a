"""BatchNorm + ReLU in training mode, forward and backward, with BatchNorm's gradient left to autodiff
and written out (`batch_norm.normalise_batch`), at ResNet's activation shapes.

  python benchmarks/batch_norm_gradient.py [--batch=16] [--repeats=10]

Both compile with the steps' CPU options (`mesh.CPU_COMPILER_OPTIONS`) and compute the same forward
formulas (two-pass statistics); "autodiff" differentiates them as the library did before. Prints,
per shape, the milliseconds of one forward + backward call (median), how many activation-sized
arrays the compiled program's fusions write, and the largest difference of the input gradient
relative to its largest entry (docs/performance.md, "BatchNorm's gradient written out").
"""

import argparse
import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cpu_reductions import compiled_for_the_steps, milliseconds  # benchmarks/: the same timing
from fer_jax.models import batch_norm

EPSILON = 1e-5
SHAPES = ((112, 64), (56, 64), (28, 128), (14, 256), (7, 512))  # ResNet-18's stem and stages at 224²


def autodiff(x, scale, bias):
  """The forward formulas as autodiff differentiated them before f0561af (the mean a constant inside
  the variance, whose gradient through it is zero)."""
  mean = jnp.mean(x, (0, 1, 2))
  var = jnp.mean(jnp.square(x - lax.stop_gradient(mean)), (0, 1, 2))
  return (x - mean) * (lax.rsqrt(var + EPSILON) * scale) + bias


def written_out(x, scale, bias):
  return batch_norm.normalise_batch(x, scale, bias, EPSILON)[0]


def forward_and_backward(normalise):
  def run(x, scale, bias, gradient):
    return jax.vjp(lambda *args: jax.nn.relu(normalise(*args)), x, scale, bias)[1](gradient)
  return run


def measure(function, args, repeats: int):
  """(median ms of a call, how many activation-sized arrays its fusions write, the input gradient)."""
  compiled = compiled_for_the_steps(function, *args)
  shape = ",".join(map(str, args[0].shape))
  written = len(re.findall(rf"= f32\[{shape}\]\{{[\d,]*\}} fusion\(", compiled.as_text()))
  return milliseconds(compiled, *args, repeats=repeats), written, compiled(*args)[0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print("| activation | autodiff ms | written out ms | arrays written (autodiff / written out) | gradient difference |")
  print("|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for side, channels in SHAPES:
    shape = (args.batch, side, side, channels)
    inputs = (rng.normal(2.0, 3.0, shape).astype(np.float32), rng.uniform(0.5, 1.5, channels).astype(np.float32),
              rng.normal(size=channels).astype(np.float32), rng.normal(size=shape).astype(np.float32))
    inputs = tuple(jnp.asarray(value) for value in inputs)
    (plain_ms, plain_written, plain), (ours_ms, ours_written, ours) = (
        measure(forward_and_backward(normalise), inputs, args.repeats) for normalise in (autodiff, written_out))
    difference = float(jnp.max(jnp.abs(plain - ours)) / jnp.max(jnp.abs(plain)))
    print(f"| {list(shape)} | {plain_ms:.1f} | {ours_ms:.1f} | {plain_written} / {ours_written} | {difference:.1e} |")


if __name__ == "__main__":
  main()
