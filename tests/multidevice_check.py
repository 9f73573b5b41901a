"""Trains a few steps on 1 device and on all devices of this process and compares them.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_train.py does).
Prints one JSON line: device count, both loss curves, the largest parameter difference.
The model is small (conv + BatchNorm + dense): the point is the sharded step, which is
the same code for every method.
"""

import json
import sys

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fer_jax import optim
from fer_jax import train
from fer_jax.data import pipeline

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import get_config, tiny_run  # noqa: E402


class SmallNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(16, (3, 3), (2, 2))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return {"logits": nn.Dense(7)(jnp.mean(x, axis=(1, 2)))}


def cross_entropy(outputs, labels, loss_config):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels)), {}


def run(devices, config, steps=4):
  mesh = train.make_mesh(devices)
  model = SmallNet()
  tx = optim.make_optimizer(config.optimizer, 8, 1, train.abstract_variables(model, config)["params"])
  schedule = optim.lr_schedule(config.optimizer, 8, 1)
  state = train.create_state(model, tx, config, mesh)
  step = train.make_train_step(model, cross_entropy, config.loss, tx, schedule, mesh, config.seed)
  losses = []
  for _, batch in zip(range(steps), pipeline.TrainData(config, mesh).batches(0)):
    assert len(batch["image"].sharding.device_set) == len(devices)
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state["params"])


def main():
  flags.FLAGS.mark_as_parsed()
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  # SGD: Adam's normalised steps would blow rounding-level gradient differences up to ±lr.
  config.optimizer.update(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
  one_losses, one_params = run(jax.devices()[:1], config)
  all_losses, all_params = run(jax.devices(), config)
  difference = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(all_params)))
  print(json.dumps({"devices": jax.device_count(), "one_device_losses": one_losses,
                    "all_device_losses": all_losses, "max_param_difference": difference}))


if __name__ == "__main__":
  main()
