"""One of two processes (2 × 1 CPU device): saves steps 1–3 of a 64 MB replicated state into two
checkpoint folders at once, as a run's checkpoints/ and best/ managers save a step that is both
due and a new best, then waits for every save and prints the steps each folder holds.

    python tests/two_managers_check.py COORDINATOR_ADDRESS PROCESS_ID WORKDIR
"""

import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections

from fer_jax import checkpointing
from fer_jax import distributed
from fer_jax import mesh as mesh_lib


def main(coordinator_address: str, process_id: str, workdir: str):
  distributed.start(coordinator_address, 2, int(process_id))
  config = ml_collections.ConfigDict({"model": {"name": "none"}, "input": {}, "batch_size": 2, "eval": {"tta": "none"},
                                     "dataset": {"name": "synthetic", "class_order": "rafdb", "image_size": 0}})
  replicated = NamedSharding(mesh_lib.make_mesh(), PartitionSpec())
  state = jax.jit(lambda: {"params": {"w": jnp.arange(2.0 ** 24)}}, out_shardings=replicated)()
  managers = [checkpointing.manager(os.path.join(workdir, name)) for name in ("checkpoints", "best")]
  for step in (1, 2, 3):
    for checkpoints in managers:
      checkpointing.save(checkpoints, step, state, config)
  for checkpoints in managers:
    checkpointing.wait_until_saved(checkpoints)
  print("saved", [checkpoints.all_steps() for checkpoints in managers])


if __name__ == "__main__":
  main(*sys.argv[1:])
