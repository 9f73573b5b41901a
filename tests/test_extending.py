"""A method, a data set, a schedule and an optimiser of the user's, outside fer_jax
(examples/my_methods/plain_resnet.py, examples/my_sets/class_folders.py, examples/my_optim.py; docs/extending.md):
named by their module paths or registered names, they train, report, prepare and load as fer_jax's own do."""

import copy
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest
import torch

import fer_jax
from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax import validation
from fer_jax.data import labels
from fer_jax.data import prepare
from fer_jax.errors import ConfigError, UserError
from fer_jax.models import dan
from helpers import ROOT, TINY_NET, cpu_devices_env, get_config, load_script, run_command

EXAMPLES = os.path.join(ROOT, "examples")
# examples/my_sets/class_folders.py kept grey, as FER2013 stores its faces.
GREY_FOLDERS = """
from my_sets import class_folders


class GreyFolders(class_folders.ClassFolders):
  CHANNELS = 1

  def _info(self):
    return self.face_info(class_folders.CLASS_NAMES, image_shape=(None, None, 1))
"""

# examples/my_sets/class_folders.py with class names of the user's own, which runs cannot map to a model's classes.
OWN_CLASS_NAMES = """
from my_sets import class_folders


class Emotions(class_folders.ClassFolders):
  def _info(self):
    return self.face_info(["happy", "sad", "angry", "neutral"])
"""


def test_a_model_name_that_names_no_method_is_refused_with_the_fix(monkeypatch):
  monkeypatch.syspath_prepend(EXAMPLES)
  for name, fix in (("plain_resnet", "is not one of fer_jax's methods (dan, lhcnet, apvit, scan_cci) nor a module "
                                     "path of yours, which names a module inside a package folder with its package "
                                     "(my_methods.plain_resnet for my_methods/plain_resnet.py"),
                    ("my_method.plain_resnet", "no module 'my_method' on the Python path"),
                    ("my_methods.plain_resnett", "no module 'my_methods.plain_resnett' on the Python path ("),
                    ("my_methods.plain_resnett", "PYTHONPATH) (did you mean my_methods.plain_resnet?): run from"),
                    ("fer_jax.models.layers", "layers.py defines no METHOD = fer_jax.models.Method(")):
    config = get_config("configs/dan.py:synthetic")
    config.model.name = name
    with pytest.raises(ConfigError, match="The config cannot run") as refused:
      validation.validate(config, training=False)
    assert f"config.model.name={name!r}" in str(refused.value) and fix in str(refused.value)
  assert models.get_method("my_methods.plain_resnet").loss.__name__ == "label_smoothing_loss"


class Linear(nn.Module):
  """A module of the user's without a `remat` field."""
  num_classes: int = 7

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    return {"logits": nn.Dense(self.num_classes)(jnp.mean(images, axis=(1, 2)))}


def test_a_method_of_yours_gets_the_keys_every_config_has_and_its_misspelt_keys_refused():
  config = get_config("examples/plain_resnet_config.py:synthetic")
  config.model.num_clases = 8
  method = models.Method(build=functools.partial(models.from_config, Linear))
  with pytest.raises(ConfigError, match=r"^config\.model\.num_clases is not a key of method 'my_methods.plain_resnet' "
                                        r"\(did you mean num_classes\?\)"):
    method.build(config.model)
  config = get_config("examples/plain_resnet_config.py:synthetic")
  assert config.model.remat == "none" and method.build(config.model).num_classes == 7
  config.model.num_clases = 8
  assert models.model_key_problems(method, config)[0].startswith("config.model.num_clases is not a key")
  # A build of its own reads config.model its own way: nothing to check it against.
  assert models.model_key_problems(models.Method(build=lambda model_config: Linear()), config) == []


def test_the_example_method_refuses_a_misspelt_loss_key_before_any_work(monkeypatch):
  """`label_smothing` in the config file ended the first step in ml_collections' AttributeError, whose suggestion
  read the wrong way round."""
  monkeypatch.syspath_prepend(EXAMPLES)
  config = get_config("examples/plain_resnet_config.py:synthetic")
  validation.validate(config, training=False)
  del config.loss.label_smoothing
  config.loss.label_smothing = 0.1
  with pytest.raises(ConfigError) as refused:
    validation.validate(config, training=False)
  assert str(refused.value).splitlines()[1:] == [
      "  config.loss.label_smothing is not a key of the loss of method 'my_methods.plain_resnet' (did you mean "
      "label_smoothing?): rename or remove it (or, for a method of yours whose loss reads it, name it in its Method's "
      "loss_keys); its keys are label_smoothing.",
      "  config.loss.label_smoothing=None must be a number in [0, 1): set it in the config file, e.g. "
      "config.loss.label_smoothing = 0.1."]


