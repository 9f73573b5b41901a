"""Two training steps of the official DAN or SCAN-CCI code next to fer_jax's, in float64.

Needs a clone of the official repository (it is imported from there, not copied):
  git clone https://github.com/yaoing/DAN /tmp/DAN
  git clone https://github.com/1980x/SCAN-CCI-FER /tmp/SCAN-CCI-FER
  JAX_ENABLE_X64=1 python tests/reference/official_one_step.py --method=dan --official=/tmp/DAN
  JAX_ENABLE_X64=1 python tests/reference/official_one_step.py --method=scan_cci --official=/tmp/SCAN-CCI-FER

From the repository root, with the project and PyTorch installed. The official model is built
randomly initialised, in float64 (`.double()`); fer_jax's converter maps its weights onto
fer_jax's `:rafdb` config with `model.dtype="float64"` (DAN's affinity centres, which the
released files lack, are copied in). Both take two SGD steps on the same two random batches
(no augmentation), the official side as its rafdb training script does (optimiser, parameter
groups, losses; the model in training mode). Prints the worst relative error
(max |Δ| / max |official| per tensor) per variable group; docs/fidelity.md lists the figures.
"""

import argparse
import dataclasses
import importlib.machinery
import os
import sys
import types
from typing import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # this checkout's tests and fer_jax, whatever is installed

import jax  # noqa: E402

from reference import one_step  # noqa: E402


def official_import(official: str, module: str, unused_imports=()):
  """Imports `module` from the official clone; `unused_imports` (data loading and metrics only)
  are stood in for by empty modules, so that their packages need not be installed."""
  sys.path.insert(0, official)
  for name in unused_imports:
    sys.modules.setdefault(name, stand_in(name))
  return __import__(module, fromlist=["_"])


def stand_in(name: str, **attributes) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__spec__ = importlib.machinery.ModuleSpec(name, None)
  module.__dict__.update(attributes)
  return module


@dataclasses.dataclass
class OfficialTraining:
  """An official training script's state and step pieces: `modules` {name: nn.Module} and `extra`
  {fer_jax path: nn.Parameter} (DAN's affinity centres) are what `optimizer` trains;
  `forward(images NCHW)` gives the networks' outputs, `loss(outputs, labels)` the script's loss;
  `max_grad_norm`, where the script clips, the gradients' global norm before each update."""
  modules: dict
  extra: dict
  optimizer: torch.optim.Optimizer
  forward: Callable
  loss: Callable
  max_grad_norm: float | None = None

  def loss_of(self, images, labels):
    return self.loss(self.forward(images), labels)


def dan_official(official: str, config, device: str = "cpu", dtype=torch.float64) -> OfficialTraining:
  """rafdb.py's training step (`run_training`): CE + affinity + partition loss, SGD (lr 0.1,
  momentum 0.9, weight decay 1e-4) over the network and the affinity centres."""
  sys.modules.setdefault("sklearn.metrics", stand_in("sklearn.metrics", balanced_accuracy_score=None))
  rafdb = official_import(official, "rafdb", ("pandas", "sklearn"))
  network = official_import(official, "networks.dan")
  torch.manual_seed(0)
  model = network.DAN(num_class=config.model.num_classes, num_head=config.model.num_heads, pretrained=False)
  model = model.to(device, dtype)
  affinity = rafdb.AffinityLoss(torch.device(device), num_class=config.model.num_centres).to(device, dtype)
  optimizer = torch.optim.SGD(list(model.parameters()) + list(affinity.parameters()), lr=config.optimizer.lr,
                              weight_decay=config.optimizer.weight_decay, momentum=config.optimizer.momentum)
  cross_entropy, partition = torch.nn.CrossEntropyLoss(), rafdb.PartitionLoss()

  def loss(outputs, labels):
    out, features, heads = outputs
    return cross_entropy(out, labels) + affinity(features, labels) + partition(heads)

  return OfficialTraining({"model": model}, {"affinity/centres": affinity.centers}, optimizer, model, loss)


