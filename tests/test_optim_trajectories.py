"""Each shipped recipe's optimiser, built from its config as train.py builds it, stepped side by side with the
library the official code trains with: torch.optim and its schedulers (DAN, APViT, SCAN-CCI), or Keras' update rules
written out (LHC-Net; TensorFlow is not installed). Both get the same gradients on the model's own parameter paths
(each leaf shrunk to a few numbers, float64); the parameters after every step, and the rate train.py logs for it, must
agree. The official settings are written here as the official scripts pass them (docs/recipes.md gives their lines),
not read from our configs. Epochs are STEPS_PER_EPOCH steps long: every epoch has the same number of steps (an epoch's last,
short batch is one of them), so the schedule moves where the data's epochs end."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from fer_jax import models
from fer_jax import optim
from helpers import get_config

STEPS_PER_EPOCH = 3
APVIT_NO_DECAY = r"^vit/(cls_token|cls_pos_embed|patch_pos_embed)$"  # configs/apvit.py NO_DECAY


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def recipe(spec: str, **optimizer_overrides):
  config = get_config(spec)
  config.optimizer.update(optimizer_overrides)
  return config


KEPT = r"/controller$|" + APVIT_NO_DECAY  # the leaves a recipe's regexes single out are always kept
MAX_LEAVES = 40  # of the models' 140-260 (each top-level module's first among them): fewer compile faster


@functools.cache
def _paths_and_sizes(spec: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
  config = get_config(spec)
  abstract = models.abstract_variables(models.build_model(config), config)["params"]
  flat = [(optim.path_of(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]]
  stride, tops = -(-len(flat) // MAX_LEAVES), set()
  kept = []
  for index, (path, leaf) in enumerate(flat):
    top = path.split("/")[0]
    if index % stride == 0 or top not in tops or re.search(KEPT, path):
      kept.append((path, 1 if leaf.ndim == 0 else 3))
    tops.add(top)
  return tuple(path for path, _ in kept), tuple(size for _, size in kept)


class Tree:
  """A sample of a config's model parameter paths (KEPT ones included), each leaf 3 numbers (a scalar stays one),
  float64: as a tree for fer_jax and as one vector (the leaves' order) for the references."""

  def __init__(self, spec: str):
    self.paths, self.sizes = _paths_and_sizes(spec)
    self.vector = np.random.default_rng(0).uniform(-1.0, 1.0, sum(self.sizes))
    nested = {}
    for path in self.paths:
      *parents, name = path.split("/")
      functools.reduce(lambda node, key: node.setdefault(key, {}), parents, nested)[name] = 0.0
    self.treedef = jax.tree.structure(nested)
    self.params = self.unflatten(self.vector)
    assert [optim.path_of(path) for path, _ in jax.tree_util.tree_flatten_with_path(self.params)[0]] == list(self.paths)

  def split(self, vector) -> list[np.ndarray]:
    return np.split(np.asarray(vector), np.cumsum(self.sizes)[:-1])

  def unflatten(self, vector) -> dict:
    return jax.tree.unflatten(self.treedef, [piece if piece.size > 1 else piece.reshape(()) for piece in
                                             self.split(vector)])

  def per_element(self, per_leaf) -> np.ndarray:
    return np.repeat(np.asarray(per_leaf), self.sizes)


class Gradients:
  """The gradient of Σ ½·c·(p − t)² plus a drift that changes every step, times scale(step): the same numbers for
  every library. It depends on the parameters, so momentum, weight decay and clipping all shape the trajectory."""

  def __init__(self, size: int, scale=lambda step: 1.0):
    rng = np.random.default_rng(1)
    self.curvature, self.target = rng.uniform(0.5, 2.0, size), rng.uniform(-2.0, 2.0, size)
    self.phase, self.scale = rng.uniform(0.0, 6.0, size), scale

  def __call__(self, step: int, values: np.ndarray) -> np.ndarray:
    return self.scale(step) * (self.curvature * (values - self.target) + 0.3 * np.cos(0.9 * step + self.phase))


def now_large_now_small(step: int) -> float:
  """Global gradient norms of ~20 on even steps, ~1 on odd ones: clip_grad_norm_ at 10 acts on half of them."""
  return 1.0 if step % 2 == 0 else 0.05


def fer_jax_steps(config, tree: Tree, gradients, num_steps: int, resume_at: int = 0):
  """(the rate train.py logs, the parameters after the step) for each step. With `resume_at`, the optimiser is built
  anew before that step and continues from its state copied to the host, as a resumed run restores it."""
  def build():
    optimizer = optim.make_optimizer(config.optimizer, STEPS_PER_EPOCH, config.num_epochs, tree.params)

    def apply(params, state, grads):
      updates, state = optimizer.tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return params, state, jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(params)])
    return jax.jit(optimizer.schedule), jax.jit(apply), jax.jit(optimizer.tx.init)

  schedule, apply, init = build()
  params, state, vector = tree.params, init(tree.params), tree.vector
  for step in range(num_steps):
    if resume_at and step == resume_at:
      (schedule, apply, _), state = build(), jax.device_get(state)
    rate = float(schedule(step))  # train_step logs schedule(state["step"]) beside the step's loss
    params, state, vector = apply(params, state, tree.unflatten(gradients(step, vector)))
    vector = np.asarray(vector)
    yield rate, vector


