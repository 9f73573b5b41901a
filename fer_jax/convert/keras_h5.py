"""Reads Keras HDF5 weight files (`save_weights(...h5)` or a whole-model `.h5`) with h5py only.

Keras stores each layer as a group named after the layer, with a `weight_names` attribute
listing datasets such as "conv0/kernel:0". Tensors are returned as "<layer>/<weight>"
("conv0/kernel", "bn0/moving_mean"), so converters map them by layer name, not by position.
"""

import numpy as np

from fer_jax import errors
from fer_jax.convert.core import ConversionError
from fer_jax.convert.core import unreadable


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load(path: str) -> dict[str, np.ndarray]:
  try:
    import h5py
  except ImportError as e:
    raise ConversionError("Reading a Keras .h5 file needs h5py: pip install h5py") from e
  try:
    # Opened here, so that a file-system error keeps its own message (h5py's spans lines of its internals).
    with open(path, "rb") as file, h5py.File(file, "r") as f:
      return _weights(path, f)
  except ConversionError:
    raise
  except (OSError, KeyError, RuntimeError, TypeError, ValueError) as e:  # the last two: attributes of other types
    if errors.is_file_system_error(e):  # fer_jax.cli names it with its fix
      raise
    # h5py's words for a file that is not HDF5 or is cut ("file signature not found", "truncated file").
    raise unreadable(path, "a Keras HDF5 file", str(e)) from e


def _weights(path: str, f) -> dict[str, np.ndarray]:
  root = f["model_weights"] if "model_weights" in f else f
  if "layer_names" not in root.attrs:
    raise ConversionError(f"{path} is not a Keras weights file (no layer_names attribute).")
  tensors = {}
  for layer in map(_text, root.attrs["layer_names"]):
    group = root[layer]
    for weight in map(_text, group.attrs.get("weight_names", ())):
      short = weight.rsplit("/", 1)[-1].split(":", 1)[0]
      tensors[f"{layer}/{short}"] = np.asarray(_own_dataset(path, group, weight))
  return tensors


def _own_dataset(path: str, group, weight: str):
  """The dataset `weight` of `group`, whose values must lie in the file itself: HDF5 lets a dataset take its bytes
  from other files (external storage, virtual datasets, external links), which would copy whatever local file a
  crafted checkpoint names into the converted weights."""
  import h5py  # pylint: disable=import-outside-toplevel
  if not isinstance(group, h5py.Group):
    raise TypeError(f"the layer {group.name} is no group of weights")
  if isinstance(group.get(weight, getlink=True), h5py.ExternalLink):
    raise ConversionError(f"Refused to load {path}: its weight {group.name}/{weight} links to another file. "
                          "fer_jax reads only the values a weights file holds itself; use the official file.")
  dataset = group[weight]
  if isinstance(dataset, h5py.Dataset) and (dataset.external or dataset.is_virtual):
    raise ConversionError(f"Refused to load {path}: its weight {dataset.name} takes its values from other files "
                          f"({'virtual dataset' if dataset.is_virtual else 'external storage'}). fer_jax reads only "
                          "the values a weights file holds itself; use the official file.")
  return dataset
