"""Training with the model in inference mode from a given epoch (the official SCAN-CCI scripts' quirk)."""

import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from fer_jax import checkpointing
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from helpers import get_config, short_tiny_net_run

EPSILON = 1e-5


class DenseBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    z = nn.Dense(3, name="dense")(x)
    return {"logits": nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPSILON, name="bn")(z)}


def _one_step(model_mode: str):
  rng = np.random.default_rng(0)
  x, labels = rng.normal(size=(8, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2, 0, 1])
  model = DenseBatchNorm()
  variables = model.init(jax.random.key(0), x, train=False)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), variables["params"])
  stats = {"bn": {"mean": rng.normal(size=3).astype(np.float32), "var": rng.uniform(0.5, 2, 3).astype(np.float32)}}
  tx = optax.sgd(0.1)
  state = {"step": np.int32(0), "params": params, "batch_stats": stats, "opt_state": tx.init(params)}
  step = train.make_train_step(model, models.cross_entropy_loss, None, optim.Optimizer(tx, lambda s: 0.1),
                               mesh_lib.make_mesh(), 0, mode=model_mode)
  new_state, metrics = jax.device_get(step(state, {"image": x, "label": labels}))
  return x, labels, params, stats, new_state, metrics


def test_an_inference_mode_step_follows_the_formulas_and_keeps_the_running_statistics():
  x, labels, params, stats, new_state, metrics = _one_step("inference")
  w, b = params["dense"]["kernel"], params["dense"]["bias"]
  gamma, beta = params["bn"]["scale"], params["bn"]["bias"]
  z = x @ w + b
  normalised = (z - stats["bn"]["mean"]) / np.sqrt(stats["bn"]["var"] + EPSILON)
  logits = normalised * gamma + beta
  probabilities = np.exp(logits - logits.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  one_hot = np.eye(3)[labels]
  assert metrics["loss"] == pytest.approx(-np.mean(np.log(probabilities[np.arange(8), labels])), rel=1e-5)
  d_logits = (probabilities - one_hot) / len(x)
  d_z = d_logits * gamma / np.sqrt(stats["bn"]["var"] + EPSILON)
  want = {"dense": {"kernel": w - 0.1 * x.T @ d_z, "bias": b - 0.1 * d_z.sum(0)},
          "bn": {"scale": gamma - 0.1 * (d_logits * normalised).sum(0), "bias": beta - 0.1 * d_logits.sum(0)}}
  jax.tree.map(lambda got, expected: np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6),
               new_state["params"], want)
  jax.tree.map(np.testing.assert_array_equal, new_state["batch_stats"], stats)


def test_a_training_mode_step_updates_the_running_statistics_from_the_batch():
  x, _, params, stats, new_state, _ = _one_step("train")
  z = x @ params["dense"]["kernel"] + params["dense"]["bias"]
  np.testing.assert_allclose(new_state["batch_stats"]["bn"]["mean"], 0.9 * stats["bn"]["mean"] + 0.1 * z.mean(0),
                             rtol=1e-5)
  np.testing.assert_allclose(new_state["batch_stats"]["bn"]["var"], 0.9 * stats["bn"]["var"] + 0.1 * z.var(0),
                             rtol=1e-5)


@pytest.mark.parametrize("start, steps_per_epoch, modes", [
    (0, 4, ["train"] * 12), (2, 4, ["train"] * 4 + ["inference"] * 8), (3, 2, ["train"] * 4 + ["inference"] * 2)])
def test_the_mode_of_each_step_follows_its_epoch(start, steps_per_epoch, modes):
  config = get_config("configs/dan.py:synthetic")
  config.inference_mode_from_epoch = start
  assert [train.model_mode(config, step, steps_per_epoch) for step in range(1, len(modes) + 1)] == modes


def _stats_and_params(workdir, step, config):
  return checkpointing.restore_model(os.path.join(workdir, "checkpoints", str(step)),
                                     models.abstract_variables(models.build_model(config), config))


@pytest.mark.integration
def test_running_statistics_freeze_from_the_inference_epoch_and_resume_stays_exact(tmp_path):
  config = short_tiny_net_run()  # epochs of 4 steps, each saved
  config.inference_mode_from_epoch = 2
  config.eval.every_epochs = 2  # only the final report evaluates
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(config, straight)
  epoch1, epoch2 = _stats_and_params(straight, 4, config), _stats_and_params(straight, 8, config)
  # Epoch 1's training-mode steps moved the running means off their initial zeros; epoch 2's inference-mode steps
  # kept every statistic, and trained.
  assert np.any(epoch1["batch_stats"]["bn"]["mean"] != 0)
  jax.tree.map(np.testing.assert_array_equal, epoch1["batch_stats"], epoch2["batch_stats"])
  assert not np.array_equal(epoch1["params"]["fc"]["kernel"], epoch2["params"]["fc"]["kernel"])
  # Resumed at the epoch boundary, the run takes the inference-mode step and ends bit-identical.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "8"))
  train.train_and_evaluate(config, resumed)
  assert checkpointing.fingerprint(epoch2) == checkpointing.fingerprint(_stats_and_params(resumed, 8, config))


@pytest.mark.parametrize("arg", ["rafdb", "ferplus", "affectnet7", "affectnet8", "sfew", "synthetic"])
def test_scan_cci_configs_train_from_epoch_two_in_inference_mode_as_the_official_scripts(arg):
  assert get_config(f"configs/scan_cci.py:{arg}").inference_mode_from_epoch == 2
  assert get_config("configs/dan.py:rafdb").inference_mode_from_epoch == 0
