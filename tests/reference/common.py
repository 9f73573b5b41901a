"""What the PyTorch references share."""

import torch
from torch import nn

SIZE = 64  # the side of `randomise`'s calibration batch unless given


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
