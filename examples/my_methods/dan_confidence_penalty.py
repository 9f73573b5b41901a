"""DAN with a confidence penalty (Pereyra et al., 2017) added to its loss: a loss of yours on one of fer_jax's
methods (docs/extending.md). config.model.name = "my_methods.dan_confidence_penalty", with DAN's config
(configs/dan.py) and config.loss.confidence_penalty, the penalty's weight: examples/dan_confidence_penalty_config.py
is that config. Run from examples/, where `my_methods` is importable:

  cd examples && python -m fer_jax.main --config=dan_confidence_penalty_config.py:synthetic --workdir=/tmp/dan_penalty
"""

import dataclasses

import jax
import jax.numpy as jnp

from fer_jax.models import dan


def negative_entropy(logits):
  """The batch mean of Σ p·log p of the predicted distributions: highest for confident predictions."""
  log_probabilities = jax.nn.log_softmax(logits)
  return jnp.mean(jnp.sum(jnp.exp(log_probabilities) * log_probabilities, axis=-1))


def loss(outputs, labels, loss_config):
  total, metrics = dan.loss(outputs, labels, loss_config)
  penalty = negative_entropy(outputs["logits"])
  return total + loss_config.confidence_penalty * penalty, {**metrics, "confidence_penalty": penalty}


CONFIG = "examples/dan_confidence_penalty_config.py"  # a config with the key (its docstring has the command)


def config_problems(config) -> list[str]:
  """DAN's, and config.loss.confidence_penalty: a weight of at least 0 (0 is DAN's loss), which DAN's own configs
  lack (a --config.loss.confidence_penalty override cannot add it), checked before any work (fer_jax.validation)."""
  problems = list(dan.METHOD.config_problems(config))
  weight = config.loss.get("confidence_penalty")
  if weight is None:
    problems.append(f"config.loss.confidence_penalty is missing: {config.model.name!r} needs the penalty's weight; "
                    f"run with {CONFIG} (cd examples && python -m fer_jax.main "
                    "--config=dan_confidence_penalty_config.py:synthetic ...), or add `config.loss.confidence_penalty "
                    "= 0.1` to your config file (a --config.loss.* override changes only a key the file made).")
  elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
    problems.append(f"config.loss.confidence_penalty={weight!r} must be a number of at least 0 (the penalty's "
                    "weight; 0 is DAN's loss, a negative weight would reward confident predictions): pass e.g. "
                    "--config.loss.confidence_penalty=0.1.")
  return problems


# DAN's build and auxiliary_params (its affinity centres, left out of the parameter count), with this loss, its keys
# (DAN's and the penalty's weight) and the check of its weight.
METHOD = dataclasses.replace(dan.METHOD, loss=loss, loss_keys=(*dan.METHOD.loss_keys, "confidence_penalty"),
                             config_problems=config_problems)
