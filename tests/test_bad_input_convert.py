"""`python -m fer_jax.convert` on bad input: exit status 2 and one message naming the file and the fix.

Each test runs the real command on a small fake of the file at fault. The LHC-Net folders are
written by `write_tf_checkpoint` below, a minimal writer of the TensorFlow bundle format that
fer_jax/convert/tf_checkpoint.py reads (one uncompressed table block, one shard).
"""

import builtins
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from helpers import assert_user_error, run_command
from reference.dan import ReferenceDAN
from reference.lhcnet import keras_weights, tf_checkpoint_names, with_optimizer_state

pytestmark = pytest.mark.integration  # every test runs fer_jax.convert in a subprocess

DAN_FILE = "rafdb_epoch21_acc0.897_bacc0.8275.pth"
TABLE_MAGIC = 0xDB4775248B80FB57
TF_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}
# (heads, embedding width, map side, channels) of the five LHC modules of configs/lhcnet.py:fer2013 (224 px).
FER2013_LHC = ((8, 196, 56, 64), (8, 196, 56, 64), (7, 56, 28, 128), (7, 14, 14, 256), (1, 25, 7, 512))


def convert(config, checkpoint, workdir, *flags, obey_permissions=False):
  return run_command("fer_jax.convert", f"--config=configs/{config}", f"--checkpoint={checkpoint}",
                     f"--workdir={workdir}", *flags, obey_permissions=obey_permissions)


def varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  return bytes(out + bytes([value]))


def proto_field(number: int, value: int | bytes) -> bytes:
  if isinstance(value, int):
    return varint(number << 3) + varint(value)
  return varint(number << 3 | 2) + varint(len(value)) + value


def table_block(entries: list[tuple[bytes, bytes]]) -> bytes:
  """A LevelDB table block without key sharing, one restart point, uncompressed, CRC not filled."""
  body = b"".join(varint(0) + varint(len(key)) + varint(len(value)) + key + value for key, value in entries)
  return body + struct.pack("<II", 0, 1)


def write_tf_checkpoint(prefix: str, tensors: dict) -> None:
  entries, data = [(b"", proto_field(1, 1))], bytearray()   # header: num_shards = 1
  for name, value in sorted(tensors.items()):
    array = np.asarray(value)
    shape = b"".join(proto_field(2, proto_field(1, size)) for size in array.shape)
    entry = proto_field(1, TF_DTYPES[array.dtype]) + proto_field(2, shape) + proto_field(4, len(data))
    entries.append((f"{name}/.ATTRIBUTES/VARIABLE_VALUE".encode(), entry + proto_field(5, array.nbytes)))
    data += array.tobytes()
  with open(f"{prefix}.data-00000-of-00001", "wb") as f:
    f.write(data)
  data_block = table_block(entries)
  index_block = table_block([(entries[-1][0], varint(0) + varint(len(data_block)))])
  meta_offset = len(data_block) + 5 + len(index_block) + 5
  footer = varint(meta_offset) + varint(len(table_block([]))) + varint(len(data_block) + 5) + varint(len(index_block))
  with open(f"{prefix}.index", "wb") as f:
    for block in (data_block, index_block, table_block([])):
      f.write(block + b"\0" * 5)
    f.write(footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC))


