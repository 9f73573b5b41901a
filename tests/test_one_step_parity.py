"""Two fer_jax training steps equal the same steps in PyTorch, in float64 (docs/fidelity.md).

The PyTorch side is the reference networks of tests/reference/ (written from docs/methods/,
with the official module names) trained by torch.optim.SGD with the official losses, optimiser
settings and parameter groups, from the same weights (converted by fer_jax's converter) on the
same batches without augmentation. Compared after step 1: the loss, every parameter and its
change, the BatchNorm statistics; after step 2: the same and the momentum buffers. The official
code's own step is compared by tests/reference/official_one_step.py (run by hand; its figures are
in docs/fidelity.md).

Both sides compute in float64, so the bound is far below float32's rounding (~6e-8): a float32
op anywhere in fer_jax's step would fail it. Sizes are the smallest the networks take.
"""

import re

import jax
import numpy as np
import pytest
import torch

from fer_jax import validation
from fer_jax.errors import ConfigError
from fer_jax.benchmark import abstract_train_step
from helpers import get_config
from reference import one_step
from reference.dan import ReferenceDAN, affinity_loss, partition_loss
from reference.scan_cci import SIZE as SCAN_CCI_SIZE, ReferenceScanCci

TOLERANCE = 1e-8  # measured worst: DAN 3.4e-10 (step 2), SCAN-CCI 8.4e-11 (at batch 2)
BATCH = 4
SCAN_CCI_BATCH = 2  # its float64 step runs 19 s of CPU at batch 4, 9 at 2: every region and both lr groups either way


def assert_close(initial, jax_records, torch_records):
  errors = one_step.compare(initial, jax_records, torch_records)
  worst = max(errors.items(), key=lambda item: item[1][0])
  assert worst[1][0] <= TOLERANCE, worst


@pytest.mark.integration  # compiles a full-size ResNet-18 DAN step (~70 s on 2 loaded cores)
def test_dan_steps_equal_pytorch_with_affinity_and_partition_losses():
  with jax.enable_x64(True):
    config = one_step.float64_config("configs/dan.py:rafdb", 32)
    config.model.num_heads = 2
    torch.manual_seed(0)
    reference = ReferenceDAN(config.model.num_classes, config.model.num_heads).double()
    centres = torch.nn.Parameter(torch.randn(config.model.num_centres, 512, dtype=torch.float64))
    opt = config.optimizer
    optimizer = torch.optim.SGD(list(reference.parameters()) + [centres], lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)

    def loss_of(images, labels):
      logits, features, heads = reference.parts(images)
      return (torch.nn.functional.cross_entropy(logits, labels) + affinity_loss(features, centres, labels)
              + partition_loss(heads))

    batches = one_step.random_batches(2, BATCH, 32, config.model.num_classes)
    records = one_step.torch_steps({"model": reference}, {"affinity/centres": centres}, optimizer, loss_of, batches)
    initial, torch_records = one_step.in_fer_jax_layout(config, records, one_step.dan_checkpoint)
    assert_close(initial, one_step.jax_steps(config, initial, batches), torch_records)


@pytest.mark.integration  # compiles a full-size SCAN-CCI step (~80 s on 2 loaded cores)
def test_scan_cci_steps_equal_pytorch_with_two_learning_rates():
  with jax.enable_x64(True):
    config = one_step.float64_config("configs/scan_cci.py:rafdb", SCAN_CCI_SIZE)
    torch.manual_seed(0)
    reference = ReferenceScanCci(config.model.num_classes, shared=config.model.shared_local_units).double()
    parts = {name: torch.nn.DataParallel(getattr(reference, name)) for name in ("base", "attention", "region")}
    opt = config.optimizer
    (trunk_pattern, trunk_multiplier), = opt.lr_groups
    assert re.search(trunk_pattern, "trunk/conv1/kernel") and not re.search(trunk_pattern, "attention/fc/kernel")
    groups = [{"params": parts["base"].parameters(), "lr": opt.lr * trunk_multiplier},
              {"params": list(parts["attention"].parameters()) + list(parts["region"].parameters())}]
    optimizer = torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    weight = config.loss.attention_weight

    def loss_of(images, labels):
      f2, f3 = reference.base(images)
      attention, regions = reference.attention(f2), reference.region(f3)
      cross_entropy = torch.nn.functional.cross_entropy
      region = sum(cross_entropy(regions[:, :, j], labels) for j in range(regions.shape[2]))
      return weight * cross_entropy(attention, labels) + (1 - weight) * region

    batches = one_step.random_batches(2, SCAN_CCI_BATCH, SCAN_CCI_SIZE, config.model.num_classes)
    records = one_step.torch_steps(parts, {}, optimizer, loss_of, batches)
    initial, torch_records = one_step.in_fer_jax_layout(config, records, one_step.scan_cci_checkpoint)
    assert_close(initial, one_step.jax_steps(config, initial, batches), torch_records)


@pytest.mark.integration  # traces a ResNet-18 DAN step (~6 s on 2 loaded cores)
def test_float64_mode_has_no_lower_precision_op_in_a_dan_step():
  """The whole jitted step (forward, losses, gradients, optimiser, BatchNorm updates, metrics)
  traced with model.dtype="float64": its jaxpr holds no float32, bfloat16 or float16 value."""
  with jax.enable_x64(True):
    config = one_step.float64_config("configs/dan.py:rafdb", 32)
    config.model.num_heads = 2
    step, state = abstract_train_step(config)
    batch = {"image": jax.ShapeDtypeStruct((BATCH, 32, 32, 3), np.float64),
             "label": jax.ShapeDtypeStruct((BATCH,), np.int32)}
    jaxpr = str(step.trace(state, batch).jaxpr)
  variables = {name: tree for name, tree in state.items() if name not in ("step", "opt_state")}
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(np.float64)}
  assert "f64[" in jaxpr
  assert not re.findall(r"\b(?:f32|bf16|f16)\[", jaxpr)


def test_float64_mode_without_64_bit_jax_is_refused_with_the_fix():
  config = get_config("configs/dan.py:rafdb")
  config.model.dtype = "float64"
  with jax.enable_x64(False), pytest.raises(ConfigError, match=r"model\.dtype='float64'.*JAX_ENABLE_X64=1"):
    validation.validate(config, training=False)
  with jax.enable_x64(True):
    validation.validate(config, training=False)
