"""torchvision ResNet trunks: the MS-Celeb ResNet-18 (DAN) and the VGGFace2 ResNet-50 (SCAN-CCI).

Flax names follow torchvision (`trunk/layer2_0/downsample_conv` ↔ `layer2.0.downsample.0`), so
the key map is a renaming. Sources:
  resnet18           `resnet18_msceleb.pth`, a dict whose `state_dict` holds torchvision
                     ResNet-18 keys (a bare torchvision state dict is accepted too). Dropped as
                     the official DAN loader does: `fc.*` (the trunk is `children()[:-2]`).
  vggface2_resnet50  `vgg_msceleb_resnet50_ft_weight.pkl`, a pickle of NumPy arrays under
                     torchvision ResNet-50 names, read with the NumPy-only unpickler. Dropped as
                     the official SCAN-CCI loader does: `layer4.*` and `fc.*`.
BatchNorm `num_batches_tracked` counters, where present, are dropped (fer_jax's BatchNorm keeps none).
Everything outside the trunk is freshly initialised (seeded by `config.seed`).
"""

import re

from fer_jax.convert import core

TRUNK = "trunk"


def torchvision_name(relative: str) -> str:
  """'layer2_0/downsample_conv' → 'layer2.0.downsample.0'; 'bn1' → 'bn1'."""
  name = re.sub(r"^layer(\d)_(\d+)/", r"layer\1.\2/", relative)
  name = name.replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
  return name.replace("/", ".")


def copy_trunk(tensors: core.Tensors, target: core.Target, source_prefix: str = "") -> None:
  """Fills every module under `trunk/` from `source_prefix` + its torchvision name."""
  for module in target.modules(TRUNK):
    core.copy_module(tensors, target, module, source_prefix + torchvision_name(module[len(TRUNK) + 1:]),
                     core.TORCH)


# ResNet-18's blocks have two convolutions, ResNet-50's three.
RESNET18_KEYS = core.Selector(present=("layer4.1.bn2.running_var",), absent=("layer1.0.conv3.weight",),
                              containers=("state_dict",))
RESNET50_KEYS = core.Selector(present=("layer3.5.conv3.weight", "conv1.weight"), containers=("state_dict",))


def map_resnet18(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  copy_trunk(tensors, target)
  tensors.drop(r"fc\..*", "ImageNet/MS-Celeb classifier; DAN's trunk stops before it, as the official code does")


def map_resnet50(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  copy_trunk(tensors, target)
  tensors.drop(r"(layer4|fc)\..*", "SCAN-CCI's trunk stops after layer3; the official loader skips layer4 and fc")