def fer2013_lhc_weights(with_controllers: bool) -> dict:
  """Zero LHC modules (and controllers) of the fer2013 shapes, under Keras layer names."""
  weights = {}
  for index, (heads, embed, side, channels) in enumerate(FER2013_LHC, start=1):
    for head in range(heads):
      weights[f"lhc{index}/Wqk/{head}/kernel"] = np.zeros((side * side // heads, embed), np.float32)
      weights[f"lhc{index}/Wqk/{head}/bias"] = np.zeros(embed, np.float32)
    weights[f"lhc{index}/Wv/kernel"] = np.zeros((3, 3, channels, channels), np.float32)
    weights[f"lhc{index}/Wp/kernel"] = np.zeros((channels, channels), np.float32)
    for layer in ("Wv", "Wp"):
      weights[f"lhc{index}/{layer}/bias"] = np.zeros(channels, np.float32)
    if with_controllers:
      weights[f"controller{index}/w"] = np.float32(0)
  return weights


def released_lhc_folder(folder, prefix: str, with_controllers: bool) -> str:
  """Downloaded_Models/<folder>/: the `checkpoint` state file and the bundle, as `save_weights` leaves them."""
  backbone_and_head = {name: value for name, value in keras_weights(None, seed=0).items()
                       if not name.startswith(("lhc", "controller"))}
  weights = tf_checkpoint_names({**backbone_and_head, **fer2013_lhc_weights(with_controllers)})
  folder.mkdir()
  write_tf_checkpoint(str(folder / prefix), with_optimizer_state(weights))
  (folder / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\n')
  return str(folder)


@pytest.fixture(scope="module")
def dan_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("dan") / DAN_FILE
  torch.save({"iter": 21, "model_state_dict": ReferenceDAN().state_dict(), "optimizer_state_dict": {}}, path)
  return str(path)


@pytest.mark.parametrize("folder, prefix, with_controllers, network, stage", [
    ("LHC_Net", "LHC_Net", False, "an LHC-Net", "stage=B"),
    ("LHC_NetC", "LHC_Net_Controller", True, "an LHC-NetC", "stage=C"),
])
def test_released_lhc_net_with_the_default_stage_a1_names_its_stage(tmp_path, folder, prefix, with_controllers,
                                                                    network, stage):
  path = released_lhc_folder(tmp_path / folder, prefix, with_controllers)
  result = convert("lhcnet.py:fer2013", path, tmp_path / "out")
  assert_user_error(result, f"{folder} holds {network}", "the config (stage A1) builds a plain ResNet34v2",
                    f"pass --config=configs/lhcnet.py:fer2013,{stage}", "conv1/LHC_Module/Wqk/0/kernel")
  assert "Pass the --config (method" not in result.stderr
  converted = convert(f"lhcnet.py:fer2013,{stage}", path, tmp_path / "out")
  assert converted.returncode == 0, converted.stderr[-3000:]


@pytest.mark.parametrize("config, method", [("apvit.py:rafdb", "apvit"), ("scan_cci.py:rafdb", "scan_cci")])
def test_dan_checkpoint_with_another_method_names_dan(tmp_path, dan_checkpoint, config, method):
  result = convert(config, dan_checkpoint, tmp_path / "out")
  assert_user_error(result, dan_checkpoint, f"not a checkpoint format fer_jax converts for {method}",
                    "It looks like a dan file", "--config=configs/dan.py:<data set>")


def test_dan_checkpoint_with_another_class_count_names_both(tmp_path, dan_checkpoint):
  result = convert("dan.py:rafdb", dan_checkpoint, tmp_path / "out", "--config.model.num_classes=8")
  assert_user_error(result, f"{DAN_FILE} holds a 7-class classifier (fc.weight (7, 512))",
                    "the config builds 8 classes", "--config.model.num_classes=7",
                    "fc.weight (7, 512) does not fit params/fc/kernel (512, 8)")


class RunsShell:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


class RunsPython(RunsShell):
  def __reduce__(self):
    return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def test_malicious_zip_pth_is_refused_before_it_runs(tmp_path):
  path = tmp_path / "evil.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}, "x": RunsShell(tmp_path / "ran")}, path)
  assert_user_error(convert("dan.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    "would call posix.system", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_malicious_numpy_pickle_is_refused_before_it_runs(tmp_path):
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "x": RunsPython(tmp_path / "ran")}, f)
  assert_user_error(convert("scan_cci.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    "builtins.exec", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_malicious_legacy_pth_tar_is_refused_before_it_runs(tmp_path):
  path = tmp_path / "model_best.pth.tar"  # PyTorch < 1.6 wrote this stream format, not a zip
  torch.save({"base_state_dict": {}, "x": RunsPython(tmp_path / "ran")}, path, _use_new_zipfile_serialization=False)
  assert_user_error(convert("scan_cci.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    "would call exec", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_malicious_tar_format_checkpoint_is_refused_before_it_runs(tmp_path):
  path = tmp_path / "model_best.tar"
  members = {"sys_info": {"protocol_version": 1001, "little_endian": True}, "storages": 0, "tensors": 0,
             "pickle": RunsPython(tmp_path / "ran")}
  with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
    for name, value in members.items():
      data = pickle.dumps(value)
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  assert_user_error(convert("scan_cci.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    "legacy tar format", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_truncated_pth_says_download_again(tmp_path, dan_checkpoint):
  path = tmp_path / DAN_FILE
  with open(dan_checkpoint, "rb") as f:
    data = f.read()
  path.write_bytes(data[:len(data) // 2])
  assert_user_error(convert("dan.py:rafdb", path, tmp_path / "out"), f"Could not read {path}",
                    "incomplete or damaged", "download it again")


def test_missing_checkpoint_is_named(tmp_path):
  path = tmp_path / DAN_FILE
  assert_user_error(convert("dan.py:rafdb", path, tmp_path / "out"), f"--checkpoint={path} does not exist",
                    "check the path")


def test_non_empty_workdir_is_refused_before_converting(tmp_path, dan_checkpoint):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("keep")
  assert_user_error(convert("dan.py:rafdb", dan_checkpoint, tmp_path / "out"),
                    f"--workdir={tmp_path / 'out'} is not empty", "convert into a new folder")


def test_workdir_under_a_file_is_refused_before_converting(tmp_path, dan_checkpoint):
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "file" / "out"
  assert_user_error(convert("dan.py:rafdb", dan_checkpoint, workdir),
                    f"--workdir={workdir} cannot be created: {tmp_path / 'file'} is a file", "another --workdir")


def test_workdir_in_a_read_only_folder_is_refused_before_converting(tmp_path, dan_checkpoint):
  (tmp_path / "read_only").mkdir(mode=0o555)
  workdir = tmp_path / "read_only" / "out"
  result = convert("dan.py:rafdb", dan_checkpoint, workdir, obey_permissions=True)
  assert_user_error(result, f"--workdir={workdir} cannot be written",
                    f"the folder {tmp_path / 'read_only'} is not writable", "Fix its permissions")
  assert not workdir.exists()
