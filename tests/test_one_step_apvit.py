"""Two SGD steps of APViT in float64 against the PyTorch reference (tests/reference/apvit.py).

From identical weights and batch, fer_jax's jitted train step (the rafdb recipe: SGD, momentum
0.9, weight decay 5e-4 on every parameter, global-norm clipping) and torch.optim.SGD after
torch's clip_grad_norm_ must give the same loss, parameter updates, BatchNorm statistics and
momentum buffers after each step. The clipping threshold is lowered so that both steps clip.
The model is the scaled-down one of test_convert_apvit.py, narrower (width 48, 2 heads) and
3 blocks deep, on 32×32 images (APP keeps 12 of 16 patches, ATP 12 → 10 → 9). The checkpoint goes through the
APViT converter, which also maps every updated tensor back for the comparison.

tests/reference/official_apvit_one_step.py runs the same comparison against the official code.
"""

import jax
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from fer_jax import convert
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax.convert import apvit as convert_apvit
from fer_jax.convert import core
from helpers import get_config
from reference.apvit import ReferenceAPViT
from reference.common import randomise

TOLERANCE = 1e-4  # relative: max |ours − reference| / max |reference| per tensor
BATCH = 4
SIZE = 32  # a 4×4 patch grid
CLIP_NORM = 0.5
STEPS_PER_EPOCH = 10  # both steps in the first epoch: the base learning rate


def float64_shapes(config) -> dict:
  abstract = models.abstract_variables(models.build_model(config), config)
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, np.float64), abstract)


def in_fer_jax_layout(state: dict, config, shapes: dict) -> dict:
  """PyTorch tensors by fer_jax path ("params/vit/norm/scale"), mapped by the APViT converter onto
  `shapes` (float64_shapes)."""
  target = core.Target(shapes)
  tensors = {name: value.detach().double().numpy().copy() for name, value in state.items()}
  convert_apvit.map_checkpoint(core.Tensors(tensors, "PyTorch state"), target, config)
  return target.values


def by_path(tree, collection: str) -> dict:
  """Copies of the leaves (the jitted step donates its input state) by path."""
  return {f"{collection}/{optim.path_of(path)}": np.array(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def float64(tree):
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def fer_jax_steps(config, checkpoint: str, images, labels, steps: int, steps_per_epoch: int) -> list[dict]:
  """`steps` jitted train steps on one batch from a converted checkpoint, in float64 (call under
  jax.enable_x64). After each: {"loss", "grad_norm", "tensors": params, batch_stats and the
  momentum ("momentum/…") by path}, the step before first as step 0."""
  variables, _ = convert.convert(config, [checkpoint])
  model = models.build_model(config)
  params = float64(variables["params"])
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch, config.num_epochs, params)
  schedule = optim.lr_schedule(config.optimizer, steps_per_epoch, config.num_epochs)
  step = train.make_train_step(model, models.cross_entropy_loss, config.loss, tx, schedule, mesh_lib.make_mesh(),
                               config.seed)
  state = {"step": np.int32(0), "params": params, "batch_stats": float64(variables["batch_stats"]),
           "opt_state": tx.init(params)}
  results = []
  for number in range(steps + 1):
    if number:
      state, metrics = step(state, {"image": images, "label": labels})
    momentum = optax.tree_utils.tree_get(state["opt_state"], "trace")
    results.append({**({"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])} if number else {}),
                    "tensors": by_path(state["params"], "params") | by_path(state["batch_stats"], "batch_stats")
                    | {"momentum" + p.removeprefix("params"): v for p, v in by_path(momentum, "params").items()}})
  return results


def relative_errors(ours: dict, theirs: dict, before: dict | None = None) -> dict:
  """Per path, max |ours − theirs| / max |theirs|; with `before`, of the changes since then."""
  assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))
  errors = {}
  for path, expected in theirs.items():
    actual = ours[path]
    if before is not None:
      actual, expected = actual - before[path], expected - before[path]
    errors[path] = float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))
  return errors


def reference_model(config):
  torch.manual_seed(0)
  model = randomise(ReferenceAPViT(config.model, SIZE), seed=3, size=SIZE)
  for norm in model.modules():
    if isinstance(norm, torch.nn.BatchNorm2d):
      norm.momentum = 0.1  # randomise sets 1 to take one batch's statistics
  return model.double().train()


def reference_steps(model, config, images, labels, steps: int) -> list[dict]:
  """Like fer_jax_steps, for the PyTorch model: cross-entropy, clip_grad_norm_, torch.optim.SGD."""
  optimizer = torch.optim.SGD(model.parameters(), lr=config.optimizer.lr, momentum=config.optimizer.momentum,
                              weight_decay=config.optimizer.weight_decay)
  images, labels = torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(labels)
  shapes, results = float64_shapes(config), []
  for number in range(steps + 1):
    if number:
      loss = F.cross_entropy(model(images), labels)
      optimizer.zero_grad()
      loss.backward()
      norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip_norm)
      optimizer.step()
    buffers = {name: optimizer.state[p].get("momentum_buffer", torch.zeros_like(p))
               for name, p in model.named_parameters()}
    momentum = {"momentum" + p.removeprefix("params"): v for p, v in in_fer_jax_layout(buffers, config, shapes).items()}
    results.append({**({"loss": loss.item(), "grad_norm": norm.item()} if number else {}),
                    "tensors": in_fer_jax_layout(model.state_dict(), config, shapes) | momentum})
  return results


@pytest.fixture(scope="module")
def config():
  config = get_config("configs/apvit.py:rafdb")
  config.input.size = SIZE
  config.model.update(ir_stage_sizes=(1, 1, 1), width=48, num_heads=2, mlp_dim=96, app_keep=12,
                      atp_keep_rates=(1.0, 0.9, 0.9), depth=3, dtype="float64")
  config.optimizer.grad_clip_norm = CLIP_NORM
  return config


@pytest.mark.integration  # ~20 s of CPU, half of it compiling the float64 step
def test_two_sgd_steps_match_pytorch_in_float64(config, tmp_path):
  reference = reference_model(config)
  path = tmp_path / "apvit.pth"
  torch.save({"state_dict": reference.state_dict()}, path)
  rng = np.random.default_rng(0)
  images, labels = rng.normal(size=(BATCH, SIZE, SIZE, 3)), rng.integers(0, config.model.num_classes, BATCH)

  expected = reference_steps(reference, config, images, labels, steps=2)
  with jax.enable_x64(True):
    ours = fer_jax_steps(config, str(path), images, labels, steps=2, steps_per_epoch=STEPS_PER_EPOCH)

  assert max(relative_errors(ours[0]["tensors"], expected[0]["tensors"]).values()) == 0
  for step in (1, 2):
    assert expected[step]["grad_norm"] > CLIP_NORM
    for key in ("loss", "grad_norm"):
      assert abs(ours[step][key] - expected[step][key]) <= TOLERANCE * expected[step][key], (step, key)
    changes = relative_errors(ours[step]["tensors"], expected[step]["tensors"], before=expected[step - 1]["tensors"])
    worst = max(changes, key=changes.get)
    assert changes[worst] <= TOLERANCE, f"step {step}: {worst} changed by a relative error of {changes[worst]:.1e}"
