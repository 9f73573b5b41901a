"""fer_jax.export --format=onnx: the ONNX file, run by ONNX Runtime, gives JAX's logits."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
from PIL import Image
import pytest

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import models
from fer_jax import onnx_export
from fer_jax.errors import UserError
from helpers import get_config, random_variables, run_command

# SCAN-CCI at 64²: an 8×8 layer2 map, so several local regions (and their scatter) are exported.
SPECS = [("configs/dan.py:synthetic", 32), ("configs/apvit.py:synthetic", 32),
         ("configs/scan_cci.py:synthetic", 64), ("configs/lhcnet.py:synthetic,stage=C", 32)]


def small_config(spec, size):
  config = get_config(spec)
  config.input.size = size
  if config.model.name == "apvit":
    config.model.app_keep = 12
  return config


def jax_logits(config, variables, images):
  model = models.build_model(config)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(variables, images))


def session(model_or_path):
  """One thread: ONNX Runtime's spinning thread pool crawls on a shared, loaded CPU."""
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = 1
  return onnxruntime.InferenceSession(model_or_path, options, providers=["CPUExecutionProvider"])


def run_onnx(model, images):
  return dict(zip(export.OUTPUTS, session(model.SerializeToString()).run(list(export.OUTPUTS), {"images": images})))


def relative_error(actual, expected):
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.integration
@pytest.mark.parametrize("spec, size", SPECS)
def test_onnx_runtime_gives_the_jax_logits_at_any_batch_size(spec, size):
  config = small_config(spec, size)
  variables = random_variables(config, seed=4)
  model = export.export_onnx(config, variables)
  assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [
      "batch", size, size, 3]
  images = np.random.default_rng(0).normal(size=(5, size, size, 3)).astype(np.float32)
  expected = jax_logits(config, variables, images)
  for batch in (5, 2):
    outputs = run_onnx(model, images[:batch])
    assert relative_error(outputs["logits"], expected[:batch]) <= 1e-4
    np.testing.assert_allclose(outputs["probabilities"], jax.nn.softmax(expected[:batch]), atol=1e-5)


def test_fixed_batch_size():
  config = small_config("configs/dan.py:synthetic", 32)
  model = export.export_onnx(config, random_variables(config), batch_size=2)
  assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 32, 32, 3]
  assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 7]


@pytest.mark.parametrize("axis, count", [(1, 3), (2, 1)])
def test_unstacking_along_an_axis_runs_as_in_jax(axis, count):
  """`q, k, v = qkv`: traced as one `unstack` primitive by JAX 0.12 (APViT's attention)."""
  def parts(x):
    return jax.lax.unstack(x[:, :, :count] if axis == 2 else x, axis=axis)
  x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  exported = onnx_export.to_onnx(lambda x: [p * (i + 1) for i, p in enumerate(parts(x))],
                                 jax.ShapeDtypeStruct((jax.export.symbolic_shape("batch")[0], 3, 4), jnp.float32),
                                 [f"y{i}" for i in range(count)])
  results = session(exported.SerializeToString()).run(None, {"images": x})
  expected = [np.asarray(p) * (i + 1) for i, p in enumerate(parts(x))]
  assert len(results) == count
  for result, want in zip(results, expected):
    np.testing.assert_array_equal(result, want)


def test_a_primitive_without_translation_is_a_user_error_naming_it():
  images = jax.ShapeDtypeStruct((2, 4), jnp.float32)
  with pytest.raises(UserError, match="primitive `cumsum` has no ONNX translation.*--format=stablehlo"):
    onnx_export.to_onnx(lambda x: jnp.cumsum(x, axis=1), images, ["y"])


def test_without_the_onnx_package_the_error_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
  with pytest.raises(UserError, match=r"pip install 'fer_jax\[onnx\]'"):
    onnx_export.to_onnx(jnp.sin, jax.ShapeDtypeStruct((2,), jnp.float32), ["y"])


def test_verify_images_is_refused_for_stablehlo(tmp_path):
  config = small_config("configs/dan.py:synthetic", 32)
  with pytest.raises(UserError, match="--verify_images checks an ONNX export: add --format=onnx"):
    export.export(config, {}, str(tmp_path / "out"), verify_images=["a.png"])


def test_the_last_line_says_what_was_exported_and_how_onnx_runtime_runs_it():
  """It read "Exported dan (anger, …, neutral, batch 4) as onnx to …": the class names beside the batch size, and no
  next step."""
  info = export.metadata(small_config("configs/dan.py:synthetic", 32), 4, {"format": "onnx"})
  assert export.exported_line(info, "/exports/dan", ["--config=configs/dan.py:synthetic"]) == (
      "Exported dan (7 classes: anger, disgust, fear, happiness, sadness, surprise, neutral; batch size 4) as ONNX to "
      "/exports/dan. Run it with ONNX Runtime: onnxruntime.InferenceSession(\"/exports/dan/model.onnx\").run(None, "
      "{\"images\": images}), images float32 [4, 32, 32, 3] preprocessed as model.json's \"preprocessing\" says: "
      "resize(32)|normalize('imagenet').")


@pytest.mark.integration
def test_export_command_writes_an_onnx_file(tmp_path):
  config = small_config("configs/dan.py:synthetic", 32)
  variables = random_variables(config, seed=3)
  checkpoint = checkpointing.save_model(str(tmp_path / "checkpoint"), variables, config)
  out = tmp_path / "exported"
  args = ["--config=configs/dan.py:synthetic", "--config.input.size=32", f"--checkpoint={os.path.dirname(checkpoint)}"]
  photos = [tmp_path / f"{n}.png" for n in range(2)]
  for n, photo in enumerate(photos):
    Image.fromarray(np.random.default_rng(n).integers(0, 256, (40, 30, 3), np.uint8)).save(photo)
  result = run_command("fer_jax.export", *args, f"--out={out}", "--format=onnx",
                       f"--verify_images={photos[0]},{photos[1]}", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"any batch size) as ONNX to {out}. Run it with ONNX Runtime: " in result.stderr, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["model.json", "model.onnx"]
  info = json.loads((out / "model.json").read_text())
  assert (info["format"], info["batch_size"], info["onnx_opset"]) == ("onnx", "symbolic", onnx_export.OPSET)
  assert info["onnx_runtime_vs_jax"]["images"] == 2
  assert 0 <= info["onnx_runtime_vs_jax"]["worst_relative_logit_error"] <= 1e-4

  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  logits, = session(str(out / "model.onnx")).run(["logits"], {"images": images})
  assert relative_error(logits, jax_logits(config, variables, images)) <= 1e-4
