"""DAN in PyTorch: torchvision's ResNet-18 and the DAN heads written from docs/methods/dan.md §2.3
and §2.4 with the official module names, so `state_dict()` has the released files' keys."""

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

  def forward(self, x):
    features = self.features(x)
    heads = torch.stack([getattr(self, f"cat_head{i}")(features) for i in range(self.num_heads)], dim=1)
    heads = torch.log_softmax(heads, dim=1)
    return self.bn(self.fc(heads.sum(dim=1)))
