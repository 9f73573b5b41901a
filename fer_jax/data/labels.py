"""The one table of class orders, and the remaps between them.

Every data set stores labels in its owners' order, and every config asks for the order its
method was trained with; both kinds are named orders in `CLASS_ORDERS` (docs/methods/README.md
§6). `label_map` turns the first into the second by class name, dropping classes the target order lacks.
"""

import numpy as np

ANGER, DISGUST, FEAR, HAPPINESS = "anger", "disgust", "fear", "happiness"
SADNESS, SURPRISE, NEUTRAL, CONTEMPT = "sadness", "surprise", "neutral", "contempt"
CLASSES = (ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE, NEUTRAL, CONTEMPT)  # every class a set may name

CLASS_ORDERS = {
    # Data sets, as their owners number them.
    "fer2013": (ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE, NEUTRAL),
    "rafdb": (SURPRISE, FEAR, DISGUST, HAPPINESS, SADNESS, ANGER, NEUTRAL),
    "ferplus": (NEUTRAL, HAPPINESS, SURPRISE, SADNESS, ANGER, DISGUST, FEAR, CONTEMPT),
    "affectnet8": (NEUTRAL, HAPPINESS, SADNESS, SURPRISE, FEAR, DISGUST, ANGER, CONTEMPT),
    "sfew": (ANGER, DISGUST, FEAR, HAPPINESS, NEUTRAL, SADNESS, SURPRISE),
    # Methods' output orders that are not a data set's own.
    "affectnet7": (NEUTRAL, HAPPINESS, SADNESS, SURPRISE, FEAR, DISGUST, ANGER),
    "apvit7": (ANGER, DISGUST, FEAR, SADNESS, HAPPINESS, SURPRISE, NEUTRAL),
    "apvit8": (ANGER, DISGUST, FEAR, SADNESS, HAPPINESS, SURPRISE, NEUTRAL, CONTEMPT),
}


def class_names(order: str) -> tuple[str, ...]:
  """Class names of a named order; raises with the valid names if unknown."""
  if order not in CLASS_ORDERS:
    raise ValueError(
        f"Unknown class order {order!r}; valid orders: {', '.join(sorted(CLASS_ORDERS))}.")
  return CLASS_ORDERS[order]


def add_class_order(name: str, names) -> None:
  """Makes `name` a class order of `names` (classes of CLASSES, each once): the order of a set of yours with fewer or
  other classes than fer_jax's orders, and of the models trained on it. Called in your config file, so that every
  command reading the config knows it (docs/extending.md, 'A data set of yours'); the same call again does nothing."""
  names = tuple(names)
  unknown = [n for n in names if n not in CLASSES]
  if unknown or len(set(names)) != len(names) or not names:
    raise ValueError(f"Class order {name!r}: {list(names)} must be classes of fer_jax.data.labels.CLASSES "
                     f"({', '.join(CLASSES)}), each once.")
  if CLASS_ORDERS.get(name, names) != names:
    raise ValueError(f"Class order {name!r} is already {CLASS_ORDERS[name]}: give yours another name.")
  CLASS_ORDERS[name] = names


def label_map(source: tuple[str, ...], target: tuple[str, ...], allow_missing: bool = False) -> np.ndarray:
  """Array m with m[source_index] = target_index, or -1 where the target lacks that class.

  Target classes the source lacks are an error unless `allow_missing` (evaluating a model on
  another data set: e.g. an 8-class model on a 7-class set, whose contempt column then only
  ever holds wrong predictions)."""
  unknown = [name for name in target if name not in source]
  if unknown and not allow_missing:
    raise ValueError(f"Target classes {unknown} are not in the data set's classes {list(source)}.")
  return np.array([target.index(name) if name in target else -1 for name in source], np.int32)
