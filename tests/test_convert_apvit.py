"""APViT checkpoints, the face.evoLVe IR-50 and timm's ViT (.pth and .npz) vs PyTorch references.

The references are in tests/reference/apvit.py: the IR trunk and the pooling ViT written from
docs/methods/apvit.md §3, and timm's own VisionTransformer. Shapes are a scaled-down
configs/apvit.py:synthetic (64×64 input, 8×8 patch grid, width 192, 3 heads).
"""

import jax
import numpy as np
import pytest
import torch
from timm.models import vision_transformer

from fer_jax import convert
from fer_jax import models
from fer_jax.data import labels
from fer_jax.models.backbones import irse
from fer_jax.models.backbones import vit
from helpers import get_config
from reference.apvit import ReferenceAPViT, SIZE, face_evolve_ir, google_npz, timm_vit
from reference.common import randomise

pytestmark = pytest.mark.integration  # each test converts an IR trunk and a ViT and runs them in PyTorch and JAX

TOLERANCE = 1e-4


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
  classes = [name.capitalize() for name in labels.class_names(config.dataset.class_order)]  # as mmcv records them
  torch.save({"meta": {"mmcv_version": "1.3.8", "epoch": 40, "CLASSES": classes},
              "state_dict": reference.state_dict()}, path)
  variables, report = convert.convert(config, [str(path)])
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference(nchw(images)).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  assert np.std(expected) > 0.1
  assert report.fresh == []
  assert all(name.endswith("num_batches_tracked") for name in next(iter(report.dropped.values())))


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


APVIT8 = ["Anger", "Disgust", "Fear", "Sadness", "Happiness", "Surprise", "Neutral", "Contempt"]  # mmcv's meta.CLASSES
RAFDB = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


@pytest.mark.parametrize("recorded, advice", [
    (APVIT8, "pass --config=configs/apvit.py:ferplus or --config=configs/apvit.py:affectnet8."),
    (RAFDB, "add --config.dataset.class_order=rafdb to the command."),
])
def test_classes_the_checkpoint_records_must_be_the_configs(config, tmp_path, recorded, advice):
  path = tmp_path / "APViT_RAF-3eeecf7d.pth"
  torch.save({"meta": {"CLASSES": recorded},
              "state_dict": {"extractor.input_layer.0.weight": torch.zeros(1), "vit.cls_token": torch.zeros(1)}}, path)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(config, [str(path)])
  assert str(error.value) == (
      f"APViT_RAF-3eeecf7d.pth records its classes as {', '.join(recorded)}, but the config's class order apvit7 is "
      f"anger, disgust, fear, sadness, happiness, surprise, neutral, which would name its outputs wrongly: {advice}")
