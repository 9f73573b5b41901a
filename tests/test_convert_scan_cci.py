"""SCAN-CCI checkpoints and the VGGFace2 ResNet-50 pickle vs a PyTorch reference.

The trunk is torchvision's ResNet-50 cut after layer3; the SCAN units, the region split (with
the official unfold/permute calls) and the CCI branch are written below from docs/methods/scan_cci.md §4 with
the official module names, so their `state_dict()`s have the checkpoint's keys.
"""

import os
import pickle

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fer_jax import convert
from fer_jax import models
from fer_jax.convert import torch_io
from fer_jax.models.backbones import resnet as resnet_lib
from helpers import get_config
from test_convert_dan import randomise

SIZE = 64  # layer2 map 8×8: one 6×6 tile, a 6×2 right strip, two bottom strips, a 2×2 corner
TOLERANCE = 1e-4
REGION = 6


class Trunk(nn.Module):
  """torchvision ResNet-50 to layer3, keeping its key names."""

  def __init__(self):
    super().__init__()
    resnet = torchvision.models.resnet50()
    self.conv1, self.bn1, self.layer1, self.layer2, self.layer3 = (
        resnet.conv1, resnet.bn1, resnet.layer1, resnet.layer2, resnet.layer3)

  def forward(self, x):
    x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    f2 = self.layer2(self.layer1(x))
    return f2, self.layer3(f2)


class ScanUnit(nn.Module):
  def __init__(self, channels):
    super().__init__()
    self.attention = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.PReLU(channels),
                                   nn.BatchNorm2d(channels), nn.Sigmoid())

  def forward(self, x):
    return x * self.attention(x)


def regions(f2):
  """The official split: unfolded tiles, right strips, bottom strips (row-major slip), corner."""
  batch, channels = f2.shape[:2]
  tiled = f2.shape[2] // REGION * REGION
  tiles = f2[:, :, :tiled, :tiled].unfold(2, REGION, REGION).unfold(3, REGION, REGION)
  tiles = tiles.contiguous().view(batch, channels, -1, REGION, REGION).permute(0, 2, 1, 3, 4)
  right = f2[:, :, :tiled, tiled:].unfold(2, REGION, REGION).permute(0, 2, 1, 4, 3)
  bottom = f2[:, :, tiled:, :tiled].unfold(3, REGION, REGION).permute(0, 2, 1, 3, 4)
  corner = f2[:, :, tiled:, tiled:].unsqueeze(1)
  return [group[:, j] for group in (tiles, right, bottom, corner) for j in range(group.shape[1])]


class AttentionBranch(nn.Module):
  def __init__(self, num_regions, num_classes, shared, channels=512):
    super().__init__()
    self.shared = shared
    self.local_attention_masks = (ScanUnit(channels) if shared else
                                  nn.ModuleList([ScanUnit(channels) for _ in range(num_regions)]))
    self.global_attention_mask = ScanUnit(channels)
    self.fc = nn.Linear(2 * channels, num_classes)

  def forward(self, f2):
    local = [(self.local_attention_masks if self.shared else self.local_attention_masks[k])(region).mean(dim=(2, 3))
             for k, region in enumerate(regions(f2))]
    combined = torch.cat([torch.stack(local, dim=2).max(dim=2).values,
                          self.global_attention_mask(f2).mean(dim=(2, 3))], dim=1)
    return self.fc(F.normalize(combined, dim=1))


class Eca(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv1d(1, 1, 5, padding=2, bias=False)

  def forward(self, x):
    y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1)).squeeze(1)
    return x * torch.sigmoid(y)[:, :, None, None]


class RegionBranch(nn.Module):
  def __init__(self, num_classes, channels=1024):
    super().__init__()
    self.eca = Eca()
    self.region_net = nn.Sequential(nn.Linear(channels, channels // 4), nn.ReLU(), nn.Linear(channels // 4, num_classes))
    self.classifiers = nn.ModuleList([self.region_net for _ in range(4)])

  def forward(self, f3):
    f3 = self.eca(f3)
    half = f3.shape[2] // 2
    quadrants = [f3[:, :, r * half:(r + 1) * half, c * half:(c + 1) * half] for r in range(2) for c in range(2)]
    return torch.stack([self.classifiers[i](q.mean(dim=(2, 3))) for i, q in enumerate(quadrants)], dim=2)


class ReferenceScanCci(nn.Module):
  def __init__(self, num_classes, shared):
    super().__init__()
    self.base = Trunk()
    self.attention = AttentionBranch(len(regions(torch.zeros(1, 1, SIZE // 8, SIZE // 8))), num_classes, shared)
    self.region = RegionBranch(num_classes)

  def forward(self, x):
    f2, f3 = self.base(x)
    every = torch.cat([self.attention(f2).unsqueeze(2), self.region(f3)], dim=2)
    return every.mean(dim=2)


def saved_like_official(reference, path):
  """The official checkpoint dict: three DataParallel state dicts and training state."""
  def parallel(module):
    return {f"module.{k}": v for k, v in module.state_dict().items()}
  torch.save({"epoch": 12, "base_state_dict": parallel(reference.base),
              "attention_state_dict": parallel(reference.attention), "region_state_dict": parallel(reference.region),
              "best_prec1": torch.tensor(88.0), "optimizer": {"state": {}, "param_groups": []}}, path)
  return str(path)


def small_config(arg):
  config = get_config(f"configs/scan_cci.py:{arg}")
  config.input.size = SIZE
  return config


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("arg, num_classes, shared", [("synthetic", 7, True), ("ferplus", 8, False)])
def test_checkpoint_gives_the_reference_logits(arg, num_classes, shared, tmp_path, images):
  torch.manual_seed(0)
  reference = randomise(ReferenceScanCci(num_classes, shared), seed=3)
  path = saved_like_official(reference, tmp_path / "model_best.pth.tar")
  config = small_config(arg)
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
    convert.convert(small_config("synthetic"), [path])


def test_separate_unit_checkpoint_needs_the_separate_config(tmp_path):
  path = saved_like_official(ReferenceScanCci(7, shared=False), tmp_path / "model_best.pth.tar")
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(small_config("synthetic"), [path])
  assert "local_attention_masks.attention.0.weight is missing" in str(error.value)
  assert "attention_state_dict/module.local_attention_masks.0.attention.0.weight (512, 512, 3, 3)" in str(error.value)


def test_vggface2_pickle_fills_the_trunk(tmp_path, images):
  torch.manual_seed(0)
  resnet = randomise(torchvision.models.resnet50(), seed=4)
  path = tmp_path / "vgg_msceleb_resnet50_ft_weight.pkl"
  with open(path, "wb") as f:  # the VGGFace2 file: a protocol-2 pickle of NumPy arrays, no BN counters
    pickle.dump({k: v.numpy() for k, v in resnet.state_dict().items() if "num_batches" not in k}, f, protocol=2)
  config = small_config("synthetic")
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
  for protocol in (2, 4):
    path = tmp_path / f"weights{protocol}.pkl"
    with open(path, "wb") as f:
      pickle.dump(arrays, f, protocol=protocol)
    loaded = torch_io.load_numpy_pickle(str(path))
    assert loaded.keys() == arrays.keys()
    assert all(np.array_equal(loaded[k], arrays[k]) and loaded[k].dtype == arrays[k].dtype for k in arrays)
