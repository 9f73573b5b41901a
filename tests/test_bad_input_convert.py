"""`python -m fer_jax.convert` on bad input: exit status 2 and one message naming the file and the fix.

Each test runs the real command on a small fake of the file at fault. The LHC-Net folders are
written by `write_tf_checkpoint` below, a minimal writer of the TensorFlow bundle format that
fer_jax/convert/tf_checkpoint.py reads (one uncompressed table block, one shard).
"""

import builtins
import io
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torchvision

from fer_jax import checkpointing
from fer_jax import stopping
from helpers import ROOT, assert_user_error, cpu_devices_env, run_command
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
  assert_user_error(result, f"{folder} holds {network}", "the config (stage A1–A3) builds a plain ResNet34v2",
                    f"pass --config=configs/lhcnet.py:fer2013,{stage}", "conv1/LHC_Module/Wqk/0/kernel")
  assert "Pass the --config (method" not in result.stderr
  converted = convert(f"lhcnet.py:fer2013,{stage}", path, tmp_path / "out")
  assert converted.returncode == 0, converted.stderr[-3000:]


@pytest.mark.parametrize("config, method", [("apvit.py:rafdb", "apvit"), ("scan_cci.py:rafdb", "scan_cci")])
def test_dan_checkpoint_with_another_method_names_dan(tmp_path, dan_checkpoint, config, method):
  result = convert(config, dan_checkpoint, tmp_path / "out")
  assert_user_error(result, dan_checkpoint, f"not a checkpoint format fer_jax converts for {method}",
                    "It looks like a dan file", "--config=configs/dan.py:<data set>")


def test_dan_checkpoint_with_another_class_count_names_the_configs_that_fit(tmp_path, dan_checkpoint):
  result = convert("dan.py:affectnet8", dan_checkpoint, tmp_path / "out")
  assert_user_error(result, f"{DAN_FILE} holds a classifier of 7 classes (fc.weight (7, 512))",
                    "the config builds 8 classes: pass --config=configs/dan.py:rafdb or "
                    "--config=configs/dan.py:affectnet7 or --config=configs/dan.py:synthetic",
                    "fc.weight (7, 512) does not fit params/fc/kernel (512, 8)")
  assert "num_classes" not in result.stderr


@pytest.fixture(scope="module")
def dan_8_class_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("dan8") / "affecnet8_epoch5_acc0.6209.pth"
  torch.save({"iter": 5, "model_state_dict": ReferenceDAN(num_classes=8).state_dict()}, path)
  return str(path)


def test_following_the_advice_for_another_class_count_gives_a_usable_model(tmp_path, dan_8_class_checkpoint):
  result = convert("dan.py:rafdb", dan_8_class_checkpoint, tmp_path / "out")
  assert_user_error(result, "holds a classifier of 8 classes", "the config builds 7 classes: pass "
                    "--config=configs/dan.py:affectnet8.")
  assert "num_classes" not in result.stderr  # it used to suggest --config.model.num_classes=8, with 7 class names
  converted = convert("dan.py:affectnet8", dan_8_class_checkpoint, tmp_path / "out")
  assert converted.returncode == 0, converted.stderr[-3000:]
  meta = checkpointing.read_meta(str(tmp_path / "out"))
  assert meta["model"]["num_classes"] == len(meta["class_names"]) == 8


def test_config_that_cannot_run_is_refused_before_the_checkpoint_is_read(tmp_path):
  result = convert("dan.py:rafdb", tmp_path / "not_there.pth", tmp_path / "out", "--config.model.num_classes=8")
  assert_user_error(result, "config.dataset.class_order='rafdb' names 7 classes",
                    "config.model.num_classes=8: set one to match the other")
  assert "not_there.pth" not in result.stderr


def test_dan_file_named_for_another_data_set_is_converted_with_a_warning_naming_both(tmp_path, dan_checkpoint):
  result = convert("dan.py:affectnet7", dan_checkpoint, tmp_path / "out")
  assert result.returncode == 0, result.stderr[-3000:]
  warning = next(line for line in result.stderr.splitlines() if line.startswith("W") and DAN_FILE in line)
  assert ("is named like the released rafdb model (classes surprise, fear, disgust, happiness, sadness, anger, "
          "neutral), but the config's class order affectnet7 is neutral, happiness") in warning
  assert "Unless the file was renamed, pass --config=configs/dan.py:rafdb." in warning
  assert "whose outputs are the classes of the config's class order affectnet7: neutral, happiness" in result.stderr


