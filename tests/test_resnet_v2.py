"""Pre-activation ResNet34v2: sizes, names, and the unit and stem maths against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models.backbones import resnet_v2
from fer_jax.summary import count_params


def randomise(variables, seed=0):
  """Random values for every leaf (positive variances), so that no term hides behind an init of 0 or 1."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape) if path[-1].key == "var"
                                     else rng.normal(0, 0.5, leaf.shape), jnp.float32), variables)


def np_conv(x, kernel, stride, pad):
  """Zero padding, then a "valid" cross-correlation (Keras ZeroPadding2D + Conv2D)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
      out += patch @ kernel[i, j]
  return out


def np_bn(x, params, stats, eps=2e-5):
  scale = params.get("scale", 1.0)
  return (x - stats["mean"]) / np.sqrt(stats["var"] + eps) * scale + params["bias"]


def np_unit(x, params, stats, stride, project):
  activated = np.maximum(np_bn(x, params["bn1"], stats["bn1"]), 0)
  shortcut = np_conv(activated, params["sc"]["kernel"], stride, 0) if project else x
  y = np_conv(activated, params["conv1"]["kernel"], stride, 1)
  y = np.maximum(np_bn(y, params["bn2"], stats["bn2"]), 0)
  return np_conv(y, params["conv2"]["kernel"], 1, 1) + shortcut


def to_np(tree):
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def full_size_variables():
  model = resnet_v2.ResNet34V2()
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))


def test_parameter_counts_match_the_keras_model():
  variables = full_size_variables()
  assert count_params(variables["params"]) == 21_287_107
  assert count_params(variables["batch_stats"]) == 15_366
  assert count_params(variables["params"]) + count_params(variables["batch_stats"]) == 21_302_473


def test_layer_names_follow_keras_and_every_stage_projects_its_first_shortcut():
  params = full_size_variables()["params"]
  units = {f"stage{s}_unit{u}" for s, size in enumerate((3, 4, 6, 3), 1) for u in range(1, size + 1)}
  assert set(params) == {"bn_data", "conv0", "bn0", "bn1"} | units
  assert set(params["bn_data"]) == {"bias"}                   # centring only, no gamma
  assert params["conv0"]["kernel"].shape == (7, 7, 3, 64)      # bias-free
  assert params["stage1_unit1"]["sc"]["kernel"].shape == (1, 1, 64, 64)
  assert params["stage4_unit1"]["sc"]["kernel"].shape == (1, 1, 256, 512)
  for stage in range(1, 5):
    assert "sc" not in params[f"stage{stage}_unit2"]
  assert set(params["stage2_unit2"]) == {"bn1", "conv1", "bn2", "conv2"}


def test_tap_point_shapes_at_224():
  model = resnet_v2.ResNet34V2()
  shapes = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), False),
                                              jnp.zeros((2, 224, 224, 3)), False))
  assert {k: v.shape for k, v in shapes.items()} == {
      "stem": (2, 56, 56, 64), "stage1": (2, 56, 56, 64), "stage2": (2, 28, 28, 128),
      "stage3": (2, 14, 14, 256), "stage4": (2, 7, 7, 512), "output": (2, 7, 7, 512)}


@pytest.mark.parametrize("stride,project,in_features", [(1, True, 4), (2, True, 4), (1, False, 8)])
def test_unit_matches_numpy(stride, project, in_features):
  unit = resnet_v2.PreActBasicUnit(8, stride=stride, project=project)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, in_features)), jnp.float32)
  variables = randomise(unit.init(jax.random.key(0), x, train=False))
  got = unit.apply(variables, x, train=False)
  want = np_unit(np.asarray(x, np.float64), to_np(variables["params"]), to_np(variables["batch_stats"]),
                 stride, project)
  assert got.shape == want.shape == (2, 4 if stride == 2 else 7, 4 if stride == 2 else 7, 8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_stem_and_first_unit_match_numpy():
  model = resnet_v2.ResNetV2((1,), width=4)
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 255, (2, 18, 18, 3)), jnp.float32)
  variables = randomise(model.init(jax.random.key(0), x, train=False))
  got = model.apply(variables, x, train=False)
  params, stats = to_np(variables["params"]), to_np(variables["batch_stats"])

  y = np_bn(np.asarray(x, np.float64), params["bn_data"], stats["bn_data"])
  y = np.maximum(np_bn(np_conv(y, params["conv0"]["kernel"], 2, 3), params["bn0"], stats["bn0"]), 0)
  y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  stem = np.array([[y[:, i:i + 3, j:j + 3].max(axis=(1, 2)) for j in range(0, y.shape[2] - 2, 2)]
                   for i in range(0, y.shape[1] - 2, 2)]).transpose(2, 0, 1, 3)
  stage1 = np_unit(stem, params["stage1_unit1"], stats["stage1_unit1"], 1, True)
  output = np.maximum(np_bn(stage1, params["bn1"], stats["bn1"]), 0)
  assert got["stem"].shape == (2, 5, 5, 4)
  np.testing.assert_allclose(got["stem"], stem, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(got["stage1"], stage1, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(got["output"], output, rtol=1e-4, atol=1e-3)


def test_batch_norm_uses_keras_momentum_and_no_scale_on_the_input():
  model = resnet_v2.ResNetV2((1,), width=4)
  x = jnp.asarray(np.random.default_rng(3).uniform(0, 255, (4, 16, 16, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(updates["batch_stats"]["bn_data"]["mean"], 0.01 * np.mean(x, axis=(0, 1, 2)),
                             rtol=1e-5)


def test_insertions_apply_at_their_tap_points():
  model = resnet_v2.ResNetV2((1, 1), width=4)
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  plain = model.apply(variables, x, train=False)
  marked = model.apply(variables, x, train=False, insertions={"stage2": lambda y: y + 100.0})
  np.testing.assert_array_equal(marked["stage1"], plain["stage1"])
  np.testing.assert_allclose(marked["stage2"], plain["stage2"] + 100.0)
  with pytest.raises(ValueError, match="Unknown tap points"):
    model.apply(variables, x, train=False, insertions={"stage5": lambda y: y})
