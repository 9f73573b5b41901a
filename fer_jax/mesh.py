"""The device mesh every jitted step shards over: one `data` axis across all processes' devices."""

import jax
import numpy as np


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.array(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))
