"""The device mesh every jitted step shards over: one `data` axis across all processes' devices, and
the XLA options the steps compile with on it."""

import jax
import numpy as np


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.array(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# XLA:CPU hands convolutions, dots and reductions to YNNPACK by default. Its convolutions ran the
# methods' train steps slower than XLA's own convolution kernels (DAN's at batch 16: 1.3× as many
# images a second with XLA's own; docs/performance.md), so on the CPU only dots and reductions go to it.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(mesh: jax.sharding.Mesh) -> dict | None:
  """The XLA options of a step jitted over `mesh`: CPU_COMPILER_OPTIONS on CPUs, XLA's defaults elsewhere."""
  return CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None
