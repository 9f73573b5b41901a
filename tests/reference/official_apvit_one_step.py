"""Two training steps of the official APViT against fer_jax's, in float64, from identical weights.

  git clone https://github.com/youqingxiaozhua/APViT /tmp/APViT
  pip install --target /tmp/mmcv1 --no-deps --no-build-isolation mmcv==1.7.2 addict yapf platformdirs
      (mmcv 1.x without its compiled ops; its setup.py needs a setuptools that still has pkg_resources)
  PYTHONPATH=/tmp/mmcv1 python tests/reference/official_apvit_one_step.py --official=/tmp/APViT [--vit_width=192 --vit_heads=3]

The official side is its own code, imported from --official (never copied here): the model from
configs/apvit/RAF.py built by mmcls (the pretrained files left out), its optimiser from mmcv's
build_optimizer with the config's paramwise settings, mmcv's CosineAnnealing learning-rate hook
at epoch 0 and mmcv's OptimizerHook (backward, clip_grad_norm_ at the config's max_norm, step).
The model keeps the official initialisation except the BatchNorm parameters and running
statistics and the (zero-initialised) head, drawn at random so that every gradient is non-zero
at the first step; weights are rounded to float32 (the converter's type) and the model runs in
float64. Both sides take two steps on the same two random batches; tests/reference/one_step.py
converts the official side's weights and momentum buffers into fer_jax's layout and runs
fer_jax's step (configs/apvit.py:rafdb, model.dtype="float64"). Prints the losses, the official
gradient norms, the worst relative error (max |Δ| / max |official| per tensor) per group of
tensors, and whether APP and ATP kept the same tokens at the first step, with the smallest
top-k margin. --vit_width narrows the ViT (same depth, heads of the same pooling) to fit in a
few GiB of memory; the IR-50 is always the official one.
"""

import argparse
import os
import re
import sys
import types

import numpy as np
import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # this checkout's tests and fer_jax, whatever is installed

import jax  # noqa: E402

from fer_jax import models  # noqa: E402
from reference import one_step  # noqa: E402
from reference.official_one_step import OfficialTraining  # noqa: E402
from test_one_step_apvit import apvit_checkpoint  # noqa: E402

GROUPS = (("IR-50 convs", r"^params/extractor/.*/kernel$"), ("IR-50 PReLU", r"^params/extractor/.*/slope$"),
          ("IR-50 BN params", r"^params/extractor/"), ("BN stats", r"^batch_stats/"),
          ("ViT projection, CLS, pos. embeddings", r"^params/vit/(projs_0|cls_token|cls_pos_embed|patch_pos_embed)"),
          ("ViT blocks + final norm", r"^params/vit/"), ("head", r"^params/head/"))
STEPS_PER_EPOCH = 48  # RAF-DB's 12 271 images in batches of 256: both steps are in epoch 0
def official_model(root: str, seed: int, width: int, heads: int, dtype=torch.float64):
  from mmcv import Config
  from mmcls.models import build_classifier
  cfg = Config.fromfile(os.path.join(root, "configs/apvit/RAF.py"))
  cfg.model.extractor.pretrained = None
  cfg.model.vit.pretrained = None
  cfg.model.vit.update(embed_dim=width, num_heads=heads)
  cfg.model.head.in_channels = width
  torch.manual_seed(seed)
  model = build_classifier(cfg.model)
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for norm in model.modules():
      if isinstance(norm, torch.nn.BatchNorm2d):
        norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
        norm.running_mean.copy_(0.1 * torch.randn(norm.running_mean.shape, generator=generator))
        norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=generator))
    model.head.fc.weight.copy_(0.05 * torch.randn(model.head.fc.weight.shape, generator=generator))
    model.head.fc.bias.copy_(0.05 * torch.randn(model.head.fc.bias.shape, generator=generator))
  return cfg, model.float().to(dtype).train()


