"""Optimisers and epoch-wise learning-rate schedules, with PyTorch's semantics.

Weight decay for SGD and Adam is coupled L2 added to the gradient, as `torch.optim` does;
`adamw` decouples it; `keras_adam` is Adam with Keras' ε placement (LHC-Net). Schedules change
the rate once per epoch, like the PyTorch schedulers the official recipes step at epoch ends. Parameter groups, frozen parameters and the
weight-decay exemptions are regexes over paths such as "trunk/layer1_0/conv1/kernel". A schedule or an optimiser of
yours is a function registered by `register_schedule` or `register_optimizer` in your config file
(docs/extending.md).
"""

import math
import re
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import optax

from fer_jax import errors
from fer_jax.errors import ConfigError

FROZEN = "frozen"


def path_of(key_path) -> str:
  """A parameter's path as the regexes of the config see it: "trunk/layer1_0/conv1/kernel"."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


# Each schedule's multiplier of the base rate at an epoch (an integer array) of a run of num_epochs.
SCHEDULES: dict[str, Callable] = {
    "constant": lambda epoch, opt_config, num_epochs: jnp.ones_like(epoch, float),
    "step": lambda epoch, opt_config, num_epochs: opt_config.gamma ** (epoch // opt_config.step_epochs).astype(float),
    "exponential": lambda epoch, opt_config, num_epochs: opt_config.gamma ** epoch.astype(float),
    "cosine": lambda epoch, opt_config, num_epochs: 0.5 * (1 + jnp.cos(math.pi * epoch.astype(float) / num_epochs)),
}


def lr_schedule(opt_config, steps_per_epoch: int, num_epochs: int):
  """Step → learning rate, constant within an epoch; in JAX's default float (float64 with
  JAX_ENABLE_X64=1, for the float64 reference mode)."""
  multiplier = errors.chosen(SCHEDULES, opt_config.schedule, "optimizer.schedule")
  base = opt_config.lr
  return lambda step: base * multiplier(jnp.asarray(step) // steps_per_epoch, opt_config, num_epochs)


# Each optimiser's update rule from the config, the learning rate (step → rate) and the weight-decay mask.
OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda opt_config, learning_rate, decay_mask: optax.sgd(
        learning_rate, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov),
    "adam": lambda opt_config, learning_rate, decay_mask: optax.adam(
        learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps),
    "adamw": lambda opt_config, learning_rate, decay_mask: optax.adamw(
        learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
        weight_decay=opt_config.weight_decay, mask=decay_mask),
    "keras_adam": lambda opt_config, learning_rate, decay_mask: optax.chain(
        scale_by_keras_adam(opt_config.b1, opt_config.b2, opt_config.eps), optax.scale_by_learning_rate(learning_rate)),
}


# The optimisers that apply config.optimizer.weight_decay themselves (decoupled); the others are given gradients with
# the coupled L2 term added, as torch.optim's SGD and Adam add it.
DECOUPLED_WEIGHT_DECAY = {"adamw"}
# The config.optimizer keys that a schedule or an optimiser of yours reads beyond config_lib.base_config's, by the
# config.optimizer key naming it ("schedule", "name") and its name.
OWN_KEYS: dict[str, dict[str, tuple[str, ...]]] = {"schedule": {}, "name": {}}


def register_schedule(multiplier: Callable | None = None, *, keys: tuple[str, ...] = ()):
  """Makes `multiplier(epoch, opt_config, num_epochs)` the schedule config.optimizer.schedule names by its function
  name: the base rate's multiplier at `epoch`, an integer array of epochs counted from 0 (the rate changes at epoch
  ends, as the built-in schedules'), written in jax.numpy. `keys`: the config.optimizer keys of yours it reads,
  which the config file sets. As a decorator, `@register_schedule` or `@register_schedule(keys=(...))`."""
  def register(function: Callable) -> Callable:
    return _registered(SCHEDULES, "schedule", function, keys)
  return register if multiplier is None else register(multiplier)


def register_optimizer(rule: Callable | None = None, *, keys: tuple[str, ...] = (),
                       decoupled_weight_decay: bool = False):
  """Makes `rule(opt_config, learning_rate, decay_mask)`, which returns an optax.GradientTransformation applying
  `learning_rate` (step → rate), the optimiser config.optimizer.name names by its function name. Its gradients come
  with config.optimizer.weight_decay's coupled L2 term added, but with `decoupled_weight_decay` the rule applies
  the decay itself (to the parameters that `decay_mask`, a function of the params, marks). `keys` as
  `register_schedule`'s."""
  def register(function: Callable) -> Callable:
    _registered(OPTIMIZERS, "name", function, keys)
    (DECOUPLED_WEIGHT_DECAY.add if decoupled_weight_decay else DECOUPLED_WEIGHT_DECAY.discard)(function.__name__)
    return function
  return register if rule is None else register(rule)


def _registered(table: dict, key: str, function: Callable, keys: tuple[str, ...]) -> Callable:
  """`function` in `table` (`errors.registered`), with the config.optimizer `keys` it reads, where
  config.optimizer.`key` names it."""
  errors.registered(table, function, "schedule" if key == "schedule" else "optimiser")
  OWN_KEYS[key][function.__name__] = tuple(keys)
  return function


