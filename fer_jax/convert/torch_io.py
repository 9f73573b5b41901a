"""Safe readers for PyTorch checkpoints and for pickles of NumPy arrays.

Checkpoints come from strangers' download links, and unpickling can run arbitrary code.
PyTorch files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and
plain containers, and only under a PyTorch recent enough that this mode holds (`TORCH_FLOOR`).
The VGGFace2 ResNet-50 weights are a plain pickle of NumPy arrays; it is read by an unpickler
that resolves nothing but `_NUMPY_GLOBALS`, the NumPy array, scalar and dtype constructors (and
the `_codecs.encode` helper that Python-3 pickles of byte strings use): any other global, such
as `os.system`, is refused before anything runs. A PyTorch file may call the same constructors
(NumPy values saved beside a state dict) and nothing else beyond tensors. PyTorch's legacy tar
format is refused outright: PyTorch reads it only without the `weights_only` restriction. A
file that does not read (a web page saved by a failed download, a cut file, a global's name
cut mid-way or garbled) is damaged, not untrusted: its message says to download it again.
"""

import _compat_pickle
import contextlib
import importlib
import importlib.util
import io
import pickle
import re
import sys
import tarfile
import warnings
import zipfile

import numpy as np

from fer_jax import errors
from fer_jax.convert.core import ConversionError
from fer_jax.convert.core import RESAVE_IN_FLOAT
from fer_jax.convert.core import unreadable

# The globals a pickle of NumPy arrays names (NumPy < 2 wrote numpy.core), each with where it is now.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}

# Older PyTorch runs code from a crafted file even with weights_only=True (CVE-2025-32434 before 2.6,
# CVE-2026-24747 before 2.10); before 1.13 it has no weights_only at all.
TORCH_FLOOR = "2.10"

# The members of PyTorch's legacy tar format.
_LEGACY_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}


class RefusedGlobal(pickle.UnpicklingError):
  """A pickle that names a global outside the allowed ones."""


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and NumPy arrays; refuses every other global that exists."""

  def find_class(self, module: str, name: str):
    if (module, name) in _NUMPY_GLOBALS:
      return super().find_class(*_NUMPY_GLOBALS[(module, name)])
    if not _names_a_global(_python3_name(module, name)):  # a name garbled in the file, not a global to refuse
      raise pickle.UnpicklingError(f"the global {module}.{name} does not exist")
    raise RefusedGlobal(f"refused to load the global {module}.{name} (only NumPy arrays are allowed)")


def _python3_name(module: str, name: str) -> str:
  """The qualified name Python 3 gives a pickle's global: Python 2 pickles name some by their Python 2 names
  (__builtin__.exec), which pickle translates as it reads them."""
  default = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
  return ".".join(_compat_pickle.NAME_MAPPING.get((module, name), default))


def load_numpy_pickle(path: str) -> dict:
  """A pickle holding a dict of NumPy arrays (Python 2 pickles included, read as latin-1)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    loaded = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
  except RefusedGlobal as e:
    raise ConversionError(f"Refused to load {path}: fer_jax {e} and never runs code from a checkpoint. "
                          "Use the official file.") from e
  except Exception as e:  # pylint: disable=broad-except  (a garbled pickle fails anywhere in the unpickler)
    raise unreadable(path, "a pickle of NumPy arrays", str(e) or type(e).__name__) from e
  if not isinstance(loaded, dict):
    raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a dict of NumPy arrays.")
  return loaded


# Containers nested deeper than this (a state dict is 2 or 3 deep; a list holding itself is endless) are no weights.
_MAX_DEPTH = 32


def _to_numpy(value, path: str, name: str = "", depth: int = 0):
  """`value` with its tensors as NumPy arrays (bfloat16 as float32); `name` is its key path, for messages."""
  import torch
  if depth > _MAX_DEPTH:
    raise ConversionError(f"{path}: {name.split('/', 1)[0]} nests containers more than {_MAX_DEPTH} deep (or holds "
                          "itself): it is no checkpoint of weights. Use the official file.")
  if isinstance(value, torch.Tensor):
    if value.is_nested or value.layout != torch.strided:
      layout = "nested" if value.is_nested else str(value.layout).removeprefix("torch.")
      raise ConversionError(f"{path}: {name} is a {layout} tensor, which fer_jax does not read: re-save the checkpoint "
                            "with its weights as dense tensors (tensor.to_dense()).")
    if value.is_meta:
      raise ConversionError(f"{path}: {name} is a meta tensor, which holds no values (saved from a model whose weights "
                            "were never loaded?): re-save the checkpoint from the model with its weights.")
    tensor = value.detach().cpu()
    try:
      return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    except TypeError as e:  # float8, quantized (qint8, …): dtypes NumPy has none of
      raise ConversionError(f"{path}: {name} is a {str(tensor.dtype).removeprefix('torch.')} tensor, which fer_jax "
                            f"does not read: {RESAVE_IN_FLOAT}") from e
  if isinstance(value, dict):
    return {key: _to_numpy(item, path, f"{name}/{key}" if name else str(key), depth + 1) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_to_numpy(item, path, f"{name}/{index}", depth + 1) for index, item in enumerate(value))
  return value


