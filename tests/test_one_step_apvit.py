"""Two APViT training steps equal the same steps in PyTorch, in float64 (docs/fidelity.md).

The PyTorch side is the reference network of tests/reference/apvit.py (written from
docs/methods/apvit.md with the official module names) trained as the official rafdb recipe
does: cross-entropy, torch's clip_grad_norm_ before torch.optim.SGD (momentum 0.9, weight decay
5e-4 on every parameter); the clipping threshold is lowered so that both steps clip. Same
weights (converted by fer_jax's converter), same batches, no augmentation; compared by
tests/reference/one_step.py. The model is the scaled-down one of test_convert_apvit.py,
narrower (width 48, 2 heads) and 3 blocks deep, on 32×32 images: APP keeps 12 of 16 patches,
ATP 12 → 10 → 9 under gradients. tests/reference/official_apvit_one_step.py runs the official
code's step (figures in docs/fidelity.md).
"""

import re

import jax
import numpy as np
import pytest
import torch

from fer_jax.benchmark import abstract_train_step
from reference import one_step
from reference.apvit import ReferenceAPViT
from reference.common import randomise

# Measured worst 7.5e-8, a parameter's change at step 1: torch's clip_grad_norm_ scales by
# max_norm / (‖g‖ + 1e-6), optax's clip_by_global_norm by max_norm / ‖g‖, 1e-6 / ‖g‖ apart (‖g‖ ≈ 13).
TOLERANCE = 1e-6
BATCH = 4
SIZE = 32
CLIP_NORM = 0.5


def apvit_config():
  config = one_step.float64_config("configs/apvit.py:rafdb", SIZE)
  config.model.update(ir_stage_sizes=(1, 1, 1), width=48, num_heads=2, mlp_dim=96, app_keep=12,
                      atp_keep_rates=(1.0, 0.9, 0.9), depth=3)
  config.optimizer.grad_clip_norm = CLIP_NORM
  return config


class ClippedSGD(torch.optim.SGD):
  """SGD whose step first clips the global gradient norm, as mmcv's OptimizerHook does."""

  def __init__(self, params, max_norm: float, **settings):
    self.parameters, self.max_norm, self.norms = list(params), max_norm, []
    super().__init__(self.parameters, **settings)

  def step(self, closure=None):
    self.norms.append(torch.nn.utils.clip_grad_norm_(self.parameters, self.max_norm).item())
    return super().step(closure)


def apvit_checkpoint(states: dict) -> dict:
  return {"state_dict": states["model"]}


@pytest.mark.integration  # compiles a float64 training step (~20 s of CPU)
def test_apvit_steps_equal_pytorch_with_clipping_and_token_pooling():
  with jax.enable_x64(True):
    config = apvit_config()
    torch.manual_seed(0)
    reference = randomise(ReferenceAPViT(config.model, SIZE), seed=3, size=SIZE)
    for norm in reference.modules():
      if isinstance(norm, torch.nn.BatchNorm2d):
        norm.momentum = 0.1  # randomise sets 1 to take one batch's statistics
    reference.double()
    opt = config.optimizer
    assert opt.weight_decay_exclude == ""
    optimizer = ClippedSGD(reference.parameters(), CLIP_NORM, lr=opt.lr, momentum=opt.momentum,
                           weight_decay=opt.weight_decay)
    loss_of = lambda images, labels: torch.nn.functional.cross_entropy(reference(images), labels)
    batches = one_step.random_batches(2, BATCH, SIZE, config.model.num_classes)
    records = one_step.torch_steps({"model": reference}, {}, optimizer, loss_of, batches)
    initial, torch_records = one_step.in_fer_jax_layout(config, records, apvit_checkpoint)
    errors = one_step.compare(initial, one_step.jax_steps(config, initial, batches), torch_records)
  assert min(optimizer.norms) > CLIP_NORM
  worst = max(errors.items(), key=lambda item: item[1][0])
  assert worst[1][0] <= TOLERANCE, worst


def test_float64_mode_has_no_lower_precision_op_in_an_apvit_step():
  """The whole jitted APViT step (APP and ATP scores, attention, clipping, SGD, BatchNorm
  updates) traced with model.dtype="float64" holds no float32, bfloat16 or float16 value."""
  with jax.enable_x64(True):
    config = apvit_config()
    step, state = abstract_train_step(config)
    batch = {"image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), np.float64),
             "label": jax.ShapeDtypeStruct((BATCH,), np.int32)}
    jaxpr = str(step.trace(state, batch).jaxpr)
  assert "f64[" in jaxpr
  assert not re.findall(r"\b(?:f32|bf16|f16)\[", jaxpr)
