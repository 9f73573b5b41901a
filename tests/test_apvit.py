"""APViT: APP/ATP against NumPy, token counts, parameter count, MACs, one jit, config, maps, a run."""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fer_jax import checkpointing
from fer_jax import inference
from fer_jax import models
from fer_jax import optim
from fer_jax import summary
from fer_jax import visualize
from fer_jax.errors import ConfigError
from fer_jax.models import apvit
from fer_jax.models.backbones import vit
from helpers import get_config, run_pipeline, tiny_run, train_on_eight_devices


def _tiny_model(dtype=jnp.float32, **vit_overrides):
  """32×32 input → a 4×4 patch grid; APP keeps 12 of 16, ATP 12 → 10 → 9 → 8 → 7."""
  vit_settings = dict(width=24, depth=8, num_heads=2, mlp_dim=48, app_keep=12) | vit_overrides
  return apvit.APViT(num_classes=7, ir_stage_sizes=(1, 1, 1), dtype=dtype, **vit_settings)


def _tiny_synthetic(epochs=1):
  """configs/apvit.py:synthetic (32×32: a 4×4 grid, APP keeps 12) on synthetic/tiny."""
  return tiny_run(get_config("configs/apvit.py:synthetic"), epochs=epochs)


def _abstract(model, size=112, batch=1):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x), x


# NumPy references: keep the k largest scores (ties → lower index), in ascending index order.
def _np_top_k_sorted(scores, k):
  return np.sort(np.argsort(-scores, axis=-1, kind="stable")[..., :k], axis=-1)


def _np_app(projected, pos_embed, keep):
  batch, height, width, channels = projected.shape
  tokens = projected.reshape(batch, height * width, channels)
  positions = _np_top_k_sorted(np.abs(tokens).sum(-1), keep)
  return np.take_along_axis(tokens + pos_embed, positions[..., None], axis=1), positions


def _np_atp(tokens, cls_logits, keep):
  kept = _np_top_k_sorted(cls_logits[:, :, 1:].sum(1), keep)
  patches = np.take_along_axis(tokens[:, 1:], kept[..., None], axis=1)
  return np.concatenate([tokens[:, :1], patches], axis=1), kept


def test_top_k_sorted_keeps_ascending_indices_and_breaks_ties_towards_lower_indices():
  scores = np.array([[3.0, 1.0, 3.0, 2.0, 3.0, 0.0], [0.0, 5.0, 5.0, 5.0, 1.0, 5.0]], np.float32)
  got = apvit.top_k_sorted(jnp.asarray(scores), 3)
  np.testing.assert_array_equal(got, [[0, 2, 4], [1, 2, 3]])
  np.testing.assert_array_equal(got, _np_top_k_sorted(scores, 3))


def test_app_matches_numpy_with_ties_and_adds_the_position_embedding_before_pooling():
  rng = np.random.default_rng(0)
  # Small integers make many Σ|z| ties; the sign flips check the absolute value.
  projected = rng.integers(-2, 3, size=(3, 4, 5, 6)).astype(np.float32)
  pos_embed = rng.normal(size=(1, 20, 6)).astype(np.float32)
  tokens, positions = apvit.attentive_patch_pooling(jnp.asarray(projected), jnp.asarray(pos_embed), 13)
  ref_tokens, ref_positions = _np_app(projected, pos_embed, 13)
  np.testing.assert_array_equal(positions, ref_positions)
  np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-6)
  assert np.all(np.diff(np.asarray(positions), axis=-1) > 0)