def logged_command(result, label: str) -> list[str]:
  """The command logged after `label` ("Evaluate with:"), split as a shell would."""
  line = next(line for line in result.stderr.splitlines() if label in line)
  return shlex.split(line.split(label, 1)[1])


def test_next_command_keeps_the_overrides_shell_quoted(tmp_path, dan_checkpoint):
  workdir = tmp_path / "out"
  result = convert("dan.py:rafdb", dan_checkpoint, workdir, "--config.dataset.data_dir=/data/my faces")
  assert result.returncode == 0, result.stderr[-3000:]
  assert logged_command(result, "Evaluate with:") == [
      "python", "-m", "fer_jax.main", "--mode=eval", "--config=configs/dan.py:rafdb",
      "--config.dataset.data_dir=/data/my faces", f"--checkpoint={workdir}", "--workdir=<report", "folder>"]
  assert "initialisation_only" not in checkpointing.read_meta(str(workdir))


def test_backbone_only_conversion_says_how_to_train_from_it_and_is_marked_so(tmp_path):
  path = tmp_path / "resnet18_msceleb.pth"
  torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
  workdir = tmp_path / "out"
  result = convert("dan.py:rafdb", path, workdir, "--config.seed=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Evaluate with" not in result.stderr
  assert "a starting point for training, not a model to evaluate or predict with" in result.stderr
  assert logged_command(result, "Train from it with:") == [
      "python", "-m", "fer_jax.main", "--config=configs/dan.py:rafdb", f"--config.init_from={workdir}",
      "--workdir=<run", "folder>"]
  assert checkpointing.read_meta(str(workdir))["initialisation_only"] is True


def test_home_folder_is_expanded_in_the_paths(tmp_path, dan_checkpoint, monkeypatch):
  home = tmp_path / "home"
  home.mkdir()
  shutil.copy(dan_checkpoint, home / DAN_FILE)
  monkeypatch.setenv("HOME", str(home))
  result = run_command("fer_jax.convert", "--config=configs/dan.py:rafdb", f"--checkpoint=~/{DAN_FILE}",
                       "--workdir=~/converted")
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpointing.read_meta(str(home / "converted"))["model"]["name"] == "dan"
  assert not os.path.exists(os.path.join(ROOT, "~"))


# Sends this process SIGINT while Orbax writes the converted model, as a Ctrl-C would, then runs the command.
# `python -m fer_jax.convert ARGS` with a SIGINT sent as CheckpointManager's METHOD (save: 20 ms into it, while
# Orbax's event loop holds the signal and its write goes on in the background) runs.
INTERRUPTED_SAVE = """
import os, runpy, signal, sys, threading
import orbax.checkpoint as ocp
method = sys.argv.pop(1)
original = getattr(ocp.CheckpointManager, method)
def interrupted(self, *args, **kwargs):
  threading.Timer(0.02 if method == "save" else 0, os.kill, (os.getpid(), signal.SIGINT)).start()
  return original(self, *args, **kwargs)
setattr(ocp.CheckpointManager, method, interrupted)
sys.argv[0] = "fer_jax.convert"
runpy.run_module("fer_jax.convert", run_name="__main__")
"""


@pytest.mark.parametrize("method", ["save", "wait_until_finished"])
def test_interrupted_save_removes_its_output_and_the_same_command_converts_again(tmp_path, dan_checkpoint, method):
  """A signal held while the save began was acted on as it returned: the output was removed while Orbax still wrote
  it in the background, which left a partial folder after "Nothing is left"."""
  args = ["--config=configs/dan.py:rafdb", f"--checkpoint={dan_checkpoint}", f"--workdir={tmp_path / 'out'}"]
  result = subprocess.run([sys.executable, "-c", INTERRUPTED_SAVE, method, *args], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert f"SIGINT received: stopped. Nothing is left in {tmp_path / 'out'}; the same command converts again." \
      in result.stderr
  assert not (tmp_path / "out").exists()
  rerun = run_command("fer_jax.convert", *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]


def test_workdir_left_by_an_interrupted_conversion_is_cleaned(tmp_path, dan_checkpoint):
  (tmp_path / "out" / "0.orbax-checkpoint-tmp-1733356800" / "state").mkdir(parents=True)
  result = convert("dan.py:rafdb", dan_checkpoint, tmp_path / "out")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Removed the partial output of an interrupted conversion" in result.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["0"]


def test_importing_the_convert_command_loads_no_training_loop():
  """Its exit statuses on a stop come from fer_jax.stopping; the training loop is not part of a conversion."""
  code = ("import sys, fer_jax.convert.__main__; "
          "print(' '.join(name for name in sys.modules if name.startswith('fer_jax')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=True)
  loaded = set(result.stdout.split())
  assert "fer_jax.stopping" in loaded
  assert "fer_jax.train" not in loaded


def test_help_shows_the_examples_as_written():
  result = run_command("fer_jax.convert", "--helpshort")
  assert "--config=configs/dan.py:rafdb \\\n      --checkpoint=rafdb_epoch21" in result.stdout
  assert "--checkpoint: (required) The file to convert (for a TensorFlow checkpoint: its folder, prefix or .index file)" in \
      " ".join(result.stdout.split())


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


# Protocol 2 names exec by its Python 2 name, __builtin__.exec, which a Python 2 era file would give too.
@pytest.mark.parametrize("protocol, named", [(pickle.DEFAULT_PROTOCOL, "builtins.exec"), (2, "__builtin__.exec")])
def test_malicious_numpy_pickle_is_refused_before_it_runs(tmp_path, protocol, named):
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "x": RunsPython(tmp_path / "ran")}, f,
                protocol=protocol)
  assert_user_error(convert("scan_cci.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    f"global {named} ", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_malicious_legacy_pth_tar_is_refused_before_it_runs(tmp_path):
  path = tmp_path / "model_best.pth.tar"  # PyTorch < 1.6 wrote this stream format, not a zip
  torch.save({"base_state_dict": {}, "x": RunsPython(tmp_path / "ran")}, path, _use_new_zipfile_serialization=False)
  assert_user_error(convert("scan_cci.py:rafdb", path, tmp_path / "out"), f"Refused to load {path}",
                    "would call exec", "never runs code from a checkpoint")
  assert not (tmp_path / "ran").exists()


def test_legacy_pth_cut_in_a_global_name_is_damaged_not_refused(tmp_path):
  path = tmp_path / "model_best.pth.tar"
  torch.save({"base_state_dict": {"conv1.weight": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
  data = path.read_bytes()
  path.write_bytes(data[:data.index(b"_rebuild_tensor") + 5])  # the pickle names torch._utils._rebu
  result = convert("scan_cci.py:rafdb", path, tmp_path / "out")
  assert_user_error(result, f"Could not read {path} as a PyTorch checkpoint", "download it again")
  assert "Refused" not in result.stderr


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
                    f"--workdir={workdir} cannot be created: {tmp_path / 'file'} is a file", "choose another path")


def test_workdir_in_a_read_only_folder_is_refused_before_converting(tmp_path, dan_checkpoint):
  (tmp_path / "read_only").mkdir(mode=0o555)
  workdir = tmp_path / "read_only" / "out"
  result = convert("dan.py:rafdb", dan_checkpoint, workdir, obey_permissions=True)
  assert_user_error(result, f"--workdir={workdir} cannot be written",
                    f"the folder {tmp_path / 'read_only'} is not writable", "fix its permissions")
  assert not workdir.exists()


def test_the_log_says_why_the_batch_norm_step_counters_are_dropped_and_counts_them(tmp_path, dan_checkpoint):
  """It said "Flax BatchNorm keeps none": fer_jax's BatchNorm is its own (fer_jax/models/batch_norm.py).
  It listed the 41 counters ("…: bn.num_batches_tracked, cat_head0.ca…"), and said "1 variables"."""
  result = convert("dan.py:rafdb", dan_checkpoint, tmp_path / "out")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert any(line.endswith("[dan]: dropped 41 tensors (BatchNorm step counter; fer_jax's BatchNorm keeps none, as its "
                           "running averages use a fixed momentum)") for line in lines), result.stderr[-3000:]
  assert "num_batches_tracked" not in result.stderr
  assert any(line.endswith("not in the source): 1 variable in affinity") for line in lines), result.stderr[-3000:]
