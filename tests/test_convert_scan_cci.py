"""SCAN-CCI checkpoints and the VGGFace2 ResNet-50 pickle vs a PyTorch reference.

The reference (tests/reference/scan_cci.py) is torchvision's ResNet-50 cut after layer3 with the SCAN
units, the region split and the CCI branch written from docs/methods/scan_cci.md §4 with the
official module names.
"""

import os
import pickle

from flax import traverse_util
import jax
import numpy as np
import pytest
import torch
import torchvision

from fer_jax import convert
from fer_jax import models
from fer_jax.convert import torch_io
from fer_jax.models.backbones import resnet as resnet_lib
from helpers import get_config, small_config
from reference.common import randomise
from reference.scan_cci import ReferenceScanCci, SIZE, Trunk, saved_like_official

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("arg, num_classes, shared", [("synthetic", 7, True), ("ferplus", 8, False)])
@pytest.mark.integration
def test_checkpoint_gives_the_reference_logits(arg, num_classes, shared, tmp_path, images):
  torch.manual_seed(0)
  reference = randomise(ReferenceScanCci(num_classes, shared), seed=3)
  path = saved_like_official(reference, tmp_path / "model_best.pth.tar")
  config = small_config(f"configs/scan_cci.py:{arg}", SIZE)
  variables, report = convert.convert(config, [path])
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference(nchw(images)).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  assert report.fresh == []
  (dropped,) = report.dropped.values()
  copies = sorted(name for name, reason in dropped.items() if "region_net" in reason)
  assert copies == sorted(f"region_state_dict/module.classifiers.{i}.{layer}.{weight}"
                          for i in range(4) for layer in (0, 2) for weight in ("weight", "bias"))


def test_region_copies_that_differ_are_an_error(tmp_path):
  reference = ReferenceScanCci(7, shared=True)
  path = saved_like_official(reference, tmp_path / "model_best.pth.tar")
  checkpoint = torch.load(path, weights_only=True)
  region = checkpoint["region_state_dict"]
  region["module.classifiers.2.0.bias"] = region["module.classifiers.2.0.bias"].clone() + 1.0  # unshare storage
  torch.save(checkpoint, path)
  with pytest.raises(convert.ConversionError, match=r"module\.classifiers\.2\.0\.bias differs from .*region_net\.0\.bias"):
    convert.convert(small_config("configs/scan_cci.py:synthetic", SIZE), [path])


def test_separate_unit_checkpoint_needs_the_separate_config(tmp_path):
  path = saved_like_official(ReferenceScanCci(7, shared=False), tmp_path / "model_best.pth.tar")
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(small_config("configs/scan_cci.py:synthetic", SIZE), [path])
  unknown, missing = str(error.value).splitlines()[1:3]
  assert ("unknown to this model: attention_state_dict/module.local_attention_masks.0.attention.0.weight "
          "(512, 512, 3, 3)") in unknown
  assert "attention_state_dict/module.local_attention_masks.attention.0.weight, " in missing
  assert missing.endswith(" are missing")


@pytest.mark.integration
def test_vggface2_pickle_fills_the_trunk(tmp_path, images):
  torch.manual_seed(0)
  resnet = randomise(torchvision.models.resnet50(), seed=4)
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:  # the VGGFace2 file: a protocol-2 pickle of NumPy arrays, no BN counters
    pickle.dump({k: v.numpy() for k, v in resnet.state_dict().items() if "num_batches" not in k}, f, protocol=2)
  config = small_config("configs/scan_cci.py:synthetic", SIZE)
  variables, report = convert.convert(config, [str(path)])
  trunk = {c: variables[c]["trunk"] for c in variables}
  layer3 = jax.jit(lambda v, x: resnet_lib.ResNet50(num_stages=3).apply(v, x, train=False)["layer3"])(trunk, images)
  with torch.no_grad():
    expected = Trunk.forward(resnet, nchw(images))[1].numpy().transpose(0, 2, 3, 1)
  assert np.max(np.abs(np.asarray(layer3) - expected)) <= TOLERANCE
  (dropped,) = report.dropped.values()
  assert all(name.startswith(("layer4.", "fc.")) for name in dropped)
  assert len(dropped) == len([k for k in resnet.state_dict() if k.startswith(("layer4.", "fc."))
                              and "num_batches" not in k])
  assert {p.split("/")[1] for p in report.fresh} == {"attention", "cci"}