def test_atp_ranks_by_summed_logits_not_summed_probabilities_and_keeps_cls_first():
  # Token 1 wins on the sum of logits (0 + 0.9); token 2 on the sum of softmax probabilities,
  # thanks to one very confident head. Token 0 is CLS and is never scored.
  cls_logits = np.array([[[0.0, 0.0, 4.0, -3.0, -3.0],
                          [0.0, 0.9, -3.5, -3.0, -3.0]]], np.float32)
  tokens = np.arange(5 * 2, dtype=np.float32).reshape(1, 5, 2)
  pooled, kept = apvit.attentive_token_pooling(jnp.asarray(tokens), jnp.asarray(cls_logits), 1)
  np.testing.assert_array_equal(kept, [[0]])                     # patch token 0 = sequence index 1
  np.testing.assert_array_equal(pooled, tokens[:, [0, 1]])
  probabilities = np.exp(cls_logits) / np.exp(cls_logits).sum(-1, keepdims=True)
  assert np.argmax(probabilities[:, :, 1:].sum(1)) == 1           # the rule the paper describes

  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(2, 9, 4)).astype(np.float32)
  cls_logits = rng.integers(-2, 3, size=(2, 3, 9)).astype(np.float32)   # ties again
  pooled, kept = apvit.attentive_token_pooling(jnp.asarray(tokens), jnp.asarray(cls_logits), 7)
  ref_pooled, ref_kept = _np_atp(tokens, cls_logits, 7)
  np.testing.assert_array_equal(kept, ref_kept)
  np.testing.assert_array_equal(pooled, ref_pooled)


def test_official_keep_counts():
  counts = [160]
  for _ in range(4):
    counts.append(apvit.num_kept(counts[-1], 0.9))
  assert counts == [160, 144, 129, 116, 104]
  assert apvit.num_kept(160, 1.0) == 160 and apvit.num_kept(1, 0.9) == 1


def _tokens_per_block(model, size, batch=2):
  """Token counts seen by each block's attention and MLP, from the traced shapes."""
  variables, x = _abstract(model, size, batch)
  capture = lambda module, method: isinstance(module, (vit.Attention, vit.Mlp))
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=capture), variables, x)
  blocks = state["intermediates"]["vit"]
  return [(blocks[f"blocks_{i}"]["attn"]["__call__"][0][0].shape[1],
           blocks[f"blocks_{i}"]["mlp"]["__call__"][0].shape[1]) for i in range(model.depth)]


def test_token_counts_per_block_with_pooling_between_attention_and_mlp():
  counts = _tokens_per_block(apvit.APViT(), 112)
  assert counts == [(161, 161)] * 4 + [(161, 145), (145, 130), (130, 117), (117, 105)]


def test_output_positions_and_dtypes():
  model = apvit.APViT()
  variables, x = _abstract(model, 112, batch=2)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert outputs["logits"].shape == (2, 7) and outputs["logits"].dtype == jnp.float32
  assert outputs["app_positions"].shape == (2, 160)
  assert [p.shape for p in outputs["atp_positions"]] == [(2, 144), (2, 129), (2, 116), (2, 104)]


@pytest.mark.parametrize("num_classes, total", [(7, 65_209_543), (8, 65_210_312)])
def test_parameter_count_matches_the_official_model(num_classes, total):
  variables, _ = _abstract(apvit.APViT(num_classes=num_classes))
  params = variables["params"]
  assert summary.count_params(params) == total
  assert summary.count_params(params["extractor"]) == 17_611_968
  assert summary.count_params(params["vit"]) == 47_592_192
  parts = {name: summary.count_params(tree) for name, tree in params["vit"].items()}
  assert parts["projs_0"] == 197_376 and parts["patch_pos_embed"] == 150_528
  assert parts["cls_token"] == parts["cls_pos_embed"] == 768 and parts["norm"] == 1_536
  assert all(parts[f"blocks_{i}"] == 5_905_152 for i in range(8))
  assert params["vit"]["patch_pos_embed"].shape == (1, 196, 768)


def test_macs_match_the_official_count():
  config = get_config("configs/apvit.py:rafdb")
  model = apvit.METHOD.build(config.model)
  assert summary.macs(model, config) == pytest.approx(12.647e9, rel=1e-4)


