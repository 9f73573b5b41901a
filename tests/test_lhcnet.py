"""LHC-Net: module maths against a direct NumPy reading of the official code, sizes, configs."""

import io
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
import tensorflow_datasets as tfds

from fer_jax import checkpointing
from fer_jax import inference
from fer_jax import models
from fer_jax import mesh as mesh_lib
from fer_jax import optim
from fer_jax.data import jpeg_round_trip
from fer_jax.data import pipeline
from fer_jax.data import prepare
from fer_jax.errors import ConfigError
from fer_jax.models import lhcnet
from fer_jax.summary import count_params
from helpers import get_config, random_variables, run_pipeline, tiny_run, train_on_eight_devices
from reference import datasets as fx


# NumPy reference, written from docs/methods/lhcnet.md §1.4 and the official reshape sequence.

def np_avg_pool_same(x, size):
  """SAME average pooling that divides by the number of in-image elements (TF)."""
  half = size // 2
  out = np.zeros_like(x)
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      window = x[:, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
      out[:, i, j] = window.mean(axis=(1, 2))
  return out


def np_max_pool_same(x, size):
  half = size // 2
  out = np.zeros_like(x)
  for i in range(x.shape[1]):
    for j in range(x.shape[2]):
      out[:, i, j] = x[:, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1].max(axis=(1, 2))
  return out


def np_conv_same(x, kernel, bias):
  half = kernel.shape[0] // 2
  padded = np.pad(x, ((0, 0), (half, half), (half, half), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[3],)) + bias
  for i in range(kernel.shape[0]):
    for j in range(kernel.shape[1]):
      out += padded[:, i:i + x.shape[1], j:j + x.shape[2]] @ kernel[i, j]
  return out


def np_split_heads(t, heads):
  batch, height, width, channels = t.shape
  t = t.reshape(batch, height * width, channels).transpose(0, 2, 1)
  return t.reshape(batch, channels, heads, height * width // heads).transpose(0, 2, 1, 3)


def np_lhc(x, params, heads, embed_dim, norm_c=1.0):
  batch, height, width, channels = x.shape
  query = np_split_heads(np_avg_pool_same(x, 3), heads)
  key = np_split_heads(np_max_pool_same(x, 3), heads)
  conv = params["value_conv"]
  value = np_split_heads(np_avg_pool_same(np_conv_same(x, conv["kernel"], conv["bias"]), 3), heads)
  outputs = []
  for j in range(heads):
    q = query[:, j] @ params["qk_kernel"][j] + params["qk_bias"][j]
    k = key[:, j] @ params["qk_kernel"][j] + params["qk_bias"][j]
    scores = q @ k.transpose(0, 2, 1)
    dense = params["scale_dense"]
    gate = 1 / (1 + np.exp(-(scores.mean(axis=2) @ dense["kernel"] + dense["bias"])))
    scaled = scores / embed_dim ** (norm_c + gate[:, :, None])
    weights = np.exp(scaled - scaled.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    outputs.append(weights @ value[:, j])
  out = np.stack(outputs, axis=1).transpose(0, 2, 1, 3).reshape(batch, channels, height * width)
  return out.transpose(0, 2, 1).reshape(batch, height, width, channels)


def random_module_params(module, x, seed=0):
  rng = np.random.default_rng(seed)
  params = module.init(jax.random.key(0), x)["params"]
  return jax.tree.map(lambda leaf: jnp.asarray(rng.normal(0, 0.3, leaf.shape), jnp.float32), params)


def to_np(tree):
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def test_average_pooling_leaves_padding_out_of_the_count():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  got = np.asarray(lhcnet.nn.avg_pool(jnp.asarray(x), (3, 3), padding="SAME", count_include_pad=False))
  assert got[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
  assert got[0, 0, 1, 0] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)
  np.testing.assert_allclose(got, np_avg_pool_same(x, 3), rtol=1e-6)


@pytest.mark.parametrize("heads,band", [(2, (2, 4)), (8, (2,))])   # whole rows; part of a row
def test_heads_are_contiguous_row_major_bands(heads, band):
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  bands = np.asarray(lhcnet.to_bands(jnp.asarray(x), heads))
  assert bands.shape == (2, heads, *band, 3)
  length = 16 // heads
  positions = x.reshape(2, 16, 3)
  for head in range(heads):
    np.testing.assert_array_equal(bands[:, head].reshape(2, length, 3), positions[:, head * length:(head + 1) * length])
  np.testing.assert_array_equal(bands.reshape(2, heads, -1, 3).transpose(0, 1, 3, 2), np_split_heads(x, heads))


@pytest.mark.parametrize("height,width,channels,heads,embed_dim",
                         [(4, 4, 5, 2, 3), (4, 4, 6, 4, 2), (3, 3, 4, 1, 5), (2, 2, 3, 4, 2), (6, 4, 3, 4, 2)])
def test_module_matches_numpy(height, width, channels, heads, embed_dim):  # last two: bands of part of a row
  module = lhcnet.LHCModule(heads, embed_dim)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, height, width, channels)), jnp.float32)
  params = random_module_params(module, x)
  assert params["qk_kernel"].shape == (heads, height * width // heads, embed_dim)
  got = module.apply({"params": params}, x)
  want = np.asarray(x, np.float64) + np_lhc(np.asarray(x, np.float64), to_np(params), heads, embed_dim)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_controller_scales_the_attention_by_one_plus_tanh():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 5)), jnp.float32)
  plain = lhcnet.LHCModule(2, 3)
  params = random_module_params(plain, x)
  gated = lhcnet.LHCModule(2, 3, controller_init=-1.0)
  gated_params = gated.init(jax.random.key(0), x)["params"]
  assert float(gated_params["controller"]) == -1.0
  attention = plain.apply({"params": params}, x) - x
  got = gated.apply({"params": {**params, "controller": gated_params["controller"]}}, x)
  np.testing.assert_allclose(got, x + (1 + np.tanh(-1.0)) * attention, rtol=1e-5, atol=1e-6)