def torch_steps(tree: Tree, make_optimizer, epoch_end, gradients, num_steps: int, group_of=None, clip: float = 0.0,
                frozen=None, clipped_norms=None):
  """(each parameter group's rate, the parameters after the step) of a torch.optim run. Leaf i is in group
  group_of[i] (default 0) of make_optimizer's groups; a frozen leaf has requires_grad off, so no gradient, as torch
  gives it; `clip`: torch.nn.utils.clip_grad_norm_ of the parameters with a gradient before the step (mmcv's
  OptimizerHook), whose norms go to `clipped_norms` if given; `epoch_end(optimizer)` returns what is called after each
  epoch's last step."""
  frozen, norms = frozen or [False] * len(tree.sizes), clipped_norms if clipped_norms is not None else []
  tensors = [torch.tensor(piece, requires_grad=not still) for piece, still in zip(tree.split(tree.vector), frozen)]
  group_of = group_of or [0] * len(tensors)
  optimizer = make_optimizer([[t for t, g in zip(tensors, group_of) if g == group] for group in sorted(set(group_of))])
  step_epoch = epoch_end(optimizer)
  for step in range(num_steps):
    rates = [group["lr"] for group in optimizer.param_groups]
    values = np.concatenate([t.detach().numpy() for t in tensors])
    for tensor, grad in zip(tensors, tree.split(gradients(step, values))):
      if tensor.requires_grad:
        tensor.grad = torch.from_numpy(grad.copy())
    if clip:
      norms.append(float(torch.nn.utils.clip_grad_norm_([t for t in tensors if t.grad is not None], clip)))
    optimizer.step()
    optimizer.zero_grad()
    if (step + 1) % STEPS_PER_EPOCH == 0:
      step_epoch()
    yield rates, np.concatenate([t.detach().numpy() for t in tensors])


def keras_steps(tree: Tree, name: str, lr: float, trainable, gradients, num_steps: int):
  """tf.keras.optimizers of TF 2.4 (LHC-Net's requirements.txt) at a constant rate, written out: SGD without momentum
  moves by −lr·g. Adam (β 0.9/0.999, ε 1e-7) keeps m += (g − m)(1 − β1) and v += (g² − v)(1 − β2), and moves by
  −lr·√(1 − β2ᵗ)/(1 − β1ᵗ)·m/(√v + ε). The variables of layers set trainable=False get no gradient."""
  values, moves = tree.vector.copy(), tree.per_element(trainable)
  m, v = np.zeros_like(values), np.zeros_like(values)
  for step in range(num_steps):
    grad, t = gradients(step, values), step + 1
    if name == "sgd":
      update = lr * grad
    else:
      m, v = m + (grad - m) * (1 - 0.9), v + (grad * grad - v) * (1 - 0.999)
      update = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    values = np.where(moves, values - update, values)
    m, v = np.where(moves, m, 0.0), np.where(moves, v, 0.0)
    yield [lr], values


def compare(ours, theirs, logged_group: int = 0, rtol: float = 1e-9) -> int:
  """Asserts that both runs log the same rate and reach the same parameters at every step; returns the steps."""
  steps = 0
  for step, ((rate, values), (rates, reference)) in enumerate(zip(ours, theirs, strict=True)):
    assert rate == pytest.approx(rates[logged_group], rel=1e-12), f"logged rate of step {step}"
    np.testing.assert_allclose(values, reference, rtol=rtol, atol=1e-12, err_msg=f"after step {step}")
    steps += 1
  return steps


def scheduler(make_scheduler):
  """epoch_end for a torch.optim.lr_scheduler: its step."""
  return lambda optimizer: make_scheduler(optimizer).step


def dan_rafdb_sgd(groups, nesterov: bool = False):
  """DAN rafdb.py:179: one group (network + affinity centres)."""
  return torch.optim.SGD([{"params": group} for group in groups], lr=0.1, weight_decay=1e-4, momentum=0.9,
                         nesterov=nesterov)