def run_dan(official: str, size: int, batch: int):
  config = one_step.float64_config("configs/dan.py:rafdb", size)
  batches = one_step.random_batches(2, batch, size, config.model.num_classes)
  training = dan_official(official, config)
  records = one_step.torch_steps(training.modules, training.extra, training.optimizer, training.loss_of, batches)
  initial, torch_records = one_step.in_fer_jax_layout(config, records, one_step.dan_checkpoint)
  return initial, one_step.jax_steps(config, initial, batches), torch_records


def scan_cci_official(official: str, config, device: str = "cpu", dtype=torch.float64) -> OfficialTraining:
  """main_rafdb.py's training step (`main` and `train`): trunk, shared-SCAN attention branch and
  region branch under DataParallel; SGD with momentum 0.9 and weight decay 1e-3, the trunk at
  lr 1e-4 and both branches at 0.01; loss 0.2·CE(attention) + 0.8·Σ CE(region j)."""
  attention_net = official_import(official, "models.attentionnet")
  resnet = official_import(official, "models.resnet")
  torch.manual_seed(0)
  num_classes = config.model.num_classes
  parts = {"base": resnet.resnet50(pretrained=False),
           "attention": attention_net.SharedAttentionBranch(inputdim=512, num_regions=25, num_classes=num_classes),
           "region": attention_net.RegionBranch(inputdim=1024, num_regions=4, num_classes=num_classes)}
  parts = {name: torch.nn.DataParallel(part).to(device, dtype) for name, part in parts.items()}
  head_lr, trunk_multiplier = config.optimizer.lr, config.optimizer.lr_groups[0][1]
  optimizer = torch.optim.SGD([{"params": parts["base"].parameters(), "lr": head_lr * trunk_multiplier,
                                "momentum": config.optimizer.momentum, "weight_decay": config.optimizer.weight_decay}])
  for name in ("attention", "region"):
    optimizer.add_param_group({"params": parts[name].parameters(), "lr": head_lr,
                               "momentum": config.optimizer.momentum, "weight_decay": config.optimizer.weight_decay})
  criterion = torch.nn.CrossEntropyLoss()
  attention_weight = config.loss.attention_weight

  def forward(images):
    f2, f3 = parts["base"](images)
    return parts["attention"](f2)[2], parts["region"](f3)

  def loss(outputs, labels):
    attention_logits, region_logits = outputs
    region = sum(criterion(region_logits[:, :, j], labels) for j in range(region_logits.shape[2]))
    return attention_weight * criterion(attention_logits, labels) + (1 - attention_weight) * region

  return OfficialTraining(parts, {}, optimizer, forward, loss)


def run_scan_cci(official: str, size: int, batch: int):
  config = one_step.float64_config("configs/scan_cci.py:rafdb", size)
  batches = one_step.random_batches(2, batch, size, config.model.num_classes)
  training = scan_cci_official(official, config)
  records = one_step.torch_steps(training.modules, training.extra, training.optimizer, training.loss_of, batches)
  initial, torch_records = one_step.in_fer_jax_layout(config, records, one_step.scan_cci_checkpoint)
  return initial, one_step.jax_steps(config, initial, batches), torch_records


RUNS = {"dan": run_dan, "scan_cci": run_scan_cci}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--method", choices=sorted(RUNS), required=True)
  parser.add_argument("--official", required=True, help="a clone of the method's official repository")
  parser.add_argument("--size", type=int, default=224, help="input side (SCAN-CCI's region split needs 224)")
  parser.add_argument("--batch", type=int, default=8)
  args = parser.parse_args()
  if not jax.config.jax_enable_x64:
    sys.exit("error: run with JAX_ENABLE_X64=1 (the comparison is in float64)")
  torch.set_default_dtype(torch.float64)
  initial, jax_records, torch_records = RUNS[args.method](os.path.abspath(args.official), args.size, args.batch)
  errors = one_step.compare(initial, jax_records, torch_records)
  print(f"{args.method}, input {args.size}, batch {args.batch}, float64: worst relative error "
        "(max |fer_jax − official| / max |official| per tensor)")
  for name, (error, path) in errors.items():
    print(f"  {name:36s} {error:.1e}  {path}")
  print(f"  {'worst':36s} {max(error for error, _ in errors.values()):.1e}")


if __name__ == "__main__":
  main()
