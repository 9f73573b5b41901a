"""One training step of fer_jax next to the same step in PyTorch, both in float64.

Shared by tests/test_one_step_parity.py (against the PyTorch networks of this folder) and
official_one_step.py (against the official code). The PyTorch side records, after each step,
its weights in the released checkpoint's format; fer_jax's converter maps them (and the SGD
momentum buffers, put in the weights' places) onto fer_jax's variable tree, where they are
compared leaf by leaf with fer_jax's own step. Run under 64-bit JAX (JAX_ENABLE_X64=1 or
`jax.enable_x64(True)`).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import convert
from fer_jax.convert import core as convert_core
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from helpers import get_config

STEPS_PER_EPOCH = 100  # both steps lie in epoch 1: the base learning rate, the model in training mode
# Biases that feed a training-mode BatchNorm (DAN's head convolutions and fc1) have a zero
# gradient in exact arithmetic, so both sides hold rounding noise there (≈1e-17): tensors under
# this size are compared by their absolute difference, in a group of their own.
NOISE_LEVEL = 1e-10
NOISE_GROUP = "noise-level tensors (absolute)"


def jax_steps(config, variables: dict, batches) -> list[dict]:
  """fer_jax's training step (its optimiser and loss) from `variables` over `batches` of
  (NHWC images, labels): after each, {"loss", "variables": {params, batch_stats}, "momentum"}."""
  method = models.get_method(config.model.name)
  model = method.build(config.model)
  mesh = mesh_lib.make_mesh()
  optimizer = optim.make_optimizer(config.optimizer, STEPS_PER_EPOCH, config.num_epochs, variables["params"])
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed)
  state = {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": optimizer.tx.init(variables["params"])}
  state = jax.device_put(state, NamedSharding(mesh, P()))
  records = []
  for images, labels in batches:
    state, metrics = step(state, {"image": images, "label": labels})
    copied = jax.tree.map(np.array, {k: state[k] for k in ("params", "batch_stats")})
    records.append({"loss": float(metrics["loss"]), "variables": copied,
                    "momentum": jax.tree.map(np.array, momentum(state["opt_state"]))})
  return records


def momentum(opt_state):
  """The SGD momentum buffers (optax `trace`) of every parameter, merged over the lr groups."""
  is_trace = lambda node: isinstance(node, optax.TraceState)
  traces = [node.trace for node in jax.tree.leaves(opt_state, is_leaf=is_trace) if is_trace(node)]
  is_masked = lambda node: isinstance(node, optax.MaskedNode)
  return jax.tree.map(lambda *leaves: next(leaf for leaf in leaves if not is_masked(leaf)), *traces,
                      is_leaf=is_masked)


def float64_config(spec: str, size: int):
  """The config file's config at input `size` with model.dtype="float64"."""
  config = get_config(spec)
  config.input.size = size
  config.model.dtype = "float64"
  return config


def random_batches(count: int, batch: int, size: int, num_classes: int, seed: int = 0):
  """`count` batches of (float64 NHWC images, int32 labels)."""
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=(batch, size, size, 3)), rng.integers(0, num_classes, batch).astype(np.int32))
          for _ in range(count)]


def torch_steps(modules: dict, extra: dict, optimizer: torch.optim.SGD, loss_of, batches) -> list[dict]:
  """PyTorch's steps: `loss_of(images NCHW, labels)` minimised by `optimizer` over `batches`.

  `modules` {name: nn.Module} (in training mode) and `extra` {fer_jax path: nn.Parameter} (DAN's
  centres, "affinity/centres") are the optimised state. Records before the first step and after
  each: {"loss", "state" {module: state dict}, "momentum" {module: {state dict key: buffer}} (a
  module listed twice, like SCAN-CCI's region MLP, under both keys), "extra", "extra_momentum"}.
  """
  def buffer(parameter):
    return optimizer.state[parameter]["momentum_buffer"].detach().clone() if optimizer.state else None

  def record(loss):
    return {"loss": loss,
            "state": {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()},
            "momentum": {name: {k: buffer(p) for k, p in m.state_dict(keep_vars=True).items()
                                if isinstance(p, torch.nn.Parameter)} for name, m in modules.items()},
            "extra": {name: p.detach().numpy().copy() for name, p in extra.items()},
            "extra_momentum": {name: buffer(p) for name, p in extra.items()}}

  records = [record(None)]
  for module in modules.values():
    module.train()
  for images, labels in batches:
    optimizer.zero_grad()
    loss = loss_of(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels.astype(np.int64)))
    loss.backward()
    optimizer.step()
    records.append(record(loss.item()))
  return records


