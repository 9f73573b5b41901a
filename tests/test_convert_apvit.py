"""APViT checkpoints, the face.evoLVe IR-50 and timm's ViT (.pth and .npz) vs PyTorch references.

The IR trunk and the pooling ViT are written below from docs/methods/apvit.md §3 with the official module
names (no library has them); the ViT-Small backbone is timm's own VisionTransformer. Shapes are
a scaled-down configs/apvit.py:synthetic (64×64 input, 8×8 patch grid, width 192, 3 heads).
"""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models import vision_transformer
from torch import nn

from fer_jax import convert
from fer_jax import models
from fer_jax.models.backbones import irse
from fer_jax.models.backbones import vit
from helpers import get_config
from test_convert_dan import randomise

SIZE = 64
TOLERANCE = 1e-4
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
  def __init__(self, model_config):
    super().__init__()
    self.extractor = IR(model_config.ir_stage_sizes, nested=True)
    self.vit = PoolingViT(model_config, (SIZE // 8) ** 2)
    self.head = Head(model_config.width, model_config.num_classes)

  def forward(self, x):
    return self.head.fc(self.vit(self.extractor(x)))


@pytest.fixture(scope="module")
def config():
  config = get_config("configs/apvit.py:synthetic")
  config.input.size = SIZE
  config.model.update(ir_stage_sizes=(1, 1, 1), width=192, num_heads=3, mlp_dim=576, app_keep=52)
  return config


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)


def nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2))


def test_mmcv_checkpoint_gives_the_reference_logits(config, images, tmp_path):
  torch.manual_seed(0)
  reference = randomise(ReferenceAPViT(config.model), seed=5)
  path = tmp_path / "APViT_RAF-3eeecf7d.pth"
  torch.save({"meta": {"mmcv_version": "1.3.8", "epoch": 40, "CLASSES": ["Surprise", "Fear"]},
              "state_dict": reference.state_dict()}, path)
  variables, report = convert.convert(config, [str(path)])
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference(nchw(images)).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  assert np.std(expected) > 0.1
  assert report.fresh == []
  assert all(name.endswith("num_batches_tracked") for name in next(iter(report.dropped.values())))


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


@pytest.fixture(scope="module")
def backbones(config, tmp_path_factory):
  folder = tmp_path_factory.mktemp("backbones")
  torch.manual_seed(0)
  ir, ir_state = face_evolve_ir(config)
  torch.save(ir_state, folder / "backbone_ir50_ms1m_epoch120.pth")
  vit_small = timm_vit(config)
  torch.save(vit_small.state_dict(), folder / "vit_small_p16_224-15ec54c9.pth")
  paths = [str(folder / "backbone_ir50_ms1m_epoch120.pth"), str(folder / "vit_small_p16_224-15ec54c9.pth")]
  return ir, vit_small, paths, convert.convert(config, paths)


def test_ir50_and_timm_vit_fill_their_parts(config, images, backbones):
  ir, vit_small, _, (variables, report) = backbones
  params = variables["params"]
  tokens = np.random.default_rng(1).normal(size=(2, 65, config.model.width)).astype(np.float32)

  def fer_jax_parts(variables, images, tokens):
    extractor = {c: variables[c]["extractor"] for c in variables}
    features = irse.IRSE(config.model.ir_stage_sizes, num_stages=3).apply(extractor, images, train=False)["stage3"]
    for index in range(config.model.depth):
      block = vit.Block(config.model.num_heads, config.model.mlp_dim)
      tokens = block.apply({"params": variables["params"]["vit"][f"blocks_{index}"]}, tokens)
    return features, vit.layer_norm(np.float32).apply({"params": variables["params"]["vit"]["norm"]}, tokens)

  features, encoded = jax.jit(fer_jax_parts)(variables, images, tokens)
  with torch.no_grad():
    expected_features = ir(nchw(images), units=sum(config.model.ir_stage_sizes)).numpy().transpose(0, 2, 3, 1)
    expected_encoded = vit_small.norm(vit_small.blocks(torch.from_numpy(tokens))).numpy()
  assert np.max(np.abs(np.asarray(features) - expected_features)) <= TOLERANCE
  assert np.max(np.abs(np.asarray(encoded) - expected_encoded)) <= TOLERANCE

  pos_embed = vit_small.pos_embed.detach().numpy()
  np.testing.assert_array_equal(params["vit"]["cls_pos_embed"], pos_embed[:, :1])
  np.testing.assert_array_equal(params["vit"]["patch_pos_embed"], pos_embed[:, 1:])
  np.testing.assert_array_equal(params["vit"]["cls_token"], vit_small.cls_token.detach().numpy())
  ir_dropped, vit_dropped = report.dropped.values()
  assert {n for n, r in ir_dropped.items() if "num_batches" not in n} == (
      {n for n in ir.state_dict() if n.startswith("body.3.") and "num_batches" not in n}
      | {"output_layer.0.weight", "output_layer.3.weight"})
  assert set(vit_dropped) == {"patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
  assert {p.split("/")[1] for p in report.fresh} == {"vit", "head"}
  assert {p for p in report.fresh if p.startswith("params/vit")} == {"params/vit/projs_0/kernel",
                                                                      "params/vit/projs_0/bias"}


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


def test_npz_layout_converts_to_the_same_vit(config, backbones, tmp_path):
  _, vit_small, _, (from_pth, _) = backbones
  path = tmp_path / "vit.npz"
  google_npz(vit_small, path)
  # timm's own .npz reader rebuilds the model from the file (it needs qkv biases; they are zero).
  reread = vision_transformer.VisionTransformer(
      img_size=128, patch_size=16, embed_dim=config.model.width, depth=config.model.depth,
      num_heads=config.model.num_heads, mlp_ratio=config.model.mlp_dim / config.model.width, qkv_bias=True)
  vision_transformer._load_weights(reread, str(path))
  for name, value in vit_small.state_dict().items():
    torch.testing.assert_close(reread.state_dict()[name], value, rtol=0, atol=0)

  variables, report = convert.convert(config, [str(path)])
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["vit"]["blocks_3"], from_pth["params"]["vit"]["blocks_3"])
  for name in ("cls_token", "cls_pos_embed", "patch_pos_embed"):
    np.testing.assert_array_equal(variables["params"]["vit"][name], from_pth["params"]["vit"][name])
  (dropped,) = report.dropped.values()
  assert sum("qkv biases" in reason for reason in dropped.values()) == 3 * config.model.depth

  with np.load(path) as data:
    arrays = dict(data)
  arrays["Transformer/encoderblock_2/MultiHeadDotProductAttention_1/key/bias"][0, 0] = 0.5
  np.savez(path, **arrays)
  with pytest.raises(convert.ConversionError, match="encoderblock_2/MultiHeadDotProductAttention_1/key/bias is non-zero"):
    convert.convert(config, [str(path)])


def test_backbones_are_told_apart_and_checked_against_the_method(config, backbones, tmp_path):
  _, _, paths, _ = backbones
  assert [convert.read_source(p, "apvit")[0].name for p in paths] == ["ir50", "timm_vit"]
  with pytest.raises(convert.ConversionError, match="--source=resnet18 converts dan checkpoints"):
    convert.read_source(paths[0], "apvit", "resnet18")
  with pytest.raises(convert.ConversionError, match=r"is not a checkpoint format fer_jax converts for dan.*resnet18"
                     r".* It looks like a timm_vit file: convert it with configs/apvit\.py"):
    convert.read_source(paths[1], "dan")