def _random_variables(model, images, seed=0):
  """Variables of the model's shapes filled with N(0, 0.2²) (BN statistics 0 and 1): a random
  init without running the initialisers op by op, which is slow on a CPU."""
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("mean", "var"):
      return np.full(leaf.shape, float(name == "var"), np.float32)
    return np.float32(0.2) * rng.standard_normal(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def tiny():
  """A batch of 13 (the token count entering the first pooling block, where the official code
  would skip pooling), random variables, and outputs with each block's attention captured."""
  model = _tiny_model()
  images = jax.random.normal(jax.random.key(2), (13, 32, 32, 3))
  variables = _random_variables(model, images)
  capture = lambda module, _: isinstance(module, vit.Attention)
  outputs, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=capture))(
      variables, images)
  return model, images, variables, outputs, state["intermediates"]["vit"]


@pytest.mark.integration
def test_zero_head_gives_zero_logits_and_no_gradient_below_the_head_at_the_first_step():
  model = _tiny_model(depth=1, atp_keep_rates=(1.0,))
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  labels = jnp.array([0, 1, 2, 3])
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(images)
  np.testing.assert_array_equal(variables["params"]["vit"]["cls_pos_embed"], 0.0)

  def objective(params):
    outputs, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
    return models.cross_entropy_loss(outputs, labels, None)[0], outputs["logits"]

  (value, logits), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables["params"])
  np.testing.assert_array_equal(logits, 0.0)
  assert value == pytest.approx(math.log(7), rel=1e-6)
  assert all(np.all(g == 0) for g in jax.tree.leaves({k: v for k, v in grads.items() if k != "head"}))
  assert np.any(grads["head"]["fc"]["kernel"] != 0)


def test_atp_follows_each_blocks_own_cls_logits(tiny):
  _, _, _, outputs, blocks = tiny
  positions = np.asarray(outputs["app_positions"])
  assert positions.shape == (13, 12) and np.all(np.diff(positions, axis=-1) > 0)
  for stage, index in enumerate(range(4, 8)):
    cls_logits = np.asarray(blocks[f"blocks_{index}"]["attn"]["__call__"][0][1])
    assert cls_logits.shape == (13, 2, positions.shape[1] + 1)
    kept = _np_top_k_sorted(cls_logits[:, :, 1:].sum(1), apvit.num_kept(positions.shape[1], 0.9))
    positions = np.take_along_axis(positions, kept, axis=1)
    np.testing.assert_array_equal(outputs["atp_positions"][stage], positions)
  assert [p.shape for p in outputs["atp_positions"]] == [(13, 10), (13, 9), (13, 8), (13, 7)]


def test_whole_model_is_one_jit_that_does_not_recompile(tiny):
  model, images, variables, outputs, _ = tiny
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  first = forward(variables, images)
  forward(variables, images[::-1] * 0.5)
  assert forward._cache_size() == 1
  np.testing.assert_allclose(first["logits"], outputs["logits"], rtol=1e-4, atol=1e-5)
  for jitted, eager in zip(jax.tree.leaves(first), jax.tree.leaves(outputs)):
    assert jitted.shape == eager.shape


def test_bfloat16_compute_returns_float32_logits_and_keeps_float32_params(tiny):
  _, images, variables, outputs, _ = tiny
  model = _tiny_model(dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
      jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)))
  low = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert low["logits"].dtype == jnp.float32
  np.testing.assert_allclose(low["logits"], outputs["logits"], rtol=0, atol=0.01)  # gap 0.007, logits ≤ 0.38


@pytest.mark.parametrize("arg, classes, order, dataset", [
    ("rafdb", 7, "apvit7", "rafdb/aligned224"), ("ferplus", 8, "apvit8", "ferplus"),
    ("affectnet7", 7, "apvit7", "affectnet/classes7"), ("affectnet8", 8, "apvit8", "affectnet/classes8"),
    ("synthetic", 7, "apvit7", "synthetic")])
