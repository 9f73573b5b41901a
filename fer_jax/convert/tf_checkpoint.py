"""Reads TensorFlow checkpoints (`tf.train.Checkpoint` / Keras `save_weights`) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, a LevelDB-format table from each variable's key to a
`BundleEntryProto` (dtype, shape, shard, offset, size), and `PREFIX.data-SSSSS-of-NNNNN`, the
raw little-endian tensor bytes. This module parses both with the few protobuf and table rules
they use. Keys are returned without the object-graph suffix "/.ATTRIBUTES/VARIABLE_VALUE";
string tensors (the serialized object graph) and sliced (partitioned) variables are not
returned; CRC checksums are not verified, but a cut or garbled file (a download that stopped
early) is reported as such: an index that does not parse, or a shard shorter than its tensors. A
data shard must lie beside its index, links followed.
"""

import math
import os
import re
import struct

import numpy as np

from fer_jax import errors
from fer_jax.convert.core import ConversionError
from fer_jax.convert.core import unreadable

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# tensorflow/core/framework/types.proto
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
           10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_DT_STRING, _DT_BFLOAT16 = 7, 14


class _Garbled(Exception):
  """Bytes of the index that no TensorFlow writer produces: the file is damaged."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    byte = data[position]
    position += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, position
    shift += 7


def _fields(message: bytes, wires: dict[int, int]):
  """(field number, wire type, value) of a protobuf message; value is int or bytes. `wires` maps the
  field numbers read to their wire type: another one there means garbled bytes."""
  position = 0
  while position < len(message):
    tag, position = _varint(message, position)
    number, wire = tag >> 3, tag & 7
    if wire == 0:
      value, position = _varint(message, position)
    elif wire == 1:
      value, position = message[position:position + 8], position + 8
    elif wire == 2:
      length, position = _varint(message, position)
      value, position = message[position:position + length], position + length
    elif wire == 5:
      value, position = message[position:position + 4], position + 4
    else:
      raise _Garbled(f"protobuf wire type {wire}")
    if wires.get(number, wire) != wire:
      raise _Garbled(f"protobuf field {number} of wire type {wire}")
    yield number, wire, value


def _signed(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _shape(message: bytes) -> tuple[int, ...]:
  dims = []
  for number, _, value in _fields(message, {2: 2}):
    if number == 2:
      size = next((_signed(v) for n, _, v in _fields(value, {1: 0}) if n == 1), 0)
      dims.append(size)
  return tuple(dims)


def _entry(message: bytes) -> dict:
  entry = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "sliced": False}
  for number, _, value in _fields(message, {1: 0, 2: 2, 3: 0, 4: 0, 5: 0}):
    if number == 1:
      entry["dtype"] = value
    elif number == 2:
      entry["shape"] = _shape(value)
    elif number == 3:
      entry["shard"] = value
    elif number == 4:
      entry["offset"] = value
    elif number == 5:
      entry["size"] = value
    elif number == 7:
      entry["sliced"] = True
  return entry


def _block_entries(data: bytes, offset: int, size: int):
  """(key, value) pairs of one table block (keys are prefix-compressed)."""
  if data[offset + size] == 1:  # the block's compression type: 0 none, 1 Snappy
    raise ConversionError("The checkpoint index uses a compressed table, which this reader does not support.")
  if data[offset + size] != 0:
    raise _Garbled(f"block compression type {data[offset + size]}")
  block = data[offset:offset + size]
  num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
  end = len(block) - 4 - 4 * num_restarts
  position, key = 0, b""
  while position < end:
    shared, position = _varint(block, position)
    unshared, position = _varint(block, position)
    value_length, position = _varint(block, position)
    key = key[:shared] + block[position:position + unshared]
    position += unshared
    yield key, block[position:position + value_length]
    position += value_length


def _handle(value: bytes) -> tuple[int, int]:
  offset, position = _varint(value, 0)
  size, _ = _varint(value, position)
  return offset, size


def read_index(index_path: str) -> dict[bytes, bytes]:
  with open(index_path, "rb") as f:
    data = f.read()
  if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
    raise _damaged_index(index_path, "no table footer at its end")
  footer = data[len(data) - _FOOTER_SIZE:]
  try:
    _, position = _varint(footer, 0)   # metaindex handle: offset, size
    _, position = _varint(footer, position)
    index_offset, position = _varint(footer, position)
    index_size, _ = _varint(footer, position)
    entries = {}
    for _, handle in _block_entries(data, index_offset, index_size):
      entries.update(_block_entries(data, *_handle(handle)))
  except (struct.error, IndexError, _Garbled) as e:  # e.g. a block handle pointing past the file's end
    raise _damaged_index(index_path, "its table blocks do not parse") from e
  return entries


def _damaged_index(index_path: str, reason: str) -> ConversionError:
  return unreadable(index_path, "a TensorFlow checkpoint index", reason)


_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _shard_prefix(path: str) -> str | None:
  """The checkpoint prefix of a data shard's path ("…/LHC_Net.data-00000-of-00001" → "…/LHC_Net"), else None."""
  shard = _DATA_SHARD.search(path)
  return path[:shard.start()] if shard else None


