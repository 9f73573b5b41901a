"""torchvision-style ResNet trunks (ResNet-18 for DAN, ResNet-50 to layer3 for SCAN-CCI).

Channels-last. Layer names follow torchvision (`conv1`, `bn1`, `layer2_0/downsample_conv`...)
so that converters are plain key maps. Padding is explicit: PyTorch pads symmetrically,
where "SAME" with stride 2 would not.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import fast_ops, layers

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str,
         use_bias: bool = False) -> nn.Conv:
  return fast_ops.centred_conv(features, kernel, stride, kernel_init=conv_init, dtype=dtype, name=name,
                               use_bias=use_bias)


def shortcut(x, features: int, stride: int, train: bool, dtype: Any):
  """Identity, or a 1×1 projection + BN where the shape changes (called inside a block)."""
  if stride == 1 and x.shape[-1] == features:
    return x
  x = conv(features, 1, stride, dtype, "downsample_conv")(x)
  return layers.torch_batch_norm(train, dtype, "downsample_bn")(x)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(layers.torch_batch_norm(train, self.dtype, "bn1")(y))
    y = conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = layers.torch_batch_norm(train, self.dtype, "bn2")(y)
    return nn.relu(y + shortcut(x, self.features, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3×3 convolution."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out_features = self.features * self.expansion
    x = fast_ops.stored_for_gradient(x)  # its readers are 1×1 convolutions and the shortcut: computed once
    y = conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.torch_batch_norm(train, self.dtype, "bn1")(y))
    y = conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(layers.torch_batch_norm(train, self.dtype, "bn2")(y))
    y = conv(out_features, 1, 1, self.dtype, "conv3")(y)
    y = layers.torch_batch_norm(train, self.dtype, "bn3")(y)
    return nn.relu(y + shortcut(x, out_features, self.stride, train, self.dtype))


class ResNet(nn.Module):
  """conv1 … layer{num_stages}; returns {"layer1": …, "layerN": …} feature maps."""
  block: type
  stage_sizes: Sequence[int]
  num_stages: int = 4
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool) -> dict:
    x = conv(64, 7, 2, self.dtype, "conv1")(x)
    x = layers.torch_batch_norm(train, self.dtype, "bn1")(x)
    # torchvision's relu then max pool, in the other order: the same values and gradients (max and
    # ReLU commute), and the gradient needs no full-size ReLU mask (docs/performance.md).
    x = nn.relu(fast_ops.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))))
    features = {}
    block = layers.rematerialised(self.block, self.remat, static_argnums=(2,))
    for stage in range(self.num_stages):
      for index in range(self.stage_sizes[stage]):
        stride = 2 if stage > 0 and index == 0 else 1
        x = block(64 * 2**stage, stride, self.dtype, name=f"layer{stage + 1}_{index}")(x, train)
      features[f"layer{stage + 1}"] = x
    return features


ResNet18 = functools.partial(ResNet, BasicBlock, (2, 2, 2, 2))
ResNet50 = functools.partial(ResNet, Bottleneck, (3, 4, 6, 3))
