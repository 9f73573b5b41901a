"""SCAN-CCI: region split, SCAN/ECA/CCI against NumPy, losses, configs, parameter counts, PNGs."""

import os
import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

import helpers

from fer_jax import attention_maps
from fer_jax import train
from fer_jax import visualize
from fer_jax.data import labels, pipeline
from fer_jax.errors import ConfigError
from fer_jax.models import get_method, scan_cci
from fer_jax.summary import count_params

ARGS = ("rafdb", "ferplus", "affectnet7", "affectnet8", "sfew", "synthetic")


# --- region split ---------------------------------------------------------------------------


def torch_unfold(x, dim, size, step):
  """torch.Tensor.unfold: windows along `dim`, the window as a new last axis."""
  return np.take(sliding_window_view(x, size, axis=dim), np.arange(0, x.shape[dim] - size + 1, step),
                 axis=dim)


def official_split(positions):
  """The official unfold/permute sequence on a (1, 1, 28, 28) map; returns the 25 (h, w) grids."""
  tiles = torch_unfold(torch_unfold(positions[:, :, :24, :24], 2, 6, 6), 3, 6, 6)
  groups = [
      tiles.reshape(1, 1, -1, 6, 6).transpose(0, 2, 1, 3, 4),
      torch_unfold(positions[:, :, :24, 24:], 2, 6, 6).transpose(0, 2, 1, 4, 3),
      torch_unfold(positions[:, :, 24:, :24], 3, 6, 6).transpose(0, 2, 1, 3, 4),
      positions[:, :, 24:, 24:][:, None],
  ]
  return [group[0, index, 0] for group in groups for index in range(group.shape[1])]


@pytest.mark.parametrize("quirk", [True, False])
def test_region_split_covers_every_position_once(quirk):
  grids = scan_cci.region_index_grids(28, bottom_strip_quirk=quirk)
  assert [grid.shape for grid in grids] == [(6, 6)] * 16 + [(6, 4)] * 4 + [(4, 6)] * 4 + [(4, 4)]
  np.testing.assert_array_equal(np.sort(np.concatenate([g.ravel() for g in grids])), np.arange(784))


def test_region_split_reproduces_the_official_unfold():
  positions = np.arange(784).reshape(1, 1, 28, 28)
  official = official_split(positions)
  ours = scan_cci.region_index_grids(28, bottom_strip_quirk=True)
  assert len(official) == len(ours) == 25
  for expected, grid in zip(official, ours):
    np.testing.assert_array_equal(grid, expected)
  # Bottom strip j is row 24 + j folded into (tile, column within tile).
  np.testing.assert_array_equal(ours[20], np.arange(24 * 28, 24 * 28 + 24).reshape(4, 6))
  np.testing.assert_array_equal(ours[23], np.arange(27 * 28, 27 * 28 + 24).reshape(4, 6))


def test_corrected_split_cuts_true_bottom_blocks():
  positions = np.arange(784).reshape(28, 28)
  grids = scan_cci.region_index_grids(28, bottom_strip_quirk=False)
  for j in range(4):
    np.testing.assert_array_equal(grids[20 + j], positions[24:, 6 * j:6 * j + 6])
  quirk = scan_cci.region_index_grids(28, bottom_strip_quirk=True)
  for index in list(range(20)) + [24]:
    np.testing.assert_array_equal(grids[index], quirk[index])


def test_region_split_of_smaller_maps():
  assert [g.shape for g in scan_cci.region_index_grids(12)] == [(6, 6)] * 4
  assert [g.shape for g in scan_cci.region_index_grids(8)] == [(6, 6), (6, 2), (1, 6), (1, 6), (2, 2)]
  assert [g.shape for g in scan_cci.region_index_grids(8, bottom_strip_quirk=False)] == [
      (6, 6), (6, 2), (2, 6), (2, 2)]