DAN_RAFDB_STEP_LR = scheduler(lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1))


@pytest.mark.parametrize("nesterov", [False, True])  # Nesterov: no config uses it; torch's form when asked for
def test_dan_rafdb_is_torch_sgd_with_momentum_decay_and_step_lr_per_epoch(nesterov):
  """rafdb.py:179-180, :242: SGD lr 0.1, momentum 0.9 (the first step's buffer is the gradient itself), coupled wd
  1e-4; StepLR(10, 0.1) stepped after each epoch, over all 40 epochs (the rate falls at 10, 20, 30)."""
  config, tree = recipe("configs/dan.py:rafdb", nesterov=nesterov), Tree("configs/dan.py:rafdb")
  gradients, steps = Gradients(tree.vector.size, scale=lambda step: 0.1), STEPS_PER_EPOCH * config.num_epochs
  theirs = torch_steps(tree, functools.partial(dan_rafdb_sgd, nesterov=nesterov), DAN_RAFDB_STEP_LR, gradients, steps)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs) == 120


def dan_affectnet_adam(groups):
  """DAN affectnet.py:238: Adam lr 1e-4 (PyTorch's betas and eps), weight decay 0."""
  return torch.optim.Adam([{"params": group} for group in groups], 1e-4, weight_decay=0)


DAN_AFFECTNET_EXPONENTIAL = scheduler(lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.6))


@pytest.mark.parametrize("data", ["affectnet7", "affectnet8"])
def test_dan_affectnet_is_torch_adam_with_exponential_lr_per_epoch(data):
  """affectnet.py:238-239, :294: ExponentialLR(0.6) stepped after each epoch, 10 epochs (the README's runs)."""
  config, tree = recipe(f"configs/dan.py:{data}"), Tree(f"configs/dan.py:{data}")
  gradients, steps = Gradients(tree.vector.size), STEPS_PER_EPOCH * config.num_epochs
  theirs = torch_steps(tree, dan_affectnet_adam, DAN_AFFECTNET_EXPONENTIAL, gradients, steps)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs) == 30


def apvit_sgd(groups):
  """APViT configs/apvit/RAF.py:58; a second group, if any, holds the parameters of decay multiplier 0."""
  return torch.optim.SGD([{"params": group, "weight_decay": 5e-4 * (index == 0)} for index, group in enumerate(groups)],
                         lr=1e-3, momentum=0.9)


# mmcv's CosineAnnealing hook, min_lr 0, by epoch (configs/apvit/RAF.py:63-65): before epoch e (from 0) of 40 every
# group's rate is 0 + ½·(base − 0)·(1 + cos(π·e/40)).
APVIT_COSINE = scheduler(lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
    optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / 40))))


@pytest.mark.parametrize("no_decay", [False, True])
def test_apvit_is_torch_sgd_with_clipping_and_cosine_per_epoch(no_decay):
  """clip_grad_norm_(max_norm 10) before the step (RAF.py:60), over all 40 epochs. As published the decay-multiplier
  keys match no parameter, so every parameter decays; with NO_DECAY those three are in a group of weight decay 0, as
  mmcv would have put them had the keys matched."""
  overrides = {"weight_decay_exclude": APVIT_NO_DECAY} if no_decay else {}
  config, tree = recipe("configs/apvit.py:rafdb", **overrides), Tree("configs/apvit.py:rafdb")
  exempt = [int(no_decay and bool(re.search(APVIT_NO_DECAY, path))) for path in tree.paths]
  assert sum(exempt) == 3 * no_decay
  gradients, steps, norms = Gradients(tree.vector.size, now_large_now_small), STEPS_PER_EPOCH * config.num_epochs, []
  theirs = torch_steps(tree, apvit_sgd, APVIT_COSINE, gradients, steps, group_of=exempt, clip=10.0, clipped_norms=norms)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs) == 120
  assert min(norms) < 10.0 < max(norms)


def scan_cci_rates_times_0_95(optimizer):
  """The official adjust_learning_rate (main_rafdb.py:221, :391-394), called after each epoch's training."""
  def epoch_end():
    for group in optimizer.param_groups:
      group["lr"] *= 0.95
  return epoch_end


@pytest.mark.parametrize("data, head_lr, weight_decay", [
    ("rafdb", 0.01, 1e-3), ("ferplus", 0.01, 1e-3), ("affectnet7", 0.001, 1e-3), ("sfew", 0.001, 1e-4)])
