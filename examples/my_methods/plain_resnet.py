"""A plain ResNet-18 with a linear head, trained with label-smoothed cross-entropy: a method of yours
that fer_jax runs as its own (docs/extending.md). config.model.name = "my_methods.plain_resnet"."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from fer_jax import models
from fer_jax.models import layers
from fer_jax.models.backbones import resnet


class PlainResNet(nn.Module):
  # Every field is a config.model key of the same name (models.from_config fills them).
  num_classes: int = 7
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    features = resnet.ResNet18(dtype=self.dtype, remat=self.remat, name="trunk")(images, train)["layer4"]
    pooled = jnp.mean(features.astype(layers.at_least_float32(self.dtype)), axis=(1, 2))
    return {"logits": layers.torch_dense(self.num_classes, pooled.shape[-1], "fc")(pooled)}


def label_smoothing_loss(outputs, labels, loss_config):
  """Cross-entropy against one-hot targets smoothed by config.loss.label_smoothing."""
  logits = outputs["logits"]
  targets = optax.smooth_labels(jnp.eye(logits.shape[-1], dtype=logits.dtype)[labels], loss_config.label_smoothing)
  loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return loss, {"ce_loss": loss}


def config_problems(config) -> list[str]:
  """config.loss.label_smoothing is a number in [0, 1), checked before any work (fer_jax.validation)."""
  smoothing = config.loss.get("label_smoothing")
  if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
    return [f"config.loss.label_smoothing={smoothing!r} must be a number in [0, 1): set it in the config file, e.g. "
            "config.loss.label_smoothing = 0.1."]
  return []


# loss_keys: the config.loss keys the loss reads; any other (a misspelt one) stops the command before any work.
METHOD = models.Method(build=functools.partial(models.from_config, PlainResNet), loss=label_smoothing_loss,
                       loss_keys=("label_smoothing",), config_problems=config_problems)