def apvit_official(official: str, config, device: str = "cpu", dtype=torch.float64) -> OfficialTraining:
  """configs/apvit/RAF.py's training step, for benchmarks/official_step.py: the model's forward_train
  (IR-50 and PoolingViT features, then LinearClsHead's cross-entropy), mmcv's SGD with the config's
  paramwise decays, and its OptimizerHook's clipping of the gradients' norm at max_norm."""
  sys.path.insert(0, official)
  try:
    from mmcv.runner import build_optimizer
  except ImportError as e:
    raise SystemExit(f"APViT's official code needs mmcv 1.x ({e}): pip install --target DIR --no-deps "
                     "--no-build-isolation mmcv==1.7.2 addict yapf platformdirs, then put DIR on the path") from e
  cfg, model = official_model(official, 0, config.model.width, config.model.num_heads, dtype)
  model.to(device)

  def features(images):
    x, aux_losses = model.extract_feat(images)
    assert not any(aux_losses.values()), aux_losses  # RAF.py's PoolingViT adds no loss of its own
    return (x,)

  def loss(outputs, labels):
    return model.head.forward_train(outputs[0], labels)["ce_loss"]

  return OfficialTraining({"model": model}, {}, build_optimizer(model, cfg.optimizer), features, loss,
                          max_grad_norm=cfg.optimizer_config.grad_clip.max_norm)


class TopPoolRecorder:
  """Wraps the official top_pool where the model calls it, keeping (scores, arguments, kept index)."""

  def __init__(self):
    import mmcls.models.backbones.modules.vit_pooling as atp_module
    import mmcls.models.vit.vit_siam_merge as app_module
    self.calls, self.active = [], False
    for module in (app_module, atp_module):
      module.top_pool = self._wrap(module.top_pool)

  def _wrap(self, top_pool):
    def recorded(x, **kwargs):
      index = top_pool(x, **kwargs)
      if self.active and index is not None:
        self.calls.append((x.detach().numpy()[..., 0], kwargs, index[..., 0].numpy()))
      return index
    return recorded


def official_steps(cfg, model, batches, recorder: TopPoolRecorder) -> list[dict]:
  """The official iteration: model.train_step (loss), then mmcv's OptimizerHook (backward, clipping,
  SGD step) at the CosineAnnealing hook's epoch-0 rate. Records as one_step.torch_steps does."""
  from mmcv.runner import LogBuffer, OptimizerHook, build_optimizer
  from mmcv.runner.hooks.lr_updater import CosineAnnealingLrUpdaterHook
  optimizer = build_optimizer(model, cfg.optimizer)
  print(f"official optimiser: {len(optimizer.param_groups)} parameter groups, weight decays "
        f"{sorted({group['weight_decay'] for group in optimizer.param_groups})}")
  runner = types.SimpleNamespace(model=model, optimizer=optimizer, log_buffer=LogBuffer(), epoch=0,
                                 max_epochs=cfg.get("total_epochs", 40), data_loader=[None] * STEPS_PER_EPOCH)
  lr_hook = CosineAnnealingLrUpdaterHook(**{k: v for k, v in cfg.lr_config.items() if k != "policy"})
  lr_hook.before_run(runner)
  lr_hook.before_train_epoch(runner)
  optimizer_hook = OptimizerHook(**cfg.optimizer_config)

  def record(loss):
    buffer = lambda p: optimizer.state[p]["momentum_buffer"].detach().clone() if optimizer.state else None
    return {"loss": loss, "state": {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}},
            "momentum": {"model": {k: buffer(p) for k, p in model.named_parameters()}}, "extra": {},
            "extra_momentum": {}}

  records = [record(None)]
  for number, (images, labels) in enumerate(batches, 1):
    batch = {"img": torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
             "gt_label": torch.from_numpy(labels.astype(np.int64))}
    recorder.active = number == 1
    runner.outputs = model.train_step(batch, optimizer)
    recorder.active = False
    optimizer_hook.after_train_iter(runner)
    records.append(record(runner.outputs["loss"].item()))
    print(f"official step {number}: lr {optimizer.param_groups[0]['lr']:g}, gradient norm "
          f"{runner.log_buffer.val_history['grad_norm'][-1]:.4f} (clipped to {cfg.optimizer_config.grad_clip.max_norm})")
  return records


