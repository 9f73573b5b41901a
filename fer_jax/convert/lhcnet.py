"""LHC-Net's released TensorFlow checkpoints and the ImageNet ResNet34v2 (docs/methods/lhcnet.md §1.12).

Sources:
  lhcnet          `Downloaded_Models/LHC_Net/LHC_Net` or `…/LHC_NetC/LHC_Net_Controller`: object
                  checkpoints written by `save_weights` on the subclassed Keras model, read
                  without TensorFlow. Keys follow attribute paths:
                    conv1/{bn1 (no gamma), conv1, bn2}        the stem → backbone/{bn_data, conv0, bn0}
                    conv{s+1}_{u}/{bn1, conv1, bn2, conv2, convId}  → backbone/stage{s}_unit{u}/…, convId → sc
                    bn                                       → backbone/bn1
                    {conv1, conv2_3, conv3_4, conv4_6, conv5_3}/LHC_Module/{Wqk/j, Wp, Wv}
                                                             → lhc1…lhc5: qk_kernel/qk_bias stack the
                                                               per-head Wqk/j over j, Wp → scale_dense,
                                                               Wv → value_conv
                    controller{k}/w                          → lhc{k}/controller (LHC-NetC)
                    fc1, fc2, fc3                            → head/fc1…fc3
                  Dropped: the optimizer state (`optimizer/…`, `…/.OPTIMIZER_SLOT/…`,
                  `save_counter`), which `load_weights` also leaves unused when evaluating.
  resnet34v2_h5   qubvel's `resnet34_imagenet_1000_no_top.h5`, read with h5py by layer name
                  (bn_data, conv0, bn0, stage{s}_unit{u}_{bn1,conv1,bn2,conv2,sc}, bn1) into
                  backbone/…; the official code copies these weights by position instead. The
                  LHC modules and the head are freshly initialised (seeded).
Keras kernels are already in the Flax layout; nothing is transposed.
"""

import re

import numpy as np

from fer_jax.convert import classes
from fer_jax.convert import core

BACKBONE = "backbone"
STEM = {"bn_data": "conv1/bn1", "conv0": "conv1/conv1", "bn0": "conv1/bn2", "bn1": "bn"}


def _last_units(target: core.Target) -> dict[int, int]:
  """Stage → its number of units, read off the model's backbone."""
  last: dict[int, int] = {}
  for module in target.modules(BACKBONE):
    match = re.fullmatch(rf"{BACKBONE}/stage(\d+)_unit(\d+)/\w+", module)
    if match:
      last[int(match[1])] = max(last.get(int(match[1]), 0), int(match[2]))
  return last


def _checkpoint_module(relative: str) -> str:
  """A backbone module's attribute path in the LHC-Net checkpoint."""
  if relative in STEM:
    return STEM[relative]
  match = re.fullmatch(r"stage(\d+)_unit(\d+)/(\w+)", relative)
  layer = "convId" if match[3] == "sc" else match[3]
  return f"conv{int(match[1]) + 1}_{match[2]}/{layer}"


def _copy_lhc(tensors: core.Tensors, target: core.Target, index: int, owner: str) -> None:
  module = f"lhc{index}"
  source = f"{owner}/LHC_Module"
  num_heads = target.leaves(module)["qk_bias"][1][0]
  for leaf, weight in (("qk_kernel", "kernel"), ("qk_bias", "bias")):
    heads = [tensors.get(f"{source}/Wqk/{j}/{weight}") for j in range(num_heads)]
    if all(h is not None for h in heads):
      target.put_transformed(module, leaf, heads, np.stack, f"{source}/Wqk/{{0…{num_heads - 1}}}/{weight}")
  core.copy_module(tensors, target, f"{module}/scale_dense", f"{source}/Wp", core.KERAS)
  core.copy_module(tensors, target, f"{module}/value_conv", f"{source}/Wv", core.KERAS)
  if "controller" in target.leaves(module):
    core.copy_leaf(tensors, target, module, "controller", f"controller{index}/w")


CHECKPOINT_KEYS = core.Selector(present=("conv1/conv1/kernel", "fc3/kernel"))


# The three networks of the stages, by the letter that tells them apart (A1, A2 and A3 share one network).
NETWORKS = {"A": "a plain ResNet34v2 (no LHC modules)", "B": "an LHC-Net (ResNet34v2 with LHC modules)",
            "C": "an LHC-NetC (LHC-Net with controllers)"}


def _checkpoint_network(tensors) -> str:
  if any(re.fullmatch(r"controller\d+/w", name) for name in tensors):
    return "C"
  return "B" if any("/LHC_Module/" in name for name in tensors) else "A"


def _config_network(config) -> str:
  return "C" if config.model.controller else "B" if config.model.use_lhc else "A"


def mismatch(tensors, config) -> str | None:
  """The stage (or else the number of classes) the checkpoint needs, when the config builds another."""
  held, built = _checkpoint_network(tensors), _config_network(config)
  if held == built:
    return classes.classes_mismatch(tensors, config, "fc3/kernel", axis=1)
  data = "fer2013" if config.dataset.name == "fer2013" else "synthetic"
  stage = {"A": "A1 (A2 and A3 build the same network)"}.get(held, held)
  stages = lambda network: "A1–A3" if network == "A" else network
  return (f"holds {NETWORKS[held]}, stage {stages(held)}, but the config (stage {stages(built)}) builds "
          f"{NETWORKS[built]}: pass --config=configs/lhcnet.py:{data},stage={stage}")


def map_checkpoint(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  for module in target.modules(BACKBONE):
    core.copy_module(tensors, target, module, _checkpoint_module(module[len(BACKBONE) + 1:]), core.KERAS)
  for module in target.modules("head"):
    core.copy_module(tensors, target, module, module.split("/")[-1], core.KERAS)
  last_units = _last_units(target)
  owners = ["conv1"] + [f"conv{stage + 1}_{last_units[stage]}" for stage in sorted(last_units)]
  for index, owner in enumerate(owners, start=1):
    if target.leaves(f"lhc{index}"):
      _copy_lhc(tensors, target, index, owner)
  tensors.drop(r"optimizer/.*|.*/\.OPTIMIZER_SLOT/.*|save_counter", "optimizer state, not weights", expected=True)


H5_KEYS = core.Selector(present=("bn_data/moving_mean", "conv0/kernel"))


def map_h5(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  for module in target.modules(BACKBONE):
    layer = re.sub(r"^(stage\d+_unit\d+)/", r"\1_", module[len(BACKBONE) + 1:])
    core.copy_module(tensors, target, module, layer, core.KERAS)


def h5_mismatch(tensors, config) -> str | None:
  """qubvel's file with the ImageNet classifier (fc1), which the model has no place for."""
  del config
  if "fc1/kernel" not in tensors:
    return None
  return ("holds ResNet34 with its ImageNet classifier (fc1/…): pass resnet34_imagenet_1000_no_top.h5, qubvel's "
          "backbone without it")