def test_heads_must_divide_the_positions():
  module = lhcnet.LHCModule(7, 4)
  with pytest.raises(ConfigError, match="equal bands.*config.input.size"):  # a user error, not a traceback
    module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def full_size_params(**kwargs):
  model = lhcnet.LHCNet(**kwargs)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))


def test_parameter_counts_match_the_official_model():
  variables = full_size_params()
  per_module = {name: count_params(tree) for name, tree in variables["params"].items()}
  assert per_module == {"backbone": 21_287_107, "lhc1": 657_312, "lhc2": 657_312, "lhc3": 208_392,
                        "lhc4": 658_714, "lhc5": 2_623_714, "head": 6_303_751}
  assert count_params(variables["params"]) == 32_396_302
  assert per_module["backbone"] + count_params(variables["batch_stats"]) == 21_302_473
  assert count_params(variables["params"]) + count_params(variables["batch_stats"]) == 32_411_668  # Keras total
  head = variables["params"]["head"]
  assert [head[f"fc{i}"]["kernel"].shape for i in (1, 2, 3)] == [(512, 4096), (4096, 1024), (1024, 7)]


def test_controller_variant_adds_five_scalars():
  variables = full_size_params(controller=True)
  assert count_params(variables["params"]) == 32_396_307
  assert {name: tree["controller"].shape for name, tree in variables["params"].items() if "controller" in tree} \
      == {f"lhc{i}": () for i in range(1, 6)}


def test_plain_variant_is_the_lhc_tree_without_modules():
  plain = full_size_params(use_lhc=False)["params"]
  assert set(plain) == {"backbone", "head"}
  assert count_params(plain) == 21_287_107 + 6_303_751


def test_build_follows_the_config_stages():
  for arg, lhc_params, controllers in [("fer2013", 0, 0), ("fer2013,stage=B", 4_805_444, 0),
                                       ("fer2013,stage=C", 4_805_444, 5)]:
    model = lhcnet.METHOD.build(get_config(f"configs/lhcnet.py:{arg}").model)
    params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert count_params(params["params"]) == 27_590_858 + lhc_params + controllers


def small_model(**kwargs):
  return lhcnet.LHCNet(lhc_heads=(4, 4, 2, 1, 1), lhc_embed_dims=(4, 4, 2, 2, 1), head_widths=(16, 8), **kwargs)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = small_model(dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  outputs = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert outputs["logits"].shape == (2, 7) and outputs["logits"].dtype == jnp.float32


def test_bfloat16_module_stays_close_to_float32():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 5)), jnp.float32)
  params = random_module_params(lhcnet.LHCModule(2, 3), x)
  full = lhcnet.LHCModule(2, 3).apply({"params": params}, x)
  half = lhcnet.LHCModule(2, 3, dtype=jnp.bfloat16).apply({"params": params}, x.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), full, rtol=0, atol=0.03)  # measured 0.014 of outputs ≤ 3.5


