"""APViT in PyTorch: the face.evoLVe IR trunk and the pooling ViT written from docs/methods/apvit.md §3
with the official module names (no library has them); the ViT-Small backbone is timm's own
VisionTransformer, also written in Google's ViT .npz layout. Shapes are a scaled-down
configs/apvit.py:synthetic (64×64 input, 8×8 patch grid, width 192, 3 heads)."""

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import vision_transformer
from torch import nn

from reference.common import randomise

SIZE = 64
WIDTHS = (64, 128, 256, 512)


class BottleneckIR(nn.Module):
  def __init__(self, in_channels, depth, stride):
    super().__init__()
    self.res_layer = nn.Sequential(nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
                                   nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
                                   nn.BatchNorm2d(depth))
    self.stride = stride
    if in_channels != depth:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))

  def forward(self, x):
    shortcut = self.shortcut_layer(x) if hasattr(self, "shortcut_layer") else x[:, :, ::self.stride, ::self.stride]
    return self.res_layer(x) + shortcut


class IR(nn.Module):
  """face.evoLVe's IR: flat `body.N` (its released file) or per-stage `body.S.U` (APViT's)."""

  def __init__(self, stage_sizes, nested):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
    stages, channels = [], 64
    for stage, size in enumerate(stage_sizes):
      stages.append([BottleneckIR(channels if unit == 0 else WIDTHS[stage], WIDTHS[stage], 2 if unit == 0 else 1)
                     for unit in range(size)])
      channels = WIDTHS[stage]
    self.nested = nested
    self.body = (nn.ModuleList([nn.Sequential(*units) for units in stages]) if nested
                 else nn.Sequential(*[unit for units in stages for unit in units]))

  def forward(self, x, units=None):
    x = self.input_layer(x)
    for unit in (list(self.body.children()) if self.nested else list(self.body))[:units]:
      x = unit(x)
    return x


class PoolingAttention(nn.Module):
  def __init__(self, width, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width, bias=False)
    self.proj = nn.Linear(width, width)

  def forward(self, x):
    batch, tokens, width = x.shape
    q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    y = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    return self.proj(y), logits[:, :, 0]


class Mlp(nn.Module):
  def __init__(self, width, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


def keep_top(scores, keep):
  return torch.sort(torch.topk(scores, keep, dim=-1).indices, dim=-1).values


class PoolingBlock(nn.Module):
  def __init__(self, width, num_heads, hidden, keep_rate):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
    self.attn, self.mlp, self.keep_rate = PoolingAttention(width, num_heads), Mlp(width, hidden), keep_rate

  def forward(self, x):
    y, cls_logits = self.attn(self.norm1(x))
    x = x + y
    keep = int((x.shape[1] - 1) * self.keep_rate)
    if keep < x.shape[1] - 1:
      kept = keep_top(cls_logits[:, :, 1:].sum(dim=1), keep) + 1
      x = torch.cat([x[:, :1], torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))], dim=1)
    return x + self.mlp(self.norm2(x))


class PoolingViT(nn.Module):
  def __init__(self, model_config, patches):
    super().__init__()
    width = model_config.width
    self.projs = nn.ModuleList([nn.Conv2d(256, width, 1)])
    self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.patch_pos_embed = nn.Parameter(torch.randn(1, patches, width) * 0.02)
    self.cls_pos_embed = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.blocks = nn.ModuleList([PoolingBlock(width, model_config.num_heads, model_config.mlp_dim, rate)
                                 for rate in model_config.atp_keep_rates])
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.app_keep = model_config.app_keep

  def forward(self, features):
    z = self.projs[0](features).flatten(2).transpose(1, 2)
    kept = keep_top(z.abs().sum(dim=-1), self.app_keep)
    x = torch.gather(z + self.patch_pos_embed, 1, kept[..., None].expand(-1, -1, z.shape[-1]))
    x = torch.cat([(self.cls_token + self.cls_pos_embed).expand(x.shape[0], -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)[:, 0]


class Head(nn.Module):
  def __init__(self, width, num_classes):
    super().__init__()
    self.fc = nn.Linear(width, num_classes)


class ReferenceAPViT(nn.Module):
  def __init__(self, model_config, size=SIZE):
    super().__init__()
    self.extractor = IR(model_config.ir_stage_sizes, nested=True)
    self.vit = PoolingViT(model_config, (size // 8) ** 2)
    self.head = Head(model_config.width, model_config.num_classes)

  def forward(self, x):
    return self.head.fc(self.vit(self.extractor(x)))


def timm_vit(config):
  """timm's ViT with APViT's shapes: 64 patches (128² / 16²), no qkv bias, an ImageNet head."""
  model = vision_transformer.VisionTransformer(
      img_size=128, patch_size=16, embed_dim=config.model.width, depth=config.model.depth,
      num_heads=config.model.num_heads, mlp_ratio=config.model.mlp_dim / config.model.width, qkv_bias=False)
  generator = torch.Generator().manual_seed(6)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.copy_(torch.randn(parameter.shape, generator=generator) * (0.5 if parameter.ndim == 1 else 0.05))
  return model.eval()


def face_evolve_ir(config):
  """An IR in face.evoLVe's flat numbering, with one stage-4 unit and an output layer to drop."""
  model = randomise(IR(tuple(config.model.ir_stage_sizes) + (1,), nested=False), seed=7)
  state = model.state_dict()
  state.update({"output_layer.0.weight": torch.ones(512), "output_layer.3.weight": torch.zeros(512, 8192)})
  return model, state


def google_npz(model, path):
  """timm's ViT written in Google's ViT .npz layout (zero qkv biases, as APViT has none)."""
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  width, heads = model.embed_dim, model.blocks[0].attn.num_heads
  arrays = {"cls": state["cls_token"], "Transformer/posembed_input/pos_embedding": state["pos_embed"],
            "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
            "embedding/bias": state["patch_embed.proj.bias"], "head/kernel": state["head.weight"].T,
            "head/bias": state["head.bias"], "Transformer/encoder_norm/scale": state["norm.weight"],
            "Transformer/encoder_norm/bias": state["norm.bias"]}
  for i in range(len(model.blocks)):
    block, prefix = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
    attention = prefix + "MultiHeadDotProductAttention_1/"
    for name, rows in zip(("query", "key", "value"), np.split(state[block + "attn.qkv.weight"], 3)):
      arrays[attention + f"{name}/kernel"] = rows.T.reshape(width, heads, -1)
      arrays[attention + f"{name}/bias"] = np.zeros((heads, width // heads), np.float32)
    arrays[attention + "out/kernel"] = state[block + "attn.proj.weight"].T.reshape(heads, -1, width)
    arrays[attention + "out/bias"] = state[block + "attn.proj.bias"]
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2"), ("mlp.fc1", "MlpBlock_3/Dense_0"),
                         ("mlp.fc2", "MlpBlock_3/Dense_1")):
      kind = ("scale", "bias") if "norm" in ours else ("kernel", "bias")
      arrays[prefix + f"{theirs}/{kind[0]}"] = state[block + ours + ".weight"].T
      arrays[prefix + f"{theirs}/bias"] = state[block + ours + ".bias"]
  np.savez(path, **arrays)
