r"""Speed of the input pipeline and of the jitted steps, one JSON line per run.

  python -m fer_jax.benchmark --config=configs/dan.py:rafdb --input=MODE [--steps=N] [--warmup=N] \
      [--config.batch_size=B] [--config.dataset.data_dir=DIR] [--config.dataset.cache=auto|none|host|device] \
      [--output=FILE] [--profile_dir=DIR]

--input picks what is timed, `img_per_s` is its speed over `--steps` steps that follow compilation
and `--warmup` untimed steps:
  synthetic   the jitted train and eval steps on device-resident random model inputs (no data set
              needed); --profile_dir=DIR (this mode only) also writes a jax.profiler trace of 3 more
              train steps and the compiled train step's HLO there;
  host        the host stream alone: uint8 batches of the prepared training split delivered onto
              the device (decoded by worker processes, or from the decoded cache), no augmentation;
  augment     the train pipeline alone on device-resident uint8 batches at the stored size;
  end_to_end  the real train step fed by the real pipeline (host stream + device augmentation).
The modes other than synthetic read the prepared data set the config names. Run one configuration
per process (a fresh XLA client): benchmarks/accelerator.sh runs every method's paper config.

The line's fields. Every mode: `command` (the flags), the machine (`environment()`: `date`, `platform`,
`device_kind`, `devices`, `processes`, `jax`, `jaxlib`, `backend_version`, on a CUDA backend `cuda_runtime`,
`cudnn`, `cuda_driver` and `nvidia_driver`, `host_cpus`, `host_cpu_model`, `load_average_1m` before the
run, `compilation_cache_dir`: JAX's persistent cache, where a compile time may be a cache load), the run (`input`, `model`, `dataset`, `input_size`, `dtype`, `remat`, `batch_size` (global),
`devices`, `device_kind`, `steps`, `warmup_steps`) and `img_per_s` (images a second over the timed steps).
--input=synthetic adds:
  init_s                          the train state's initialisation, its compilation included
  train_img_per_s, train_step_ms  the train step's speed (= img_per_s) and time, compilation and warm-up not in it
  train_compile_s, train_warmup_s seconds lowering and compiling the train step; running its warm-up steps
  train_flops_per_step            the step's work: XLA's FLOP count of the train step before optimisation,
                                  all devices together (`program_flops`), lowered with config.model.remat
                                  "none" whatever the run's remat, so that recomputation does not count
  train_tflops_per_s, mfu         that work a second; its share of `peak_tflops_per_device` × devices
                                  (the dense bf16 peak, `PEAK_TFLOPS`; null for an unknown device)
  train_flops_per_step_with_remat the FLOPs of the step as run: with config.model.remat, its recomputation
                                  included (= train_flops_per_step without remat)
  train_hardware_tflops_per_s     those FLOPs a second: what the device computed, recomputation included
  eval_img_per_s, eval_step_ms, eval_compile_s, eval_warmup_s, eval_flops_per_step, eval_tflops_per_s
                                  the same of the eval step (at the same batch)
  train_bytes_accessed_per_step   bytes the compiled train step accesses (XLA's cost analysis of one device's
                                  program × devices; on GPUs without cuDNN's convolutions)
  peak_memory_bytes, peak_memory_source
                                  the most device memory in use at once, read after the train steps
                                  ("device.memory_stats", peak_bytes_in_use: the process's peak since it started,
                                  which JAX offers no way to reset) or, where the device reports none, the
                                  compiled train step's arguments + outputs + temporaries − aliased
                                  ("compiled.memory_analysis")
  peak_memory_before_steps_bytes  that device peak read before the first train step: initialisation, the random
                                  batch and compilation (a GPU's autotuning tries its candidates in device
                                  memory). Where peak_memory_bytes exceeds it, the train steps set the peak (their
                                  footprint, train state and batch included); where they are equal, the step's
                                  own peak is at most that (compare train_memory_analysis); null where the device
                                  reports none
  train_memory_analysis           that analysis: {argument, output, alias, temp, generated_code} bytes per device
  train_saved_for_backward_bytes  what one device's forward pass keeps for the backward pass (jax.vjp's
                                  residuals, parameters included; `saved_for_backward_bytes`), which
                                  config.model.remat lowers
  train_collectives               the compiled train step's cross-device ops: {"ops": {kind: count}, "bytes",
                                  "by_role": {role: {"ops", "tensors", "bytes"}}} (`collectives`)
--input=host, augment and end_to_end add `stored_shape`, `cache` (the cache mode) and `cache_seconds` (filling
it), `workers` (decoding processes), `first_batch_s` (the first batch, not a step: the workers' start-up),
`compile_s` (lowering and compiling the augmentation or the train step before any timed or warm-up step;
null for host, which compiles nothing), `warmup_s` (the warm-up batches), `step_ms` (a timed batch);
end_to_end also `init_s` (the train state's initialisation).
"""

