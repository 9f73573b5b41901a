"""DAN checkpoints and the MS-Celeb ResNet-18: torchvision + the DAN heads in PyTorch vs fer_jax.

The reference trunk is torchvision's ResNet-18; the heads are written below from docs/methods/dan.md §2.3
and §2.4 with the official module names, so `state_dict()` has the released files' keys.
"""

import jax
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fer_jax import checkpointing
from fer_jax import convert
from fer_jax import models
from fer_jax import train
from fer_jax.models.backbones import resnet as resnet_lib
from helpers import get_config, tiny_run

SIZE = 64
TOLERANCE = 1e-4


class TorchSpatialGate(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1x1 = nn.Sequential(nn.Conv2d(512, 256, 1), nn.BatchNorm2d(256))
    self.conv_3x3 = nn.Sequential(nn.Conv2d(256, 512, 3, padding=1), nn.BatchNorm2d(512))
    self.conv_1x3 = nn.Sequential(nn.Conv2d(256, 512, (1, 3), padding=(0, 1)), nn.BatchNorm2d(512))
    self.conv_3x1 = nn.Sequential(nn.Conv2d(256, 512, (3, 1), padding=(1, 0)), nn.BatchNorm2d(512))

  def forward(self, x):
    u = self.conv1x1(x)
    z = torch.relu(self.conv_3x3(u) + self.conv_1x3(u) + self.conv_3x1(u))
    return x * z.sum(dim=1, keepdim=True)


class TorchChannelGate(nn.Module):
  def __init__(self):
    super().__init__()
    self.attention = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 512),
                                   nn.Sigmoid())

  def forward(self, x):
    z = x.mean(dim=(2, 3))
    return z * self.attention(z)


class TorchHead(nn.Module):
  def __init__(self):
    super().__init__()
    self.sa = TorchSpatialGate()
    self.ca = TorchChannelGate()

  def forward(self, x):
    return self.ca(self.sa(x))


class ReferenceDAN(nn.Module):
  def __init__(self, num_classes=7, num_heads=4):
    super().__init__()
    self.features = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    self.num_heads = num_heads
    for i in range(num_heads):
      setattr(self, f"cat_head{i}", TorchHead())
    self.fc = nn.Linear(512, num_classes)
    self.bn = nn.BatchNorm1d(num_classes)

  def forward(self, x):
    features = self.features(x)
    heads = torch.stack([getattr(self, f"cat_head{i}")(features) for i in range(self.num_heads)], dim=1)
    heads = torch.log_softmax(heads, dim=1)
    return self.bn(self.fc(heads.sum(dim=1)))


def randomise(module: nn.Module, seed: int, size: int = SIZE) -> nn.Module:
  """Random affine BatchNorm parameters, and running statistics taken from a random batch.

  Like a trained network's, every BatchNorm then standardises its input and scales it by
  γ < 1, so activations stay O(1) through deep residual stacks and float32 rounding stays far
  below the tolerance.
  """
  generator = torch.Generator().manual_seed(seed)
  batch_norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  with torch.no_grad():
    for norm in batch_norms:
      norm.weight.copy_(0.1 + 0.3 * torch.rand(norm.weight.shape, generator=generator))
      norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
      norm.momentum = 1.0
    module.train()
    module(torch.randn((8, 3, size, size), generator=generator))
  return module.eval()