@pytest.mark.integration  # initialises DAN and a ResNet-18
def test_a_method_of_yours_starts_from_the_backbone_of_another_method_s_checkpoint(tmp_path, monkeypatch):
  """init_from took only a checkpoint of the method trained: a method of yours could not start from the converted
  MS-Celeb ResNet-18, a DAN checkpoint. config.init_from_parts takes its trunk; the rest stays fresh."""
  monkeypatch.syspath_prepend(EXAMPLES)
  dan_config = get_config("configs/dan.py:synthetic")
  dan_config.input.size = 32
  dan_variables = jax.jit(lambda: models.init_variables(models.build_model(dan_config), dan_config,
                                                        jax.random.key(1)))()
  checkpoint = checkpointing.save_model(str(tmp_path / "dan"), dan_variables, dan_config)
  config = get_config("examples/plain_resnet_config.py:synthetic")
  config.update(init_from=checkpoint, init_from_parts="trunk")
  config.input.size = 32
  validation.validate(config, training=True, new_run=True)  # another method's checkpoint, taken in part
  model = models.build_model(config)
  fresh = jax.jit(lambda: models.init_variables(model, config, jax.random.key(2)))()
  state = {"step": 0, **fresh}
  started = train.load_initial_variables(state, config, models.abstract_variables(model, config), mesh_lib.make_mesh())
  for collection in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, started[collection]["trunk"], dan_variables[collection]["trunk"])
  jax.tree.map(np.testing.assert_array_equal, started["params"]["fc"], fresh["params"]["fc"])
  for parts, message in (("features", r"has no params/features \(its top-level names: affinity, bn, fc, head0"),
                         ("trunk=fc", r"'s trunk does not fit the model's fc \(missing: params/fc/bias"),
                         ("trunk=nothere", r"the model has no params/nothere \(its top-level names: fc, trunk\)")):
    with pytest.raises(checkpointing.CheckpointError, match=r"^config.init_from_parts: .*" + message):
      checkpointing.restore_parts(checkpoint, fresh, config_lib.init_from_parts(parts))
    config.init_from_parts = parts
    config.dataset.update(name="rafdb", data_dir=str(tmp_path / "no_data"))  # read after the check: else it stops here
    with pytest.raises(checkpointing.CheckpointError, match=r"^config.init_from_parts: .*" + message):
      train.TrainingRun(config, str(tmp_path / "run"))
  config.init_from_parts = ""
  # The parts suggested are those that fit (DAN's trunk and fc here); "trunk" was named for every method, SCAN-CCI
  # too, which has none (tests/test_config_validation.py).
  with pytest.raises(ConfigError, match=r"holds a dan model, but this config trains my_methods.plain_resnet: .*, or "
                                        r"start from the parts of it that fit: --config.init_from_parts=fc,trunk\.$"):
    validation.validate(config, training=True, new_run=True)
  config.init_from_parts = "trunk=, fc"
  with pytest.raises(ConfigError, match=r"config.init_from_parts='trunk=, fc': 'trunk=' is not a part"):
    validation.validate(config, training=True, new_run=True)
  config.update(init_from_parts="trunk", init_from_missing="params/fc/.*")
  with pytest.raises(ConfigError, match=r"config.init_from_parts and config.init_from_missing are both set"):
    validation.validate(config, training=True, new_run=True)
  config.update(init_from_parts="trunk/layer1_0=trunk/layer1_0,trunk/layer1_0=trunk/layer1_1", init_from_missing="")
  with pytest.raises(ConfigError, match=r"'trunk/layer1_0=trunk/layer1_1' names 'trunk/layer1_0' again: name each "
                                        r"part once"):  # the first mapping was dropped, without a word
    validation.validate(config, training=True, new_run=True)
  config.update(init_from_parts="trunk", init_from="")
  with pytest.raises(ConfigError, match=r"config.init_from_parts='trunk' names parts of config.init_from, which is "
                                        r"not set"):  # the run started from random weights, without a word
    validation.validate(config, training=True, new_run=True)