@pytest.mark.integration
def test_frozen_batch_norm_keeps_statistics_but_dropout_stays_on():
  x = jnp.asarray(np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)), jnp.float32)
  model = small_model(use_lhc=False, freeze_batch_norm=True)
  variables = model.init(jax.random.key(0), x, train=False)
  (first, updates), (second, _) = [
      model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"])
      for seed in (1, 2)]
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
  assert not np.allclose(first["logits"], second["logits"])


def test_loss_is_softmax_cross_entropy():
  logits = jnp.asarray([[2.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 7])
  labels = jnp.asarray([0, 3])
  total, metrics = models.cross_entropy_loss({"logits": logits}, labels, None)
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  want = -np.mean(np.log(probabilities[[0, 1], [0, 3]]))
  assert float(total) == pytest.approx(want, rel=1e-6)
  assert float(metrics["ce_loss"]) == pytest.approx(want, rel=1e-6)


def test_config_stages_follow_the_official_recipe():
  recipe = {"A1": ("keras_adam", 1e-4, 48, 30), "A2": ("sgd", 0.01, 64, 10), "A3": ("sgd", 0.01, 64, 5),
            "B": ("sgd", 0.01, 64, 3), "C": ("keras_adam", 1e-4, 32, 1)}
  for stage, (optimizer, lr, batch, patience) in recipe.items():
    config = get_config(f"configs/lhcnet.py:fer2013,stage={stage}")
    assert (config.optimizer.name, config.optimizer.lr, config.batch_size, config.early_stopping_patience) \
        == (optimizer, lr, batch, patience)
    assert config.optimizer.momentum == 0.0 and config.optimizer.eps == 1e-7
    assert config.model.use_lhc == (stage in ("B", "C"))
    assert config.model.controller == config.model.freeze_batch_norm == (stage == "C")
    assert config.optimizer.trainable == ("controller" if stage == "C" else "")
    assert (config.dataset.train_split, config.dataset.eval_split, config.dataset.test_split) \
        == ("train", "public_test", "private_test")
    assert config.num_epochs == 300 and config.select_metric == "accuracy" and config.restore_best
    assert config.eval.tta == "lhc62"
    assert config.init_from_missing == {"B": r"^params/lhc\d/", "C": r"^params/lhc\d/controller$"}.get(stage, "")
    assert config.init_from_required == (stage != "A1")  # A2…C start from the stage before
  # Each official script seeds its own TensorFlow stream (A2 goes on with A1's): one seed for every stage made A3
  # and B, same batch and no augmentation, train on the same batches in the same order.
  seeds = {stage: get_config(f"configs/lhcnet.py:fer2013,stage={stage}").seed for stage in recipe}
  assert seeds == {"A1": 5678, "A2": 5679, "A3": 1115, "B": 0, "C": 0}
  default = get_config("configs/lhcnet.py:fer2013")
  assert default.to_dict() == get_config("configs/lhcnet.py:fer2013,stage=A1").to_dict()
  assert "stage" not in default  # only the argument chooses it: --config.stage=B is refused, not ignored
  assert "keras_image_generator(rotation_range=30" in get_config("configs/lhcnet.py:fer2013").input.train_pp
  assert get_config("configs/lhcnet.py:fer2013,stage=B").input.train_pp == \
      "to_float()|resize({size}, 'cv2_bilinear')|gray_to_rgb()"


def test_init_from_missing_names_exactly_what_the_previous_stage_lacks():
  def paths(stage):
    config = get_config(f"configs/lhcnet.py:fer2013,stage={stage}")
    variables = models.abstract_variables(models.build_model(config), config)
    return {optim.path_of(path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]}, config

  for previous, stage in (("A3", "B"), ("B", "C")):
    (before, _), (after, config) = paths(previous), paths(stage)
    assert before < after
    assert {path for path in after if re.search(config.init_from_missing, path)} == after - before


def test_config_rejects_unknown_arguments():
  with pytest.raises(ValueError, match="valid: fer2013, synthetic"):
    get_config("configs/lhcnet.py:rafdb")
  with pytest.raises(ValueError, match="stage=<A1|A2|A3|B|C>"):
    get_config("configs/lhcnet.py:fer2013,stage=D")
  with pytest.raises(ValueError, match=r"^Option 'stage' is given twice in 'fer2013,stage=B,stage=C' for "
                                       r"configs/lhcnet\.py: keep one\.$"):  # the last one was taken, silently
    get_config("configs/lhcnet.py:fer2013,stage=B,stage=C")


def test_fer2013_eval_pipeline_keeps_raw_pixels_at_224():
  config = get_config("configs/lhcnet.py:fer2013,stage=B")
  gray = np.full((48, 48, 1), 129, np.uint8)
  image = run_pipeline(config.input.eval_pp, config.input.size, gray)
  assert image.shape == (224, 224, 3) and image.dtype == np.float32
  assert float(image.mean()) == 129.0


def tf_bilinear_resize(image: np.ndarray, height: int, width: int, dtype=np.float64) -> np.ndarray:
  """TensorFlow's bilinear resize without antialiasing (tf.image.resize, half-pixel centres) as its
  CPU kernel computes it, in `dtype` (float32: its own arithmetic, step for step): scale = in/out,
  source = (out + 0.5) · scale − 0.5, lower = max(floor, 0), upper = min(ceil, in − 1), then lerp
  along each row, then between the two rows."""
  def taps(out_size, in_size):
    source = (np.arange(out_size, dtype=dtype) + dtype(0.5)) * (dtype(in_size) / dtype(out_size)) - dtype(0.5)
    lower = np.maximum(np.floor(source), 0).astype(int)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(int)
    return lower, upper, (source - np.floor(source)).astype(dtype)

  (top, bottom, dy), (left, right, dx) = taps(height, image.shape[0]), taps(width, image.shape[1])
  image = image.astype(dtype)
  columns = image[:, left] + (image[:, right] - image[:, left]) * dx[None, :, None]
  return columns[top] + (columns[bottom] - columns[top]) * dy[:, None, None]


def official_training_image(gray: np.ndarray) -> np.ndarray:
  """ETL.py's training image of a 48² grey face, read back as Keras does: the float32 resize floored to
  uint8, three channels, PIL's JPEG at quality 100 and subsampling 0, decoded as RGB."""
  floored = np.floor(tf_bilinear_resize(gray, 224, 224, np.float32)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(np.repeat(floored, 3, axis=-1)).save(buffer, format="JPEG", quality=100, subsampling=0)
  return np.asarray(Image.open(buffer).convert("RGB"))


def sample_faces() -> list[np.ndarray]:
  photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("L").resize((48, 48)))[..., None]
  return [photo, np.random.default_rng(0).integers(0, 256, (48, 48, 1), dtype=np.uint8)]


def test_the_float32_resize_floors_as_tensorflow_does():
  """Against TensorFlow's own floored output (tests/reference/record_tf_resize.py, tf.image.resize in float32, as
  ETL.py calls it): the library's host resize and this file's reference, which the tests below build on, exactly."""
  recorded = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "tf_resize_224.npz"))
  for gray, floored in zip(recorded["images"], recorded["floored"]):
    np.testing.assert_array_equal(np.floor(jpeg_round_trip.tf_bilinear_resize(gray, 224)), floored)
    np.testing.assert_array_equal(np.floor(tf_bilinear_resize(gray, 224, 224, np.float32)), floored)
  in_float64 = np.floor(tf_bilinear_resize(recorded["images"][1], 224, 224, np.float64))  # the noise
  assert (in_float64 != recorded["floored"][1]).any()  # so the float32 steps are what the floor needs