import copy
import datetime
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time

from absl import flags
from absl import logging
import jax
import jax.extend as jex
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import jaxlib

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax import validation
from fer_jax.data import pipeline
from fer_jax.errors import UserError

INPUT_MODES = ("synthetic", "host", "augment", "end_to_end")
# Every method's paper config at its paper batch size and resolution (LHC-Net's stage B: the backbone
# with its LHC modules), as benchmarks/accelerator.sh runs them.
PAPER_CONFIGS = ("configs/dan.py:rafdb", "configs/apvit.py:rafdb", "configs/scan_cci.py:rafdb",
                 "configs/lhcnet.py:fer2013,stage=B")
PROFILED_STEPS = 3


# Dense bf16 peak TFLOP/s per device, for MFU (first match of the device kind wins: a longer name first).
# JAX names a TPU v5p "TPU v5" and a v5e "TPU v5 lite".
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200 NVL": 835.0, "H200": 989.0,
               "A100": 312.0, "TPU v4 lite": 138.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0,
               "TPU v5": 459.0, "TPU v6 lite": 918.0}


def peak_tflops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device_kind.lower()), None)


def environment() -> dict:
  """The software and hardware a figure was measured on."""
  device = jax.devices()[0]
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
          "processes": jax.process_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "backend_version": device.client.platform_version, **_cuda_versions(),
          "host_cpus": os.cpu_count(), "host_cpu_model": host_cpu_model(),
          "load_average_1m": round(os.getloadavg()[0], 2),
          # compile times are cache loads where JAX's persistent cache already holds the program
          "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None}