def test_a_loss_of_yours_on_dan_keeps_the_rest_of_dans_method(monkeypatch):
  """docs/extending.md's recipe, examples/my_methods/dan_confidence_penalty.py: a Method of DAN's build with another
  loss lost auxiliary_params=("affinity",), counting the affinity centres as model parameters."""
  monkeypatch.syspath_prepend(EXAMPLES)
  config = get_config("configs/dan.py:synthetic")
  config.model.name = "my_methods.dan_confidence_penalty"
  config.loss.confidence_penalty = 0.5
  validation.validate(config, training=False)
  method = models.get_method(config.model.name)
  assert method == dataclasses.replace(dan.METHOD, loss=method.loss, config_problems=method.config_problems,
                                       loss_keys=("affinity_weight", "partition_weight", "confidence_penalty"))
  assert method.auxiliary_params == ("affinity",)
  keys = jax.random.split(jax.random.key(0), 4)
  outputs = {"logits": jax.random.normal(keys[0], (4, 7)), "pooled_features": jax.random.normal(keys[1], (4, 512)),
             "heads": jax.random.normal(keys[2], (4, 4, 512)), "centres": jax.random.normal(keys[3], (8, 512))}
  labels = jnp.array([0, 3, 6, 3])
  total, metrics = method.loss(outputs, labels, config.loss)
  dan_total, dan_metrics = dan.loss(outputs, labels, config.loss)
  probabilities = np.asarray(jax.nn.softmax(outputs["logits"]))
  penalty = np.mean(np.sum(probabilities * np.log(probabilities), axis=-1))
  np.testing.assert_allclose(metrics["confidence_penalty"], penalty, rtol=1e-5)
  np.testing.assert_allclose(total, dan_total + 0.5 * penalty, rtol=1e-5)
  assert metrics.keys() == dan_metrics.keys() | {"confidence_penalty"}


def test_the_confidence_penalty_has_a_config_and_its_missing_or_negative_weight_is_named(monkeypatch):
  """examples/my_methods/dan_confidence_penalty.py had no config: DAN's with its name validated, and the first train
  step died with a raw AttributeError (config.loss has no confidence_penalty), which DAN's locked config refuses to
  add from the command line."""
  monkeypatch.syspath_prepend(EXAMPLES)
  module = load_script("examples/dan_confidence_penalty_config.py", "config_module")
  assert "cd examples && python -m fer_jax.main --config=dan_confidence_penalty_config.py:synthetic" in module.__doc__
  config = module.get_config("synthetic")
  assert config.model.name == "my_methods.dan_confidence_penalty" and config.loss.confidence_penalty == 0.1
  dans = get_config("configs/dan.py:synthetic")
  assert {key: value for key, value in config.loss.items() if key != "confidence_penalty"} == dict(dans.loss)
  assert config.optimizer == dans.optimizer and config.input == dans.input and config.model.num_centres == 8
  validation.validate(config, training=True, new_run=True)
  assert models.get_method(config.model.name).config_problems(config) == []
  config.loss.confidence_penalty = 0.0  # DAN's loss
  validation.validate(config, training=False)

  config = get_config("configs/dan.py:synthetic")
  config.model.name = "my_methods.dan_confidence_penalty"
  with pytest.raises(ConfigError, match="The config cannot run") as refused:
    validation.validate(config, training=False)
  assert ("config.loss.confidence_penalty is missing: 'my_methods.dan_confidence_penalty' needs the penalty's weight; "
          "run with examples/dan_confidence_penalty_config.py") in str(refused.value)
  config.loss.confidence_penalty = -0.1
  with pytest.raises(ConfigError, match=r"config\.loss\.confidence_penalty=-0\.1 must be a number of at least 0"):
    validation.validate(config, training=False)


def test_a_method_of_yours_checking_its_loss_keys_loads_from_the_record_alone(monkeypatch):
  """fer_jax.load(workdir) of a confidence-penalty run, its module imported, rebuilt the config with an empty
  config.loss, which the method's config_problems refused ("config.loss.confidence_penalty is missing")."""
  monkeypatch.syspath_prepend(EXAMPLES)
  config = load_script("examples/dan_confidence_penalty_config.py", "config_module").get_config("synthetic")
  config.loss.confidence_penalty = 0.3
  importlib.import_module("my_methods.dan_confidence_penalty")
  rebuilt = checkpointing.config_from_meta(checkpointing.metadata(config))
  assert rebuilt.loss.to_dict() == config.loss.to_dict()
  validation.validate(rebuilt, training=False)


