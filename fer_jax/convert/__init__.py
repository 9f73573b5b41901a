"""Converters from the authors' released checkpoints and the papers' pretrained backbones.

  python -m fer_jax.convert --config=configs/<method>.py:<dataset> --checkpoint=FILE --workdir=OUT

writes an Orbax checkpoint of {params, batch_stats} (`fer_jax.checkpointing.save_model`) that
`python -m fer_jax.main --mode=eval --checkpoint=OUT`, `python -m fer_jax.predict` and
`--config.init_from=OUT` read. The source format is recognised from the file (override with
`--source`); `SOURCES` lists them, each defined in the module of its method. Backbone-only
sources fill their part of the model and leave the rest as freshly initialised (seeded with
`config.seed`); several `--checkpoint`s may fill different parts (APViT: IR-50 + ViT-Small).
Such a model is saved as an initialisation only: `--config.init_from` reads it, evaluation and
inference refuse it. The converted model's outputs are named by the config's class order, which
must be the one the checkpoint records (fer_jax.convert.classes).
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fer_jax import errors
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax.convert import apvit
from fer_jax.convert import classes
from fer_jax.convert import core
from fer_jax.convert import dan
from fer_jax.convert import keras_h5
from fer_jax.convert import lhcnet
from fer_jax.convert import scan_cci
from fer_jax.convert import tf_checkpoint
from fer_jax.convert import torch_io
from fer_jax.convert import torchvision_resnet
from fer_jax.convert.core import ConversionError, Report  # noqa: F401  (the package's API)


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  method: str
  reader: str                                # a key of READERS
  select: Callable[[Any], dict | None]       # the file's contents → its tensors by name, or None (a core.Selector)
  map: Callable[[core.Tensors, core.Target, Any], None]
  backbone_only: bool
  files: str                                 # the official file names, for messages and docs
  # What the tensors hold when it is not what the config builds (classes, stage), and the --config to pass.
  mismatch: Callable[[dict, Any], str | None] | None = None
  # The file's contents → the class names it records in the order of the outputs, or None (fer_jax.convert.classes).
  recorded_classes: Callable[[Any], Sequence[str] | None] | None = None
  # (official file-name prefix, class order of that release): what a file name says of its classes.
  file_orders: tuple[tuple[str, str], ...] = ()


SOURCES = (
    Source("dan", "dan", "torch", dan.select, dan.map_checkpoint, False,
           "rafdb_epoch21_acc0.897_bacc0.8275.pth, affecnet8_epoch5_acc0.6209.pth, AffectNet-7 file", dan.mismatch,
           file_orders=dan.FILE_ORDERS),
    Source("resnet18", "dan", "torch", torchvision_resnet.RESNET18_KEYS, torchvision_resnet.map_resnet18, True,
           "resnet18_msceleb.pth"),
    Source("scan_cci", "scan_cci", "torch", scan_cci.select, scan_cci.map_checkpoint, False,
           "model_best.pth.tar (a SCAN-CCI training run; none were released)", scan_cci.mismatch),
    Source("vggface2_resnet50", "scan_cci", "numpy_pickle", torchvision_resnet.RESNET50_KEYS,
           torchvision_resnet.map_resnet50, True, "vgg_msceleb_resnet50_ft_weight.pkl"),
    Source("apvit", "apvit", "torch", apvit.CHECKPOINT_KEYS, apvit.map_checkpoint, False, "APViT_RAF-3eeecf7d.pth",
           apvit.mismatch, apvit.recorded_classes),
    Source("ir50", "apvit", "torch", apvit.IR50_KEYS, apvit.map_ir50, True, "backbone_ir50_ms1m_epoch120.pth"),
    Source("timm_vit", "apvit", "torch", apvit.TIMM_KEYS, apvit.map_timm, True, "vit_small_p16_224-15ec54c9.pth"),
    Source("vit_npz", "apvit", "npz", apvit.NPZ_KEYS, apvit.map_npz, True, "a ViT .npz with the same shapes"),
    Source("lhcnet", "lhcnet", "tf_checkpoint", lhcnet.CHECKPOINT_KEYS, lhcnet.map_checkpoint, False,
           "Downloaded_Models/LHC_Net/LHC_Net, Downloaded_Models/LHC_NetC/LHC_Net_Controller", lhcnet.mismatch),
    Source("resnet34v2_h5", "lhcnet", "keras_h5", lhcnet.H5_KEYS, lhcnet.map_h5, True,
           "resnet34_imagenet_1000_no_top.h5", lhcnet.h5_mismatch),
)
SOURCES_BY_NAME = {source.name: source for source in SOURCES}


def _load_npz(path: str) -> dict:
  """A .npz archive of numeric arrays. NumPy takes any file that is not a zip archive for a pickle and
  suggests unpickling it; a checkpoint that is no zip archive is a damaged download, and object
  arrays (which only unpickling reads, and unpickling can run code) are refused."""
  kind = "a NumPy .npz archive"
  with open(path, "rb") as f:  # opened here, so that a file-system error keeps its own message
    if not zipfile.is_zipfile(f):
      raise core.unreadable(path, kind, "not a zip archive")
  try:
    with np.load(path, allow_pickle=False) as data:
      return dict(data)
  except ValueError as e:
    if "allow_pickle" not in str(e):
      raise core.unreadable(path, kind, str(e)) from e
    raise ConversionError(f"Refused to load {path}: it holds object arrays, which only unpickling reads, and "
                          "fer_jax never runs code from a checkpoint. Use the official file, or if you trust it, "
                          "re-save its arrays as numbers (numpy.savez).") from e
  except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:  # the last: garbled header flags
    raise core.unreadable(path, kind, str(e) or type(e).__name__) from e
  except OSError as e:  # zipfile seeks to a negative offset when the central directory's offset is garbled
    if errors.is_file_system_error(e):
      raise  # it keeps its own message: fer_jax.cli names its fix
    raise core.unreadable(path, kind, "a member's offset lies before the start of the file") from e


READERS = {"torch": torch_io.load_torch, "numpy_pickle": torch_io.load_numpy_pickle, "npz": _load_npz,
           "keras_h5": keras_h5.load, "tf_checkpoint": tf_checkpoint.load}


# The reader each file-name extension calls for; a file whose name says nothing (.bin, .tar) is PyTorch's.
READERS_BY_EXTENSION = {".pth": "torch", ".pt": "torch", ".h5": "keras_h5", ".hdf5": "keras_h5", ".npz": "npz",
                        ".pkl": "numpy_pickle", ".pickle": "numpy_pickle"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# A pickle stream opens with PROTO (0x80) and its version; torch.save's legacy (non-zip) format then pickles its magic
# number (LONG1 of 10 bytes): a pickle without it is a plain one, whatever its name says.
PICKLE_PROTO = b"\x80"
TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def reader_for(path: str) -> str:
  """The reader a file needs, from its kind."""
  if os.path.isdir(path):
    return "tf_checkpoint"  # its reader names what a folder without a TensorFlow checkpoint holds
  return _known_reader(path) or "torch"


def _known_reader(path: str) -> str | None:
  """The reader a file's content or name calls for; None where neither tells (a folder without a TensorFlow
  checkpoint included)."""
  if tf_checkpoint.checkpoint_prefix(path) or tf_checkpoint.is_data_shard(path):
    return "tf_checkpoint"
  if os.path.isdir(path):
    return None
  with open(path, "rb") as f:
    head = f.read(2 + len(TORCH_LEGACY_MAGIC))
  if head.startswith(HDF5_SIGNATURE):
    return "keras_h5"  # whatever its name says (a Keras file saved as .pth)
  if head.startswith(PICKLE_PROTO) and head[2:] != TORCH_LEGACY_MAGIC:
    return "numpy_pickle"  # pickle.dump's file saved as .pth
  return READERS_BY_EXTENSION.get(os.path.splitext(path)[1].lower())


def _check_source_reads(path: str, source: Source) -> None:
  """A --source whose reader is not the one the file's kind calls for, with the --source that fits."""
  kind = _known_reader(path)
  if kind in (None, source.reader):
    return
  fitting = [f"--source={s.name}" for s in SOURCES if s.method == source.method and s.reader == kind]
  raise ConversionError(f"{path} is no {source.name} file (--source={source.name} reads {source.reader} files, this "
                        f"is {errors.with_article(kind)} one): pass {', or '.join(fitting + ['no --source'])}.")