def test_scan_cci_is_torch_sgd_with_a_trunk_group_and_rates_times_0_95_per_epoch(data, head_lr, weight_decay):
  """main_*.py:188-195: SGD groups trunk (lr 1e-4), attention branch and region branch (lr --lr), momentum 0.9 and
  --wd in all three; 8 of the 60 epochs."""
  config, tree = recipe(f"configs/scan_cci.py:{data}"), Tree(f"configs/scan_cci.py:{data}")
  group_of = [{"trunk": 0, "attention": 1, "cci": 2}[path.split("/")[0]] for path in tree.paths]
  rates = (1e-4, head_lr, head_lr)
  sgd = lambda groups: torch.optim.SGD([{"params": group, "lr": lr} for group, lr in zip(groups, rates, strict=True)],
                                       lr=head_lr, momentum=0.9, weight_decay=weight_decay)
  gradients, steps = Gradients(tree.vector.size), STEPS_PER_EPOCH * 8
  theirs = torch_steps(tree, sgd, scan_cci_rates_times_0_95, gradients, steps, group_of=group_of)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs, logged_group=1) == 24  # logged: the heads'


@pytest.mark.parametrize("stage, name, lr", [
    ("A1", "adam", 1e-4), ("A2", "sgd", 0.01), ("A3", "sgd", 0.01), ("B", "sgd", 0.01), ("C", "adam", 1e-4)])
def test_lhcnet_stages_are_keras_optimisers_at_a_constant_rate(stage, name, lr):
  """ResNet34_Train.py:63-68, :128, :179; LHC_Train.py:28; Controller_Train.py:27-32, whose freeze_lhc leaves only the
  five controller scalars trainable. No scheduler, no decay; each stage compiles a fresh optimiser."""
  spec = f"configs/lhcnet.py:fer2013,stage={stage}"
  config, tree = recipe(spec), Tree(spec)
  trainable = [stage != "C" or path.endswith("/controller") for path in tree.paths]
  assert sum(trainable) == (5 if stage == "C" else len(tree.paths))
  gradients, steps = Gradients(tree.vector.size), STEPS_PER_EPOCH * 5
  theirs = keras_steps(tree, name, lr, trainable, gradients, steps)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs) == 15


@pytest.mark.parametrize("spec, make_optimizer, epoch_end, clip, resume_at", [
    ("configs/dan.py:rafdb", dan_rafdb_sgd, DAN_RAFDB_STEP_LR, 0.0, 31),  # epoch 11, after the first fall
    ("configs/dan.py:affectnet7", dan_affectnet_adam, DAN_AFFECTNET_EXPONENTIAL, 0.0, 7),
    ("configs/apvit.py:rafdb", apvit_sgd, APVIT_COSINE, 10.0, 4)])
def test_a_run_resumed_mid_epoch_keeps_the_trajectory_of_an_uninterrupted_one(spec, make_optimizer, epoch_end, clip,
                                                                              resume_at):
  """The optimiser rebuilt inside an epoch from the restored state moves and logs as torch's uninterrupted run."""
  config, tree = recipe(spec), Tree(spec)
  gradients, steps = Gradients(tree.vector.size, now_large_now_small), STEPS_PER_EPOCH * 12
  theirs = torch_steps(tree, make_optimizer, epoch_end, gradients, steps, clip=clip)
  assert compare(fer_jax_steps(config, tree, gradients, steps, resume_at=resume_at), theirs) == steps


def test_clipping_measures_the_norm_of_the_trained_parameters_only():
  """torch gives a frozen parameter no gradient, so clip_grad_norm_ (and mmcv's OptimizerHook, which filters on
  requires_grad) leaves it out of the norm; Keras clips the gradients of trainable variables only. Counted, the
  frozen gradients shrank every trained update (here a trained head, as a fine-tuning run with
  --config.optimizer.trainable and --config.optimizer.grad_clip_norm would)."""
  config = recipe("configs/dan.py:rafdb", trainable="^(fc|bn)/", grad_clip_norm=1.0)
  tree = Tree("configs/dan.py:rafdb")
  frozen = [not re.search("^(fc|bn)/", path) for path in tree.paths]
  assert 0 < frozen.count(False) < len(frozen)
  gradients, steps, norms = Gradients(tree.vector.size, now_large_now_small), STEPS_PER_EPOCH * 12, []
  theirs = torch_steps(tree, dan_rafdb_sgd, DAN_RAFDB_STEP_LR, gradients, steps, clip=1.0, frozen=frozen,
                       clipped_norms=norms)
  assert compare(fer_jax_steps(config, tree, gradients, steps), theirs) == steps
  assert min(norms) < 1.0 < max(norms)