def host_cpu_model() -> str | None:
  """The host CPU's model name (Linux's /proc/cpuinfo, else what `platform` knows): CPU figures differ
  several-fold between the machines a cloud lends."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as file:
      named = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), None)
  except OSError:  # not Linux
    named = None
  return named or platform.processor() or None


def _cuda_versions() -> dict:
  """CUDA runtime, cuDNN and driver versions where the backend is a CUDA one, else {}."""
  from jax._src import lib  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu" or lib.cuda_versions is None:
    return {}
  versions = {}
  for name in ("cuda_runtime", "cudnn", "cuda_driver"):
    try:
      versions[name] = getattr(lib.cuda_versions, f"{name}_get_version")()
    except (AttributeError, RuntimeError):  # a plugin without that query, or no driver to ask
      versions[name] = None
  try:
    versions["nvidia_driver"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
        text=True, timeout=30).stdout.split("\n")[0].strip() or None
  except OSError:
    versions["nvidia_driver"] = None
  return versions


def _describe(config, mesh, batch_size: int) -> dict:
  return {"model": config.model.name, "dataset": config.dataset.name, "input_size": config.input.size,
          "dtype": config.model.dtype, "remat": config.model.remat, "batch_size": batch_size,
          "devices": mesh.devices.size, "device_kind": jax.devices()[0].device_kind}


def saved_for_backward_bytes(model, variables, images) -> int:
  """Bytes the model's training forward pass keeps for its backward pass (the residuals of its
  jax.vjp with respect to the parameters), from shapes alone: what config.model.remat trades for
  compute, whatever the backend (XLA's CPU compiler merges the recomputation back into the forward
  pass, so only accelerators spend less)."""
  def backward_pass(params, batch_stats, images):
    forward = lambda params: model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})[0]["logits"]
    return jax.vjp(forward, params)[1]  # a function whose leaves are the residuals

  closed = jax.make_jaxpr(lambda *args: jax.tree.leaves(backward_pass(*args)))(
      variables["params"], variables["batch_stats"], images)
  return _residual_bytes(closed.jaxpr)


def _residual_bytes(jaxpr) -> int:
  """Bytes of a jaxpr's outputs (a vjp's residuals), counting those of a conditional (lax.platform_dependent's)
  for the branch that keeps the most: each branch fills the other branches' residuals with empty arrays."""
  plain, by_conditional = 0, {}
  for var in jaxpr.outvars:
    size = var.aval.size * var.aval.dtype.itemsize
    origin = _conditional_origin(jaxpr, var)
    if origin is None:
      plain += size
      continue
    eqn, k = origin
    kept = by_conditional.setdefault(id(eqn), [0] * len(eqn.params["branches"]))
    for b, branch in enumerate(eqn.params["branches"]):
      kept[b] += 0 if _is_filler(branch.jaxpr, branch.jaxpr.outvars[k]) else size
  return plain + sum(max(kept) for kept in by_conditional.values())


def _producer(jaxpr, var):
  """(the equation of `jaxpr` that writes `var`, its output index), or None (an input or a literal)."""
  if isinstance(var, jex.core.Literal):
    return None
  return next(((eqn, k) for eqn in jaxpr.eqns for k, out in enumerate(eqn.outvars) if out is var), None)


def _conditional_origin(jaxpr, var):
  """(the cond equation, its output index) that `var` comes from, through call-like equations; or None."""
  found = _producer(jaxpr, var)
  if found is None:
    return None
  eqn, k = found
  if eqn.primitive.name == "cond":
    return eqn, k
  inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
  inner = getattr(inner, "jaxpr", inner)
  return None if inner is None else _conditional_origin(inner, inner.outvars[k])


def _is_filler(jaxpr, var) -> bool:
  """Whether `var` is an empty array (broadcast): a branch's stand-in for another branch's residual."""
  found = _producer(jaxpr, var)
  while found is not None and found[0].primitive.name == "broadcast_in_dim":
    found = _producer(jaxpr, found[0].invars[0])
  return found is not None and found[0].primitive.name.startswith("empty")


def _compile(jitted, *args):
  """(the compiled executable, seconds spent lowering and compiling it, its cost: `_cost`)."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  return compiled, seconds, _cost(lowered, compiled)


def _cost(lowered, compiled) -> dict:
  """One call's FLOPs (`program_flops`) and the bytes one device's compiled program accesses (XLA's
  cost analysis of it: on GPUs, without cuDNN's convolutions)."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  return {"flops": program_flops(lowered), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def program_flops(lowered) -> float | None:
  """The FLOPs of a lowered program, all devices together, before XLA optimises it for a device: the
  count of XLA's cost analysis on the CPU client. The compiled program's own count misses the work of
  library calls (on GPUs, cuDNN's convolutions count nothing), and the GPU and TPU plugins analyse no
  lowered program. Calls the lowered program already makes to a library (cuDNN's attention) and
  shard_map bodies (counted once) are not all of their work. None where JAX has no CPU client
  (JAX_PLATFORMS without cpu) or no longer offers this analysis."""
  try:
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel  # hlo_module_cost_analysis: no public form
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, lowered.compiler_ir("hlo").as_hlo_module())
  except (ImportError, AttributeError, RuntimeError) as error:
    logging.warning("No FLOP count of the step (%s): no MFU.", error)
    return None
  return float(cost.get("flops", 0.0))


def memory_analysis(compiled) -> dict:
  """The compiled executable's buffer sizes (bytes per device) as XLA planned them."""
  analysis = compiled.memory_analysis()
  names = ("argument", "output", "alias", "temp", "generated_code")
  return {name: int(getattr(analysis, f"{name}_size_in_bytes", 0)) for name in names} if analysis else {}


def _device_peak_bytes() -> int | None:
  """The most device memory in use at once so far (max over local devices), where reported."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
  return max(peaks) if peaks else None


def planned_peak_bytes(analysis: dict) -> int | None:
  """Arguments + outputs + temporaries − donated-and-reused buffers: the executable's own peak."""
  if not analysis:
    return None
  return analysis["argument"] + analysis["output"] + analysis["temp"] - analysis["alias"]


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}
HLO_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")  # "bf16[8,56]" → dtype, dims
_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%?\S+ = (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                         r"collective-permute)(?:-start)?\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO shape, e.g. "f32[64,3]{1,0}" or a tuple "(f32[64]{0}, bf16[8,8]{1,0})"."""
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in HLO_SHAPE.findall(shape_text) if dtype in _DTYPE_BYTES)