@pytest.mark.integration
def test_configs(arg, classes, order, dataset):
  config = get_config(f"configs/apvit.py:{arg}")
  assert (config.model.num_classes, config.dataset.class_order, config.dataset.name) == (classes, order, dataset)
  assert config.dataset.sampler == ("uniform" if arg == "synthetic" else "repeat_factor")
  assert config.dataset.repeat_factor_threshold == 0.15
  assert config.optimizer.schedule == "cosine" and config.optimizer.grad_clip_norm == 10.0
  size = config.input.size
  rng = np.random.default_rng(0)
  for image in (rng.integers(0, 256, (224, 224, 3), np.uint8), rng.integers(0, 256, (48, 48, 1), np.uint8)):
    for pipeline in (config.input.train_pp, config.input.eval_pp):
      out = run_pipeline(pipeline, size, image)
      assert out.shape == (size, size, 3) and out.dtype == np.float32


def test_config_keys_are_apvits_fields_with_its_pooling_vits_and_fill_both():
  config = get_config("configs/apvit.py:synthetic")
  assert models.module_fields(apvit.PoolingViTSettings) == ("width", "depth", "num_heads", "mlp_dim", "app_keep",
                                                            "atp_keep_rates", "dtype", "remat")
  model = apvit.METHOD.build(config.model)
  assert (model.width, model.app_keep, model.ir_stage_sizes) == (192, 12, (1, 1, 1))
  config.model.atp_keep_rate = (0.9,) * 8
  with pytest.raises(ConfigError) as refused:
    apvit.METHOD.build(config.model)
  assert str(refused.value) == ("config.model.atp_keep_rate is not a key of method 'apvit' (did you mean atp_keep_rates?): rename "
                     "or remove it; its keys are dtype, name, num_classes, remat, width, depth, num_heads, mlp_dim, "
                     "app_keep, atp_keep_rates, ir_stage_sizes.")


def test_rafdb_config_is_the_official_recipe():
  config = get_config("configs/apvit.py")
  assert config.dataset.name == "rafdb/aligned224" and config.input.size == 112
  assert (config.optimizer.name, config.optimizer.lr, config.optimizer.momentum,
          config.optimizer.weight_decay) == ("sgd", 1e-3, 0.9, 5e-4)
  assert (config.num_epochs, config.batch_size, config.optimizer.weight_decay_exclude) == (40, 256, "")
  # mmcls's DistEvalHook (the README's two-GPU run) writes best.pth on a strictly higher test top-1, its only
  # checkpoint: the earliest of tied epochs, unrounded; the run's result.
  assert (config.select_metric, config.select_decimals, config.select_ties, config.restore_best,
          config.dataset.eval_split) == ("accuracy", 0, "earliest", True, "test")
  # Test-time input: cv2-style bilinear 224 → 112 (a 2×2 mean), then ImageNet normalisation.
  image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), np.uint8)
  out = run_pipeline(config.input.eval_pp, 112, image)
  halved = (image.reshape(112, 2, 112, 2, 3).astype(np.int64).sum((1, 3)) + 2) >> 2
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, (halved / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="valid: rafdb, ferplus"):
    get_config("configs/apvit.py:raf")


