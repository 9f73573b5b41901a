r"""Seconds a training-state checkpoint save holds the training loop, on every device of this process.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python benchmarks/checkpoint_save.py --config=configs/dan.py:rafdb --saves=3

The state (parameters, BatchNorm statistics, optimiser state) is the config's, created replicated
on a mesh of all devices as training creates it; each save goes through fer_jax.checkpointing into a
fresh folder. `blocking_s` is what `checkpointing.save` takes before it returns (copies to the host,
any program it compiles), the loop's stall; `written_s` adds the wait until the step is on disk,
which training overlaps with its next steps. One JSON line per save; the first pays what is compiled
or set up once per process.
"""

import json
import shutil
import sys
import tempfile
import time

import jax
from absl import flags

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train

_SAVES = flags.DEFINE_integer("saves", 3, "Saves to time, each into a fresh folder.")
_OUTPUT = flags.DEFINE_string("output", None, "Also append the JSON lines to this file.")


def state_of(config) -> dict:
  model = models.build_model(config)
  optimizer = optim.make_optimizer(config.optimizer, 10, config.num_epochs,
                                   models.abstract_variables(model, config)["params"])
  return train.create_state(model, optimizer.tx, config, mesh_lib.make_mesh())


def time_save(state: dict, config) -> dict:
  folder = tempfile.mkdtemp(prefix="fer_jax_checkpoint_save_")
  try:
    checkpoints = checkpointing.manager(folder)
    start = time.perf_counter()
    checkpointing.save(checkpoints, 1, state, config)
    blocking = time.perf_counter() - start
    checkpointing.wait_until_saved(checkpoints)
    return {"blocking_s": round(blocking, 3), "written_s": round(time.perf_counter() - start, 3)}
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main(argv):
  del argv
  config = flags.FLAGS.config
  state = jax.block_until_ready(state_of(config))
  state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  for index in range(_SAVES.value):
    line = json.dumps({"command": " ".join(sys.argv[1:]), "model": config.model.name, "save": index + 1,
                       "devices": jax.device_count(), "platform": jax.devices()[0].platform,
                       "state_mb": round(state_bytes / 2**20, 1), **time_save(state, config)})
    print(line, flush=True)
    if _OUTPUT.value:
      with open(_OUTPUT.value, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  config_lib.define_config_flag()
  cli.mark_required(["config"])
  cli.run(main)