@pytest.mark.integration
def test_the_confidence_penalty_trains_from_its_config(tmp_path, tiny_data_dir):
  """The command of examples/dan_confidence_penalty_config.py's docstring, on synthetic/tiny (10 training images
  a class: 2 steps) for one epoch."""
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "fer_jax.main", "--config=dan_confidence_penalty_config.py:synthetic",
             f"--workdir={workdir}", "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
             "--config.dataset.max_per_class=10", "--config.input.size=32", "--config.num_epochs=1",
             "--config.batch_size=35", "--config.eval_batch_size=35", "--config.data_workers=0",
             "--config.loss.confidence_penalty=0.3"]
  result = subprocess.run(command, cwd=EXAMPLES, env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "eval_results.json").read_text())
  assert report["model"] == "my_methods.dan_confidence_penalty" and report["num_examples"] == 70
  assert report["config"]["loss.confidence_penalty"] == 0.3 and report["config"]["loss.affinity_weight"] == 1.0


@pytest.mark.integration
def test_a_method_of_yours_trains_reports_and_loads(tmp_path, tiny_data_dir, monkeypatch):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "fer_jax.main", "--config=plain_resnet_config.py:synthetic",
             f"--workdir={workdir}", "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
             "--config.dataset.max_per_class=10", "--config.input.size=32", "--config.num_epochs=1",
             "--config.eval_batch_size=35", "--config.data_workers=0"]  # 2 steps of 32
  result = subprocess.run(command, cwd=EXAMPLES, env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "eval_results.json").read_text())
  assert report["model"] == "my_methods.plain_resnet" and report["num_examples"] == 70
  assert report["checkpoint"] == str(workdir / "checkpoints" / str(report["step"]))  # the weights reported
  assert report["config"]["loss.label_smoothing"] == 0.1
  monkeypatch.syspath_prepend(EXAMPLES)
  faces = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  monkeypatch.delitem(sys.modules, "my_methods.plain_resnet", raising=False)  # imported by an earlier test
  with pytest.raises(UserError, match="does not import a module a checkpoint names"):
    fer_jax.load(str(workdir))  # the record alone imports no module it names
  importlib.import_module("my_methods.plain_resnet")  # the user's own choice, as for an op of theirs
  predictions = fer_jax.load(str(workdir)).predict(faces)
  assert len(predictions) == 3 and all(np.isclose(sum(p.probabilities.values()), 1) for p in predictions)


def test_a_data_set_module_that_names_no_builder_is_refused_with_the_fix(monkeypatch):
  monkeypatch.syspath_prepend(EXAMPLES)
  with pytest.raises(UserError, match=r"^Unknown data set 'class_folders'; choose one of fer2013, .*, or name the "
                                      r"module of a builder of yours"):
    prepare.make_builder("class_folders")
  with pytest.raises(UserError, match=r"^--dataset=my_sets.folders: no module 'my_sets.folders' on the Python path"):
    prepare.make_builder("my_sets.folders")
  with pytest.raises(UserError, match=r"^--dataset=my_methods.plain_resnet: .*plain_resnet.py defines 0 subclasses "
                                      r"of fer_jax.data.builder_utils.ManualBuilder; it needs exactly one\.$"):
    prepare.builder_class("my_methods.plain_resnet")
  assert prepare.builder_class("my_sets.class_folders").__name__ == "ClassFolders"


def test_a_data_set_of_yours_whose_class_names_are_not_fer_jaxs_is_refused_by_prepare(tmp_path, monkeypatch):
  (tmp_path / "named_sets").mkdir()
  (tmp_path / "named_sets" / "__init__.py").touch()
  (tmp_path / "named_sets" / "emotions.py").write_text(OWN_CLASS_NAMES)
  monkeypatch.syspath_prepend(EXAMPLES)
  monkeypatch.syspath_prepend(str(tmp_path))
  (tmp_path / "manual").mkdir()
  with pytest.raises(UserError, match=r"^named_sets\.emotions\.Emotions has classes fer_jax does not know: happy, sad, "
                                      r"angry\. .*\(anger, disgust, fear, happiness, sadness, surprise, neutral, contempt\)"):
    prepare.prepare("named_sets.emotions", str(tmp_path / "manual"), str(tmp_path / "tfds"))
  assert not prepare.make_builder("named_sets.emotions", str(tmp_path / "tfds")).is_prepared()