def scale_by_keras_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Adam as Keras/TF computes it: m / (√v + ε) · √(1 − b2ᵗ) / (1 − b1ᵗ), ε added to the
  uncorrected √v. Optax adds ε to the corrected √v̂; the two differ while b2ᵗ is not small."""
  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return {"count": jnp.zeros((), jnp.int32), "m": zeros, "v": zeros}

  def update(grads, state, params=None):
    del params
    count = state["count"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    t = count.astype(float)
    correction = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(lambda m, v: correction * m / (jnp.sqrt(v) + eps), m, v)
    return updates, {"count": count, "m": m, "v": v}

  return optax.GradientTransformation(init, update)


def param_labels(opt_config, params):
  """Each parameter's group: FROZEN, or the index of the first matching lr_groups regex, or 'default'."""
  def label(key_path, _):
    path = path_of(key_path)
    if opt_config.trainable and not re.search(opt_config.trainable, path):
      return FROZEN
    for index, (pattern, _) in enumerate(opt_config.lr_groups):
      if re.search(pattern, path):
        return str(index)
    return "default"
  return jax.tree_util.tree_map_with_path(label, params)


def check_patterns(opt_config, params) -> None:
  """Logs how many parameters the trainable, lr_groups and weight_decay_exclude regexes match; a
  ConfigError for a trainable or lr_groups regex that matches none (it would freeze every parameter,
  or set the rate of none)."""
  paths = [path_of(key_path) for key_path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  patterns = {"trainable": (opt_config.trainable, ""), "weight_decay_exclude": (opt_config.weight_decay_exclude, ""),
              **{f"lr_groups[{index}]": (pattern, " (their learning rate, where this is the first group a parameter "
                                                   f"matches: the logged lr × {multiplier:g})")
                 for index, (pattern, multiplier) in enumerate(opt_config.lr_groups)}}
  for key, (pattern, rate) in patterns.items():
    if not pattern:
      continue
    matched = sum(1 for path in paths if re.search(pattern, path))
    logging.info("config.optimizer.%s=%r matches %d of the %d parameters%s", key, pattern, matched, len(paths), rate)
    if not matched and key != "weight_decay_exclude":
      examples = ", ".join(dict.fromkeys((paths[0], paths[len(paths) // 2], paths[-1])))
      raise ConfigError(f"config.optimizer.{key}={pattern!r} matches none of the model's {len(paths)} parameters "
                        f"(paths such as {examples}): correct the regex.")


class Optimizer(NamedTuple):
  """The update rule, the learning rate it applies at each step (logged beside the loss), and which parameters it
  trains (bools shaped as the params; None: all)."""
  tx: optax.GradientTransformation
  schedule: Callable
  trained: Any = None


def trained_norm(grads, trained=None) -> jax.Array:
  """The global L2 norm of the gradients of the trained parameters (`trained`: bools shaped as `grads`, None: all).
  Torch gives a frozen parameter no gradient, nor Keras an untrainable one; left out here, their gradients are
  never computed (XLA drops what nothing reads)."""
  counted = grads if trained is None else jax.tree.map(lambda g, keep: g if keep else None, grads, trained)
  return optax.tree.norm(counted)


def make_optimizer(opt_config, steps_per_epoch: int, num_epochs: int, params) -> Optimizer:
  schedule = lr_schedule(opt_config, steps_per_epoch, num_epochs)
  base = errors.chosen(OPTIMIZERS, opt_config.name, "optimizer.name")
  exclude = opt_config.weight_decay_exclude
  decay_mask = lambda tree: jax.tree_util.tree_map_with_path(
      lambda kp, _: not (exclude and re.search(exclude, path_of(kp))), tree)

  def group(multiplier: float) -> optax.GradientTransformation:
    learning_rate = lambda step: multiplier * schedule(step)
    steps = [base(opt_config, learning_rate, decay_mask)]
    if opt_config.weight_decay and opt_config.name not in DECOUPLED_WEIGHT_DECAY:
      steps.insert(0, optax.add_decayed_weights(opt_config.weight_decay, decay_mask))
    return optax.chain(*steps)

  transforms = {FROZEN: optax.set_to_zero(), "default": group(1.0)}
  transforms.update({str(i): group(m) for i, (_, m) in enumerate(opt_config.lr_groups)})
  labels = param_labels(opt_config, params)
  tx = optax.multi_transform(transforms, labels)
  trained = jax.tree.map(lambda label: label != FROZEN, labels)
  return Optimizer(optax.chain(clip_stage(opt_config.grad_clip_norm, trained), tx), schedule, trained)


def clip_stage(max_norm: float, trained=None) -> optax.GradientTransformation:
  """clip_grad_norm, or the identity for max_norm 0. Both keep an EmptyState, so the optimizer
  state, and a checkpoint of it, has one structure whatever grad_clip_norm is: a run resumes after
  clipping is turned on, as the non-finite-loss message advises."""
  return clip_grad_norm(max_norm, trained) if max_norm else optax.identity()


def clip_grad_norm(max_norm: float, trained=None) -> optax.GradientTransformation:
  """Gradients times min(1, max_norm / (global L2 norm + 1e-6)), as torch.nn.utils.clip_grad_norm_
  (which APViT's mmcv OptimizerHook calls) scales them; optax.clip_by_global_norm has no 1e-6.
  The norm counts the `trained` parameters' gradients only (`trained_norm`), as torch's clip_grad_norm_ over the
  parameters that require gradients does (Keras' `clipnorm` differs: each variable by its own norm, no 1e-6; no
  official method here clips through Keras)."""

  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / (trained_norm(updates, trained) + 1e-6))
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
