"""SCAN-CCI in PyTorch: torchvision's ResNet-50 cut after layer3; the SCAN units, the region split (with
the official unfold/permute calls) and the CCI branch written from docs/methods/scan_cci.md §4 with
the official module names, so their `state_dict()`s have the checkpoint's keys."""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

SIZE = 64  # layer2 map 8×8: one 6×6 tile, a 6×2 right strip, two bottom strips, a 2×2 corner
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
