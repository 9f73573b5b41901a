"""fer_jax.export: Orbax parameters + serialized StableHLO that run without fer_jax's model code."""

import json
import os
import shlex
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import models
from fer_jax.errors import UserError
from helpers import assert_user_error, get_config, random_variables, run_command

SIZE = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter outside the repository: JAX, Orbax and NumPy only.
STANDALONE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, orbax.checkpoint as ocp
    folder, images_path, out_path = sys.argv[1:]
    with open(f"{folder}/model.stablehlo", "rb") as f:
      exported = jax.export.deserialize(f.read())
    variables = ocp.StandardCheckpointer().restore(f"{folder}/variables")
    images = np.load(images_path)
    outputs = {f"{key}_{n}": np.asarray(value) for n in (3, 5)
               for key, value in exported.call(variables, images[:n]).items()}
    np.savez(out_path, **outputs)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "fer_jax")))
""")


def small_config(spec):
  config = get_config(spec)
  config.input.size = SIZE
  if config.model.name == "apvit":
    config.model.app_keep = 12
  return config


@pytest.mark.parametrize("spec", ["configs/dan.py:synthetic", "configs/apvit.py:synthetic",
                                  "configs/scan_cci.py:ferplus", "configs/lhcnet.py:synthetic,stage=C"])
def test_every_method_exports_with_a_symbolic_batch(spec):
  config = small_config(spec)
  abstract = models.abstract_variables(models.build_model(config), config)
  exported = jax.export.deserialize(export.export_inference(config, abstract).serialize())
  batch, *image = exported.in_avals[-1].shape
  assert not isinstance(batch, int) and image == [SIZE, SIZE, 3]
  assert exported.platforms == ("cpu", "cuda")
  assert {k: v.shape[1] for k, v in zip(("logits", "probabilities"), exported.out_avals)} == {
      "logits": config.model.num_classes, "probabilities": config.model.num_classes}


def test_fixed_batch_size():
  config = small_config("configs/dan.py:synthetic")
  abstract = models.abstract_variables(models.build_model(config), config)
  exported = export.export_inference(config, abstract, batch_size=4, platforms=("cpu",))
  assert exported.in_avals[-1].shape == (4, SIZE, SIZE, 3) and exported.platforms == ("cpu",)


@pytest.mark.integration
def test_export_reloads_and_runs_without_fer_jax(tmp_path):
  config = small_config("configs/dan.py:synthetic")
  variables = random_variables(config, seed=3)
  checkpoint = checkpointing.save_model(str(tmp_path / "checkpoint"), variables, config)
  out = tmp_path / "exported"
  result = subprocess.run(
      [sys.executable, "-m", "fer_jax.export", "--config=configs/dan.py:synthetic", f"--config.input.size={SIZE}",
       f"--checkpoint={os.path.dirname(checkpoint)}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  run_it = (f"as StableHLO for cpu, cuda to {out}. Run it: python -m fer_jax.predict --config=configs/dan.py:synthetic "
            f"--config.input.size={SIZE} --checkpoint={out} --input=PHOTO --output=predictions.csv")
  assert run_it in result.stderr, result.stderr[-3000:]
  Image.new("RGB", (40, 40)).save(tmp_path / "face.png")
  command = shlex.split(run_it.split("Run it: ")[1].replace("PHOTO", str(tmp_path / "face.png")))
  predicted = subprocess.run([sys.executable, *command[1:-1], f"--output={tmp_path / 'predictions.csv'}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert predicted.returncode == 0 and (tmp_path / "predictions.csv").exists(), predicted.stderr[-3000:]
  info = json.loads((out / "model.json").read_text())
  assert info["batch_size"] == "symbolic" and info["class_names"][0] == "anger"
  assert info["preprocessing"] == "resize(32)|normalize('imagenet')"
  assert sorted(os.listdir(out)) == ["model.json", "model.stablehlo", "variables"]

  images = np.random.default_rng(0).normal(size=(5, SIZE, SIZE, 3)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  (tmp_path / "standalone.py").write_text(STANDALONE)
  run = subprocess.run([sys.executable, str(tmp_path / "standalone.py"), str(out), str(tmp_path / "images.npy"),
                        str(tmp_path / "outputs.npz")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""})
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # no fer_jax module was imported

  model = models.build_model(config)
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(variables, images))
  with np.load(tmp_path / "outputs.npz") as outputs:
    np.testing.assert_allclose(outputs["logits_5"], expected, atol=1e-5)
    np.testing.assert_allclose(outputs["logits_3"], expected[:3], atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities_5"].sum(axis=1), 1.0, atol=1e-6)


def test_the_last_line_says_what_was_exported_and_the_command_that_runs_it():
  """It read "Exported dan (anger, …, neutral, batch symbolic) as stablehlo cpu cuda to …": the class names beside
  the batch mode, and no next step."""
  info = export.metadata(small_config("configs/dan.py:synthetic"), None, {"format": "stablehlo",
                                                                          "platforms": ["cpu", "cuda"]})
  assert export.exported_line(info, "/exports/dan one", ["--config=configs/dan.py:synthetic"]) == (
      "Exported dan (7 classes: anger, disgust, fear, happiness, sadness, surprise, neutral; any batch size) as "
      "StableHLO for cpu, cuda to /exports/dan one. Run it: python -m fer_jax.predict "
      "--config=configs/dan.py:synthetic '--checkpoint=/exports/dan one' --input=PHOTO --output=predictions.csv")


def test_export_refuses_a_folder_that_is_not_empty(tmp_path):
  (tmp_path / "old.txt").write_text("x")
  config = small_config("configs/dan.py:synthetic")
  with pytest.raises(UserError, match="not empty"):
    export.export(config, {}, str(tmp_path))


def test_out_in_the_home_folder_is_expanded(tmp_path, monkeypatch):
  """`--out='~/x'` (quoted, so no shell expands it) wrote a folder named "~" in the working directory."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  config = small_config("configs/dan.py:synthetic")
  export.export(config, random_variables(config), "~/exported", platforms=("cpu",))
  assert sorted(os.listdir(tmp_path / "home" / "exported")) == ["model.json", "model.stablehlo", "variables"]
  assert not os.path.exists(tmp_path / "~")


