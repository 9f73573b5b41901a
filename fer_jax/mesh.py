"""The device mesh every jitted step shards over: one `data` axis across all processes' devices, and
the XLA options the steps compile with on it."""

import functools
import os

from absl import logging
import jax
import numpy as np


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.array(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(tree, mesh: jax.sharding.Mesh):
  """`tree`'s arrays whole on every device of `mesh`: model variables as the jitted steps take them."""
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def round_up_to_devices(size: int, mesh: jax.sharding.Mesh) -> int:
  """`size` rounded up to a multiple of `mesh`'s device count: a batch that splits evenly over the devices."""
  devices = mesh.devices.size
  return -(-size // devices) * devices


# XLA:CPU hands convolutions, dots and reductions to YNNPACK by default. Its convolutions ran slower
# than XLA's own kernels forward and in kernel gradients (1.3–6×); with XLA's own, DAN's train and eval
# steps at batch 16 ran 1.2× as many images a second (docs/performance.md). Dots and reductions stay.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


# A model's initialisation runs once, so its compile time matters, not its speed: LLVM's -O1 compiles
# it in about half the time of the default -O2 on XLA's CPU backend, to bit-identical values
# (docs/performance.md, "Start-up"; tests/test_train.py checks the values).
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_compiler_options(mesh: jax.sharding.Mesh | None = None) -> dict | None:
  """The XLA options of a model's one-off initialisation over `mesh` (default: on jax.devices()[0])."""
  device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
  return CPU_INIT_COMPILER_OPTIONS if device.platform == "cpu" else None


def compiler_options(mesh: jax.sharding.Mesh) -> dict | None:
  """The XLA options of a step jitted over `mesh`: CPU_COMPILER_OPTIONS on CPUs whose XLA takes them,
  XLA's defaults elsewhere."""
  return _options_for(mesh.devices.flat[0])


def default_device_compiler_options() -> dict | None:
  """`compiler_options` of a function jitted without a mesh, which runs on jax.devices()[0] (the face
  detector's networks, the attention maps' forward pass)."""
  return _options_for(jax.devices()[0])


def _options_for(device) -> dict | None:
  return CPU_COMPILER_OPTIONS if device.platform == "cpu" and _cpu_takes_options() else None


@functools.cache
def _cpu_takes_options() -> bool:
  """Whether this jaxlib's XLA:CPU compiles with CPU_COMPILER_OPTIONS (an experimental option that a
  later release may rename), tried once on a one-element program on this process's first CPU."""
  device = jax.local_devices(backend="cpu")[0]
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        jax.device_put(np.float32(0), device)).compile()
  except jax.errors.JaxRuntimeError as error:
    logging.warning("XLA:CPU refuses %s (%s): the steps compile with its default kernels.",
                    CPU_COMPILER_OPTIONS, str(error).partition("\n")[0])
    return False
  return True


# JAX's persistent compilation cache as the training, evaluation and inference commands keep it on GPUs and TPUs: at
# most this many bytes, the least recently used programs removed first.
COMPILATION_CACHE_BYTES = 4 * 2**30
COMPILATION_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def keep_compilations() -> str | None:
  """On a GPU or TPU, keeps the XLA programs this process compiles in $XDG_CACHE_HOME/fer_jax/jax_compilation_cache
  (~/.cache/…), for a later run that compiles the same ones (resumed, another seed, evaluated, predicting) to load
  instead, unless $JAX_COMPILATION_CACHE_DIR names another folder (empty: none) or JAX was told one; skipped where
  the folder cannot be written. Not on the CPU, whose XLA refuses to load programs compiled for some CPUs' tuning
  flags even on the machine that compiled them, with an error line for each (jax-ml/jax issue 38445): there
  $JAX_COMPILATION_CACHE_DIR turns it on. Returns the folder now in use, if any. Tracing and lowering are not kept:
  a step's start-up is shorter, not gone. Call it once JAX's processes are started (it asks the backend); CPU
  processes run together keep none (keep_no_cpu_compilations)."""
  if not jax.config.jax_enable_compilation_cache:
    return None
  if COMPILATION_CACHE_ENV in os.environ or jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir or None
  if jax.default_backend() == "cpu":
    return None
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  folder = os.path.join(cache_home, "fer_jax", "jax_compilation_cache")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as error:
    logging.info("Compiled programs are not kept between runs: %s cannot be made (%s).", folder, error.strerror)
    return None
  if not os.access(folder, os.W_OK):
    logging.info("Compiled programs are not kept between runs: %s cannot be written.", folder)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
  return folder


def keep_no_cpu_compilations() -> None:
  """On CPU processes run together, turns JAX's persistent compilation cache off, before this process compiles
  anything: with jaxlib 0.12.1 a train step loaded from it (process 0's, as a resumed run loads it) hung in its
  first gloo collective, every time (BENCHMARKS.md, "Other Pythons and JAX releases"). The cache is on there only
  where $JAX_COMPILATION_CACHE_DIR asks (keep_compilations), and each process compiles in seconds."""
  if jax.process_count() > 1 and jax.default_backend() == "cpu" and jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("JAX's persistent compilation cache (%s) is off: CPU processes run together compile their programs "
                 "afresh (a program loaded from it can hang in a collective).", jax.config.jax_compilation_cache_dir)
