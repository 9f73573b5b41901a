"""Safe readers for PyTorch checkpoints and for pickles of NumPy arrays.

Checkpoints come from strangers' download links, and unpickling can run arbitrary code.
PyTorch files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and
plain containers. The VGGFace2 ResNet-50 weights are a plain pickle of NumPy arrays; it is read
by an unpickler that resolves nothing but the NumPy array and dtype constructors (and the
`_codecs.encode` helper that Python-3 pickles of byte strings use): any other global, such as
`os.system`, is refused before anything runs. PyTorch's legacy tar format is refused outright:
PyTorch reads it only without the `weights_only` restriction. A file that is no pickle at all
(a web page saved by a failed download, a cut file) is damaged, not untrusted: its message says
to download it again.
"""

import io
import pickle
import re
import tarfile
import zipfile

from fer_jax.convert.core import ConversionError
from fer_jax.convert.core import RESAVE_IN_FLOAT
from fer_jax.convert.core import unreadable

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}

# How every PyTorch checkpoint starts: a zip archive (PyTorch ≥ 1.6) or a pickle's PROTO opcode (the legacy format).
_TORCH_MAGIC = (b"PK", b"\x80")


class RefusedGlobal(pickle.UnpicklingError):
  """A pickle that names a global outside the allowed ones."""


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and NumPy arrays; refuses every other global."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _NUMPY_GLOBALS:
      raise RefusedGlobal(f"refused to load the global {module}.{name} (only NumPy arrays are allowed)")
    return super().find_class(*_NUMPY_GLOBALS[(module, name)])


def load_numpy_pickle(path: str) -> dict:
  """A pickle holding a dict of NumPy arrays (Python 2 pickles included, read as latin-1)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    loaded = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
  except RefusedGlobal as e:
    raise ConversionError(f"Refused to load {path}: fer_jax {e} and never runs code from a checkpoint. "
                          "Use the official file.") from e
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise unreadable(path, "a pickle of NumPy arrays", str(e) or type(e).__name__) from e
  if not isinstance(loaded, dict):
    raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a dict of NumPy arrays.")
  return loaded


def _to_numpy(value, path: str, name: str = ""):
  """`value` with its tensors as NumPy arrays (bfloat16 as float32); `name` is its key path, for messages."""
  import torch
  if isinstance(value, torch.Tensor):
    tensor = value.detach().cpu()
    try:
      return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    except TypeError as e:  # float8, quantized (qint8, …): dtypes NumPy has none of
      raise ConversionError(f"{path}: {name} is a {str(tensor.dtype).removeprefix('torch.')} tensor, which fer_jax "
                            f"does not read: {RESAVE_IN_FLOAT}") from e
  if isinstance(value, dict):
    return {key: _to_numpy(item, path, f"{name}/{key}" if name else str(key)) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_to_numpy(item, path, f"{name}/{index}") for index, item in enumerate(value))
  return value


def load_torch(path: str):
  """A `torch.save` file with its tensors as NumPy arrays, read with `weights_only=True`."""
  try:
    import torch
  except ImportError as e:
    raise ConversionError("Reading a PyTorch checkpoint needs PyTorch: pip install -e '.[parity]' (the tested torch "
                          "and torchvision), or pip install torch") from e
  if tarfile.is_tarfile(path):
    raise ConversionError(f"Refused to load {path}: it is in PyTorch's legacy tar format, which PyTorch reads "
                          "only in its unsafe mode that runs any code the file holds, and fer_jax never runs code "
                          "from a checkpoint. If you trust it, re-save its tensors with a current PyTorch "
                          "(torch.save).")
  _check_not_an_archive_of_files(path)
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "Weights only load failed" not in str(e):
      raise unreadable(path, "a PyTorch checkpoint", _first_line(e)) from e
    if not _starts_like_torch(path):  # not a pickle at all (a web page, random bytes): damaged, not untrusted
      raise unreadable(path, "a PyTorch checkpoint", _unpickler_error(e)) from e
    raise ConversionError(f"Refused to load {path}: {_refused_global(e)} fer_jax reads only tensors and plain "
                          "containers and never runs code from a checkpoint. Use the official file, or if you "
                          "trust it, re-save only its tensors: torch.save(model.state_dict(), PATH).") from e
  except (RuntimeError, EOFError, ValueError) as e:
    raise unreadable(path, "a PyTorch checkpoint", _first_line(e) or type(e).__name__) from e
  return _to_numpy(loaded, path)


def _check_not_an_archive_of_files(path: str) -> None:
  """PyTorch's own format is a zip archive too, whose pickle is a `data.pkl` member; any other zip is a download
  packed for transfer."""
  if not zipfile.is_zipfile(path):
    return
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
  except zipfile.BadZipFile:
    return  # damaged: torch.load says so
  if not any(name.endswith("data.pkl") for name in names):
    shown = ", ".join(names[:4]) + (f" … ({len(names)} in all)" if len(names) > 4 else "")
    raise ConversionError(f"{path} is a zip archive of files ({shown}), not a PyTorch checkpoint: extract it and "
                          "pass the checkpoint it holds.")


def _starts_like_torch(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2).startswith(_TORCH_MAGIC)


def _unpickler_error(error: Exception) -> str:
  """The cause PyTorch's weights-only unpickler gave ("Unsupported operand 60"), without its advice."""
  match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
  return match[1].strip() if match else _first_line(error)


def _first_line(error: Exception) -> str:
  """PyTorch's own first sentence; the rest of its messages are advice for its users, such as weights_only=False."""
  return re.split(r"(?<=\.)\s|\n", str(error).strip(), maxsplit=1)[0].rstrip(".")


def _refused_global(error: Exception) -> str:
  match = re.search(r"GLOBAL ([\w.]+)", str(error))
  return f"unpickling it would call {match[1]}." if match else "unpickling it needs more than tensors."