def test_a_platform_jax_does_not_name_is_refused_with_the_names(tmp_path):
  config = small_config("configs/dan.py:synthetic")
  with pytest.raises(UserError, match=r"^--platforms: gpu is not a platform JAX exports for \(cpu, cuda, rocm, tpu; a "
                                      r"GPU is cuda or rocm\): pass e\.g\. --platforms=cpu,cuda\.$"):
    export.export(config, random_variables(config), str(tmp_path / "out"), platforms=("cpu", "gpu"))
  assert not os.path.exists(tmp_path / "out")


def test_model_json_records_the_dtype_the_program_computes_in(tmp_path):
  config = small_config("configs/dan.py:synthetic")
  config.model.dtype = "bfloat16"
  info = export.export(config, random_variables(config), str(tmp_path), platforms=("cpu",))
  assert info["compute_dtype"] == "bfloat16"
  assert export.meta_record(info)["model"]["dtype"] == "bfloat16"  # what fer_jax.load(folder).config reports
  program = (tmp_path / export.STABLEHLO).read_bytes()
  assert "bf16" in jax.export.deserialize(program).mlir_module()


def test_the_stored_shape_is_read_from_a_checkpoint_and_from_its_export_alike(tmp_path):
  """What a run decoded its images to reaches the preprocessing of export, visualize and fer_jax.load."""
  config = small_config("configs/dan.py:synthetic")
  variables = random_variables(config)
  checkpoints = checkpointing.manager(str(tmp_path / "run"))
  checkpointing.save(checkpoints, 1, variables, config, stored_shape=(40, 40, 1))
  checkpointing.wait_until_saved(checkpoints)
  checkpoints.close()
  export.export(config, variables, str(tmp_path / "exported"), platforms=("cpu",), stored_shape=(40, 40, 1))
  assert export.read_stored_shape(str(tmp_path / "run")) == (40, 40, 1)
  assert export.read_stored_shape(str(tmp_path / "exported")) == (40, 40, 1)


@pytest.mark.parametrize("kind", ["stablehlo", "onnx"])
def test_an_export_folder_given_as_the_checkpoint_says_what_it_is(tmp_path, kind):
  files = {"stablehlo": (export.METADATA, export.STABLEHLO, export.VARIABLES), "onnx": (export.METADATA, export.ONNX)}
  for name in files[kind]:
    (tmp_path / name).write_text("{}")
  with pytest.raises(UserError, match=rf"^--checkpoint={tmp_path} is an export folder, not a checkpoint: pass the "
                                      r"checkpoint it was exported from .* run a StableHLO export folder as it is\.$"):
    export.check_not_an_export(str(tmp_path))


@pytest.mark.integration
def test_platforms_given_with_the_onnx_format_are_refused(tmp_path):
  """The ONNX export ignored them without a word; refused before the checkpoint is read."""
  result = run_command("fer_jax.export", "--config=configs/dan.py:synthetic", "--format=onnx", "--platforms=tpu",
                       f"--checkpoint={tmp_path / 'nothing'}", f"--out={tmp_path / 'out'}")
  assert_user_error(result, "--platforms chooses what a StableHLO program is lowered for; an ONNX file runs wherever "
                    "ONNX Runtime does: drop --platforms, or drop --format=onnx.")
