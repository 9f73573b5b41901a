"""XLA:CPU's reduction of a product along the last axis, with and without a dimension of size 1.

  python benchmarks/cpu_reductions.py [--repeats=20]

Times jit(lambda a, b: jnp.sum(a * b, -1)) compiled with the steps' CPU options
(`mesh.CPU_COMPILER_OPTIONS`) on the same number of elements laid out with and without a size-1
axis: LHC-Net's last module has one head, and its scores were [batch, 1, 512, 512]
(docs/performance.md, "A head axis of size 1"). Prints milliseconds per call (median).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import mesh

SHAPES = ((16, 512, 512), (16, 1, 512, 512), (16, 256, 256), (16, 1, 256, 256), (16, 7, 256, 256))


def compiled_for_the_steps(function, *args):
  """jit(function) compiled for args with the options the steps compile with on this device."""
  return jax.jit(function).lower(*args).compile(compiler_options=mesh.default_device_compiler_options())


def milliseconds(compiled, *args, repeats: int) -> float:
  """Median milliseconds of a call of `compiled` (after one untimed call)."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  print("| shape | sum(a * b, -1) ms | sum(a, -1) ms |\n|---|---|---|")
  for shape in SHAPES:
    a, b = jax.random.normal(jax.random.key(0), (2, *shape))
    product = milliseconds(compiled_for_the_steps(lambda a, b: jnp.sum(a * b, -1), a, b), a, b, repeats=args.repeats)
    single = milliseconds(compiled_for_the_steps(lambda a: jnp.sum(a, -1), a), a, repeats=args.repeats)
    print(f"| {list(shape)} | {product:.2f} | {single:.2f} |")


if __name__ == "__main__":
  main()