def small_config(arg="synthetic"):
  config = get_config(f"configs/dan.py:{arg}")
  config.input.size = SIZE
  return config


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A reference DAN saved like the released files."""
  torch.manual_seed(0)
  reference = randomise(ReferenceDAN(), seed=1)
  path = tmp_path_factory.mktemp("dan") / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"iter": 21, "model_state_dict": reference.state_dict(), "optimizer_state_dict": {}}, path)
  return reference, str(path)


@pytest.fixture(scope="module")
def converted(released):
  return convert.convert(small_config(), [released[1]])


def test_released_checkpoint_gives_the_reference_logits(released, converted, images):
  reference, _ = released
  config = small_config()
  variables, report = converted
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  state = reference.state_dict()
  counters = [name for name in state if name.endswith("num_batches_tracked")]
  assert report.converted == {"rafdb_epoch21_acc0.897_bacc0.8275.pth [dan]": len(state) - len(counters)}
  assert report.fresh == ["params/affinity/centres"]
  assert all(name.endswith("num_batches_tracked") for dropped in report.dropped.values() for name in dropped)


@pytest.mark.slow
def test_converted_checkpoint_restores_and_evaluates(converted, tmp_path):
  config = tiny_run(small_config(), size=SIZE, batch_size=16)
  variables, _ = converted
  checkpointing.save_model(str(tmp_path / "converted"), variables, config)
  model = models.build_model(config)
  restored = checkpointing.restore_model(str(tmp_path / "converted"), models.abstract_variables(model, config))
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), restored, variables))
  results = train.evaluate_checkpoint(config, str(tmp_path / "converted"), str(tmp_path / "report"))
  assert results["num_examples"] == 70
  assert (tmp_path / "report" / "eval_results.json").exists()


def test_wrong_number_of_classes_is_reported_by_name_and_shape(released):
  _, path = released
  with pytest.raises(convert.ConversionError, match=r"fc\.weight \(7, 512\) does not fit params/fc/kernel \(512, 8\)"):
    convert.convert(small_config("affectnet8"), [path])


def test_unknown_and_missing_keys_are_named(released, tmp_path):
  _, path = released
  checkpoint = torch.load(path, weights_only=True)
  state = checkpoint["model_state_dict"]
  state["cat_head4.sa.conv1x1.0.weight"] = torch.zeros(256, 512, 1, 1)
  del state["cat_head2.ca.attention.3.bias"]
  edited = tmp_path / "edited.pth"
  torch.save(checkpoint, edited)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(small_config(), [str(edited)])
  assert "cat_head2.ca.attention.3.bias is missing" in str(error.value)
  assert "cat_head4.sa.conv1x1.0.weight (256, 512, 1, 1)" in str(error.value)
  assert "params/head2/ca/fc2/bias (512,)" in str(error.value)


def test_msceleb_resnet18_fills_the_trunk_and_initialises_the_rest(tmp_path, images):
  torch.manual_seed(0)
  resnet = randomise(torchvision.models.resnet18(), seed=2)
  path = tmp_path / "resnet18_msceleb.pth"
  torch.save({"epoch": 40, "arch": "resnet18", "state_dict": resnet.state_dict()}, path)
  config = small_config()
  variables, report = convert.convert(config, [str(path)])

  trunk = {c: variables[c]["trunk"] for c in variables}
  layer4 = jax.jit(lambda v, x: resnet_lib.ResNet18().apply(v, x, train=False)["layer4"])(trunk, images)
  with torch.no_grad():
    trunk_reference = nn.Sequential(*list(resnet.children())[:-2])
    expected = trunk_reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  assert np.max(np.abs(np.asarray(layer4) - expected)) <= TOLERANCE

  (dropped,) = report.dropped.values()
  assert {name for name, reason in dropped.items() if "classifier" in reason} == {"fc.weight", "fc.bias"}
  assert {path.split("/")[1] for path in report.fresh} == {"head0", "head1", "head2", "head3", "fc", "bn",
                                                           "affinity"}
  # DAN's own initialisation (Linear weights N(0, 0.001²)), seeded by config.seed.
  kernel = variables["params"]["head3"]["ca"]["fc1"]["kernel"]
  assert 0.0009 < np.std(kernel) < 0.0011
  config.seed = 1
  reseeded, _ = convert.convert(config, [str(path)])
  np.testing.assert_array_equal(reseeded["params"]["trunk"]["conv1"]["kernel"], variables["params"]["trunk"]["conv1"]["kernel"])
  assert not np.array_equal(reseeded["params"]["head3"]["ca"]["fc1"]["kernel"], kernel)