def test_no_decay_regex_selects_exactly_the_cls_token_and_position_embeddings():
  from configs import apvit as apvit_config  # noqa: PLC0415
  variables, _ = _abstract(apvit.APViT())
  paths = [optim.path_of(path) for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
  assert sorted(p for p in paths if re.search(apvit_config.NO_DECAY, p)) == [
      "vit/cls_pos_embed", "vit/cls_token", "vit/patch_pos_embed"]


def test_save_attention_maps_dims_the_dropped_patches(tmp_path):
  images = np.full((1, 32, 32, 3), 1.0, np.float32)
  images[0, 0, 0] = 0.0        # one dark pixel so the display stretch maps 1.0 to 255
  outputs = {"app_positions": np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15]]),
             "atp_positions": tuple(np.array([list(range(n))]) for n in (10, 9, 8, 7))}
  paths = models.get_method("apvit").save_attention_maps(images, outputs, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["0000_app_patches.png", "0000_atp_tokens.png"]
  app = np.asarray(Image.open(paths[0]))
  assert app.shape == (224, 448, 3)                  # face | kept patches, scaled ×7
  kept_panel = app[:, 224:]
  scale = 224 // 4
  assert kept_panel[scale * 3 + 3, scale * 3 + 3, 0] == 255      # position 15 kept
  assert kept_panel[scale * 3 + 3, scale * 0 + 3, 0] == 64       # position 12 dropped: 0.25·255
  atp = np.asarray(Image.open(paths[1]))
  assert atp.shape == (224, 4 * 224, 3)


def test_kept_patches_are_drawn_on_the_models_grid_where_the_side_is_no_multiple_of_the_patch(tmp_path):
  """At input size 36 the model's grid is 5×5 (36/8 rounded up): the panel drew a 4×4 one, and position 24 (the
  last) raised IndexError."""
  images = np.full((1, 36, 36, 3), 1.0, np.float32)
  images[0, 0, 0] = 0.0
  model = apvit.APViT(num_classes=7, app_keep=25)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  outputs = jax.eval_shape(lambda variables: model.apply(variables, images, train=False), variables)
  assert outputs["app_positions"].shape == (1, 25)  # the model's own grid: 5×5, every position kept
  outputs = {"app_positions": np.array([[6, 24]]), "atp_positions": tuple(np.array([[6]]) for _ in range(4))}
  path = models.get_method("apvit").save_attention_maps(images, outputs, str(tmp_path))[0]
  panel = np.asarray(Image.open(path))[::7, 36 * 7::7, 0]  # face | kept patches, scaled ×7
  kept = np.zeros((36, 36), bool)
  kept[8:16, 8:16] = kept[32:, 32:] = True  # row 1 column 1, and row 4 column 4 (4 pixels of its 8, at the edge)
  expected = np.where(kept, 255, 64)
  expected[0, 0] = 0  # the dark pixel
  np.testing.assert_array_equal(panel, expected)


@pytest.mark.integration
def test_visualize_writes_maps_for_a_folder_of_faces(tmp_path):
  config = _tiny_synthetic()
  model = models.build_model(config)
  variables = _random_variables(model, models.dummy_images(config))
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), variables, config)
  faces = tmp_path / "faces"
  faces.mkdir()
  for index in range(3):
    Image.fromarray(np.full((40, 40, 3), 60 * index, np.uint8)).save(faces / f"face{index}.png")
  paths = inference.list_images(str(faces))
  written = visualize.write_attention_maps(config, checkpoint, paths, str(tmp_path / "maps"), batch_size=2)
  assert sorted(os.path.basename(p) for p in written) == sorted(
      f"{i:04d}_{kind}.png" for i in range(3) for kind in ("app_patches", "atp_tokens"))


@pytest.mark.integration
def test_synthetic_config_trains_end_to_end_on_eight_devices(tmp_path):
  results = train_on_eight_devices("configs/apvit.py:synthetic", tmp_path)
  assert np.asarray(results["confusion_matrix"]).shape == (7, 7)
  assert os.path.exists(os.path.join(tmp_path, "eval_results.json"))


def test_an_input_too_small_for_app_keep_is_a_config_error_under_jit():
  config = get_config("configs/apvit.py:rafdb")
  config.input.size = 64  # an 8×8 patch grid, 64 positions for APP's 160
  model = models.build_model(config)
  with pytest.raises(ConfigError, match=r"app_keep=160 .* 8×8 patch grid \(the input's side over 8, rounded up\).*app_keep ≤ 64"):
    jax.jit(lambda: models.init_variables(model, config, jax.random.key(0)))()
