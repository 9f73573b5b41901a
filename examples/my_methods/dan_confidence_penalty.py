"""DAN with a confidence penalty (Pereyra et al., 2017) added to its loss: a loss of yours on one of fer_jax's
methods (docs/extending.md). config.model.name = "my_methods.dan_confidence_penalty", with DAN's config
(configs/dan.py) and config.loss.confidence_penalty, the penalty's weight."""

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


# DAN's build and auxiliary_params (its affinity centres, left out of the parameter count), with this loss.
METHOD = dataclasses.replace(dan.METHOD, loss=loss)
