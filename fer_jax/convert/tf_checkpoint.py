"""Reads TensorFlow checkpoints (`tf.train.Checkpoint` / Keras `save_weights`) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, a LevelDB-format table from each variable's key to a
`BundleEntryProto` (dtype, shape, shard, offset, size), and `PREFIX.data-SSSSS-of-NNNNN`, the
raw little-endian tensor bytes. This module parses both with the few protobuf and table rules
they use. Keys are returned without the object-graph suffix "/.ATTRIBUTES/VARIABLE_VALUE";
string tensors (the serialized object graph) and sliced (partitioned) variables are not
returned; CRC checksums are not verified.
"""

import os
import struct

import numpy as np

from fer_jax.convert.core import ConversionError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5  # compression type byte + CRC32C
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# tensorflow/core/framework/types.proto
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
           10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_DT_STRING, _DT_BFLOAT16 = 7, 14


def _varint(data: bytes, position: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    byte = data[position]
    position += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, position
    shift += 7


def _fields(message: bytes):
  """(field number, wire type, value) of a protobuf message; value is int or bytes."""
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
      raise ConversionError(f"Unsupported protobuf wire type {wire} in a checkpoint index.")
    yield number, wire, value


def _signed(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _shape(message: bytes) -> tuple[int, ...]:
  dims = []
  for number, _, value in _fields(message):
    if number == 2:
      size = next((_signed(v) for n, _, v in _fields(value) if n == 1), 0)
      dims.append(size)
  return tuple(dims)


def _entry(message: bytes) -> dict:
  entry = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "sliced": False}
  for number, _, value in _fields(message):
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
  if data[offset + size] != 0:
    raise ConversionError("The checkpoint index uses a compressed table, which this reader does not support.")
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
    raise ConversionError(f"{index_path} is not a TensorFlow checkpoint index (bad table magic).")
  footer = data[len(data) - _FOOTER_SIZE:]
  _, position = _varint(footer, 0)   # metaindex handle: offset, size
  _, position = _varint(footer, position)
  index_offset, position = _varint(footer, position)
  index_size, _ = _varint(footer, position)
  entries = {}
  for _, handle in _block_entries(data, index_offset, index_size):
    entries.update(_block_entries(data, *_handle(handle)))
  return entries


def checkpoint_prefix(path: str) -> str | None:
  """The checkpoint prefix for a prefix, its .index file, or a folder with a `checkpoint` file."""
  path = os.path.expanduser(path)
  if path.endswith(".index") and os.path.isfile(path):
    return path[:-len(".index")]
  if os.path.isfile(path + ".index"):
    return path
  state_file = os.path.join(path, "checkpoint")
  if os.path.isdir(path) and os.path.isfile(state_file):
    with open(state_file) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
          name = value.strip().strip('"')
          return name if os.path.isabs(name) else os.path.join(path, name)
  return None


def load(path: str) -> dict[str, np.ndarray]:
  """Every numeric tensor of a TensorFlow checkpoint, by object-graph key."""
  prefix = checkpoint_prefix(path)
  if prefix is None:
    raise ConversionError(f"{path} is not a TensorFlow checkpoint: pass its prefix (e.g. "
                          "Downloaded_Models/LHC_Net/LHC_Net), its .index file or its folder.")
  entries = read_index(prefix + ".index")
  num_shards = next((v for n, _, v in _fields(entries.get(b"", b"")) if n == 1), 1)
  shards: dict[int, bytes] = {}
  tensors = {}
  for raw_key, message in entries.items():
    if not raw_key:
      continue
    entry = _entry(message)
    key = raw_key.decode("utf-8").removesuffix(_VALUE_SUFFIX)
    if entry["dtype"] == _DT_STRING or entry["sliced"]:
      continue
    if entry["shard"] not in shards:
      shard_path = f"{prefix}.data-{entry['shard']:05d}-of-{num_shards:05d}"
      with open(shard_path, "rb") as f:
        shards[entry["shard"]] = f.read()
    raw = shards[entry["shard"]][entry["offset"]:entry["offset"] + entry["size"]]
    if entry["dtype"] == _DT_BFLOAT16:
      array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif entry["dtype"] in _DTYPES:
      array = np.frombuffer(raw, np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<"))
    else:
      raise ConversionError(f"{key}: unsupported TensorFlow dtype code {entry['dtype']}.")
    tensors[key] = array.reshape(entry["shape"]).astype(array.dtype.newbyteorder("="))
  return tensors