def test_jpeg_round_trip_is_the_official_training_image():
  for gray in sample_faces():
    want = official_training_image(gray)
    assert np.array_equal(want[..., :1], want[..., 1:2]) and np.array_equal(want[..., :1], want[..., 2:])
    np.testing.assert_array_equal(jpeg_round_trip.round_trip(gray, 224), want[..., :1])
    floored = np.floor(tf_bilinear_resize(gray, 224, 224, np.float32))
    assert (want[..., :1] != floored).any()  # the JPEG changed some grey levels


def test_fer2013_training_batches_take_the_round_trip_and_evaluation_images_stay_float(tmp_path):
  fx.write_fer2013(tmp_path / "manual")
  prepare.make_builder("fer2013", str(tmp_path / "tfds"), False).download_and_prepare(
      file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  config = get_config("configs/lhcnet.py:fer2013,stage=A3")  # no random augmentation
  config.dataset.update(data_dir=str(tmp_path / "tfds"), cache="none")
  config.update(batch_size=4, eval_batch_size=2, data_workers=0)
  mesh = mesh_lib.make_mesh()
  data = pipeline.TrainData(config, mesh)
  assert data.shape == (48, 48, 1) and data.batch_shape == (224, 224, 1)  # the meta record keeps the 48² decode
  batch = next(iter(data.batches(0)))
  faces = [np.asarray(Image.open(io.BytesIO(data.split.source[int(record)]["image"])))[..., None]
           for record in data.order.records(data.positions.of_step(0))]
  want = np.stack([official_training_image(face) for face in faces])
  np.testing.assert_array_equal(np.asarray(batch["image"]), want[..., :1])
  np.testing.assert_array_equal(np.asarray(jax.jit(data.augment)(batch["image"], batch["position"])), want)

  evaluation = pipeline.EvalData(config, mesh, "public_test")
  batch = next(iter(evaluation.batches()))
  got = np.asarray(jax.jit(evaluation.preprocess)(batch["image"], batch["position"]))
  faces = [np.asarray(Image.open(io.BytesIO(evaluation.split.source[int(record)]["image"])))[..., None]
           for record in evaluation.records[:2]]
  want = np.repeat(np.stack([tf_bilinear_resize(face, 224, 224) for face in faces]), 3, axis=-1)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
  assert not np.allclose(got, np.round(got))

  config.dataset.train_jpeg_round_trip = False
  assert pipeline.TrainData(config, mesh).batch_shape == (48, 48, 1)


def test_fer2013_pipelines_resize_in_float_as_tensorflow_does():
  gray = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("L").resize((48, 48)))[..., None]
  want = np.repeat(tf_bilinear_resize(gray, 224, 224), 3, axis=-1)
  for stage in ("A3", "B", "C"):  # the stages without random augmentation
    config = get_config(f"configs/lhcnet.py:fer2013,stage={stage}")
    for text in (config.input.eval_pp, config.input.train_pp):  # train_pp gets 48² with train_jpeg_round_trip=False
      got = run_pipeline(text, config.input.size, gray)
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
  assert not np.allclose(want, np.round(want))  # the values a uint8 resize would have rounded