def _split_top_level(text: str, separator: str) -> list[str]:
  """`text` split at `separator`s outside parentheses."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if char == separator and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  return parts + [text[start:]]


def _element_names(op_name: str) -> list[str]:
  """The JAX op names of a (possibly combined) collective's operands: XLA writes the names of ops it
  combined as "common/prefix/(name1:name2:…)"."""
  if op_name.endswith(")"):
    depth = 0
    for i in range(len(op_name) - 1, -1, -1):
      depth += {")": 1, "(": -1}.get(op_name[i], 0)
      if depth == 0:
        break
    if i == 0 or op_name[i - 1] == "/":
      return [op_name[:i] + name for name in _split_top_level(op_name[i + 1:-1], ":")]
  return [op_name]


def module_path(op_name: str) -> str:
  """The model's module path in a JAX op name ("jit(step)/transpose(jvp(DAN))/trunk/bn1/reduce_sum" →
  "trunk/bn1"; "" outside the model: loss, optimiser, metrics): the last run of names between
  transformations, without the "checkpoint" of a rematerialised block ("transpose(jvp(M))/trunk/jvp(M)/
  trunk/checkpoint/layer1_0/bn1/…"), a conditional's ("trunk/cond/branch_0_fun/transpose(jvp())/…") or
  the "platform" JAX 0.12.1 names lax.platform_dependent's chosen branch by ("trunk/bn1/platform/stack")."""
  runs = [[]]
  for part in _split_top_level(op_name, "/")[:-1]:
    if "(" in part:
      runs.append([])
    elif part not in ("checkpoint", "cond", "platform") and not re.fullmatch(r"branch_\d+_fun", part):
      runs[-1].append(part)
  return "/".join(next((run for run in reversed(runs) if run), []))


def collective_role(name: str, batch_norm_paths: set[str]) -> str:
  """What a collective's operand reduces, from its JAX op name (e.g. "jit(step)/transpose(jvp(DAN))/
  trunk/bn1/reduce_sum"): the batch statistics of a BatchNorm (a module path in `batch_norm_paths`) or
  their backward pass (with the BatchNorm's own parameter gradients), other parameter gradients, or the
  loss and metrics."""
  module = module_path(name)
  backward = "transpose(" in name
  if module in batch_norm_paths:
    return "batchnorm_backward" if backward else "batchnorm_statistics"
  return "gradients" if backward else "loss_and_metrics"


def collectives(hlo_text: str, batch_norm_paths: set[str]) -> dict:
  """The cross-device ops of compiled HLO text: {"ops": {kind: count}, "bytes": total, "by_role":
  {role: {"ops", "tensors", "bytes"}}} (roles from `collective_role`; an op that XLA combined from
  tensors of several roles counts once in each; bytes of the operands, per device)."""
  found = {"ops": {}, "bytes": 0, "by_role": {}}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.match(line)
    if not match:
      continue
    shapes = HLO_SHAPE.findall(match.group(1))
    op_name = _OP_NAME.search(line)
    names = _element_names(op_name.group(1) if op_name else "")
    if len(names) != len(shapes):
      names = names[:1] * len(shapes)
    found["ops"][match.group(2)] = found["ops"].get(match.group(2), 0) + 1
    roles = [collective_role(name, batch_norm_paths) for name in names]
    for role_name in set(roles):
      found["by_role"].setdefault(role_name, {"ops": 0, "tensors": 0, "bytes": 0})["ops"] += 1
    for role_name, (dtype, dims) in zip(roles, shapes):
      size = shape_bytes(f"{dtype}[{dims}]")
      found["by_role"][role_name]["tensors"] += 1
      found["by_role"][role_name]["bytes"] += size
      found["bytes"] += size
  return found


def batch_norm_paths(batch_stats) -> set[str]:
  """The module paths ("trunk/layer1_0/bn1") of a model's BatchNorms, from its batch_stats."""
  leaves = jax.tree_util.tree_leaves_with_path(batch_stats)
  return {"/".join(str(key.key) for key in path[:-1]) for path, _ in leaves}


def _train_step_parts(config, steps_per_epoch: int):
  """(method, model, its variables' shapes, optimizer) of `config`'s train step, `steps_per_epoch` setting the
  schedule's epoch length."""
  method = models.get_method(config.model.name)
  model = method.build(config.model)
  abstract = models.abstract_variables(model, config)
  return method, model, abstract, optim.make_optimizer(config.optimizer, steps_per_epoch, config.num_epochs,
                                                       abstract["params"])


def abstract_train_step(config, mesh=None):
  """`config`'s jitted train step (10 steps an epoch) over `mesh` (default every device) and its initial
  state as shapes, dtypes and shardings: what compiles the step without running anything."""
  mesh = mesh or mesh_lib.make_mesh()
  method, model, abstract, optimizer = _train_step_parts(config, 10)
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed)
  return step, train.abstract_state(abstract, optimizer.tx, mesh)


