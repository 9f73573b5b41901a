"""Trains a few steps on 1 device and on all devices of this process and compares them.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 and $FER_JAX_TEST_TFDS_DIR (the
session's synthetic/tiny folder, see tests/conftest.py); tests/test_train.py does both. An argument
sets DAN's seed (default 0): `python tests/multidevice_check.py 3`. Prints one
JSON line: device count, both loss curves, the largest parameter difference, whether a run
checkpointed at step 4 and resumed on all devices ends with exactly the parameters of the
uninterrupted one, and whether an evaluation whose batch does not divide over the devices gives the
one-device confusion matrix; it fails if a checkpoint save on all devices compiles any program
(orbax's per-replica slicing, see checkpointing.manager). The model is small (conv + BatchNorm +
dense): the point is the sharded step with its device augmentation, the same code for every method.
DAN's first step is compared too (its losses: the affinity loss's centres and the partition loss's
variance over heads, each a mean over the sharded batch): its loss, and its update part by part. It
also reports the collectives of the all-device train step, whose one BatchNorm reduces its batch
statistics in one all-gather (models/batch_norm.batch_moments), and how far those statistics fall
from float64 NumPy's on inputs whose mean is 10⁴ times their spread.
"""

import itertools
import json
import sys
import tempfile

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import benchmark
from fer_jax import checkpointing
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax.data import pipeline
from fer_jax.models import batch_norm
from fer_jax.models import layers

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import compiled_during, distance, get_config, restore_state, tiny_run  # noqa: E402


class SmallNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(16, (3, 3), (2, 2))(x)
    x = nn.relu(layers.torch_batch_norm(train, None, "bn")(x))
    return {"logits": nn.Dense(7)(jnp.mean(x, axis=(1, 2)))}


SMALL_NET = models.Method(build=lambda model_config: SmallNet())


def run(devices, config, steps=4, start=0, checkpoint_dir=None, method=SMALL_NET):
  """Trains `method` for steps start … steps − 1 (resuming from `checkpoint_dir`'s step `start` if > 0);
  saves the final state there when given."""
  mesh = mesh_lib.make_mesh(devices)
  model = method.build(config.model)
  optimizer = optim.make_optimizer(config.optimizer, 8, 1, models.abstract_variables(model, config)["params"])
  state = train.create_state(model, optimizer.tx, config, mesh)
  checkpoints = checkpointing.manager(checkpoint_dir) if checkpoint_dir else None
  if start:
    state = restore_state(checkpoints, start, state)
  data = pipeline.TrainData(config, mesh)
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed, data.augment)
  losses, batches = [], data.batches(start)
  first = next(batches)
  compiled = step.lower(state, first).compile()  # run as it is, so that its collectives are the ones counted
  collectives = benchmark.collectives(compiled.as_text(), set())["ops"]
  for _, batch in zip(range(steps - start), itertools.chain([first], batches)):
    assert len(batch["image"].sharding.device_set) == len(devices)
    state, metrics = compiled(state, batch)
    losses.append(float(metrics["loss"]))
  if checkpoints:
    def save():
      checkpointing.save(checkpoints, steps, state, config)
      checkpointing.wait_until_saved(checkpoints)
    save_compilations = sum(compiled_during(save).values())
    assert save_compilations == 0, f"a checkpoint save on {len(devices)} devices compiled {save_compilations} programs"
  return losses, jax.device_get(state["params"]), collectives


def batch_moments_error(devices) -> float:
  """The largest relative error of batch_norm.batch_statistics's mean and variance on `devices`, the
  batch sharded as in a train step, against float64 NumPy, at mean/std 10⁴ (float32)."""
  mesh = mesh_lib.make_mesh(devices)
  values = np.random.default_rng(0).normal(1e4, 1.0, (8 * len(devices), 5, 5, 3)) * np.array([0.5, 1.0, 2.0])
  x = jax.device_put(values.astype(np.float32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

  def statistics(x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return batch_norm.batch_statistics(x, (0, 1, 2))

  mean, var = jax.jit(statistics)(x)
  rounded = np.asarray(x, np.float64)
  exact_mean, exact_var = rounded.mean((0, 1, 2)), rounded.var((0, 1, 2))
  return max(float(np.max(np.abs(mean - exact_mean) / exact_mean)), float(np.max(np.abs(var - exact_var) / exact_var)))


def confusion(devices, config, variables):
  """The eval split's confusion matrix on `devices`, with a batch that does not divide over them."""
  mesh = mesh_lib.make_mesh(devices)
  replicated = jax.device_put(variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return evaluate.Evaluators(SmallNet(), config, mesh)(replicated, "eval")["confusion_matrix"]


def largest_difference(params, others) -> float:
  return max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(others)))


def update_differences(start, params, others) -> dict:
  """{part: how far `others` lie from `params`, as a fraction of how far `params` moved from `start`} for each
  top-level part of the model (trunk, head0, fc, affinity, …)."""
  return {part: distance(params[part], others[part]) / distance(params[part], start[part]) for part in params}


def main(dan_seed: int = 0):
  flags.FLAGS.mark_as_parsed()
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  # SGD: Adam's normalised steps would blow rounding-level gradient differences up to ±lr.
  config.optimizer.update(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
  one_losses, one_params, _ = run(jax.devices()[:1], config)
  all_losses, all_params, collectives = run(jax.devices(), config)
  difference = largest_difference(one_params, all_params)
  dan = tiny_run(get_config("configs/dan.py:synthetic"), batch_size=16)
  dan.optimizer.update(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, grad_clip_norm=0.0)  # scale errors show
  dan.seed = dan_seed
  dan_model = models.get_method("dan").build(dan.model)
  dan_start = jax.device_get(models.init_variables(dan_model, dan, jax.random.key(dan.seed))["params"])
  dan_one_losses, dan_one_params, _ = run(jax.devices()[:1], dan, steps=1, method=models.get_method("dan"))
  dan_all_losses, dan_all_params, _ = run(jax.devices(), dan, steps=1, method=models.get_method("dan"))
  straight_losses, straight_params, _ = run(jax.devices(), config, steps=8)
  with tempfile.TemporaryDirectory() as directory:
    run(jax.devices(), config, steps=4, checkpoint_dir=directory)
    resumed_losses, resumed_params, _ = run(jax.devices(), config, steps=8, start=4, checkpoint_dir=directory)
  resumed_exactly = straight_losses[4:] == resumed_losses and all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(resumed_params)))
  config.eval_batch_size = 25  # 70 examples: 3 batches, rounded up to 32 on 8 devices
  variables = jax.jit(lambda: models.init_variables(SmallNet(), config, jax.random.key(1)))()
  same_evaluation = confusion(jax.devices()[:1], config, variables) == confusion(jax.devices(), config, variables)
  print(json.dumps({"devices": jax.device_count(), "one_device_losses": one_losses,
                    "all_device_losses": all_losses, "max_param_difference": difference,
                    "dan": {"one_device_losses": dan_one_losses, "all_device_losses": dan_all_losses,
                            "update_differences": update_differences(dan_start, dan_one_params, dan_all_params)},
                    "resumed_exactly": resumed_exactly, "same_evaluation": same_evaluation,
                    "train_step_collectives": collectives,
                    "batch_moments_error": {"one_device": batch_moments_error(jax.devices()[:1]),
                                            "all_devices": batch_moments_error(jax.devices())}}))


if __name__ == "__main__":
  main(*map(int, sys.argv[1:]))
