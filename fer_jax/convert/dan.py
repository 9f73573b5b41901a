"""DAN's released checkpoints (`rafdb_epoch21_acc0.897_bacc0.8275.pth`, `affecnet8_epoch5_acc0.6209.pth`, …).

A `torch.save` dict {iter, model_state_dict, optimizer_state_dict}; only `model_state_dict`
holds weights, loaded strictly by the official demo. A bare state dict of the same keys is read
too (also under `state_dict` or `model`), and keys prefixed `module.` (a model saved in DataParallel) or
`_orig_mod.` (torch.compile) lose the prefix. Its keys
(docs/methods/dan.md §2.9):
  features.0 / features.1                conv1 / bn1 of the ResNet-18 trunk
  features.{4,5,6,7}.B.*                 layer1…layer4, block B
  cat_head{i}.sa.{conv1x1,conv_3x3,conv_1x3,conv_3x1}.{0 conv, 1 BN}
  cat_head{i}.ca.attention.{0 Linear 512→32, 1 BN1d, 3 Linear 32→512}
  fc, bn                                  the classifier and the BatchNorm1d on the logits
Dropped: the BatchNorm `num_batches_tracked` counters. The affinity centres are not in the
released files (a training-only parameter, see DAN issue #15): they are freshly initialised.
"""

from fer_jax.convert import classes
from fer_jax.convert import core
from fer_jax.convert import torchvision_resnet

RULES: tuple[core.Rule, ...] = (
    (r"trunk/conv1", "features.0"),
    (r"trunk/bn1", "features.1"),
    (r"trunk/layer(\d)_(\d+)/(.+)",
     lambda m: f"features.{int(m[1]) + 3}.{m[2]}.{torchvision_resnet.torchvision_name(m[3])}"),
    (r"head(\d+)/sa/(conv\w+)_conv", r"cat_head\1.sa.\2.0"),
    (r"head(\d+)/sa/(conv\w+)_bn", r"cat_head\1.sa.\2.1"),
    (r"head(\d+)/ca/fc1", r"cat_head\1.ca.attention.0"),
    (r"head(\d+)/ca/bn", r"cat_head\1.ca.attention.1"),
    (r"head(\d+)/ca/fc2", r"cat_head\1.ca.attention.3"),
    (r"fc|bn", r"\g<0>"),
)
NOT_RELEASED = "affinity"
# The released files' names (AffectNet misspelt as the authors did) and the class order of each.
FILE_ORDERS = (("rafdb_", "rafdb"), ("affecnet7_", "affectnet7"), ("affecnet8_", "affectnet8"))


def select(loaded):
  """`model_state_dict`, or a state dict of DAN's keys bare or saved under "state_dict" or "model" (what re-saving
  the model's tensors gives)."""
  state = core.state_dict(loaded, "model_state_dict", "state_dict", "model")
  released = isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict)
  return state if state and (released or "features.0.weight" in state) else None


def mismatch(tensors, config) -> str | None:
  return classes.classes_mismatch(tensors, config, "fc.weight", axis=0)


def map_checkpoint(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  for module in target.modules():
    if not module.startswith(NOT_RELEASED):
      core.copy_module(tensors, target, module, core.rename(module, RULES), core.TORCH)