def in_fer_jax_layout(config, records: list[dict], checkpoint_of) -> tuple[dict, list[dict]]:
  """(initial variables, per step {"loss", "variables", "momentum"}) in fer_jax's tree: each
  record's state dicts made into a checkpoint by `checkpoint_of` and converted, with its `extra`
  tensors; the momentum buffers, in the weights' places, only for the last step."""
  def variables(states, extra):
    return converted(config, checkpoint_of(states), extra)

  steps = [{"loss": record["loss"], "variables": variables(record["state"], record["extra"])}
           for record in records[1:]]
  last = records[-1]
  buffers = {name: {k: last["momentum"][name].get(k, v) for k, v in state.items()}
             for name, state in last["state"].items()}
  steps[-1]["momentum"] = variables(buffers, last["extra_momentum"])["params"]
  return variables(records[0]["state"], records[0]["extra"]), steps


def dan_checkpoint(states: dict) -> dict:
  return {"model_state_dict": states["model"]}


def scan_cci_checkpoint(states: dict) -> dict:
  return {f"{name}_state_dict": state for name, state in states.items()}


def _copy_by_path(tensors, target, config) -> None:
  del config
  for name in tensors.names():
    module, leaf = name.rsplit("/", 1)
    convert_core.copy_leaf(tensors, target, module, leaf, name)


def converted(config, checkpoint: dict, extra: dict) -> dict:
  """fer_jax's converter applied to a checkpoint dict as the method's released files hold it;
  `extra` {fer_jax module path/leaf: array} fills what such files lack (DAN's centres)."""
  source = convert.SOURCES_BY_NAME[config.model.name]
  numpy_checkpoint = jax.tree.map(lambda t: t.detach().numpy() if isinstance(t, torch.Tensor) else t, checkpoint)
  inputs = [(source, source.select(numpy_checkpoint), "official step")]
  if extra:
    extra_source = dataclasses.replace(source, name="extra", map=_copy_by_path, mismatch=None)
    inputs.append((extra_source, {k: np.asarray(v) for k, v in extra.items()}, "extra"))
  variables, _ = convert.convert_tensors(config, inputs)
  return variables


def flat(tree, prefix: str = "") -> dict:
  return {prefix + optim.path_of(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def group_of(path: str) -> str:
  if path.startswith("batch_stats/"):
    return "BN stats"
  if "/affinity/" in path:
    return "centres"
  module = path.split("/")[-2]
  if re.search(r"(^|_)bn\d*$", module):
    return "BN params"
  return "backbone convs" if path.startswith("params/trunk/") else "heads"


def relative_error(actual, expected) -> float:
  """max |actual − expected| / max |expected| over one tensor."""
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), np.finfo(np.float64).tiny))


def worst_by_group(actual: dict, expected: dict) -> dict:
  """{group: (worst relative error, its path)} over the leaves of two flat {path: array} dicts."""
  assert actual.keys() == expected.keys(), sorted(actual.keys() ^ expected.keys())[:5]
  worst = {}
  for path, value in expected.items():
    if np.max(np.abs(value)) < NOISE_LEVEL:
      group, error = NOISE_GROUP, float(np.max(np.abs(actual[path] - value)))
    else:
      group, error = group_of(path), relative_error(actual[path], value)
    worst[group] = max(worst.get(group, (0.0, "")), (error, path))
  return worst


def compare(initial: dict, jax_records: list[dict], torch_records: list[dict]) -> dict:
  """Worst relative errors (and where): the loss of each step; after step 1 the variables, the change of each
  parameter and the BN statistics; after step 2 the variables and the momentum buffers.

  `torch_records`: per step {"loss", "variables", "momentum"} already in fer_jax's layout.
  """
  first_jax, first_torch = jax_records[0], torch_records[0]
  start = flat(initial)
  change = lambda record: {path: value - start[path] for path, value in flat(record["variables"]).items()
                           if path.startswith("params/")}
  errors = {f"loss, step {i + 1}": (relative_error(np.float64(j["loss"]), np.float64(t["loss"])), "loss")
            for i, (j, t) in enumerate(zip(jax_records, torch_records))}
  errors.update({f"step 1 {group}": e for group, e in worst_by_group(
      flat(first_jax["variables"]), flat(first_torch["variables"])).items()})
  errors.update({f"step 1 change of {group}": e for group, e in worst_by_group(
      change(first_jax), change(first_torch)).items()})
  last_jax, last_torch = jax_records[-1], torch_records[-1]
  errors.update({f"step {len(jax_records)} {group}": e for group, e in worst_by_group(
      flat(last_jax["variables"]), flat(last_torch["variables"])).items()})
  momentum = worst_by_group(flat(last_jax["momentum"], "params/"), flat(last_torch["momentum"], "params/"))
  noise = momentum.pop(NOISE_GROUP, None)
  errors[f"step {len(jax_records)} momentum"] = max(momentum.values())
  if noise:
    errors[f"step {len(jax_records)} momentum, {NOISE_GROUP}"] = noise
  return errors
