"""Method registry: `config.model.name` → the module `fer_jax.models.<name>`.

Each method module provides
  build(model_config) -> flax.linen.Module, whose `__call__(images, train)` returns a dict
      with at least "logits" (float32, [batch, num_classes]);
  loss(outputs, labels, loss_config) -> (scalar loss, dict of scalar metrics);
  AUXILIARY_PARAMS: top-level parameter names that are training-only state (e.g. DAN's
      affinity centres), left out of the model's parameter count.
"""

import importlib
import types

METHODS = ("dan", "lhcnet", "apvit", "scan_cci")


def get_method(name: str) -> types.ModuleType:
  if name not in METHODS:
    raise ValueError(f"Unknown model name {name!r}; valid names: {', '.join(METHODS)}.")
  return importlib.import_module(f"fer_jax.models.{name}")
