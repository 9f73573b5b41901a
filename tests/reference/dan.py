"""DAN in PyTorch: torchvision's ResNet-18 and the DAN heads written from docs/methods/dan.md §2.3
and §2.4 with the official module names, so `state_dict()` has the released files' keys; the
affinity and partition losses from §2.5."""

import torch
import torchvision
from torch import nn


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

  def parts(self, x):
    """(logits, the trunk's feature map, the log-softmaxed heads [B, K, 512])."""
    features = self.features(x)
    heads = torch.stack([getattr(self, f"cat_head{i}")(features) for i in range(self.num_heads)], dim=1)
    heads = torch.log_softmax(heads, dim=1)
    return self.bn(self.fc(heads.sum(dim=1))), features, heads

  def forward(self, x):
    return self.parts(x)[0]


def affinity_loss(feature_map, centres, labels):
  """(1/B) Σ_b ‖x_b − c_{y_b}‖² / Σ_d Var_m(c_md), x_b the pooled map; each entry of the masked B×M
  distance matrix clamped to [1e-12, 1e12] before the sum."""
  pooled = feature_map.mean(dim=(2, 3))
  distances = ((pooled[:, None, :] - centres[None, :, :]) ** 2).sum(dim=2)
  mask = nn.functional.one_hot(labels, centres.shape[0]).to(distances.dtype)
  ratio = distances * mask / centres.var(dim=0).sum()
  return ratio.clamp(1e-12, 1e12).sum() / pooled.shape[0]


def partition_loss(heads):
  """log(1 + K / (mean_{b,c} of the unbiased variance over the K heads + float epsilon))."""
  return torch.log(1 + heads.shape[1] / (heads.var(dim=1).mean() + torch.finfo(torch.float64).eps))