def _outline(loaded) -> str:
  if isinstance(loaded, dict):
    return "keys " + errors.first(list(map(str, loaded)), 8)
  return type(loaded).__name__


def check_exists(path: str) -> None:
  if not os.path.exists(path) and not tf_checkpoint.checkpoint_prefix(path):
    raise ConversionError(f"--checkpoint={path} does not exist: check the path (a file, or for a TensorFlow "
                          "checkpoint its folder, its prefix or its .index file).")


def read_source(path: str, method: str, source_name: str | None = None) -> tuple[Source, dict, Sequence[str] | None]:
  """Reads `path` and finds (or checks) which source of `method` it is; returns it, its tensors and the class
  names the file records (None if it records none)."""
  path = os.path.expanduser(path)
  candidates = [s for s in SOURCES if s.method == method]
  if source_name:
    if source_name not in SOURCES_BY_NAME:
      raise ConversionError(f"Unknown --source {source_name!r}; valid: {', '.join(SOURCES_BY_NAME)}.")
    if SOURCES_BY_NAME[source_name].method != method:
      raise ConversionError(f"--source={source_name} converts {SOURCES_BY_NAME[source_name].method} checkpoints, "
                            f"but the config builds {method}.")
    candidates = [SOURCES_BY_NAME[source_name]]
  check_exists(path)
  if source_name:
    _check_source_reads(path, candidates[0])
  reader = candidates[0].reader if source_name else reader_for(path)
  loaded = READERS[reader](path)
  for source in candidates:
    if source.reader == reader:
      tensors = source.select(loaded)
      if tensors is not None:
        return source, tensors, source.recorded_classes(loaded) if source.recorded_classes else None
  raise _unknown_format(path, method, reader, loaded, source_name)