def test_region_groups_stack_each_shape_in_region_order():
  grids = scan_cci.region_index_grids(38)  # the folded bottom strips (42, 43) are 6×6 like the tiles
  groups = scan_cci.region_groups(grids)
  assert [(stacked.shape, indices.tolist()) for indices, stacked in groups] == [
      ((38, 6, 6), list(range(36)) + [42, 43]), ((6, 6, 2), list(range(36, 42))), ((1, 2, 2), [44])]
  for indices, stacked in groups:
    for index, grid in zip(indices, stacked):
      np.testing.assert_array_equal(grid, grids[index])


# --- SCAN unit, ECA and the branches against NumPy -------------------------------------------


def conv3x3_reference(x, kernel):
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for di in range(3):
    for dj in range(3):
      out += np.einsum("bhwc,co->bhwo", padded[:, di:di + height, dj:dj + width], kernel[di, dj])
  return out


def scan_reference(x, params):
  """conv → PReLU(per channel) → BN with batch statistics (biased variance) → sigmoid.

  Returns x ⊙ mask, the mask, and the batch mean and unbiased variance that BN folds into its
  running statistics.
  """
  y = conv3x3_reference(x, np.asarray(params["conv"]["kernel"], np.float64))
  y = np.where(y >= 0, y, np.asarray(params["prelu"]["slope"]) * y)
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  y = (y - mean) / np.sqrt(var + 1e-5) * np.asarray(params["bn"]["scale"]) + np.asarray(params["bn"]["bias"])
  mask = 1 / (1 + np.exp(-y))
  return x * mask, mask, mean, var * y[..., 0].size / (y[..., 0].size - 1)