def is_data_shard(path: str) -> bool:
  return _shard_prefix(path) is not None


def checkpoint_prefix(path: str) -> str | None:
  """The checkpoint prefix for a prefix, its .index file or a data shard, or a folder with a `checkpoint` file or a
  single .index file."""
  path = os.path.expanduser(path)
  stem = _shard_prefix(path) or path.removesuffix(".index")
  if stem != path and os.path.isfile(stem + ".index"):
    return stem
  if os.path.isfile(path + ".index"):
    return path
  if not os.path.isdir(path):
    return None
  recorded = _recorded_prefix(os.path.join(path, "checkpoint"))
  if recorded:
    # The path TensorFlow recorded, else its base name beside the `checkpoint` file: a path of the machine that
    # saved it (absolute, or relative to another folder, or a Windows path) is not where the download is.
    beside = os.path.join(path, re.split(r"[\\/]", recorded)[-1])
    return next((p for p in (os.path.join(path, recorded), beside) if os.path.isfile(p + ".index")), beside)
  indexes = _index_files(path)
  return os.path.join(path, indexes[0].removesuffix(".index")) if len(indexes) == 1 else None


def _recorded_prefix(state_file: str) -> str | None:
  """The model_checkpoint_path of a `checkpoint` state file (text protobuf), escapes undone."""
  if not os.path.isfile(state_file):
    return None
  with open(state_file, encoding="utf-8", errors="replace") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key.strip() == "model_checkpoint_path":
        return value.strip().strip('"').replace("\\\\", "\\")
  return None


def _index_files(folder: str) -> list[str]:
  return sorted(name for name in os.listdir(folder) if name.endswith(".index"))


def _not_a_checkpoint(path: str) -> ConversionError:
  """What to pass instead of `path`, which names no TensorFlow checkpoint."""
  if is_data_shard(path):
    index = _shard_prefix(path) + ".index"
    return ConversionError(f"{path} is a data shard of a TensorFlow checkpoint, but its index {index} is missing: "
                           "download the .index file too, beside the shard.")
  if os.path.isdir(path):
    inner = [os.path.join(path, name) for name in sorted(os.listdir(path))
             if os.path.isdir(os.path.join(path, name)) and checkpoint_prefix(os.path.join(path, name))]
    if inner:
      return ConversionError(f"{path} is a folder of TensorFlow checkpoints: pass one of them, "
                             f"{' or '.join('--checkpoint=' + folder for folder in inner)}.")
    indexes = _index_files(path)
    if indexes:
      return ConversionError(f"{path} holds several TensorFlow checkpoints ({', '.join(indexes)}): pass one's "
                             f".index file, e.g. --checkpoint={os.path.join(path, indexes[0])}.")
    entries = sorted(os.listdir(path))
    holds = f"it holds {errors.first(entries, 4)}" if entries else "it is empty"
    return ConversionError(f"{path} is a folder, not a checkpoint ({holds}; no TensorFlow checkpoint's `checkpoint` "
                           "or .index file): pass the checkpoint file itself.")
  return ConversionError(f"{path} is not a TensorFlow checkpoint: pass its prefix (e.g. "
                         "Downloaded_Models/LHC_Net/LHC_Net), its .index file or its folder.")