def load_torch(path: str):
  """A `torch.save` file with its tensors as NumPy arrays, read with `weights_only=True`."""
  _check_not_an_archive_of_files(path)
  torch = _safe_torch(path)
  with _read_errors(path), torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
    # PyTorch's own warnings would print beside the file's message: a garbled byte often names another pickle
    # protocol, and quantized tensors (refused after loading) use its deprecated TypedStorage.
    warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
    warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  return _to_numpy(loaded, path)


@contextlib.contextmanager
def _read_errors(path: str):
  """Whatever reading `path` raises, as the user error it is (`_load_error`); a file-system error keeps its own:
  fer_jax.cli names it with its fix."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (a damaged file fails anywhere in its reader)
    if errors.is_file_system_error(e):
      raise
    raise _load_error(path, e) from e


def _safe_torch(path: str):
  """The torch module, if it is one whose weights-only loading runs no code from the file."""
  try:
    import torch
  except ImportError as e:
    raise ConversionError("Reading a PyTorch checkpoint needs PyTorch: pip install -e '.[parity]' (the tested torch "
                          f"and torchvision), or pip install 'torch>={TORCH_FLOOR}'") from e
  if _release(torch.__version__) < _release(TORCH_FLOOR):
    raise ConversionError(f"Refused to read {path} with PyTorch {torch.__version__}: before {TORCH_FLOOR}, PyTorch's "
                          f"weights-only loading can run code from a crafted file; pip install 'torch>={TORCH_FLOOR}'.")
  return torch


def _release(version: str) -> tuple[int, int]:
  major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
  return int(major), int(minor)


def _numpy_safe_globals() -> list:
  """`_NUMPY_GLOBALS` for PyTorch's weights-only unpickler, under the names files give them, and the dtype classes:
  that unpickler also asks for the class of each object whose state the file sets (a dtype's byte order)."""
  constructors = [(getattr(importlib.import_module(module), name), ".".join(named))
                  for named, (module, name) in _NUMPY_GLOBALS.items()]
  return constructors + list({type(np.dtype(code)) for code in np.typecodes["All"]})


def _load_error(path: str, error: Exception) -> ConversionError:
  """The error for a PyTorch file that did not read: refused if the weights-only unpickler stopped at a global that
  exists, damaged otherwise (a global's name cut mid-way included)."""
  match = re.search(r"GLOBAL (.+?) (?:was not an allowed|whose module)", str(error))
  if match and _names_a_global(match[1]):
    return ConversionError(f"Refused to load {path}: unpickling it would call {match[1]}. fer_jax reads only tensors "
                           "and plain containers and never runs code from a checkpoint. Use the official file, or if "
                           "you trust it, re-save only its tensors: torch.save(model.state_dict(), PATH).")
  return unreadable(path, "a PyTorch checkpoint", _unpickler_error(error) or type(error).__name__)


def _names_a_global(qualified: str) -> bool:
  """Whether `qualified` ("posix.system") may name a global, not a name garbled in a damaged file
  ("torch._utils._rebu", "numpy.core.multiarrbx"): an attribute of a module imported already, or a module that
  exists as far as it can be looked for without importing (which would run its code): a module not imported
  under a package imported, or a package not installed here (a whole model pickled with the official code names its
  classes: networks.dan.DAN)."""
  module, _, name = qualified.rpartition(".")
  module = module or "builtins"  # PyTorch names builtins without their module
  if not all(part.isidentifier() for part in (*module.split("."), name)):
    return False
  if module in sys.modules:
    return hasattr(sys.modules[module], name)
  parts = module.split(".")
  depth = next(depth for depth in range(1, len(parts) + 1) if ".".join(parts[:depth]) not in sys.modules)
  try:
    found = importlib.util.find_spec(".".join(parts[:depth])) is not None
  except (ImportError, ValueError):  # a submodule of a module that is no package
    return False
  return found or depth == 1


def _archive_members(path: str) -> tuple[str | None, list[str]]:
  """Which archive `path` is ("zip", "tar", or None for neither) and its members' names."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      return "zip", archive.namelist()
  if tarfile.is_tarfile(path):
    with tarfile.open(path) as archive:
      return "tar", archive.getnames()
  return None, []


def _check_not_an_archive_of_files(path: str) -> None:
  """PyTorch's own formats are archives too: a zip whose pickle is a `data.pkl` member, or the legacy tar format
  (refused); any other zip or tar is a download packed for transfer."""
  with _read_errors(path):
    kind, names = _archive_members(path)
  if kind is None or kind == "zip" and any(name.endswith("data.pkl") for name in names):
    return
  if kind == "tar" and set(names) == _LEGACY_TAR_MEMBERS:
    raise ConversionError(f"Refused to load {path}: it is in PyTorch's legacy tar format, which PyTorch reads "
                          "only in its unsafe mode that runs any code the file holds, and fer_jax never runs code "
                          "from a checkpoint. If you trust it, re-save its tensors with a current PyTorch "
                          "(torch.save).")
  raise ConversionError(f"{path} is a {kind} archive of files ({errors.first(names, 4)}), not a PyTorch checkpoint: "
                        "extract it and pass the checkpoint it holds.")


def _unpickler_error(error: Exception) -> str:
  """The cause PyTorch's weights-only unpickler gave ("Unsupported operand 60"), without its advice."""
  match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
  return match[1].strip() if match else _first_line(error)


def _first_line(error: Exception) -> str:
  """PyTorch's own first sentence; the rest of its messages are advice for its users, such as weights_only=False."""
  return re.split(r"(?<=\.)\s|\n", str(error).strip(), maxsplit=1)[0].rstrip(".")
