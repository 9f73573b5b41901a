"""fer_jax.export --format=onnx: the ONNX file, run by ONNX Runtime, gives JAX's logits."""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
from PIL import Image
import pytest

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import inference
from fer_jax import models
from fer_jax import onnx_export
from fer_jax.errors import UserError
from helpers import ROOT, cpu_devices_env, get_config, random_variables, small_config

# SCAN-CCI at 64²: an 8×8 layer2 map, so several local regions (and their scatter) are exported.
SPECS = [("configs/dan.py:synthetic", 32), ("configs/apvit.py:synthetic", 32),
         ("configs/scan_cci.py:synthetic", 64), ("configs/lhcnet.py:synthetic,stage=C", 32)]


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


def test_the_file_loads_in_onnx_runtimes_older_than_the_onnx_package():
  """make_model stamped the installed onnx's IR version (14 with onnx 1.23), which ONNX Runtime 1.20, the onnx
  extra's lowest, refused ("Unsupported model IR version: 14, max supported IR version: 10"); and the nodes had no
  names, so that 1.20 and 1.21 refused APViT's ("two nodes with same node name (/GatherSliceToSplitFusion/)")."""
  model = onnx_export.to_onnx(lambda x: [part * 2 for part in jax.lax.unstack(x[:, :2], axis=1)],
                              jax.ShapeDtypeStruct((2, 3, 4), jnp.float32), ["y0", "y1"])
  assert model.ir_version == 8  # opset 18's (ONNX 1.13)
  names = [node.name for node in model.graph.node]
  assert all(names) and len(set(names)) == len(names), names


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


@pytest.fixture(scope="module")
def verified_export(tmp_path_factory):
  """DAN at 32² exported with --batch_size=2 and --verify_images of three photos: (its folder, the returned info)."""
  folder = tmp_path_factory.mktemp("verified")
  photos = []
  for n in range(3):
    photos.append(str(folder / f"{n}.png"))
    Image.fromarray(np.random.default_rng(n).integers(0, 256, (40, 30, 3), np.uint8)).save(photos[-1])
  config = small_config("configs/dan.py:synthetic", 32)
  info = export.export(config, random_variables(config, seed=4), str(folder / "out"), batch_size=2,
                       export_format="onnx", verify_images=photos)
  return folder / "out", info


def test_verify_images_runs_any_number_of_images_through_a_fixed_batch_size(verified_export):
  """Three photos with --batch_size=2 were refused ("give exactly --batch_size=2 images (got 3)"), and only once the
  model had been translated: they run in batches of 2, the last one padded."""
  _, info = verified_export
  assert info["onnx_runtime_vs_jax"]["images"] == 3
  assert 0 <= info["onnx_runtime_vs_jax"]["worst_relative_logit_error"] <= 1e-4