def _synthetic_batch(config, mesh, batch_size: int) -> dict:
  keys = jax.random.split(jax.random.key(0))
  return jax.device_put({
      "image": jax.random.normal(keys[0], models.dummy_images(config, batch_size).shape),
      "label": jax.random.randint(keys[1], (batch_size,), 0, config.model.num_classes),
      "mask": jnp.ones((batch_size,), jnp.float32)}, NamedSharding(mesh, P("data")))


def _timing(name: str, batch_size: int, compile_seconds: float, warmup_seconds: float, seconds: float,
            flops: float | None) -> dict:
  """The figures of one timed step: `flops` is XLA's count for the whole step, all devices together."""
  return {f"{name}_img_per_s": round(batch_size / seconds, 2), f"{name}_step_ms": round(seconds * 1e3, 3),
          f"{name}_compile_s": round(compile_seconds, 2), f"{name}_warmup_s": round(warmup_seconds, 3),
          f"{name}_flops_per_step": flops,
          f"{name}_tflops_per_s": None if flops is None else round(flops / seconds / 1e12, 4)}


def benchmark(config, steps: int, warmup: int = 3, profile_dir: str = "") -> dict:
  """--input=synthetic: the train and eval steps on random model inputs already on the device."""
  mesh = mesh_lib.make_mesh()
  devices = mesh.devices.size
  method, model, _, optimizer = _train_step_parts(config, 1)
  batch_size = config.batch_size
  start = time.perf_counter()
  holder = {"state": jax.block_until_ready(train.create_state(model, optimizer.tx, config, mesh))}
  init_seconds = time.perf_counter() - start
  batch = _synthetic_batch(config, mesh, batch_size)

  train_step, train_compile, train_cost = _compile(
      train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed), holder["state"], batch)

  def run_train(_):
    holder["state"], metrics = train_step(holder["state"], batch)
    return metrics["loss"]

  logging.info("Train step compiled in %.1f s; timing %d steps after %d warm-up steps.", train_compile, steps, warmup)
  peak_before_steps = _device_peak_bytes()
  train_warmup, train_seconds = _time_stream(itertools.repeat(None), warmup, steps, run_train)
  logging.info("Train step: %.1f ms (warm-up %.1f s).", train_seconds * 1e3, train_warmup)
  device_peak = _device_peak_bytes()  # before the eval step: the training peak
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      _time_stream(itertools.repeat(None), 0, PROFILED_STEPS, run_train)
    with open(os.path.join(profile_dir, "train_step.hlo.txt"), "w") as file:
      file.write(train_step.as_text())

  variables = checkpointing.model_variables(holder["state"])
  eval_step, eval_compile, eval_cost = _compile(evaluate.confusion_step(model, config.model.num_classes, mesh),
                                                variables, batch)
  eval_warmup, eval_seconds = _time_stream(itertools.repeat(None), warmup, steps,
                                           lambda _: eval_step(variables, batch))

  memory = memory_analysis(train_step)
  peak = peak_tflops(jax.devices()[0].device_kind)
  executed_flops = train_cost["flops"]  # with the recomputation of config.model.remat
  work_flops = executed_flops if config.model.remat == "none" else _train_flops_without_remat(config, mesh, batch)
  train_figures = _timing("train", batch_size, train_compile, train_warmup, train_seconds, work_flops)
  return {
      "input": "synthetic", **_describe(config, mesh, batch_size), "steps": steps, "warmup_steps": warmup,
      "init_s": round(init_seconds, 2),
      "img_per_s": train_figures["train_img_per_s"], **train_figures,
      "train_flops_per_step_with_remat": executed_flops,
      "train_hardware_tflops_per_s":
          None if executed_flops is None else round(executed_flops / train_seconds / 1e12, 4),
      **_timing("eval", batch_size, eval_compile, eval_warmup, eval_seconds, eval_cost["flops"]),
      "train_bytes_accessed_per_step": train_cost["bytes_accessed"] * devices,
      "peak_tflops_per_device": peak,
      "mfu": round(train_figures["train_tflops_per_s"] / (peak * devices), 4)
             if peak and train_figures["train_tflops_per_s"] is not None else None,
      "peak_memory_bytes": device_peak if device_peak is not None else planned_peak_bytes(memory),
      "peak_memory_source": "device.memory_stats" if device_peak is not None else "compiled.memory_analysis",
      "peak_memory_before_steps_bytes": peak_before_steps,
      "train_memory_analysis": memory,
      "train_saved_for_backward_bytes": saved_for_backward_bytes(
          model, variables, jax.ShapeDtypeStruct(models.dummy_images(config, batch_size // devices).shape,
                                                 jnp.float32)),
      "train_collectives": collectives(train_step.as_text(), batch_norm_paths(variables["batch_stats"])),
  }


def _train_flops_without_remat(config, mesh, batch) -> float | None:
  """`program_flops` of `config`'s train step with config.model.remat "none": the step's work, without
  what a rematerialised step computes again (lowered from shapes, not compiled)."""
  plain = copy.deepcopy(config)
  plain.model.remat = "none"
  step, state = abstract_train_step(plain, mesh)
  return program_flops(step.lower(state, batch))


def _train_data(config, mesh, steps: int) -> pipeline.TrainData:
  """The run's training stream of whole batches (an epoch's short last one dropped: it would time a smaller batch
  and compile the step again), with enough epochs for `steps` steps."""
  config.dataset.drop_last = True
  data = pipeline.TrainData(config, mesh)
  if data.num_steps < steps:
    config.num_epochs = math.ceil(steps / data.steps_per_epoch)
    data = pipeline.TrainData(config, mesh)
  return data


def _time_stream(batches, warmup: int, steps: int, consume) -> tuple[float, float]:
  """(seconds of the first `warmup` items, seconds per item of the next `steps`) of `batches`, each
  handed to `consume`."""
  iterator = iter(batches)
  start = time.perf_counter()
  for _ in range(warmup):
    jax.block_until_ready(consume(next(iterator)))
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = consume(next(iterator))
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / steps
  if hasattr(iterator, "close"):
    iterator.close()  # stops the decoding workers and frees their shared memory
  return warmup_seconds, seconds


def benchmark_input(config, mode: str, steps: int, warmup: int) -> dict:
  """--input=host | augment | end_to_end on the prepared data set. The first batch (the decoding workers'
  start-up) and the compilation of what consumes the batches (`.lower().compile()`, as --input=synthetic
  compiles its steps) are timed apart, before the `warmup` untimed batches and the `steps` timed ones."""
  mesh = mesh_lib.make_mesh()
  data = _train_data(config, mesh, 1 + warmup + steps)
  start = time.perf_counter()
  data.cache()
  result = {"input": mode, **_describe(config, mesh, data.global_batch), "steps": steps, "warmup_steps": warmup,
            "stored_shape": list(data.shape), "cache": data.cache_mode,
            "cache_seconds": round(time.perf_counter() - start, 2),
            "workers": data.workers if data.cache_mode == "none" else 0}
  sharding = NamedSharding(mesh, P("data"))
  if mode == "augment":
    images = jax.device_put(jax.random.randint(jax.random.key(0), (data.global_batch, *data.batch_shape), 0, 256)
                            .astype(jnp.uint8), sharding)
    offsets = jax.device_put(jnp.arange(data.global_batch), sharding)
    batches = iter([(images, offsets + i * data.global_batch) for i in range(1 + warmup + steps)])
  else:
    batches = data.batches(0)
  if mode == "end_to_end":
    method, model, _, optimizer = _train_step_parts(config, data.steps_per_epoch)
    start = time.perf_counter()
    holder = {"state": jax.block_until_ready(train.create_state(model, optimizer.tx, config, mesh))}
    result["init_s"] = round(time.perf_counter() - start, 2)
    train_step = train.make_train_step(model, method.loss, train.loss_config_for(config, data.split), optimizer,
                                       mesh, config.seed, data.augment)
  start = time.perf_counter()
  first = jax.block_until_ready(next(batches))  # the workers' start-up: not a step
  first_batch_seconds = time.perf_counter() - start
  start = time.perf_counter()
  if mode == "host":
    consume = lambda batch: batch["image"]  # noqa: E731  # nothing to compile: the stream is the figure
  elif mode == "augment":
    augment = jax.jit(data.augment, out_shardings=sharding).lower(*first).compile()
    consume = lambda batch: augment(*batch)  # noqa: E731
  else:
    train_step = train_step.lower(holder["state"], first).compile()

    def consume(batch):
      holder["state"], metrics = train_step(holder["state"], batch)
      return metrics["loss"]
  compile_seconds = None if mode == "host" else round(time.perf_counter() - start, 2)
  warmup_seconds, seconds = _time_stream(batches, warmup, steps, consume)
  return {**result, "first_batch_s": round(first_batch_seconds, 3), "compile_s": compile_seconds,
          "warmup_s": round(warmup_seconds, 3), "step_ms": round(seconds * 1e3, 3),
          "img_per_s": round(data.global_batch / seconds, 2)}


def check_arguments(input_mode: str, output: str, profile_dir: str) -> None:
  """Fails before any work on flags that would fail or be ignored after it: --profile_dir with an --input
  that writes no trace, an --output or a --profile_dir that cannot be written."""
  if profile_dir and input_mode != "synthetic":
    raise UserError(f"--profile_dir={profile_dir}: only --input=synthetic writes a trace (of its train steps); "
                    f"--input={input_mode} has none: leave --profile_dir out, or profile --input=synthetic.")
  if output:
    cli.check_writable_file("--output", output, "a file to append the JSON line to", folder_must_exist=True)
  if profile_dir:
    cli.check_writable_place(f"--profile_dir={profile_dir}", profile_dir)


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  check_arguments(args.input, args.output, args.profile_dir)
  validation.validate(args.config, training=True)
  measured_on = environment()  # before the run: the load average of the machine without it
  if args.input == "synthetic":
    result = benchmark(args.config, args.steps, args.warmup, args.profile_dir)
  else:
    result = benchmark_input(args.config, args.input, args.steps, args.warmup)
  line = json.dumps({"command": " ".join(sys.argv[1:]), **measured_on, **result})
  print(line)
  if args.output:
    with open(args.output, "a") as output:
      output.write(line + "\n")


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_enum("input", "synthetic", list(INPUT_MODES), "What to time (see the module docstring).")
  flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).", lower_bound=1)
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation (and, for the data modes, after the first "
                       "batch, which starts the workers and is timed apart).", lower_bound=0)
  cli.define_path("output", "", "Also append the JSON line to this file.")
  cli.define_path("profile_dir", "", "--input=synthetic only: write a jax.profiler trace of 3 train steps here "
                  "(after the timed steps, so the figures do not include the profiler) and the "
                  "compiled train step's HLO; benchmarks/profile_breakdown.py DIR sums it up.")
  cli.mark_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
