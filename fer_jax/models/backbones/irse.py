"""face.evoLVe IR trunks ("IR", no squeeze-excitation), as APViT uses them (docs/methods/apvit.md §3.3).

Channels-last. Layer names mirror face.evoLVe's flat PyTorch keys so that converting them is a
plain key map: `input_layer.{0,1,2}` → `input_layer_{0,1,2}`, `body.N.res_layer.i` →
`body_N/res_layer_i`, `body.N.shortcut_layer.i` → `body_N/shortcut_layer_i`, with N counting units
over all stages. (APViT's own checkpoints number units per stage, `body.{stage}.{unit}`; N is
`sum(stage_sizes[:stage]) + unit`.)
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import fast_ops, layers

# IRSE._initialize_weights: Xavier-uniform convolutions, BatchNorm γ = 1 and β = 0.
conv_init = nn.initializers.xavier_uniform()
STAGE_WIDTHS = (64, 128, 256, 512)
IR50_STAGE_SIZES = (3, 4, 14, 3)  # units per stage


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  return fast_ops.centred_conv(features, kernel, stride, kernel_init=conv_init, dtype=dtype, name=name)


class BottleneckIR(nn.Module):
  """BN → conv3×3 → PReLU → conv3×3 (strided) → BN, plus a max-pool(1, s) or conv1×1+BN shortcut."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if x.shape[-1] == self.features:
      shortcut = x[:, ::self.stride, ::self.stride]
    else:
      shortcut = conv(self.features, 1, self.stride, self.dtype, "shortcut_layer_0")(x)
      shortcut = layers.torch_batch_norm(train, self.dtype, "shortcut_layer_1")(shortcut)
    y = layers.torch_batch_norm(train, self.dtype, "res_layer_0")(x)
    y = conv(self.features, 3, 1, self.dtype, "res_layer_1")(y)
    y = layers.PReLU(name="res_layer_2")(y)
    y = conv(self.features, 3, self.stride, self.dtype, "res_layer_3")(y)
    y = layers.torch_batch_norm(train, self.dtype, "res_layer_4")(y)
    return y + shortcut


class IRSE(nn.Module):
  """Input layer and the first `num_stages` IR stages; returns {"stage1": …, "stageK": …}.

  Each stage's first unit has stride 2, so a 112×112 input gives 56², 28², 14² and 7² maps.
  """
  stage_sizes: Sequence[int]
  num_stages: int = 4
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool) -> dict:
    x = conv(64, 3, 1, self.dtype, "input_layer_0")(x)
    x = layers.torch_batch_norm(train, self.dtype, "input_layer_1")(x)
    x = layers.PReLU(name="input_layer_2")(x)
    features = {}
    unit_index = 0
    unit_class = layers.rematerialised(BottleneckIR, self.remat, static_argnums=(2,))
    for stage in range(self.num_stages):
      for unit in range(self.stage_sizes[stage]):
        x = unit_class(STAGE_WIDTHS[stage], 2 if unit == 0 else 1, self.dtype,
                       name=f"body_{unit_index}")(x, train)
        unit_index += 1
      features[f"stage{stage + 1}"] = x
    return features

