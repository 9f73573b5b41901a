"""Optimisers and epoch-wise learning-rate schedules, with PyTorch's semantics.

Weight decay for SGD and Adam is coupled L2 added to the gradient, as `torch.optim` does;
`adamw` decouples it. Schedules change the rate once per epoch, like the PyTorch schedulers
the official recipes step at epoch ends. Parameter groups, frozen parameters and the
weight-decay exemptions are regexes over paths such as "trunk/layer1_0/conv1/kernel".
"""

import math
import re

import jax
import jax.numpy as jnp
import optax

FROZEN = "frozen"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")


def path_of(key_path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in key_path)


def lr_schedule(opt_config, steps_per_epoch: int, num_epochs: int):
  """Step → learning rate, constant within an epoch."""
  base, gamma = opt_config.lr, opt_config.gamma

  def multiplier(epoch):
    name = opt_config.schedule
    if name == "constant":
      return jnp.ones_like(epoch, jnp.float32)
    if name == "step":
      return gamma ** (epoch // opt_config.step_epochs).astype(jnp.float32)
    if name == "exponential":
      return gamma ** epoch.astype(jnp.float32)
    if name == "cosine":
      return 0.5 * (1 + jnp.cos(math.pi * epoch.astype(jnp.float32) / num_epochs))
    raise ValueError(f"Unknown config.optimizer.schedule {name!r}; valid: {', '.join(SCHEDULES)}.")

  multiplier(jnp.zeros((), jnp.int32))  # fail early on a bad name
  return lambda step: base * multiplier(jnp.asarray(step) // steps_per_epoch)


def _base(opt_config, learning_rate, decay_mask) -> optax.GradientTransformation:
  name = opt_config.name
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
  if name == "adam":
    return optax.adam(learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                       weight_decay=opt_config.weight_decay, mask=decay_mask)
  raise ValueError(f"Unknown config.optimizer.name {name!r}; valid: {', '.join(OPTIMIZERS)}.")


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


def make_optimizer(opt_config, steps_per_epoch: int, num_epochs: int, params) -> optax.GradientTransformation:
  schedule = lr_schedule(opt_config, steps_per_epoch, num_epochs)
  exclude = opt_config.weight_decay_exclude
  decay_mask = lambda tree: jax.tree_util.tree_map_with_path(
      lambda kp, _: not (exclude and re.search(exclude, path_of(kp))), tree)

  def group(multiplier: float) -> optax.GradientTransformation:
    learning_rate = lambda step: multiplier * schedule(step)
    steps = [_base(opt_config, learning_rate, decay_mask)]
    if opt_config.weight_decay and opt_config.name != "adamw":
      steps.insert(0, optax.add_decayed_weights(opt_config.weight_decay, decay_mask))
    return optax.chain(*steps)

  transforms = {FROZEN: optax.set_to_zero(), "default": group(1.0)}
  transforms.update({str(i): group(m) for i, (_, m) in enumerate(opt_config.lr_groups)})
  tx = optax.multi_transform(transforms, param_labels(opt_config, params))
  if opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx
