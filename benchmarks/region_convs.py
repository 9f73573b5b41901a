"""3×3 convolutions of n stacked regions by n separate kernels, four ways, on the default device.

  python benchmarks/region_convs.py [--regions 16] [--batch 4] [--channels 128]

Prints XLA's flops and bytes accessed and the mean seconds of 3 runs, of the forward pass and of
its gradient, for: one convolution per region (`loop`), jax.vmap over the kernels (one grouped
convolution), a sum of 9 shifted batched matmuls, and one im2col batched matmul.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
from jax import lax

conv = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                         dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted(x):
  padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[2:4]
  return [padded[:, :, i:i + height, j:j + width] for i in range(3) for j in range(3)]


WAYS = {
    "loop": lambda x, k: jnp.stack([conv(x[:, i], k[i]) for i in range(k.shape[0])], axis=1),
    "vmap": lambda x, k: jax.vmap(conv, in_axes=(1, 0), out_axes=1)(x, k),
    "shifts": lambda x, k: sum(jnp.einsum("bnhwc,nco->bnhwo", part, k[:, i // 3, i % 3])
                               for i, part in enumerate(shifted(x))),
    "im2col": lambda x, k: jnp.einsum("bnhwc,nco->bnhwo", jnp.concatenate(shifted(x), -1),
                                      k.reshape(k.shape[0], -1, k.shape[-1])),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--regions", type=int, default=16)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--channels", type=int, default=128)
  args = parser.parse_args()
  n, c = args.regions, args.channels
  x = jax.random.normal(jax.random.key(0), (args.batch, n, 6, 6, c))
  k = 0.01 * jax.random.normal(jax.random.key(1), (n, 3, 3, c, c))
  for name, way in WAYS.items():
    loss = lambda x, k, way=way: jnp.sum(way(x, k) ** 2)
    for part, function in (("forward", loss), ("gradient", jax.grad(loss, argnums=(0, 1)))):
      compiled = jax.jit(function).lower(x, k).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      jax.block_until_ready(compiled(x, k))
      start = time.perf_counter()
      for _ in range(3):
        jax.block_until_ready(compiled(x, k))
      print(f"{name:7s} {part:8s} GFLOP {cost['flops'] / 1e9:7.3f}  GB {cost['bytes accessed'] / 1e9:6.3f}  "
            f"s {(time.perf_counter() - start) / 3:.4f}", flush=True)


if __name__ == "__main__":
  main()