def test_a_builder_of_yours_named_like_fer_jax_s_set_is_refused_with_the_fix(tmp_path, monkeypatch):
  """TFDS's "Dataset with name fer2013 already registered" came as a traceback."""
  (tmp_path / "clashing_sets").mkdir()
  (tmp_path / "clashing_sets" / "__init__.py").touch()
  (tmp_path / "clashing_sets" / "mine.py").write_text(OWN_CLASS_NAMES.replace("class Emotions", "class Fer2013"))
  monkeypatch.syspath_prepend(EXAMPLES)
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(UserError, match=r"^--dataset=clashing_sets.mine: a builder class of clashing_sets.mine takes a "
                                      r"set's name TFDS already holds \(Dataset with name fer2013 already "
                                      r"registered\), "
                                      r"fer_jax's or another's: rename the class"):
    prepare.builder_class("clashing_sets.mine")


@pytest.mark.integration
def test_a_data_set_of_yours_prepares_and_trains(tmp_path):
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("test", 2)):
    for name in labels.CLASS_ORDERS["fer2013"]:
      (tmp_path / "manual" / split / name).mkdir(parents=True)
      for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / "manual" / split / name / f"{index}.png")
  prepared = subprocess.run([sys.executable, "-m", "fer_jax.data.prepare", "--dataset=my_sets.class_folders",
                             f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'tfds'}"], cwd=EXAMPLES,
                            env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert "class_folders/1.0.0" in prepared.stdout and "train: 28 examples" in prepared.stdout
  # Training needs no import of the builder: TFDS reads the prepared set from its files. TinyNet trains: the subject
  # is the data set.
  result = run_command("fer_jax.main", "--config=configs/dan.py:synthetic", f"--config.model.name={TINY_NET}",
                       f"--workdir={tmp_path / 'run'}",
                       "--config.dataset.name=class_folders", f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                       "--config.input.size=32", "--config.batch_size=7", "--config.eval_batch_size=7",
                       "--config.num_epochs=1", "--config.data_workers=0")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "eval_results.json").read_text())
  assert report["dataset"] == "class_folders" and report["num_examples"] == 14