def test_a_model_whose_logits_are_all_zero_is_verified_and_its_model_json_stays_json(tmp_path):
  """An untrained APViT's logits are all 0 (its head is zero-initialised): the worst relative difference was 0/0, a
  NaN that model.json wrote as `NaN`, which JSON has not (a strict reader refuses the file)."""
  photo = str(tmp_path / "face.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)).save(photo)
  config = small_config("configs/dan.py:synthetic", 32)
  variables = random_variables(config, seed=4)
  variables["params"]["bn"] = jax.tree.map(np.zeros_like, variables["params"]["bn"])  # DAN's logits: bn(fc(x))
  info = export.export(config, variables, str(tmp_path / "out"), export_format="onnx", verify_images=[photo])
  assert info["onnx_runtime_vs_jax"]["worst_relative_logit_error"] == 0.0
  strict = json.loads((tmp_path / "out" / "model.json").read_text(), parse_constant=lambda name: pytest.fail(name))
  assert strict["onnx_runtime_vs_jax"] == {"images": 1, "worst_relative_logit_error": 0.0}


def test_the_onnx_file_alone_says_what_model_json_says(verified_export):
  """model.onnx copied without model.json did not say which class each output index is or how to make its input:
  ONNX Runtime reads model.json's keys from its metadata_props (each value JSON text), and its doc strings name
  the classes by index."""
  out, _ = verified_export
  model_json = json.loads((out / "model.json").read_text())
  meta = session(str(out / "model.onnx")).get_modelmeta()
  props = {key: json.loads(value) for key, value in meta.custom_metadata_map.items()}
  assert props.pop("fer_jax_version") == importlib.metadata.version("fer_jax")
  assert props == model_json
  classes = "0 anger, 1 disgust, 2 fear, 3 happiness, 4 sadness, 5 surprise, 6 neutral."
  assert meta.graph_description.endswith(f"class i of class_names: {classes}")
  model = onnx.load(str(out / "model.onnx"))
  onnx.checker.check_model(model, full_check=True)
  docs = {value.name: value.doc_string for value in [*model.graph.input, *model.graph.output]}
  assert docs["logits"].endswith(f"index i is class_names[i]: {classes}")
  assert "decoded to 32x32x3, then resize(32)|normalize('imagenet')" in docs["images"]


def test_the_last_line_says_what_was_exported_and_how_onnx_runtime_runs_it():
  """It read "Exported dan (anger, …, neutral, batch 4) as onnx to …": the class names beside the batch size, and no
  next step."""
  info = export.metadata(small_config("configs/dan.py:synthetic", 32), 4, {"format": "onnx"}, (40, 40, 3))
  assert export.exported_line(info, "/exports/dan", ["--config=configs/dan.py:synthetic"]) == (
      "Exported dan (7 classes: anger, disgust, fear, happiness, sadness, surprise, neutral; batch size 4) as ONNX to "
      "/exports/dan. Run it with ONNX Runtime: onnxruntime.InferenceSession(\"/exports/dan/model.onnx\").run(None, "
      "{\"images\": images}), images float32 [4, 32, 32, 3] preprocessed as model.json's \"expected_input\" says: "
      "decoded to 40x40x3, then resize(32)|normalize('imagenet') (mean [0.485, 0.456, 0.406], std [0.229, 0.224, "
      "0.225]).")


def test_auto_exports_float32_where_it_resolves_to_bfloat16(tmp_path, monkeypatch):
  """On a GPU or TPU config.model.dtype="auto" is bfloat16, and the ONNX export of every default config failed
  ("convert_element_type has no ONNX translation … export with --format=stablehlo instead")."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.compute_dtype("auto") == "bfloat16"
  config = small_config("configs/dan.py:synthetic", 32)
  assert config.model.dtype == "auto"
  variables = random_variables(config, seed=4)
  info = export.export(config, variables, str(tmp_path / "out"), export_format="onnx")
  assert info["compute_dtype"] == info["model"]["dtype"] == "float32"
  assert json.loads((tmp_path / "out" / "model.json").read_text())["compute_dtype"] == "float32"
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  logits, = session(str(tmp_path / "out" / "model.onnx")).run(["logits"], {"images": images})
  config.model.dtype = "float32"
  assert relative_error(logits, jax_logits(config, variables, images)) <= 1e-4


def test_an_explicit_bfloat16_is_refused_for_onnx_with_the_fixes(tmp_path):
  config = small_config("configs/dan.py:synthetic", 32)
  config.model.dtype = "bfloat16"
  with pytest.raises(UserError, match=r"^--format=onnx exports a float32 program, but --config\.model\.dtype=bfloat16 "
                                      r"asks for bfloat16 computation: pass --config\.model\.dtype=float32 \(or leave "
                                      r"it auto\), or export with --format=stablehlo, which computes in bfloat16\.$"):
    export.export(config, random_variables(config), str(tmp_path / "out"), export_format="onnx")
  assert os.listdir(tmp_path) == []


def test_model_json_says_how_to_make_the_input_without_fer_jax(tmp_path):
  """model.json named the pipeline in fer_jax's own terms: an ONNX Runtime user could not tell the decoding size,
  the normalisation's numbers or that the config's test-time augmentation is not in the file. Followed with PIL
  and NumPy alone, it gives fer_jax's own preprocessing."""
  config = small_config("configs/dan.py:synthetic", 32)
  info = json.loads(json.dumps(export.metadata(config, None, {"format": "onnx"}, stored_shape=(40, 36, 3))))
  expected = info["expected_input"]
  assert (expected["shape"], expected["layout"], expected["dtype"]) == (["batch", 32, 32, 3], "NHWC", "float32")
  assert {key: expected["decode"][key] for key in ("height", "width", "channels")} == {
      "height": 40, "width": 36, "channels": 3}
  assert expected["then"] == "resize(32)|normalize('imagenet')"
  assert expected["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
  assert (info["tta"], info["tta_included"]) == ("none", False)

  photo = tmp_path / "face.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 45, 3), np.uint8)).save(photo)
  decoded = Image.open(photo).convert("RGB").resize((36, 40), Image.BILINEAR)
  resized = np.asarray(decoded.resize((32, 32), Image.BILINEAR), np.float32)
  mine = (resized / 255 - np.asarray(expected["normalize"]["mean"])) / np.asarray(expected["normalize"]["std"])
  preprocess = inference.FilePreprocessor(config, (40, 36, 3))
  theirs = np.asarray(jax.jit(preprocess)(preprocess.read(str(photo))[None]))[0]
  np.testing.assert_allclose(mine, theirs, atol=1.01 / 255 / 0.224)  # at most one 8-bit level apart


def test_model_json_of_a_grey_unnormalised_model_with_tta():
  """LHC-Net on FER2013: grey 48×48 images, raw 0–255 values, and a 60-view test-time augmentation the file lacks."""
  config = get_config("configs/lhcnet.py:fer2013,stage=C")
  info = export.metadata(config, 2, {"format": "onnx"})
  expected = info["expected_input"]
  assert expected["shape"] == [2, 224, 224, 3]
  assert {key: expected["decode"][key] for key in ("height", "width", "channels")} == {
      "height": 48, "width": 48, "channels": 1}
  assert "grey" in expected["decode"]["how"]
  assert expected["values"] == "0 to 255, not normalised" and "normalize" not in expected
  assert (info["tta"], info["tta_included"]) == ("lhc62", False)
  assert export.tta_line(info) == (
      "config.eval.tta='lhc62' is not in the exported program: ONNX Runtime gives one view's predictions, not the "
      "average of the views the config evaluates with (fer_jax.tta; model.json's \"tta_included\": false).")
  without_tta = export.metadata(small_config("configs/dan.py:synthetic", 32), None, {"format": "onnx"})
  assert export.tta_line(without_tta) is None


# Runs `python -m fer_jax.export ARGS` as on a GPU: config.model.dtype="auto" resolves to bfloat16.
AS_ON_A_GPU = textwrap.dedent("""
    import runpy, sys
    import jax
    jax.default_backend = lambda: "gpu"
    sys.argv = ["fer_jax.export", *sys.argv[1:]]
    runpy.run_module("fer_jax.export", run_name="__main__", alter_sys=True)
""")


@pytest.mark.integration
def test_export_command_writes_an_onnx_file(tmp_path):
  """Run as on a GPU, where the default config's "auto" dtype is bfloat16, which the ONNX export did not translate
  (it failed for every default config: "convert_element_type has no ONNX translation")."""
  config = small_config("configs/dan.py:synthetic", 32)
  variables = random_variables(config, seed=3)
  checkpoint = checkpointing.save_model(str(tmp_path / "checkpoint"), variables, config)
  out = tmp_path / "exported"
  args = ["--config=configs/dan.py:synthetic", "--config.input.size=32", f"--checkpoint={os.path.dirname(checkpoint)}"]
  photos = [tmp_path / f"{n}.png" for n in range(2)]
  for n, photo in enumerate(photos):
    Image.fromarray(np.random.default_rng(n).integers(0, 256, (40, 30, 3), np.uint8)).save(photo)
  (tmp_path / "as_on_a_gpu.py").write_text(AS_ON_A_GPU)
  result = subprocess.run([sys.executable, str(tmp_path / "as_on_a_gpu.py"), *args, f"--out={out}", "--format=onnx",
                           f"--verify_images={photos[0]},{photos[1]}"], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"any batch size) as ONNX to {out}. Run it with ONNX Runtime: " in result.stderr, result.stderr[-3000:]
  assert ("ONNX export computes in float32, not the bfloat16 that config.model.dtype='auto' resolves to on this gpu "
          "backend") in result.stderr, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["model.json", "model.onnx"]
  info = json.loads((out / "model.json").read_text())
  assert (info["format"], info["batch_size"], info["onnx_opset"]) == ("onnx", "symbolic", onnx_export.OPSET)
  assert info["compute_dtype"] == info["model"]["dtype"] == "float32"
  assert info["onnx_runtime_vs_jax"]["images"] == 2
  assert 0 <= info["onnx_runtime_vs_jax"]["worst_relative_logit_error"] <= 1e-4

  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  logits, = session(str(out / "model.onnx")).run(["logits"], {"images": images})
  assert relative_error(logits, jax_logits(config, variables, images)) <= 1e-4