def randomised(params, seed):
  """Every leaf replaced by N(0, 0.5²) noise, so slopes, scales and biases all matter."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def test_scan_unit_matches_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 6, 4)))

  def one_region(unit, x, train):
    return scan_cci.scan([unit], [(np.zeros(1), x[:, None])], train, jnp.float32)[0]

  unit = scan_cci.SCANUnit(4)
  variables = flax.linen.init(one_region, unit)(jax.random.key(1), x, False)
  assert jax.tree.map(np.shape, variables) == {
      "params": {"conv": {"kernel": (3, 3, 4, 4)}, "prelu": {"slope": (4,)}, "bn": {"scale": (4,), "bias": (4,)}},
      "batch_stats": {"bn": {"mean": (4,), "var": (4,)}}}
  np.testing.assert_array_equal(variables["params"]["prelu"]["slope"], np.full(4, 0.25, np.float32))
  params = randomised(variables["params"], 2)
  (masked, mask), updates = flax.linen.apply(one_region, unit, mutable=["batch_stats"])(
      {"params": params, "batch_stats": variables["batch_stats"]}, x, True)
  expected_masked, expected_mask, mean, var = scan_reference(np.float64(x), params)
  np.testing.assert_allclose(mask[:, 0], expected_mask, atol=2e-5)
  np.testing.assert_allclose(masked[:, 0], expected_masked, atol=2e-5)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], 0.1 * mean, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["var"], 0.9 + 0.1 * var, atol=1e-6)


def eca_reference(x, weight):
  pooled = x.mean(axis=(1, 2))
  padded = np.pad(pooled, ((0, 0), (2, 2)))
  gate = sum(weight[k] * padded[:, k:k + pooled.shape[1]] for k in range(5))
  return x * (1 / (1 + np.exp(-gate)))[:, None, None, :]


def test_eca_matches_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 3, 3, 10)))
  eca = scan_cci.ECA()
  params = eca.init(jax.random.key(4), x)["params"]
  assert params["conv"]["kernel"].shape == (5, 1, 1)  # PyTorch Conv1d(1, 1, 5) weight (1, 1, 5)
  weight = np.array([0.7, -1.3, 2.0, 0.4, -0.9])
  out = eca.apply({"params": {"conv": {"kernel": jnp.asarray(weight.reshape(5, 1, 1), jnp.float32)}}}, x)
  np.testing.assert_allclose(out, eca_reference(np.float64(x), weight), atol=1e-5)


def test_cci_branch_matches_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(5), (2, 4, 4, 8)))
  branch = scan_cci.CCIBranch(num_classes=3)
  params = branch.init(jax.random.key(6), x)["params"]
  assert params["fc1"]["kernel"].shape == (8, 2) and params["fc2"]["kernel"].shape == (2, 3)
  logits = branch.apply({"params": params}, x)
  gated = eca_reference(np.float64(x), np.asarray(params["eca"]["conv"]["kernel"]).ravel())
  fc1, fc2 = params["fc1"], params["fc2"]
  for index, (rows, cols) in enumerate([(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4)),
                                        (slice(2, 4), slice(0, 2)), (slice(2, 4), slice(2, 4))]):
    pooled = gated[:, rows, cols].mean(axis=(1, 2))
    hidden = np.maximum(pooled @ np.asarray(fc1["kernel"]) + np.asarray(fc1["bias"]), 0)
    expected = hidden @ np.asarray(fc2["kernel"]) + np.asarray(fc2["bias"])
    np.testing.assert_allclose(logits[:, index], expected, atol=1e-5)


# At 38 the two folded bottom strips are 6×6 like the 36 tiles but come after the right strips:
# regions of one shape are not always neighbours in region order.
@pytest.mark.parametrize("shared, size", [(True, 28), (False, 28), (True, 38)])
@pytest.mark.integration
def test_attention_branch_matches_regionwise_reference(shared, size):
  x = np.asarray(jax.random.normal(jax.random.key(7), (2, size, size, 3)))
  grids = scan_cci.region_index_grids(size)
  branch = scan_cci.AttentionBranch(num_classes=4, shared_local_units=shared)
  variables = branch.init(jax.random.key(8), x, train=False)
  unit_names = sorted(name for name in variables["params"] if name.startswith("local_scan"))
  assert unit_names == (["local_scan"] if shared else sorted(f"local_scan_{i}" for i in range(len(grids))))
  params = randomised(variables["params"], 9)
  (logits, masks), updates = branch.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                          train=True, mutable=["batch_stats"])

  flat = np.float64(x).reshape(2, size * size, 3)
  pooled, local_mask, running = [], np.zeros((2, size * size)), {}
  for index, grid in enumerate(grids):
    name = "local_scan" if shared else f"local_scan_{index}"
    masked, mask, mean, var = scan_reference(flat[:, grid], params[name])  # BN statistics of this region alone
    pooled.append(masked.mean(axis=(1, 2)))
    local_mask[:, grid.ravel()] = mask.mean(axis=-1).reshape(2, -1)
    # PyTorch momentum 0.1; a shared unit folds in the regions one after another.
    old_mean, old_var = running.get(name, (0.0, 1.0))
    running[name] = (0.9 * old_mean + 0.1 * mean, 0.9 * old_var + 0.1 * var)
  global_masked, global_mask, _, _ = scan_reference(np.float64(x), params["global_scan"])
  combined = np.concatenate([np.max(pooled, axis=0), global_masked.mean(axis=(1, 2))], axis=-1)
  combined /= np.linalg.norm(combined, axis=-1, keepdims=True)
  expected = combined @ np.asarray(params["fc"]["kernel"]) + np.asarray(params["fc"]["bias"])
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  np.testing.assert_allclose(masks["local_mask"], local_mask.reshape(2, size, size), atol=1e-5)
  np.testing.assert_allclose(masks["global_mask"], global_mask.mean(axis=-1), atol=1e-5)
  for name, (mean, var) in running.items():
    np.testing.assert_allclose(updates["batch_stats"][name]["bn"]["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"][name]["bn"]["var"], var, atol=1e-5)


# --- the whole model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run():
  model = scan_cci.METHOD.build(helpers.get_config("configs/scan_cci.py:synthetic").model)
  images = jax.random.normal(jax.random.key(10), (2, 64, 64, 3))
  outputs, _ = jax.jit(lambda key, x: model.init_with_output(key, x, train=True))(
      jax.random.key(11), images)
  return images, outputs


@pytest.mark.integration
def test_logits_are_the_plain_mean_of_the_five_heads(small_run):
  _, outputs = small_run
  assert outputs["attention_logits"].shape == (2, 7)
  assert outputs["region_logits"].shape == (2, 4, 7)
  assert outputs["global_mask"].shape == outputs["local_mask"].shape == (2, 8, 8)
  expected = (outputs["attention_logits"] + outputs["region_logits"].sum(axis=1)) / 5
  np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-6, atol=1e-6)
  assert outputs["logits"].dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = scan_cci.SCANCCI(num_classes=7, dtype=jnp.bfloat16)
  images = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  outputs = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  assert outputs["logits"].dtype == jnp.float32


@pytest.mark.parametrize("shared, num_classes, total, attention, cci", [
    (True, 7, 13_536_339, 4_728_839, 264_204),
    (False, 8, 70_197_589, 61_389_832, 264_461),
    (False, 7, 70_196_307, 61_388_807, 264_204),
])
def test_parameter_counts_match_the_official_model(shared, num_classes, total, attention, cci):
  model = scan_cci.SCANCCI(num_classes=num_classes, shared_local_units=shared)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  params = variables["params"]
  assert count_params(params) == total
  assert count_params(params["trunk"]) == 8_543_296
  assert count_params(params["attention"]) == attention
  assert count_params(params["cci"]) == cci
  # One SCAN unit: conv 512·512·9 + PReLU 512 + BN 2·512.
  assert count_params(params["attention"]["global_scan"]) == 2_360_832
  assert set(params) == {"trunk", "attention", "cci"}


@pytest.mark.parametrize("arg, total", [("rafdb", 13_536_339), ("ferplus", 70_197_589),
                                        ("affectnet7", 70_196_307), ("sfew", 70_196_307)])
def test_configs_build_the_official_variants(arg, total):
  model = get_method("scan_cci").build(helpers.get_config(f"configs/scan_cci.py:{arg}").model)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert count_params(variables["params"]) == total


@pytest.mark.integration
def test_attention_map_pngs_are_written(small_run, tmp_path):
  images, outputs = small_run
  paths = attention_maps.save_scan_cci_maps(images, outputs, str(tmp_path / "maps"))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["0000_global_mask.png", "0000_region_masks.png",
                   "0001_global_mask.png", "0001_region_masks.png"]
  for path in paths:
    with Image.open(path) as png:
      assert png.size == (64, 64) and png.mode == "RGB"
  with Image.open(paths[0]) as first, Image.open(paths[1]) as second:
    assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_attention_map_overlay_puts_hot_colours_where_the_mask_is_high(tmp_path):
  images = np.zeros((1, 8, 8, 1), np.float32)
  mask = np.zeros((1, 2, 2), np.float32)
  mask[0, 0, 0] = 1.0
  outputs = {"global_mask": mask, "local_mask": mask}
  path = attention_maps.save_scan_cci_maps(images, outputs, str(tmp_path))[0]
  with Image.open(path) as png:
    pixels = np.asarray(png).astype(int)
  # 'jet' is (0.5, 0, 0) at 1 and (0, 0, 0.5) at 0, blended half and half with a black face.
  np.testing.assert_array_equal(pixels[0, 0], [64, 0, 0])
  np.testing.assert_array_equal(pixels[7, 7], [0, 0, 64])


# --- losses --------------------------------------------------------------------------------------


def loss_config(**overrides):
  config = ml_collections.ConfigDict({"attention_weight": 0.2, "class_weights": "",
                                      "effective_number_beta": 0.9999, "class_counts": ()})
  config.update(overrides)
  return config


def torch_ce(logits, labels, weights=None):
  """torch.nn.CrossEntropyLoss(weight=weights), what the official SCAN-CCI trainer calls, in float64."""
  import torch
  weight = None if weights is None else torch.tensor(np.asarray(weights, np.float64))
  return torch.nn.functional.cross_entropy(torch.tensor(np.asarray(logits, np.float64)), torch.tensor(labels),
                                           weight=weight).item()


def fake_outputs(num_classes=3):
  keys = jax.random.split(jax.random.key(12), 2)
  return {"attention_logits": jax.random.normal(keys[0], (5, num_classes)),
          "region_logits": jax.random.normal(keys[1], (5, 4, num_classes))}


def test_loss_is_weighted_sum_of_attention_and_summed_region_ce():
  outputs, labels = fake_outputs(), np.array([0, 2, 1, 1, 0])
  total, metrics = scan_cci.loss(outputs, labels, loss_config())
  attention = torch_ce(outputs["attention_logits"], labels)
  region = sum(torch_ce(outputs["region_logits"][:, j], labels) for j in range(4))
  np.testing.assert_allclose(metrics["attention_loss"], attention, rtol=1e-5)
  np.testing.assert_allclose(metrics["region_loss"], region, rtol=1e-5)
  np.testing.assert_allclose(total, 0.2 * attention + 0.8 * region, rtol=1e-5)


def test_loss_with_effective_number_class_weights_follows_pytorch_weighted_mean():
  outputs, labels = fake_outputs(), np.array([0, 2, 1, 1, 0])
  counts = (500, 40, 7)
  total, metrics = scan_cci.loss(outputs, labels, loss_config(class_weights="effective_number",
                                                              class_counts=counts))
  weights = scan_cci.effective_number_weights(counts, 0.9999)
  attention = torch_ce(outputs["attention_logits"], labels, weights)
  region = sum(torch_ce(outputs["region_logits"][:, j], labels, weights) for j in range(4))
  np.testing.assert_allclose(metrics["attention_loss"], attention, rtol=1e-5)
  np.testing.assert_allclose(metrics["region_loss"], region, rtol=1e-5)
  np.testing.assert_allclose(total, 0.2 * attention + 0.8 * region, rtol=1e-5)
  assert not np.isclose(attention, torch_ce(outputs["attention_logits"], labels))


def test_loss_refuses_class_counts_it_cannot_weigh_naming_the_key_and_the_fix():
  """The counts config_problems cannot see (tests/test_config_validation.py covers those it can): the training
  split's, which may lack a class (a ValueError and its traceback), or none where nothing counted them (a benchmark's
  synthetic batches). A weighting's name is config_problems' alone."""
  outputs, labels = fake_outputs(), np.array([0, 2, 1, 1, 0])
  for counts in ((3, 0, 5), ()):
    with pytest.raises(ConfigError, match=rf"^config\.loss\.class_weights='effective_number' needs 3 positive class "
                                          rf"counts, got config\.loss\.class_counts={re.escape(str(counts))} \(the "
                                          r"training split's where the config gives none\): train on a split with "
                                          r"images of every class, or give the counts\.$"):
      scan_cci.loss(outputs, labels, loss_config(class_weights="effective_number", class_counts=counts))


def test_effective_number_weights():
  weights = scan_cci.effective_number_weights([100, 10, 1], 0.9999)
  raw = np.array([1e-4 / (1 - 0.9999**100), 1e-4 / (1 - 0.9999**10), 1.0])
  np.testing.assert_allclose(weights, raw / raw.sum() * 3)
  np.testing.assert_allclose(weights, [0.0271587, 0.2703689, 2.7024724], rtol=1e-6)
  assert weights.sum() == pytest.approx(3.0)
  np.testing.assert_allclose(scan_cci.effective_number_weights([5, 50, 500], 0.0), [1.0, 1.0, 1.0])


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ARGS)
def test_configs_follow_the_official_scripts(arg):
  config = helpers.get_config(f"configs/scan_cci.py:{arg}")
  assert config.model.name == "scan_cci"
  assert config.model.bottom_strip_quirk
  assert config.model.shared_local_units == (arg in ("rafdb", "synthetic"))
  expected_classes = 8 if arg in ("ferplus", "affectnet8") else 7
  assert config.model.num_classes == len(labels.class_names(config.dataset.class_order)) == expected_classes
  assert config.dataset.class_order in ("affectnet7", "affectnet8")
  assert config.optimizer.name == "sgd" and config.optimizer.momentum == 0.9
  assert config.optimizer.schedule == "exponential" and config.optimizer.gamma == 0.95
  assert config.loss.attention_weight == 0.2
  if arg != "synthetic":
    assert config.num_epochs == 60 and config.batch_size == 64
    head_lr = 0.01 if arg in ("rafdb", "ferplus") else 0.001
    assert config.optimizer.lr == head_lr
    ((pattern, multiplier),) = config.optimizer.lr_groups
    assert pattern == "^trunk/" and head_lr * multiplier == pytest.approx(1e-4)
    assert config.optimizer.weight_decay == (1e-4 if arg == "sfew" else 1e-3)
    assert config.eval_batch_size == 64  # SFEW's validation loader too (main_sfew.py:143), not -b_t's 32
  assert ("color_jitter(0.4, 0.3, 0.25, 0.05)" in config.input.train_pp) == (arg != "sfew")
  assert config.dataset.sampler == ("uniform" if arg == "sfew" else "class_balanced")
  assert config.loss.class_weights == ("effective_number" if arg == "sfew" else "")
  assert config.dataset.max_per_class == (20_000 if arg.startswith("affectnet") else 0)
  assert config.dataset.train_split == ("train+validation" if arg == "ferplus" else "train")


@pytest.mark.parametrize("arg", ["rafdb", "synthetic"])
def test_config_pipelines_resize_and_scale_to_minus_one_one(arg):
  config = helpers.get_config(f"configs/scan_cci.py:{arg}")
  image = np.zeros((100, 100, 1), np.uint8)
  image[50:] = 255
  for text in (config.input.train_pp, config.input.eval_pp):
    out = helpers.run_pipeline(text, config.input.size, image, seed=1)
    assert out.shape == (config.input.size, config.input.size, 3) and out.dtype == np.float32
  assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)


def test_missing_class_counts_are_counted_on_the_training_split():
  config = helpers.get_config("configs/scan_cci.py:sfew")
  config.lock()
  split = pipeline.Split(None, np.array([0, 2, 2, -1, 6, 6, 6]), tuple(labels.CLASS_ORDERS["affectnet7"]),
                         (None, None, 3))
  assert train.loss_config_for(config, split).class_counts == (1, 0, 2, 0, 0, 0, 3)
  assert config.loss.class_counts == ()  # the user's config is left as given
  config.loss.class_counts = (5, 5, 5, 5, 5, 5, 5)
  assert train.loss_config_for(config, split).class_counts == (5, 5, 5, 5, 5, 5, 5)


def test_unknown_config_argument_lists_the_valid_ones():
  with pytest.raises(ValueError, match="rafdb, ferplus, affectnet7, affectnet8, sfew, synthetic"):
    helpers.get_config("configs/scan_cci.py:fer2013")


def test_registry_contract():
  method = get_method("scan_cci")
  assert method.auxiliary_params == () and method.loss is scan_cci.loss
  assert method.save_attention_maps is attention_maps.save_scan_cci_maps
  assert isinstance(method.build(helpers.get_config("configs/scan_cci.py:rafdb").model), flax.linen.Module)


@pytest.mark.integration
def test_synthetic_config_trains_on_eight_devices_and_draws_its_masks_on_one(tmp_path):
  workdir = tmp_path / "run"
  results = helpers.train_on_eight_devices("configs/scan_cci.py:synthetic", workdir)
  assert np.asarray(results["confusion_matrix"]).shape == (7, 7)

  config = helpers.tiny_run(helpers.get_config("configs/scan_cci.py:synthetic"))
  faces = []
  for index in range(3):
    faces.append(str(tmp_path / f"face{index}.png"))
    Image.fromarray(np.full((50, 40, 3), 60 * index, np.uint8)).save(faces[-1])
  paths = visualize.write_attention_maps(config, str(workdir), faces, str(tmp_path / "maps"), batch_size=2)
  assert len(paths) == 6
  with Image.open(paths[-1]) as png:
    assert png.size == (32, 32)


@pytest.mark.integration
def test_a_training_split_lacking_a_class_is_refused_before_the_first_step(tmp_path):
  """The contract is checked before the data is read, with one count of each class: the split's own counts are
  weighed again once it is open, before any step is compiled (3 training images: 4 classes or more without one)."""
  config = helpers.tiny_run(helpers.get_config("configs/scan_cci.py:synthetic"), batch_size=2)
  config.loss.update(class_weights="effective_number", class_counts=())
  config.dataset.train_split = "train[:3]"
  with pytest.raises(ConfigError, match=r"needs 7 positive class counts, got config\.loss\.class_counts=\(.*0"):
    train.TrainingRun(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "0")