def _unknown_format(path: str, method: str, reader: str, loaded, source_name: str | None) -> ConversionError:
  """The error for a file that no candidate source reads: the --source or --config that fits it, if one does."""
  fitting = [s for s in SOURCES if s.reader == reader and s.name != source_name and s.select(loaded) is not None]
  fitting.sort(key=lambda s: s.method != method)
  if fitting and fitting[0].method == method:  # only with a --source: without, read_source would have taken it
    return ConversionError(f"{path} is no {source_name} file (--source={source_name}) but "
                           f"{errors.with_article(fitting[0].name)} one: "
                           f"pass --source={fitting[0].name}, or no --source.")
  known = "; ".join(f"{s.name} ({s.files}{_expected_keys(s)})" for s in SOURCES if s.method == method) or "none"
  hint = (f" It looks like {errors.with_article(fitting[0].name)} file: convert it with configs/{fitting[0].method}.py "
          f"(--config=configs/{fitting[0].method}.py:<data set>)." if fitting else "")
  return ConversionError(f"{path} ({reader}, {_outline(loaded)}) is not a checkpoint format fer_jax converts "
                         f"for {method}. Known sources: {known}.{hint}")


def _expected_keys(source: Source) -> str:
  return f": {source.select.describe()}" if isinstance(source.select, core.Selector) else ""


def _fresh_variables(model, config, paths: Sequence[str]) -> dict:
  """The variables at `paths` ("params/fc/kernel") of `models.init_variables` for config.seed: what a checkpoint
  lacks. XLA computes these alone, not the model's other initialisers nor the forward pass that initialisation
  traces, and compiles as training's initialisation does (`mesh.init_compiler_options`): it runs once.
  """
  def init(seed):
    variables = traverse_util.flatten_dict(models.init_variables(model, config, jax.random.key(seed)), sep="/")
    return {path: variables[path] for path in paths}
  lowered = jax.jit(init).lower(jax.ShapeDtypeStruct((), jnp.int32))
  return lowered.compile(compiler_options=mesh_lib.init_compiler_options())(np.int32(config.seed))


def convert(config, checkpoints: Sequence[str], sources: Sequence[str] = ()) -> tuple[dict, Report]:
  """Maps the checkpoint files onto the model `config` builds; returns ({params, batch_stats}, report)."""
  if sources and len(sources) != len(checkpoints):
    raise ConversionError(f"Give one --source per --checkpoint or none ({len(sources)} for {len(checkpoints)}).")
  paths = [os.path.expanduser(path) for path in checkpoints]
  for path in paths:
    check_exists(path)
  inputs = []
  for index, path in enumerate(paths):
    source, tensors, recorded = read_source(path, config.model.name, sources[index] if sources else None)
    file_name = os.path.basename(os.path.normpath(path))
    if recorded:
      classes.check_recorded(config, file_name, recorded)
    classes.warn_if_named_otherwise(config, file_name, source.file_orders)
    inputs.append((source, tensors, file_name))
  return convert_tensors(config, inputs)


def convert_tensors(config, inputs: Sequence[tuple[Source, dict, str]]) -> tuple[dict, Report]:
  """Like `convert`, for tensors already read: (source, {name: array}, file name) per input."""
  model = models.build_model(config)
  target = core.Target(models.abstract_variables(model, config))
  tensor_sets, backbone_only, diagnoses = [], False, []
  for source, tensors, file_name in inputs:
    mismatch = source.mismatch(tensors, config) if source.mismatch else None
    if mismatch:
      diagnoses.append(f"{file_name} {mismatch}.")
    tensor_sets.append(core.Tensors(tensors, f"{file_name} [{source.name}]"))
    source.map(tensor_sets[-1], target, config)
    backbone_only |= source.backbone_only
  fresh = functools.partial(_fresh_variables, model, config)
  auxiliary = set(models.get_method(config.model.name).auxiliary_params)
  variables, report = core.finish(target, tensor_sets, fresh,
                                  lambda path: backbone_only or path.split("/")[1] in auxiliary, config.seed, diagnoses)
  report.initialisation_only = any(path.split("/")[1] not in auxiliary for path in report.fresh)
  return variables, report
