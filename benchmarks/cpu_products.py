"""XLA:CPU's matrix products against PyTorch's, at the shapes of APViT's ViT at batch 16.

  python benchmarks/cpu_products.py [--repeats=10]

For each dense layer of a ViT block (qkv, proj, fc1, fc2; 2,576 token rows = 16 images × 161
tokens), the three products of a training step: forward x·W, input gradient dy·Wᵀ and kernel
gradient xᵀ·dy, as jitted JAX functions compiled with the steps' CPU options
(`mesh.CPU_COMPILER_OPTIONS`) and as `torch.mm` on the same thread count. Prints the median
milliseconds and GFLOP/s of each (BENCHMARKS.md, APViT's and LHC-Net's official steps beside).
"""

import argparse

import jax
from jax import lax
import numpy as np
import torch

from cpu_reductions import compiled_for_the_steps
from cpu_reductions import milliseconds

ROWS = 2576
LAYERS = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 2304), "fc2": (2304, 768)}
PRODUCTS = {  # name: (JAX contraction of (a, b), PyTorch form, shapes of a and b given in → out)
    "forward x·W": ((((1,), (0,)), ((), ())), lambda a, b: a @ b, lambda i, o: ((ROWS, i), (i, o))),
    "input gradient dy·Wᵀ": ((((1,), (1,)), ((), ())), lambda a, b: a @ b.t(), lambda i, o: ((ROWS, o), (i, o))),
    "kernel gradient xᵀ·dy": ((((0,), (0,)), ((), ())), lambda a, b: a.t() @ b, lambda i, o: ((ROWS, i), (ROWS, o))),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print(f"torch {torch.__version__} on {torch.get_num_threads()} threads; jax {jax.__version__}\n")
  print("| layer | product | XLA ms | XLA GFLOP/s | PyTorch ms | PyTorch GFLOP/s |\n|---|---|---|---|---|---|")
  for layer, (fan_in, fan_out) in LAYERS.items():
    gflop = 2 * ROWS * fan_in * fan_out / 1e9
    for name, (dimensions, torch_product, shapes) in PRODUCTS.items():
      a_shape, b_shape = shapes(fan_in, fan_out)
      a, b = (np.random.default_rng(i).standard_normal(shape, np.float32) for i, shape in enumerate((a_shape, b_shape)))
      jax_product = lambda a, b, dimensions=dimensions: lax.dot_general(a, b, dimensions)
      ours = milliseconds(compiled_for_the_steps(jax_product, a, b), a, b, repeats=args.repeats)
      theirs = milliseconds(torch_product, torch.from_numpy(a), torch.from_numpy(b), repeats=args.repeats)
      print(f"| {layer} | {name} | {ours:.1f} | {gflop / ours * 1e3:.0f} | {theirs:.1f} | {gflop / theirs * 1e3:.0f} |")


if __name__ == "__main__":
  main()
