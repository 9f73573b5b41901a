"""Compile seconds of the initial state's computation at XLA's default LLVM level and at the one
`fer_jax.train.create_state` uses on the CPU, and whether the two give bit-identical values.

  python benchmarks/init_compile.py --config=configs/dan.py:synthetic

One JSON line. The forward pass that flax's init traces is dead code (the lowered
program holds no convolution), so the input size does not matter; the compilation cache is off.
"""

import json
import sys
import time

import jax
from absl import flags

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import mesh as mesh_lib
from fer_jax import models


def measure(config) -> dict:
  model = models.build_model(config)
  init = jax.jit(lambda: models.init_variables(model, config, jax.random.key(config.seed)))
  lowered = init.lower()
  seconds, values = {}, {}
  for name, options in (("default", None), ("create_state", mesh_lib.CPU_INIT_COMPILER_OPTIONS)):
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
    seconds[name] = round(time.perf_counter() - start, 2)
    values[name] = jax.tree.leaves(compiled())
  identical = all(bool((a == b).all()) for a, b in zip(values["default"], values["create_state"]))
  return {"model": config.model.name, "convolutions": lowered.as_text().count("stablehlo.convolution"),
          "compile_s_default": seconds["default"], "compile_s_create_state": seconds["create_state"],
          "options": mesh_lib.CPU_INIT_COMPILER_OPTIONS, "bit_identical": identical,
          "platform": jax.devices()[0].platform, "jax": jax.__version__}


def main(argv):
  del argv
  jax.config.update("jax_enable_compilation_cache", False)
  print(json.dumps({"command": " ".join(sys.argv[1:]), **measure(flags.FLAGS.config)}))


if __name__ == "__main__":
  config_lib.define_config_flag()
  cli.mark_required(["config"])
  cli.run(main)
