"""fer_jax.export: Orbax parameters + serialized StableHLO that run without fer_jax's model code."""

import json
import os
import shlex
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import models
from fer_jax import stopping
from fer_jax.errors import UserError
from helpers import assert_user_error, random_variables, run_command, small_config

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


@pytest.mark.parametrize("spec", ["configs/dan.py:synthetic", "configs/apvit.py:synthetic",
                                  "configs/scan_cci.py:ferplus", "configs/lhcnet.py:synthetic,stage=C"])
def test_every_method_exports_with_a_symbolic_batch(spec):
  config = small_config(spec, SIZE)
  abstract = models.abstract_variables(models.build_model(config), config)
  exported = jax.export.deserialize(export.export_inference(config, abstract).serialize())
  batch, *image = exported.in_avals[-1].shape
  assert not isinstance(batch, int) and image == [SIZE, SIZE, 3]
  assert exported.platforms == ("cpu", "cuda")
  assert {k: v.shape[1] for k, v in zip(("logits", "probabilities"), exported.out_avals)} == {
      "logits": config.model.num_classes, "probabilities": config.model.num_classes}


def test_fixed_batch_size():
  config = small_config("configs/dan.py:synthetic", SIZE)
  abstract = models.abstract_variables(models.build_model(config), config)
  exported = export.export_inference(config, abstract, batch_size=4, platforms=("cpu",))
  assert exported.in_avals[-1].shape == (4, SIZE, SIZE, 3) and exported.platforms == ("cpu",)