class Exploit:
  def __reduce__(self):
    return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "payload": Exploit()}, f, protocol=2)
  with pytest.raises(convert.ConversionError, match=r"refused to load the global (posix|os)\.system"):
    torch_io.load_numpy_pickle(str(path))
  torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Exploit()}, tmp_path / "evil.pth")
  with pytest.raises(convert.ConversionError, match="Refused to load"):
    torch_io.load_torch(str(tmp_path / "evil.pth"))
  assert not (tmp_path / "pwned").exists()


def test_numpy_pickles_of_either_python_load(tmp_path):
  arrays = {"conv1.weight": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "bn1.running_var": np.ones(2)}
  for protocol in (2, 4, 5):  # 5: Python 3.14's default, whose arrays NumPy rebuilds with _frombuffer
    path = tmp_path / f"weights{protocol}.pkl"
    with open(path, "wb") as f:
      pickle.dump(arrays, f, protocol=protocol)
    loaded = torch_io.load_numpy_pickle(str(path))
    assert loaded.keys() == arrays.keys()
    assert all(np.array_equal(loaded[k], arrays[k]) and loaded[k].dtype == arrays[k].dtype for k in arrays)


@pytest.mark.parametrize("zip_format", [True, False])
def test_numpy_values_beside_the_state_dict_load(tmp_path, zip_format):
  path = tmp_path / "model_best.pth.tar"
  extras = {"best": np.float64(0.9), "epoch": np.int64(12), "history": np.arange(3, dtype=np.float32)}
  torch.save({"base_state_dict": {"conv1.weight": torch.ones(2)}, **extras}, path,
             _use_new_zipfile_serialization=zip_format)
  loaded = torch_io.load_torch(str(path))
  assert all(type(loaded[key]) is type(value) and np.array_equal(loaded[key], value) for key, value in extras.items())


class SavesFile:
  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (np.save, (self.path, np.zeros(1)))


def test_numpy_functions_beyond_its_constructors_are_refused(tmp_path):
  path = tmp_path / "model_best.pth.tar"
  torch.save({"base_state_dict": {"conv1.weight": torch.ones(2)}, "payload": SavesFile(tmp_path / "ran.npy")}, path)
  with pytest.raises(convert.ConversionError, match=r"would call numpy\.save\."):
    torch_io.load_torch(str(path))
  assert not (tmp_path / "ran.npy").exists()


def test_checkpoint_saved_without_data_parallel_converts_as_the_official_one(tmp_path):
  reference = randomise(ReferenceScanCci(7, shared=True), seed=3)
  official = saved_like_official(reference, tmp_path / "model_best.pth.tar")
  bare = tmp_path / "bare.pth.tar"
  torch.save({"epoch": 12, "base_state_dict": reference.base.state_dict(),
              "attention_state_dict": reference.attention.state_dict(),
              "region_state_dict": reference.region.state_dict()}, bare)
  expected, _ = convert.convert(small_config("configs/scan_cci.py:synthetic", SIZE), [official])
  variables, _ = convert.convert(small_config("configs/scan_cci.py:synthetic", SIZE), [str(bare)])
  jax.tree.map(np.testing.assert_array_equal, variables, expected)


def test_the_variables_a_checkpoint_lacks_are_the_default_compiles_bit_for_bit():
  """The converter's one-off initialisation compiles as training's (mesh.init_compiler_options) and computes only
  the variables asked for (here those of the attention and CCI branches, as beside a trunk-only checkpoint): their
  values are XLA's default compile of the whole initialisation's exactly (an -O0 compile rounded 43 of SCAN-CCI's
  234 leaves differently)."""
  config = get_config("configs/scan_cci.py:rafdb")
  model = models.build_model(config)
  reference = traverse_util.flatten_dict(
      jax.jit(lambda: models.init_variables(model, config, jax.random.key(config.seed)))(), sep="/")
  lacking = [path for path in reference if not path.startswith(("params/trunk/", "batch_stats/trunk/"))]
  fresh = convert._fresh_variables(model, config, lacking)  # pylint: disable=protected-access
  assert sorted(fresh) == sorted(lacking)
  for path in lacking:
    np.testing.assert_array_equal(fresh[path], reference[path], err_msg=path)
