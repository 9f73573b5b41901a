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


def label_map(source: tuple[str, ...], target: tuple[str, ...], allow_missing: bool = False) -> np.ndarray:
  """Array m with m[source_index] = target_index, or -1 where the target lacks that class.

  Target classes the source lacks are an error unless `allow_missing` (evaluating a model on
  another data set: e.g. an 8-class model on a 7-class set, whose contempt column then only
  ever holds wrong predictions)."""
  unknown = [name for name in target if name not in source]
  if unknown and not allow_missing:
    raise ValueError(f"Target classes {unknown} are not in the data set's classes {list(source)}.")
  return np.array([target.index(name) if name in target else -1 for name in source], np.int32)
