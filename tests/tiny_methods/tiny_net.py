"""TinyNet: a convolution, a BatchNorm and a dense layer, trained with fer_jax's default cross-entropy. Its train
step compiles in about a second: the method of the tests whose subject is not a model (the benchmark scripts,
several processes' signals), named config.model.name=tiny_methods.tiny_net with tests/ on the Python path."""

import flax.linen as nn
import jax.numpy as jnp

from fer_jax import models
from fer_jax.models import layers


class TinyNet(nn.Module):
  """A conv, a BatchNorm and a dense layer: the benchmark's machinery at a few seconds of compilation."""

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = layers.torch_batch_norm(train, jnp.float32, "bn")(nn.Conv(4, (3, 3), name="conv")(images))
    return {"logits": nn.Dense(7, name="fc")(jnp.mean(nn.relu(x), (1, 2)))}


METHOD = models.Method(build=lambda model_config: TinyNet())