def fer_jax_positions(config, variables, images):
  """Grid positions fer_jax's model keeps (APP, then after each pooling block) in training mode."""
  outputs, _ = models.build_model(config).apply(variables, images, train=True, mutable=["batch_stats"])
  return [np.asarray(outputs["app_positions"])] + [np.asarray(p) for p in outputs["atp_positions"]]


def official_positions(calls) -> list[np.ndarray]:
  """Grid positions kept by APP and after each pooling block, from the recorded indices."""
  (_, _, app), *atp = calls
  positions = [app]
  for _, _, index in atp:
    positions.append(np.take_along_axis(positions[-1], index[:, 1:] - 1, axis=1))
  return positions


def smallest_margin(calls) -> float:
  """min over calls and images of (k-th − (k+1)-th largest score) / score range."""
  margins = []
  for scores, kwargs, index in calls:
    if kwargs.get("exclude_first"):
      scores = scores[:, 1:]
    keep = index.shape[1] - (1 if kwargs.get("exclude_first") else 0)
    ranked = -np.sort(-scores, axis=1)
    margins.append(np.min((ranked[:, keep - 1] - ranked[:, keep]) / (ranked[:, 0] - ranked[:, -1])))
  return float(min(margins))


def worst_by_group(actual: dict, expected: dict, before: dict | None = None) -> dict:
  """{group: (worst relative error, path)}; with `before`, of the changes since then."""
  worst = {}
  for path, value in expected.items():
    ours = actual[path]
    if before is not None:
      ours, value = ours - before[path], value - before[path]
    group = next(name for name, pattern in GROUPS if re.search(pattern, path))
    worst[group] = max(worst.get(group, (0.0, "")), (one_step.relative_error(ours, value), path))
  return worst


def print_groups(title: str, worst: dict) -> None:
  print(title)
  for group, (error, path) in worst.items():
    print(f"  {group:38s} {error:.1e}  ({path})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--official", required=True, help="checkout of the official APViT repository")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--vit_width", type=int, default=768)
  parser.add_argument("--vit_heads", type=int, default=8)
  args = parser.parse_args()
  sys.path.insert(0, os.path.abspath(args.official))
  recorder = TopPoolRecorder()
  cfg, official = official_model(args.official, args.seed, args.vit_width, args.vit_heads)
  with jax.enable_x64(True):
    config = one_step.float64_config("configs/apvit.py:rafdb", 112)
    config.model.update(width=args.vit_width, num_heads=args.vit_heads, mlp_dim=3 * args.vit_width)
    batches = one_step.random_batches(2, args.batch, 112, config.model.num_classes, args.seed)
    records = official_steps(cfg, official, batches, recorder)
    initial, expected = one_step.in_fer_jax_layout(config, records, apvit_checkpoint)
    del records
    positions = fer_jax_positions(config, initial, batches[0][0])
    before = {path: value.copy() for path, value in one_step.flat(initial).items()}  # jax_steps donates `initial`
    ours = one_step.jax_steps(config, initial, batches)
  assert {leaf.dtype for leaf in jax.tree.leaves(initial)} == {np.dtype(np.float64)}

  same = [np.array_equal(a, b) for a, b in zip(positions, official_positions(recorder.calls))]
  print(f"step 1 tokens kept by APP and after each pooling block identical: {same}; "
        f"smallest top-k margin / score range: {smallest_margin(recorder.calls):.1e}")
  for step, (mine, theirs) in enumerate(zip(ours, expected), 1):
    print(f"step {step}: loss official {theirs['loss']:.15f}, fer_jax {mine['loss']:.15f}, relative error "
          f"{one_step.relative_error(np.float64(mine['loss']), np.float64(theirs['loss'])):.1e}")
    after = one_step.flat(theirs["variables"])
    print_groups(f"step {step}, change of each tensor in the step:",
                 worst_by_group(one_step.flat(mine["variables"]), after, before))
    if "momentum" in theirs:  # one_step.in_fer_jax_layout converts the last step's buffers only
      print_groups(f"step {step}, momentum buffers:", worst_by_group(one_step.flat(mine["momentum"], "params/"),
                                                                     one_step.flat(theirs["momentum"], "params/")))
    before = after


if __name__ == "__main__":
  main()