@pytest.mark.integration
def test_a_grey_data_set_of_yours_is_predicted_on_grey_as_it_was_trained(tmp_path, monkeypatch):
  """A run records the shape its set's images are decoded to: a photo reaches the model as the set's images
  reached it in training (fer_jax knew only its own grey sets, by name, and decoded this set's photos in colour,
  and at the model's input size where training decoded at the images' own, 40×40)."""
  (tmp_path / "grey_sets").mkdir()
  (tmp_path / "grey_sets" / "__init__.py").touch()
  (tmp_path / "grey_sets" / "grey_folders.py").write_text(GREY_FOLDERS)
  monkeypatch.syspath_prepend(EXAMPLES)
  monkeypatch.syspath_prepend(str(tmp_path))
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in labels.CLASS_ORDERS["fer2013"]:
      (tmp_path / "manual" / split / name).mkdir(parents=True)
      Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / "manual" / split / name / "0.png")
  prepare.prepare("grey_sets.grey_folders", str(tmp_path / "manual"), str(tmp_path / "tfds"))
  config = get_config("configs/dan.py:synthetic")
  config.model.name = TINY_NET  # the subject is the data set's images
  config.dataset.update(name="grey_folders", data_dir=str(tmp_path / "tfds"))
  config.input.update(size=32, train_pp="gray_to_rgb()|" + config.input.train_pp,
                      eval_pp="gray_to_rgb()|" + config.input.eval_pp)
  config.update(batch_size=7, eval_batch_size=7, num_epochs=1, data_workers=0, select_metric="accuracy",
                restore_best=True)  # the workdir's model is then the best epoch's (best/STEP)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  exported = run_command("fer_jax.export", "--config=configs/dan.py:synthetic", f"--config.model.name={TINY_NET}",
                         "--config.dataset.name=grey_folders",
                         "--config.input.size=32", f"--config.input.eval_pp={config.input.eval_pp}",
                         f"--checkpoint={tmp_path / 'run'}", f"--out={tmp_path / 'exported'}", "--platforms=cpu")
  assert exported.returncode == 0, exported.stderr[-3000:]
  photo = rng.integers(0, 256, (32, 32, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / "photo.png")
  grey = np.asarray(Image.fromarray(photo).convert("L").resize((40, 40), Image.BILINEAR))[..., None]
  for model in (fer_jax.load(str(tmp_path / "run"), batch_size=1),  # from the meta record
                fer_jax.load(str(tmp_path / "run"), config=config, batch_size=1),  # as predict --config loads it
                fer_jax.load(str(tmp_path / "exported"), batch_size=1)):
    np.testing.assert_array_equal(model.predictor.preprocess.read(str(tmp_path / "photo.png")), grey)
  prediction, = model.predict([str(tmp_path / "photo.png")])
  assert np.isclose(sum(prediction.probabilities.values()), 1)


def test_a_paper_config_is_read_from_any_folder_and_an_unknown_one_names_those_there(tmp_path, monkeypatch):
  """A config file of yours outside the checkout reached configs/dan.py by a relative path (`import configs.dan`
  fails outside it)."""
  monkeypatch.chdir(tmp_path)
  assert config_lib.paper_config("dan").get_config("rafdb").to_dict() == get_config("configs/dan.py:rafdb").to_dict()
  with pytest.raises(ValueError, match=r"No paper config 'dann' in .*configs: they are apvit, dan, lhcnet, "
                                       r"scan_cci\.$"):
    config_lib.paper_config("dann")


@pytest.fixture
def my_optim(monkeypatch):
  """examples/my_optim.py imported afresh into copies of optim's tables, which other tests see as they were."""
  monkeypatch.syspath_prepend(EXAMPLES)
  for table in ("SCHEDULES", "OPTIMIZERS", "DECOUPLED_WEIGHT_DECAY"):
    monkeypatch.setattr(optim, table, copy.copy(getattr(optim, table)))
  monkeypatch.setattr(optim, "OWN_KEYS", {key: dict(names) for key, names in optim.OWN_KEYS.items()})
  monkeypatch.delitem(sys.modules, "my_optim", raising=False)
  return importlib.import_module("my_optim")


def _warmup_cosine_config(**optimizer):
  config = load_script("examples/warmup_cosine_config.py", "config_module").get_config("synthetic")
  config.optimizer.update(optimizer)
  return config


def test_a_schedule_of_yours_gives_torch_s_warm_up_then_cosine_rates(my_optim):
  """examples/my_optim.py's warmup_cosine against torch's LinearLR then CosineAnnealingLR (SequentialLR), stepped at
  each epoch's end as the official recipes step theirs."""
  config = _warmup_cosine_config(lr=0.2, warmup_epochs=3, warmup_start_factor=0.25)
  validation.validate(config, training=True, new_run=True)
  steps_per_epoch, num_epochs = 4, 10
  schedule = optim.make_optimizer(config.optimizer, steps_per_epoch, num_epochs, {"w": jnp.zeros(2)}).schedule
  ours = [float(schedule(epoch * steps_per_epoch + steps_per_epoch - 1)) for epoch in range(num_epochs)]
  sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
  torch_schedule = torch.optim.lr_scheduler.SequentialLR(sgd, [
      torch.optim.lr_scheduler.LinearLR(sgd, start_factor=0.25, end_factor=1.0, total_iters=3),
      torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=num_epochs - 3, eta_min=0.0)], milestones=[3])
  torch_rates = []
  for _ in range(num_epochs):
    torch_rates.append(sgd.param_groups[0]["lr"])
    sgd.step()
    torch_schedule.step()
  np.testing.assert_allclose(ours, torch_rates, rtol=1e-5, atol=1e-9)


def test_an_optimiser_of_yours_with_decoupled_weight_decay_gets_no_coupled_l2(my_optim):
  """my_optim.lion applies its decay itself: the update is optax.lion's with the decay. Registered without
  `decoupled_weight_decay`, the same rule is given gradients with the coupled L2 term added, as SGD and Adam are
  (and decays them again)."""
  params, grads = {"w": jnp.array([1.0, -2.0, 3.0])}, {"w": jnp.array([0.5, 0.0, -0.25])}
  config = _warmup_cosine_config(name="lion", lr=0.1, weight_decay=0.5, b1=0.9, b2=0.99, warmup_start_factor=1.0)
  validation.validate(config, training=True, new_run=True)

  def update(opt_config):
    tx = optim.make_optimizer(opt_config, 1, 1, params).tx
    return tx.update(grads, tx.init(params), params)[0]["w"]

  reference = optax.lion(0.1, b1=0.9, b2=0.99, weight_decay=0.5)
  expected = reference.update(grads, reference.init(params), params)[0]["w"]
  np.testing.assert_allclose(update(config.optimizer), expected, rtol=1e-6)
  optim.register_optimizer(my_optim.lion)  # the module's own function again, now without the flag: decayed twice
  with_l2 = {"w": grads["w"] + 0.5 * params["w"]}
  np.testing.assert_allclose(update(config.optimizer),
                             reference.update(with_l2, reference.init(params), params)[0]["w"], rtol=1e-6)