def load(path: str) -> dict[str, np.ndarray]:
  """Every numeric tensor of a TensorFlow checkpoint, by object-graph key."""
  prefix = checkpoint_prefix(path)
  if prefix is None:
    raise _not_a_checkpoint(path)
  index_path = prefix + ".index"
  if not os.path.isfile(index_path):
    raise ConversionError(f"{os.path.join(path, 'checkpoint')} names the checkpoint {prefix}, which is not there "
                          f"(no {index_path}): download the whole checkpoint folder again, or check the path.")
  table = read_index(index_path)
  try:
    num_shards = next((v for n, _, v in _fields(table.get(b"", b""), {1: 0}) if n == 1), 1)
    entries = {key.decode("utf-8").removesuffix(_VALUE_SUFFIX): _entry(message)
               for key, message in table.items() if key}
  except (IndexError, UnicodeDecodeError, _Garbled) as e:
    raise _damaged_index(index_path, "an entry does not parse") from e
  shards: dict[int, bytes] = {}
  tensors = {}
  for key, entry in entries.items():
    if entry["dtype"] == _DT_STRING or entry["sliced"]:
      continue
    shard_path = f"{prefix}.data-{entry['shard']:05d}-of-{num_shards:05d}"
    if entry["shard"] not in shards:
      shards[entry["shard"]] = _read_shard(shard_path, index_path)
    tensors[key] = _tensor(key, entry, shards[entry["shard"]], shard_path, index_path)
  return tensors


def _read_shard(shard_path: str, index_path: str) -> bytes:
  """The shard's bytes. It must lie beside its index once links are followed (a link to the checkpoint's folder, or
  links into one folder of files, as download caches keep them, are fine): a crafted checkpoint whose shard links to
  a local file elsewhere would copy that file's bytes into the converted weights."""
  if not os.path.isfile(shard_path):
    raise ConversionError(f"{shard_path} is missing: a TensorFlow checkpoint is its .index file and every data "
                          "shard it lists; download the whole checkpoint folder again, or check the path.")
  shard_folder, index_folder = (os.path.dirname(os.path.realpath(path)) for path in (shard_path, index_path))
  if shard_folder != index_folder:
    raise ConversionError(f"Refused to load {shard_path}: it links to {os.path.realpath(shard_path)}, outside the "
                          f"folder of its index ({index_folder}). fer_jax reads only a checkpoint's own files; use "
                          "the official download, unpacked as it is.")
  with open(shard_path, "rb") as f:
    return f.read()


def _tensor(key: str, entry: dict, shard: bytes, shard_path: str, index_path: str) -> np.ndarray:
  """One tensor's bytes from its shard, checked against the index before they are interpreted."""
  if entry["dtype"] == _DT_BFLOAT16:
    dtype = np.dtype("<u2")
  elif entry["dtype"] in _DTYPES:
    dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
  else:
    raise ConversionError(f"{index_path}: {key} is a tensor of TensorFlow dtype code {entry['dtype']}, which fer_jax "
                          "does not read (floats and integers only): use the official checkpoint.")
  if min(entry["shape"], default=0) < 0 or entry["size"] != math.prod(entry["shape"]) * dtype.itemsize:
    raise _damaged_index(index_path, f"{key} has shape {entry['shape']} but {entry['size']} bytes")
  end = entry["offset"] + entry["size"]
  if end > len(shard):
    raise unreadable(shard_path, "a TensorFlow checkpoint data shard",
                     f"{key} ends at byte {end:,}, the file holds {len(shard):,}")
  array = np.frombuffer(shard[entry["offset"]:end], dtype).reshape(entry["shape"])
  if entry["dtype"] == _DT_BFLOAT16:
    return (array.astype(np.uint32) << 16).view(np.float32)
  return array.astype(array.dtype.newbyteorder("="))
