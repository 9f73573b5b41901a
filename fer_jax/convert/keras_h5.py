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
  except (OSError, KeyError, RuntimeError) as e:
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
      tensors[f"{layer}/{short}"] = np.asarray(group[weight])
  return tensors