@pytest.mark.integration
def test_export_reloads_and_runs_without_fer_jax(tmp_path):
  config = small_config("configs/dan.py:synthetic", SIZE)
  variables = random_variables(config, seed=3)
  checkpoint = checkpointing.save_model(str(tmp_path / "checkpoint"), variables, config)
  out = tmp_path / "exported"
  result = subprocess.run(
      [sys.executable, "-m", "fer_jax.export", "--config=configs/dan.py:synthetic", f"--config.input.size={SIZE}",
       f"--checkpoint={os.path.dirname(checkpoint)}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  run_it = (f"as StableHLO for cpu, cuda to {out}. Run it: {shlex.quote(sys.executable)} -m fer_jax.predict "
            f"--config={shlex.quote(ROOT + '/configs/dan.py:synthetic')} --config.input.size={SIZE} --checkpoint={out} "
            "--input=PHOTO --output=predictions.csv")
  assert run_it in result.stderr, result.stderr[-3000:]
  Image.new("RGB", (40, 40)).save(tmp_path / "face.png")
  command = shlex.split(run_it.split("Run it: ")[1].replace("PHOTO", str(tmp_path / "face.png")))
  # As printed (but the output's place), from another folder: the interpreter and the config file are absolute.
  predicted = subprocess.run([*command[:-1], f"--output={tmp_path / 'predictions.csv'}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert predicted.returncode == 0 and (tmp_path / "predictions.csv").exists(), predicted.stderr[-3000:]
  info = json.loads((out / "model.json").read_text())
  assert info["batch_size"] == "symbolic" and info["class_names"][0] == "anger"
  assert info["preprocessing"] == "resize(32)|normalize('imagenet')"
  assert info["model"]["name"] == "dan" and info["model"]["dtype"] == "float32"
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


def test_the_last_line_says_what_was_exported_and_the_command_that_runs_it(tmp_path, monkeypatch):
  """It read "Exported dan (anger, …, neutral, batch symbolic) as stablehlo cpu cuda to …": the class names beside
  the batch mode, and no next step. The command began with a bare `python` (another interpreter than the one with
  fer_jax, outside its virtual environment) and kept the --config path relative to where the export ran."""
  info = export.metadata(small_config("configs/dan.py:synthetic", SIZE), None, {"format": "stablehlo",
                                                                          "platforms": ["cpu", "cuda"]})
  monkeypatch.setattr(sys, "executable", "/opt/my env/bin/python3")
  (tmp_path / "work dir").mkdir()
  monkeypatch.chdir(tmp_path / "work dir")
  assert export.exported_line(info, "/exports/dan one", ["--config=configs/dan.py:synthetic",
                                                         "--config.input.size=32"]) == (
      "Exported dan (7 classes: anger, disgust, fear, happiness, sadness, surprise, neutral; any batch size) as "
      "StableHLO for cpu, cuda to /exports/dan one. Run it: '/opt/my env/bin/python3' -m fer_jax.predict "
      f"'--config={tmp_path}/work dir/configs/dan.py:synthetic' --config.input.size=32 '--checkpoint=/exports/dan one' "
      "--input=PHOTO --output=predictions.csv")
  # Exported for other platforms than this machine's, the command is said to run elsewhere (predict refuses it here).
  info["platforms"] = ["tpu"]
  assert "StableHLO for tpu to /exports/dan. Run it on a machine with tpu: '/opt/my env/bin/python3' -m " in \
      export.exported_line(info, "/exports/dan", ["--config=configs/dan.py:synthetic"])


def test_the_command_puts_the_folder_of_a_method_of_yours_on_the_python_path(tmp_path, monkeypatch):
  """For config.model.name="my_methods.plain_resnet" the command failed from any other folder than the one holding
  my_methods ("no module 'my_methods' on the Python path"): it now sets PYTHONPATH to that folder."""
  package = tmp_path / "my code" / "fake_methods"
  package.mkdir(parents=True)
  (package / "__init__.py").touch()
  (package / "mine.py").write_text("MARK = 'imported'\n")
  monkeypatch.syspath_prepend(str(tmp_path / "my code"))
  monkeypatch.delitem(sys.modules, "fake_methods", raising=False)
  monkeypatch.delitem(sys.modules, "fake_methods.mine", raising=False)
  __import__("fake_methods.mine")
  info = export.metadata(small_config("configs/dan.py:synthetic", SIZE), None,
                         {"format": "stablehlo", "platforms": ["cpu"]})
  info["method"] = "fake_methods.mine"
  python = sys.executable
  monkeypatch.setattr(sys, "executable", "/opt/my env/bin/python3")
  line = export.exported_line(info, "/exports/mine", ["--config=/work/mine_config.py:synthetic"])
  assert line.endswith(f"Run it: PYTHONPATH='{tmp_path}/my code'${{PYTHONPATH:+:$PYTHONPATH}} "
                       "'/opt/my env/bin/python3' -m fer_jax.predict "
                       "--config=/work/mine_config.py:synthetic --checkpoint=/exports/mine --input=PHOTO "
                       "--output=predictions.csv"), line
  # The prefix, as a shell reads it, makes the method importable from another folder.
  prefix = line.partition("Run it: ")[2].partition(" '/opt/my env")[0]
  (tmp_path / "elsewhere").mkdir()
  script = "import fake_methods.mine as m, sys; print(m.MARK, '/the/callers/own' in sys.path)"
  run = subprocess.run(["sh", "-c", f"{prefix} {shlex.quote(python)} -c {shlex.quote(script)}"],
                       cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": "/the/callers/own"})
  assert run.stdout.split() == ["imported", "True"], run.stderr  # the caller's own PYTHONPATH kept, after the folder
  # fer_jax's own methods need none.
  info["method"] = "dan"
  assert "PYTHONPATH" not in export.exported_line(info, "/exports/dan", ["--config=configs/dan.py:synthetic"])
  assert export.method_folder("fer_jax.models.dan") is None


def test_export_refuses_a_folder_that_is_not_empty(tmp_path):
  (tmp_path / "old.txt").write_text("x")
  config = small_config("configs/dan.py:synthetic", SIZE)
  with pytest.raises(UserError, match="not empty"):
    export.export(config, {}, str(tmp_path))


def test_a_stopped_export_leaves_nothing_and_the_same_export_runs_again(tmp_path, monkeypatch):
  """SIGINT or SIGTERM during the save left --out/variables.orbax-checkpoint-tmp…, after which the same command
  failed with "--out=… is not empty"."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  variables = random_variables(config)
  out = tmp_path / "exported"

  def stopped_save(self, path, *args, **kwargs):
    del self, args, kwargs
    os.makedirs(f"{path}.orbax-checkpoint-tmp-1712")  # what Orbax has written when the signal comes
    raise stopping.StoppedOutsideSteps("SIGTERM")

  with monkeypatch.context() as patched:
    patched.setattr(ocp.StandardCheckpointer, "save", stopped_save)
    with pytest.raises(stopping.StoppedOutsideSteps):
      export.export(config, variables, str(out), platforms=("cpu",))
  assert os.listdir(tmp_path) == []
  export.export(config, variables, str(out), platforms=("cpu",))
  assert sorted(os.listdir(out)) == ["model.json", "model.stablehlo", "variables"]
  assert os.listdir(tmp_path) == ["exported"]
  assert export.read_variables(str(out))["params"].keys() == variables["params"].keys()


def test_an_out_holding_files_of_a_users_own_is_refused_and_kept(tmp_path):
  """A folder holding only variables/ or model.onnx was taken for an interrupted export's and deleted."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  for name in ("variables", "model.onnx"):
    out = tmp_path / name.replace(".", "_")
    kept = out / "variables" / "important.bin" if name == "variables" else out / name
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    with pytest.raises(UserError, match=f"--out={out} is not empty \\(it holds {name}\\): export into a new folder."):
      export.export(config, random_variables(config), str(out), platforms=("cpu",))
    assert kept.read_text() == "mine"


def test_what_an_interrupted_export_left_is_removed(tmp_path):
  """An export stopped by an earlier version (which wrote into --out itself) or killed at once (its folder beside
  --out) does not block the same command."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  out = tmp_path / "exported"
  (out / "variables.orbax-checkpoint-tmp-1712").mkdir(parents=True)
  (tmp_path / "exported.export-partial" / "variables").mkdir(parents=True)
  export.export(config, random_variables(config), str(out), platforms=("cpu",))
  assert sorted(os.listdir(out)) == ["model.json", "model.stablehlo", "variables"]
  assert os.listdir(tmp_path) == ["exported"]


def test_an_export_killed_while_moving_into_an_empty_out_does_not_block_the_same_command(tmp_path):
  """Into an --out that exists (empty), the files are moved one by one, model.json last: killed between two moves,
  --out held variables/ alone, refused as a user's own files by the next run."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  out = tmp_path / "exported"
  (out / "variables").mkdir(parents=True)
  (tmp_path / "exported.export-partial").mkdir()
  (tmp_path / "exported.export-partial" / "model.stablehlo").write_bytes(b"half")
  info = export.export(config, random_variables(config), str(out), platforms=("cpu",))
  assert sorted(os.listdir(out)) == ["model.json", "model.stablehlo", "variables"]
  assert os.listdir(tmp_path) == ["exported"] and info["format"] == "stablehlo"
  assert export.read_variables(str(out))["params"].keys() == random_variables(config)["params"].keys()


# Runs `python -m fer_jax.export ARGS` whose variables save is stopped by a real SIGINT.
INTERRUPTED = textwrap.dedent("""
    import os, runpy, signal, sys, time
    import orbax.checkpoint as ocp
    def save(self, path, *args, **kwargs):
      os.makedirs(f"{path}.orbax-checkpoint-tmp-1712")
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the signal arrives during the save
    ocp.StandardCheckpointer.save = save
    sys.argv = ["fer_jax.export", *sys.argv[1:]]
    runpy.run_module("fer_jax.export", run_name="__main__", alter_sys=True)
""")


@pytest.mark.integration
def test_an_interrupted_export_command_exits_75_with_one_line_and_nothing_written(tmp_path):
  """It printed a KeyboardInterrupt traceback and left --out/variables.orbax-checkpoint-tmp."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  checkpoint = checkpointing.save_model(str(tmp_path / "checkpoint"), random_variables(config), config)
  out = tmp_path / "exported"
  (tmp_path / "interrupted.py").write_text(INTERRUPTED)
  result = subprocess.run(
      [sys.executable, str(tmp_path / "interrupted.py"), "--config=configs/dan.py:synthetic",
       f"--config.input.size={SIZE}", f"--checkpoint={os.path.dirname(checkpoint)}", f"--out={out}",
       "--platforms=cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert f"SIGINT received: stopped. Nothing was written to {out}; the same command exports again." in result.stderr
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ["checkpoint", "interrupted.py"]


@pytest.mark.integration
@pytest.mark.parametrize("arguments, message", [
    (["--format=onnx", "--config.model.dtype=bfloat16"],
     "--format=onnx exports a float32 program, but --config.model.dtype=bfloat16 asks for bfloat16 computation: pass "
     "--config.model.dtype=float32 (or leave it auto), or export with --format=stablehlo, which computes in "
     "bfloat16."),
    (["--out={tmp}"], "--out={tmp} is not empty (it holds old.txt): export into a new folder."),
    (["--format=onnx", "--verify_images={tmp}/old.txt"],
     "{tmp}/old.txt is not an image PIL can identify (corrupt, or not an image at all): replace it with a PNG or "
     "JPEG, or remove it.")], ids=["onnx_bfloat16", "out_not_empty", "verify_images_not_an_image"])
def test_arguments_are_refused_before_the_checkpoint_is_read(tmp_path, arguments, message):
  """A checkpoint that does not exist: its error would come first if it were read before the arguments' checks."""
  (tmp_path / "old.txt").write_text("x")
  arguments = [argument.format(tmp=tmp_path) for argument in arguments]
  out = [] if any(argument.startswith("--out=") for argument in arguments) else [f"--out={tmp_path / 'out'}"]
  result = run_command("fer_jax.export", "--config=configs/dan.py:synthetic", f"--checkpoint={tmp_path / 'nothing'}",
                       *arguments, *out)
  assert_user_error(result, message.format(tmp=tmp_path))


def test_model_json_rebuilds_a_non_default_architecture():
  """model.json kept only the method's name: LHC-Net stage C's export (LHC modules, controller) was read back as the
  default LHC-Net, which its weights do not fit (`fer_jax.summary --checkpoint=<export>`: "does not fit the
  configured model (unexpected: params/lhc1/controller …)")."""
  config = small_config("configs/lhcnet.py:synthetic,stage=C", SIZE)
  info = json.loads(json.dumps(export.metadata(config, None, {"format": "stablehlo", "platforms": ["cpu"]})))
  rebuilt = checkpointing.config_from_meta(export.meta_record(info))

  def shapes(config):
    return jax.tree.map(lambda leaf: leaf.shape, models.abstract_variables(models.build_model(config), config))
  assert shapes(rebuilt) == shapes(config)
  assert rebuilt.model.dtype == "float32"  # "auto" as it resolved where exported
  older = {key: value for key, value in info.items() if key != "model"}  # written before config.model was kept
  assert export.meta_record(older)["model"] == {"name": "lhcnet", "num_classes": 7, "dtype": "float32"}


def test_a_platform_named_twice_is_lowered_for_once_and_none_is_refused(tmp_path):
  config = small_config("configs/dan.py:synthetic", SIZE)
  variables = random_variables(config)
  info = export.export(config, variables, str(tmp_path / "twice"), platforms=("cpu", "cpu"))
  assert info["platforms"] == ["cpu"]
  assert export.read_program(str(tmp_path / "twice")).platforms == ("cpu",)
  with pytest.raises(UserError, match=r"^--platforms is empty: pass the platforms to lower for, e\.g\. "
                                      r"--platforms=cpu,cuda\.$"):
    export.export(config, variables, str(tmp_path / "none"), platforms=())
  assert sorted(os.listdir(tmp_path)) == ["twice"]


def test_out_in_the_home_folder_is_expanded(tmp_path, monkeypatch):
  """`--out='~/x'` (quoted, so no shell expands it) wrote a folder named "~" in the working directory."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  config = small_config("configs/dan.py:synthetic", SIZE)
  export.export(config, random_variables(config), "~/exported", platforms=("cpu",))
  assert sorted(os.listdir(tmp_path / "home" / "exported")) == ["model.json", "model.stablehlo", "variables"]
  assert not os.path.exists(tmp_path / "~")


def test_a_platform_jax_does_not_name_is_refused_with_the_names(tmp_path):
  config = small_config("configs/dan.py:synthetic", SIZE)
  with pytest.raises(UserError, match=r"^--platforms: gpu is not a platform JAX exports for \(cpu, cuda, rocm, tpu; a "
                                      r"GPU is cuda or rocm\): pass e\.g\. --platforms=cpu,cuda\.$"):
    export.export(config, random_variables(config), str(tmp_path / "out"), platforms=("cpu", "gpu"))
  assert not os.path.exists(tmp_path / "out")


def test_model_json_records_the_dtype_the_program_computes_in(tmp_path):
  config = small_config("configs/dan.py:synthetic", SIZE)
  config.model.dtype = "bfloat16"
  info = export.export(config, random_variables(config), str(tmp_path), platforms=("cpu",))
  assert info["compute_dtype"] == "bfloat16"
  assert export.meta_record(info)["model"]["dtype"] == "bfloat16"  # what fer_jax.load(folder).config reports
  program = (tmp_path / export.STABLEHLO).read_bytes()
  assert "bf16" in jax.export.deserialize(program).mlir_module()


def test_the_stored_shape_is_read_from_a_checkpoint_and_from_its_export_alike(tmp_path):
  """What a run decoded its images to reaches the preprocessing of export, visualize and fer_jax.load."""
  config = small_config("configs/dan.py:synthetic", SIZE)
  config.input.eval_pp = "gray_to_rgb()|" + config.input.eval_pp  # grey images, as a grey set's config reads them
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
