"""Safe readers for PyTorch checkpoints and for pickles of NumPy arrays.

Checkpoints come from strangers' download links, and unpickling can run arbitrary code.
PyTorch files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and
plain containers. The VGGFace2 ResNet-50 weights are a plain pickle of NumPy arrays; it is read
by an unpickler that resolves nothing but the NumPy array and dtype constructors (and the
`_codecs.encode` helper that Python-3 pickles of byte strings use): any other global, such as
`os.system`, is refused before anything runs.
"""

import io
import pickle

from fer_jax.convert.core import ConversionError

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and NumPy arrays; refuses every other global."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _NUMPY_GLOBALS:
      raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: only NumPy arrays are allowed")
    return super().find_class(*_NUMPY_GLOBALS[(module, name)])


def load_numpy_pickle(path: str) -> dict:
  """A pickle holding a dict of NumPy arrays (Python 2 pickles included, read as latin-1)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    loaded = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise ConversionError(f"Refused or could not read {path} as a pickle of NumPy arrays: {e}") from e
  if not isinstance(loaded, dict):
    raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a dict of NumPy arrays.")
  return loaded


def _to_numpy(value):
  import torch
  if isinstance(value, torch.Tensor):
    tensor = value.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
  if isinstance(value, dict):
    return {key: _to_numpy(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_to_numpy(item) for item in value)
  return value


def load_torch(path: str):
  """A `torch.save` file with its tensors as NumPy arrays, read with `weights_only=True`."""
  try:
    import torch
  except ImportError as e:
    raise ConversionError("Reading a PyTorch checkpoint needs PyTorch: pip install torch") from e
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ConversionError(f"Refused to load {path}: it needs more than tensors and plain containers to "
                          f"unpickle, and fer_jax never runs code from a checkpoint ({e}).") from e
  except (RuntimeError, EOFError, ValueError) as e:
    raise ConversionError(f"Could not read {path} as a PyTorch checkpoint: {e}") from e
  return _to_numpy(loaded)
