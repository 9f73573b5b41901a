"""What a checkpoint says about its classes, checked against the config, and the --config that fits it.

A converted model records the config's class order, which names its outputs. A checkpoint tells its
classes three ways, from the surest: the names it records (APViT's mmcv `meta.CLASSES`), which the
config's must equal; its official file name (DAN's `rafdb_…`, `affecnet7_…`), which a renamed file
may contradict, so a config that disagrees is only warned about; its classifier's number of outputs.
"""

import functools
from typing import Sequence

from absl import logging
import numpy as np

from fer_jax import config_lib
from fer_jax.convert.core import ConversionError
from fer_jax.data import labels


@functools.cache
def _method_configs(method: str) -> tuple:
  """(spec, config) for each data set of the repository's configs/<method>.py; none if it is not there."""
  try:
    module = config_lib.paper_config(method)
  except ValueError:  # a method of yours: no paper config
    return ()
  return tuple((f"configs/{method}.py:{data}", module.get_config(data)) for data in module.DATA_SETS)


def config_advice(config, num_classes: int, names: Sequence[str] = ()) -> str:
  """What to pass for a checkpoint of `num_classes` classes (named `names`, in that order, if known): the
  configs of the method that build them, else the overrides of this config that do."""
  def named(order_names) -> bool:
    return len(order_names) == num_classes and (not names or tuple(order_names) == tuple(names))

  specs = [spec for spec, candidate in _method_configs(config.model.name)
           if named(labels.class_names(candidate.dataset.class_order))]
  if specs:
    return "pass " + " or ".join(f"--config={spec}" for spec in specs)
  orders = [order for order, order_names in labels.CLASS_ORDERS.items() if named(order_names)]
  if not orders:
    wanted = f"names {', '.join(names)}" if names else f"has {num_classes} classes"
    return f"no class order of fer_jax {wanted} (fer_jax/data/labels.py, CLASS_ORDERS): add one"
  overrides = f"--config.dataset.class_order={orders[0] if len(orders) == 1 else '<' + '|'.join(orders) + '>'}"
  if num_classes != config.model.num_classes:
    overrides = f"--config.model.num_classes={num_classes} {overrides}"
  return f"add {overrides} to the command" + (" (the order it was trained in)" if len(orders) > 1 else "")


def classes_mismatch(tensors, config, classifier: str, axis: int) -> str | None:
  """Says what to pass when the classifier weight `classifier` has another number of classes than the config."""
  if classifier not in tensors:
    return None
  shape = tuple(np.shape(tensors[classifier]))
  if len(shape) <= axis or shape[axis] == config.model.num_classes:  # another rank: the key map names it
    return None
  return (f"holds a classifier of {shape[axis]} classes ({classifier} {shape}), but the config builds "
          f"{config.model.num_classes} classes: {config_advice(config, shape[axis])}")


def _config_names(config) -> tuple[str, ...]:
  return labels.class_names(config.dataset.class_order)


def check_recorded(config, file_name: str, recorded: Sequence[str]) -> None:
  """Refuses a config whose class names are not those the checkpoint records, in its order."""
  names = tuple(str(name).lower() for name in recorded)
  if names != _config_names(config):
    raise ConversionError(
        f"{file_name} records its classes as {', '.join(map(str, recorded))}, but the config's class order "
        f"{config.dataset.class_order} is {', '.join(_config_names(config))}, which would name its outputs wrongly: "
        f"{config_advice(config, len(names), names)}.")


def warn_if_named_otherwise(config, file_name: str, file_orders: Sequence[tuple[str, str]]) -> None:
  """Warns when the file is named like an official release of another class order than the config's."""
  for prefix, order in file_orders:
    names = labels.class_names(order)
    if file_name.startswith(prefix) and names != _config_names(config):
      logging.warning("%s is named like the released %s model (classes %s), but the config's class order %s is %s: "
                      "the converted model names its outputs in the config's order. Unless the file was renamed, "
                      "%s.", file_name, order, ", ".join(names), config.dataset.class_order,
                      ", ".join(_config_names(config)), config_advice(config, len(names), names))
