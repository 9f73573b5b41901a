"""SCAN-CCI training checkpoints (`model_best.pth.tar`; no trained weights were ever released).

A `torch.save` dict {epoch, base_state_dict, attention_state_dict, region_state_dict,
best_prec1, optimizer}; the three state dicts hold the weights, every key prefixed `module.`
(DataParallel; a run saved without it gets the prefix added), and are loaded strictly by the
official scripts (docs/methods/scan_cci.md §4.10):
  base_state_dict       module.conv1, module.bn1, module.layer{1,2,3}.B.* (torchvision names)
  attention_state_dict  module.local_attention_masks.attention.{0 conv, 1 PReLU, 2 BN} (one shared
                        unit, RAF-DB) or module.local_attention_masks.{0…24}.attention.* (separate
                        units), module.global_attention_mask.attention.*, module.fc
  region_state_dict     module.eca.conv (1, 1, 5), module.region_net.{0, 2}, and
                        module.classifiers.{0…3}.{0, 2}: the same MLP listed four times
Keys are reported as "<state dict>/<key>". Dropped: the `module.classifiers.*` copies, after
checking that they equal `module.region_net.*`, and the BatchNorm `num_batches_tracked` counters.
The optimizer state and the epoch counters are not weights and are not read.
"""

import re

import numpy as np

from fer_jax.convert import classes
from fer_jax.convert import core
from fer_jax.convert import torchvision_resnet

STATE_DICTS = ("base_state_dict", "attention_state_dict", "region_state_dict")
BASE, ATTENTION, REGION = (f"{name}/module." for name in STATE_DICTS)
SCAN_LAYERS = {"conv": "0", "prelu": "1", "bn": "2"}

RULES: tuple[core.Rule, ...] = (
    (r"trunk/(.+)", lambda m: BASE + torchvision_resnet.torchvision_name(m[1])),
    (r"attention/local_scan/(\w+)", lambda m: f"{ATTENTION}local_attention_masks.attention.{SCAN_LAYERS[m[1]]}"),
    (r"attention/local_scan_(\d+)/(\w+)",
     lambda m: f"{ATTENTION}local_attention_masks.{m[1]}.attention.{SCAN_LAYERS[m[2]]}"),
    (r"attention/global_scan/(\w+)", lambda m: f"{ATTENTION}global_attention_mask.attention.{SCAN_LAYERS[m[1]]}"),
    (r"attention/fc", ATTENTION + "fc"),
    (r"cci/eca/conv", REGION + "eca.conv"),
    (r"cci/fc1", REGION + "region_net.0"),
    (r"cci/fc2", REGION + "region_net.2"),
)


def select(loaded):
  if not (isinstance(loaded, dict) and all(isinstance(loaded.get(name), dict) for name in STATE_DICTS)):
    return None
  return {f"{name}/{key}": value for name in STATE_DICTS
          for key, value in core.module_keys(loaded[name], data_parallel=True).items()}


def mismatch(tensors, config) -> str | None:
  return classes.classes_mismatch(tensors, config, ATTENTION + "fc.weight", axis=0)


def _drop_region_copies(tensors: core.Tensors, target: core.Target) -> None:
  """The four `classifiers` entries are the `region_net` module itself; anything else is an error."""
  prefix = REGION + "classifiers."
  for name in tensors.names():
    if not name.startswith(prefix):
      continue
    original = REGION + "region_net." + name[len(prefix):].split(".", 1)[1]
    if original in tensors and np.array_equal(tensors.tensors[name], tensors.tensors[original]):
      tensors.drop(re.escape(name), "copy of module.region_net (one MLP listed four times)")
    else:
      target.problems.append(f"{name} differs from {original}: the official model shares one region MLP")


def map_checkpoint(tensors: core.Tensors, target: core.Target, config) -> None:
  del config
  for module in target.modules():
    core.copy_module(tensors, target, module, core.rename(module, RULES), core.TORCH)
  _drop_region_copies(tensors, target)
