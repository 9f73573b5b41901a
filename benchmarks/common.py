"""What the scripts that tabulate configs share (remat.py, gpu_compile.py, tpu_compile.py,
compile_candidates.py, run_candidates.py): their arguments, their output, and the paper configs'
train steps compiled for a device list that may be another platform's compile-only one."""

import argparse
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import api
from fer_jax import benchmark
from fer_jax import mesh as mesh_lib
from fer_jax import models


def paper_configs_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("configs", nargs="*", default=benchmark.PAPER_CONFIGS, help="config specs (default: the paper ones)")
  parser.add_argument("--batch_size", type=int, default=0, help="instead of each config's own (0)")
  parser.add_argument("--dtype", default="bfloat16", help="config.model.dtype (accelerators' default)")
  parser.add_argument("--output", default="", help="also append the JSON lines to this file")
  return parser


def write_rows(rows: list[dict], output: str, table: str) -> None:
  """Appends the rows as JSON lines to `output` (if given) and prints their markdown table."""
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)  # a run's figures are not lost to a missing folder
    with open(output, "a", encoding="utf-8") as file:
      file.writelines(json.dumps(row) + "\n" for row in rows)
  sys.stdout.write(table)


def compile_train_step(spec: str, dtype: str, devices: list, batch_size: int = 0):
  """(config, compiled train step, seconds to compile) of config `spec` in `dtype`, its batch (batch_size,
  0 for the config's own) split over `devices`, which may be another platform's compile-only ones."""
  config = api.load_config(spec)
  config.model.dtype = dtype
  config.batch_size = batch_size or config.batch_size
  mesh = mesh_lib.make_mesh(devices)
  step, state = benchmark.abstract_train_step(config, mesh)  # looked up here: compile_candidates may swap it
  sharded = NamedSharding(mesh, P("data"))
  batch = {"image": jax.ShapeDtypeStruct(models.dummy_images(config, config.batch_size).shape, jnp.float32,
                                         sharding=sharded),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=sharded),
           "mask": jax.ShapeDtypeStruct((config.batch_size,), jnp.float32, sharding=sharded)}
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return config, compiled, time.perf_counter() - start


def compiled_train_steps(specs, dtype: str, batch_size: int, devices: list, hlo_dir: str = "", platform: str = ""):
  """(spec, config, compiled train step, seconds to compile) for each of `specs` in turn (compile_train_step),
  each step's HLO text written to `hlo_dir` if given, as "<spec>.<dtype>.<N>devices.<platform>.hlo.txt"."""
  for spec in specs:
    config, compiled, seconds = compile_train_step(spec, dtype, devices, batch_size)
    if hlo_dir:
      os.makedirs(hlo_dir, exist_ok=True)
      name = re.sub(r"[^\w.=-]+", "_", spec) + f".{dtype}.{len(devices)}devices.{platform}.hlo.txt"
      with open(os.path.join(hlo_dir, name), "w", encoding="utf-8") as file:
        file.write(compiled.as_text())
    yield spec, config, compiled, seconds
