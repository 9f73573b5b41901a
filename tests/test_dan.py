import re

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from fer_jax import models
from fer_jax import validation
from fer_jax.errors import ConfigError
from fer_jax.models import dan
from fer_jax.summary import count_params
from helpers import get_config


@pytest.mark.parametrize("num_classes, expected", [(7, 19_723_733), (8, 19_724_248)])
def test_parameter_count_matches_official(num_classes, expected):
  model = dan.DAN(num_classes=num_classes)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert models.parameter_count(dan.METHOD, variables["params"]) == expected  # the count summary, logs and reports give
  assert count_params(variables["params"]) == expected + 8 * 512  # the affinity loss's centres (8, 512) left out


def test_parts_of_the_parameter_count():
  variables = jax.eval_shape(lambda: dan.DAN().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  params = variables["params"]
  assert count_params(params["trunk"]) == 11_176_512
  assert count_params(params["head0"]["sa"]) == 2_102_528
  assert count_params(params["head0"]["ca"]) == 33_376
  assert count_params(params["fc"]) + count_params(params["bn"]) == 3_605


@pytest.mark.integration
def test_forward_shapes_and_fusion():
  model = dan.DAN(num_classes=7, num_heads=4)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  outputs = model.apply(variables, images, train=False)
  assert outputs["logits"].shape == (2, 7)
  assert outputs["heads"].shape == (2, 4, 512)
  assert outputs["pooled_features"].shape == (2, 512)
  # log-softmax over heads: every entry ≤ 0 and exp sums to 1 over the head axis.
  assert np.all(np.asarray(outputs["heads"]) <= 0)
  np.testing.assert_allclose(np.exp(np.asarray(outputs["heads"])).sum(axis=1), 1.0, rtol=1e-5)


def test_channel_attention_gate_starts_near_half():
  head = dan.ChannelGate()
  x = jax.random.normal(jax.random.key(0), (4, 7, 7, 512))
  variables = head.init(jax.random.key(1), x, train=False)
  gated = head.apply(variables, x, train=False)
  pooled = np.asarray(x.mean(axis=(1, 2)))
  np.testing.assert_allclose(np.asarray(gated) / pooled, 0.5, atol=0.01)


def test_affinity_loss_against_hand_computation():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(5, 6)).astype(np.float32)
  centres = rng.normal(size=(8, 6)).astype(np.float32)
  labels = np.array([0, 3, 6, 6, 2])
  spread = centres.var(axis=0, ddof=1).sum()
  squared = ((features - centres[labels]) ** 2).sum(axis=1) / spread
  # the clamp raises each of the 7 masked-out entries per row to 1e-12
  expected = (squared.sum() + 5 * 7 * 1e-12) / 5
  got = dan.affinity_loss(jnp.asarray(features), jnp.asarray(centres), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_partition_loss_against_hand_computation():
  heads = np.random.default_rng(1).normal(size=(3, 4, 10)).astype(np.float32)
  variance = heads.var(axis=1, ddof=1).mean()
  np.testing.assert_allclose(float(dan.partition_loss(jnp.asarray(heads))), np.log(1 + 4 / variance), rtol=1e-5)
  assert float(dan.partition_loss(jnp.asarray(heads[:, :1]))) == 0.0


def test_total_loss_sums_with_weights():
  """Each part against its formula, each auxiliary part scaled by its own weight: unequal weights, so a weight
  dropped or given to the other part shows (DAN's are both 1)."""
  rng = np.random.default_rng(2)
  logits, features = rng.normal(size=(4, 7)), rng.normal(size=(4, 512))
  heads, centres = rng.normal(size=(4, 4, 512)), rng.normal(size=(8, 512))
  labels = np.array([0, 1, 2, 3])
  outputs = {name: jnp.asarray(value, jnp.float32) for name, value in
             {"logits": logits, "pooled_features": features, "heads": heads, "centres": centres}.items()}
  config = ml_collections.ConfigDict({"affinity_weight": 0.3, "partition_weight": 2.5})
  total, parts = dan.loss(outputs, jnp.asarray(labels), config)
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = {"ce_loss": -log_probs[np.arange(4), labels].mean(),
              "affinity_loss": ((features - centres[labels])**2).sum() / centres.var(axis=0, ddof=1).sum() / 4,
              "partition_loss": np.log(1 + 4 / heads.var(axis=1, ddof=1).mean())}
  for name, value in expected.items():
    np.testing.assert_allclose(float(parts[name]), value, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(float(total), expected["ce_loss"] + 0.3 * expected["affinity_loss"]
                             + 2.5 * expected["partition_loss"], rtol=1e-5)


def test_a_misspelt_model_key_is_refused_naming_the_method_and_the_valid_keys():
  """config.model.num_centers was left out without a word, building 8 centres."""
  config = get_config("configs/dan.py:synthetic")
  config.model.num_centers = 9
  problem = ("config.model.num_centers is not a key of method 'dan' (did you mean num_centres?): rename or remove it; "
             "its keys are dtype, name, num_classes, remat, num_heads, num_centres.")
  with pytest.raises(ConfigError) as refused:
    dan.METHOD.build(config.model)
  assert str(refused.value) == problem
  with pytest.raises(ConfigError, match=re.escape(problem)):  # the check before any work lists it too
    validation.validate(config, training=False)
  config = get_config("configs/dan.py:synthetic")
  config.model.num_centres = 9
  validation.validate(config, training=False)
  assert dan.METHOD.build(config.model).num_centres == 9