def test_a_48_pixel_png_given_to_predict_is_resized_in_float_as_tensorflow_does(tmp_path):
  gray = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("L").resize((48, 48))
  gray.save(tmp_path / "face.png")
  preprocess = inference.FilePreprocessor(get_config("configs/lhcnet.py:fer2013,stage=B"))
  got = np.asarray(jax.jit(preprocess)(preprocess.read(str(tmp_path / "face.png"))[None]))[0]
  want = np.repeat(tf_bilinear_resize(np.asarray(gray)[..., None], 224, 224), 3, axis=-1)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


@pytest.mark.parametrize("stage", ["A1", "C"])
@pytest.mark.integration
def test_synthetic_config_runs_a_forward_pass(stage):
  config = get_config(f"configs/lhcnet.py:synthetic,stage={stage}")
  image = run_pipeline(config.input.train_pp, config.input.size,
                       np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8), seed=1)
  assert image.shape == (config.input.size,) * 2 + (3,) and image.dtype == np.float32
  model = lhcnet.METHOD.build(config.model)
  variables = model.init(jax.random.key(0), jnp.asarray(image[None]), train=False)
  logits = model.apply(variables, jnp.asarray(image[None]), train=False)["logits"]
  assert logits.shape == (1, 7) and np.all(np.isfinite(logits))


@pytest.mark.integration
def test_synthetic_controller_stage_trains_end_to_end_on_eight_devices_and_only_the_five_gates(tmp_path):
  stage_b = tiny_run(get_config("configs/lhcnet.py:synthetic,stage=B"))
  start = random_variables(stage_b)
  init_from = checkpointing.save_model(str(tmp_path / "stage_b"), start, stage_b)
  # No test-time augmentation: its 60 views are pinned by tests/test_tta.py, and a report's TTA pass over the
  # devices by tests/test_multiprocess.py; here it compiled a second evaluation step (~10 s of CPU).
  train_on_eight_devices("configs/lhcnet.py:synthetic,stage=C", tmp_path / "stage_c",
                         {"eval.tta": "none", "init_from": init_from})
  assert (tmp_path / "stage_c" / "eval_results.json").exists()
  config = tiny_run(get_config("configs/lhcnet.py:synthetic,stage=C"))
  final = checkpointing.restore_model(str(tmp_path / "stage_c"),
                                      models.abstract_variables(models.build_model(config), config))
  before, after = _by_path(start), _by_path(final)
  controllers = [f"params/lhc{i}/controller" for i in range(1, 6)]
  assert set(after) - set(before) == set(controllers)
  assert all(np.array_equal(after[path], value) for path, value in before.items())  # stage B's network, frozen
  assert all(after[path] != initial for path, initial in zip(controllers, config.model.controller_init))


def _by_path(variables) -> dict:
  return {optim.path_of(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
