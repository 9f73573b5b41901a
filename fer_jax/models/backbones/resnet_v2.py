"""Pre-activation ResNet v2 as in qubvel's `classification_models` ("resnet34"), used by LHC-Net.

Channels-last, Keras semantics (docs/methods/lhcnet.md §1.3):
  * `bn_data`: a BatchNorm without scale on the raw 0–255 pixels (the only normalisation);
  * every BatchNorm has ε 2e-5 and Keras momentum 0.99 (the same number in Flax);
  * every convolution is bias-free, He-uniform initialised, and preceded by an explicit zero
    padding (Keras `ZeroPadding2D` + "valid"), which is symmetric even at stride 2;
  * each unit is BN → ReLU → conv3×3(stride) → BN → ReLU → conv3×3, added to the shortcut; the
    first unit of every stage, stage 1 included, takes a 1×1 strided convolution (`sc`) of the
    pre-activated input as its shortcut; there is no activation after the addition;
  * the trunk ends with BN (`bn1`) → ReLU.

Names follow the Keras layer names, so converting the ImageNet weights
(`resnet34_imagenet_1000_no_top.h5`) is a plain key map, one Keras layer to one Flax module:

  Keras layer / weight                       Flax collection / path
  bn_data/beta:0                             params/bn_data/bias
  bn_data/moving_{mean,variance}:0           batch_stats/bn_data/{mean,var}
  conv0/kernel:0                             params/conv0/kernel
  bn0/{gamma,beta}:0                         params/bn0/{scale,bias}
  bn0/moving_{mean,variance}:0               batch_stats/bn0/{mean,var}
  stage{s}_unit{u}_{conv1,conv2,sc}/kernel:0 params/stage{s}_unit{u}/{conv1,conv2,sc}/kernel
  stage{s}_unit{u}_{bn1,bn2}/...             params|batch_stats/stage{s}_unit{u}/{bn1,bn2}/...
  bn1/...                                    params|batch_stats/bn1/...

Keras kernels are already in Flax layout ((kh, kw, in, out)); nothing is transposed. The
LHC-Net TF checkpoint names the same layers `conv1/{bn1,conv1,bn2}` (stem), `conv{s+1}_{u}/...`
with `convId` for `sc`, and `bn` for the final `bn1` (docs/methods/lhcnet.md §1.12).
"""

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import fast_ops, layers
from fer_jax.models.batch_norm import BatchNorm

# Keras "he_uniform".
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
TAP_POINTS = ("stem", "stage1", "stage2", "stage3", "stage4")


def batch_norm(train: bool, dtype: Any, name: str, use_scale: bool = True) -> BatchNorm:
  """Keras BatchNormalization as classification_models configures it."""
  return BatchNorm(use_running_average=not train, momentum=0.99, epsilon=2e-5, use_scale=use_scale,
                   dtype=dtype, name=name)


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  return fast_ops.centred_conv(features, kernel, stride, kernel_init=conv_init, dtype=dtype, name=name)


class PreActBasicUnit(nn.Module):
  """One pre-activation basic unit; `project` gives it the 1×1 shortcut convolution `sc`."""
  features: int
  stride: int = 1
  project: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    activated = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
    shortcut = x
    if self.project:
      shortcut = conv(self.features, 1, self.stride, self.dtype, "sc")(activated)
    y = conv(self.features, 3, self.stride, self.dtype, "conv1")(activated)
    y = nn.relu(batch_norm(train, self.dtype, "bn2")(y))
    y = conv(self.features, 3, 1, self.dtype, "conv2")(y)
    return y + shortcut


class ResNetV2(nn.Module):
  """Stem, pre-activation stages and the final BN-ReLU.

  `insertions` maps tap points (`TAP_POINTS`) to callables applied to the feature map there:
  "stem" after the stem's max-pool, "stageN" after the last unit of stage N (its residual sum).
  LHC-Net puts its attention modules there. Returns the feature map at every tap point (after
  any insertion) and "output", the final BN-ReLU features.
  """
  stage_sizes: Sequence[int]
  width: int = 64
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool,
               insertions: Optional[Mapping[str, Callable]] = None) -> dict:
    insertions = insertions or {}
    unknown = set(insertions) - set(TAP_POINTS)
    if unknown:
      raise ValueError(f"Unknown tap points {sorted(unknown)}; valid: {', '.join(TAP_POINTS)}.")
    insert = lambda point, y: insertions[point](y) if point in insertions else y

    x = batch_norm(train, self.dtype, "bn_data", use_scale=False)(x)
    x = conv(self.width, 7, 2, self.dtype, "conv0")(x)
    x = batch_norm(train, self.dtype, "bn0")(x)
    # Keras: relu, zero pad, "valid" max pool. With the relu after the pool, as in resnet.py, the pad's
    # zeros change nothing (relu(max(m, 0)) = relu(m)): the same values and gradients, no padded copy.
    x = nn.relu(fast_ops.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))))
    features = {"stem": insert("stem", x)}
    x = features["stem"]
    unit_class = layers.rematerialised(PreActBasicUnit, self.remat, static_argnums=(2,))
    for stage, size in enumerate(self.stage_sizes):
      for unit in range(size):
        x = unit_class(self.width * 2**stage, stride=2 if stage > 0 and unit == 0 else 1,
                       project=unit == 0, dtype=self.dtype,
                       name=f"stage{stage + 1}_unit{unit + 1}")(x, train)
      x = insert(f"stage{stage + 1}", x)
      features[f"stage{stage + 1}"] = x
    features["output"] = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
    return features


ResNet34V2 = functools.partial(ResNetV2, (3, 4, 6, 3))
