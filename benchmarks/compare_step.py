r"""One config's compiled train step built from two versions of its model module, side by side.

  python benchmarks/compare_step.py configs/scan_cci.py:rafdb OLD/fer_jax/models/scan_cci.py \
      [--batch 16] [--size 224] [--rounds 3]

"new" is the method module the importable fer_jax holds, "old" the same module loaded from the
given file. Printed per side: XLA's cost analysis (flops, bytes accessed), the optimised HLO's
instruction and fusion counts, lowering and compile seconds, memory_analysis, then train-step
seconds on random inputs on the default device, old and new interleaved in rounds (one warm-up
step each first), so that both see the same machine load.
"""

import argparse
import importlib.util
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import api
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train


def method_from_file(path: str):
  spec = importlib.util.spec_from_file_location("old_method", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.METHOD


def compiled_step(method, config, batch_size: int):
  """(compiled step, state, batch, figures) for random inputs."""
  model = method.build(config.model)
  variables = models.init_variables(model, config, jax.random.key(0))
  optimizer = optim.make_optimizer(config.optimizer, 10, config.num_epochs, variables["params"])
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh_lib.make_mesh(), 0)
  state = {"step": jnp.int32(0), **variables, "opt_state": optimizer.tx.init(variables["params"])}
  size = config.input.size
  batch = {"image": jax.random.normal(jax.random.key(1), (batch_size, size, size, 3)),
           "label": jnp.asarray(np.arange(batch_size) % config.model.num_classes, jnp.int32)}
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  return compiled, state, batch, {"lower_s": round(lowered_s, 2), "compile_s": round(compile_s, 2),
                                  **hlo_figures(compiled)}


def hlo_figures(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  text = compiled.as_text()
  instructions = re.findall(r"^\s+(?:ROOT )?%?[\w.\-]+ = \S+ (\w[\w\-]*)\(", text, re.MULTILINE)
  opcodes = {name: instructions.count(name) for name in ("fusion", "convolution", "gather", "scatter", "sort",
                                                          "dot", "custom-call", "while")}
  return {"gflops": round(cost["flops"] / 1e9, 3), "gbytes_accessed": round(cost["bytes accessed"] / 1e9, 3),
          "hlo_instructions": len(instructions), **opcodes,
          "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1),
          "argument_mb": round(memory.argument_size_in_bytes / 2**20, 1),
          "output_mb": round(memory.output_size_in_bytes / 2**20, 1)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("config")
  parser.add_argument("old_module")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = api.load_config(args.config)
  config.input.size = args.size
  sides = {"old": method_from_file(args.old_module), "new": models.get_method(config.model.name)}
  built = {}
  for name, method in sides.items():
    built[name] = compiled_step(method, config, args.batch)
    print(json.dumps({"side": name, **built[name][3]}), flush=True)
  states = {name: state for name, (_, state, _, _) in built.items()}
  times = {name: [] for name in sides}
  for round_index in range(args.rounds + 1):  # round 0 is the warm-up
    for name, (compiled, _, batch, _) in built.items():
      start = time.perf_counter()
      states[name] = jax.block_until_ready(compiled(states[name], batch)[0])  # the step donates its state
      if round_index:
        times[name].append(round(time.perf_counter() - start, 3))
  print(json.dumps({"step_s": times, "load": os.getloadavg()}))


if __name__ == "__main__":
  main()