def test_a_schedule_of_yours_has_its_keys_checked_and_its_name_kept_from_others(my_optim):
  config = _warmup_cosine_config()
  del config.optimizer.warmup_epochs
  with pytest.raises(ConfigError) as refused:
    validation.validate(config, training=False)
  assert ("config.optimizer.schedule='warmup_cosine' reads config.optimizer.warmup_epochs, which the config does not "
          "set: set it in the config file (config.optimizer.warmup_epochs = ...).") in str(refused.value)
  config = _warmup_cosine_config(schedule="cosine")  # warmup_cosine's keys, read by nothing now
  with pytest.raises(ConfigError, match=r"config\.optimizer\.warmup_epochs is read by nothing.* \(read under "
                                        r"config\.optimizer\.schedule='warmup_cosine'\)\."):
    validation.validate(config, training=False)
  config.optimizer.schedule = "warmup_cosin"
  with pytest.raises(ConfigError, match=r"config\.optimizer\.schedule='warmup_cosin' is not one of: 'constant', "
                                        r".*'warmup_cosine' \(or one of yours: fer_jax\.optim\.register_schedule in "
                                        r"the config file, docs/extending\.md\)\."):
    validation.validate(config, training=False)

  def cosine(epoch, opt_config, num_epochs):
    return jnp.ones_like(epoch, float)

  with pytest.raises(ValueError, match=r"^The schedule 'cosine' of test_extending would replace fer_jax\.optim's "
                                       r"wherever it is named: give its function another name\.$"):
    optim.register_schedule(cosine)
  assert optim.SCHEDULES["cosine"] is not cosine and "cosine" not in optim.OWN_KEYS["schedule"]


@pytest.mark.integration
def test_a_schedule_and_an_optimiser_of_yours_train_from_their_config(tmp_path, tiny_data_dir):
  """The command of examples/warmup_cosine_config.py's docstring with my_optim's Lion, on synthetic/tiny (10 training
  images a class: 2 steps an epoch) for 3 epochs: a step logs the rate the schedule gives its epoch."""
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "fer_jax.main", "--config=warmup_cosine_config.py:synthetic",
             f"--workdir={workdir}", "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
             "--config.dataset.max_per_class=10", "--config.input.size=32", "--config.num_epochs=3",
             "--config.batch_size=35", "--config.eval_batch_size=35", "--config.data_workers=0",
             "--config.log_every_steps=1", "--config.optimizer.name=lion", "--config.optimizer.weight_decay=0.01"]
  result = subprocess.run(command, cwd=EXAMPLES, env=cpu_devices_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "eval_results.json").read_text())
  assert report["config"]["optimizer.name"] == "lion" and report["config"]["optimizer.warmup_epochs"] == 1
  rates = [float(line.split(" lr ")[1].split()[0]) for line in (workdir / "train.log").read_text().splitlines()
           if " lr " in line]
  # epoch 0: 0.1 of 3e-4 (the warm-up's start); epochs 1 and 2: 3e-4 · ½(1 + cos(π·e/2)), e = 0, 1.
  np.testing.assert_allclose(rates, [3e-5, 3e-5, 3e-4, 3e-4, 1.5e-4, 1.5e-4], rtol=1e-3)


def test_a_run_under_a_schedule_of_yours_resumes_only_with_its_number_of_epochs(my_optim):
  """num_epochs may change on resume under the schedules it does not shape (constant, step, exponential), not under
  cosine's nor one of yours, which may read it (warmup_cosine does)."""
  config = _warmup_cosine_config()
  saved = config_lib.flat(config)
  config.num_epochs += 5
  assert [key for key, _, _ in config_lib.resume_differences(saved, config)] == ["num_epochs"]
  assert config_lib.num_epochs_shaped(config) == " (it shapes the warmup_cosine schedule)"
  config.optimizer.schedule = saved["optimizer.schedule"] = "step"
  assert config_lib.resume_differences(saved, config) == []
