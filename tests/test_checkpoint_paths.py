"""What a path given where a checkpoint is read holds instead, said in the message: an export folder, a file of the
official code to convert first, or nothing; a checkpoint of another method named with its article; config changes
named as flags on the command line and as Python code for fer_jax.load's caller."""

import json
import re

import pytest

from fer_jax import checkpointing
from fer_jax import errors
from fer_jax import export
from fer_jax import validation
from fer_jax.data import labels
from fer_jax.errors import UserError
from helpers import get_config


def _step_folder_error(path) -> str:
  with pytest.raises(checkpointing.CheckpointError) as error:
    checkpointing.step_folder(str(path))
  return str(error.value)


@pytest.mark.parametrize("files", [(export.METADATA, export.STABLEHLO, export.VARIABLES),
                                   (export.METADATA, export.ONNX)], ids=["stablehlo", "onnx"])
def test_an_export_folder_is_named_as_one_with_the_checkpoint_to_pass(tmp_path, files):
  """It was "No checkpoint found at …" for --mode=eval and --config.init_from; export --checkpoint said it already."""
  for name in files:
    (tmp_path / name).write_text("{}")
  message = _step_folder_error(tmp_path)
  assert message == (f"{tmp_path} is an export folder, not a checkpoint: pass the checkpoint it was exported from (a "
                     "training workdir or a converted model). Exports are for deployment, not for training, evaluation "
                     "or exporting again: `python -m fer_jax.predict` and `fer_jax.load` run a StableHLO export folder "
                     "as it is.")
  with pytest.raises(UserError, match=f"^--checkpoint={re.escape(message)}$"):
    export.check_not_an_export(str(tmp_path))


def _tensorflow_checkpoint(folder):
  folder.mkdir()
  (folder / "checkpoint").write_text('model_checkpoint_path: "LHC_Net"\n')
  (folder / "LHC_Net.index").write_bytes(b"")
  return folder


@pytest.mark.parametrize("name", ["rafdb_epoch21_acc0.897_bacc0.8275.pth", "model_best.pth.tar",
                                  "resnet34_imagenet_1000_no_top.h5", "vgg_msceleb_resnet50_ft_weight.pkl",
                                  "vit_small.NPZ", "LHC_Net", "LHC_Net/LHC_Net.index"])
def test_a_file_of_the_official_code_is_named_with_the_command_that_converts_it(tmp_path, name):
  """It was "No checkpoint found at …"."""
  _tensorflow_checkpoint(tmp_path / "LHC_Net")
  if "LHC_Net" not in name:
    (tmp_path / name).write_bytes(b"PK")
  path = tmp_path / name
  assert _step_folder_error(path) == (
      f"{path} is a checkpoint of the official code (or a pretrained backbone), not converted: run `python -m "
      f"fer_jax.convert --config=configs/<method>.py:<dataset> --checkpoint={path} --workdir=OUT` with the config of "
      "the model it holds, then pass OUT instead.")


@pytest.mark.parametrize("name", ["empty", "notes.txt", "missing"])
def test_a_path_without_a_checkpoint_lists_what_may_be_passed(tmp_path, name):
  (tmp_path / "empty").mkdir()
  (tmp_path / "notes.txt").write_text("x")
  assert _step_folder_error(tmp_path / name) == (
      f"No checkpoint found at {tmp_path / name}: pass a training workdir, its checkpoints/ folder, a step folder "
      "inside it, or the output of `python -m fer_jax.convert` (predict, summary and fer_jax.load also run a "
      "`python -m fer_jax.export` folder).")


@pytest.mark.parametrize("name", ["model.json", "model.stablehlo", "model.onnx"])
def test_a_file_of_an_export_folder_names_the_folder_to_pass(tmp_path, name):
  """`--checkpoint=exported/model.json` was told no checkpoint is there, and which kinds of folder to pass."""
  files = ("model.json", "model.onnx") if name == "model.onnx" else ("model.json", "model.stablehlo", "variables")
  for file in files:
    (tmp_path / file).mkdir() if file == "variables" else (tmp_path / file).write_text("{}")
  path = tmp_path / name
  assert _step_folder_error(path) == f"{path} is a file of the export folder {tmp_path}: pass the folder."


def _meta_only_checkpoint(folder, method: str):
  """A step folder whose meta record names `method`: all that init_from's check reads."""
  (folder / "state").mkdir(parents=True)
  (folder / checkpointing.META_FILE).parent.mkdir()
  (folder / checkpointing.META_FILE).write_text(json.dumps({"model": {"name": method}}))
  return folder


def _init_from_problems(config, init_from) -> str:
  config.init_from = str(init_from)
  with pytest.raises(errors.ConfigError) as error:
    validation.validate(config, training=True, new_run=True)
  return str(error.value)


@pytest.mark.parametrize("saved, trained", [("apvit", "dan"), ("dan", "apvit")])
def test_init_from_another_method_s_checkpoint_names_both_with_their_article(tmp_path, saved, trained):
  """It said "holds a apvit model" and "pass a apvit checkpoint"."""
  path = _meta_only_checkpoint(tmp_path / "run", saved)
  article = {"apvit": "an", "dan": "a"}
  assert (f"holds {article[saved]} {saved} model, but this config trains {trained}: pass {article[trained]} "
          f"{trained} checkpoint") in _init_from_problems(get_config(f"configs/{trained}.py:synthetic"), path)


def test_init_from_a_file_of_the_official_code_names_the_command_that_converts_it(tmp_path):
  path = tmp_path / "resnet18_msceleb.pth"
  path.write_bytes(b"PK")
  assert (f"config.init_from: {path} is a checkpoint of the official code (or a pretrained backbone), not converted: "
          f"run `python -m fer_jax.convert --config=configs/<method>.py:<dataset> --checkpoint={path} --workdir=OUT`"
          ) in _init_from_problems(get_config("configs/dan.py:synthetic"), path)


def _identity_error(record: dict, config) -> str:
  with pytest.raises(checkpointing.CheckpointError) as error:
    checkpointing.check_identity(record, "The checkpoint C", config.model,
                                 labels.class_names(config.dataset.class_order), config.input)
  return str(error.value)


def test_a_checkpoint_of_another_method_is_named_with_its_article_as_flags_or_as_python():
  config = get_config("configs/dan.py:synthetic")
  record = {"model": {"name": "apvit", "num_classes": 7}, "class_names": labels.class_names("rafdb")}
  expected = ("The checkpoint C holds an apvit model with 7 classes ({}), but the config builds dan with 7: pass the "
              "{} it was trained or converted with (configs/apvit.py:<dataset>).")
  assert _identity_error(record, config) == expected.format(", ".join(record["class_names"]), "--config")
  with errors.python_caller():
    assert _identity_error(record, config) == expected.format(", ".join(record["class_names"]), "config")
  record["model"]["name"] = "my_methods.center_resnet"  # a method of yours: no configs/my_methods.center_resnet.py
  assert _identity_error(record, config).endswith("it was trained or converted with (the one that sets "
                                                  "model.name='my_methods.center_resnet').")


def test_another_input_size_and_channels_name_the_flags_or_the_python_statements():
  config = get_config("configs/dan.py:synthetic")
  record = {"model": {"name": "dan", "num_classes": 7}, "class_names": labels.class_names(config.dataset.class_order),
            "input": {"size": 32, "channels": 1}}
  fix = "as it was trained or converted with."
  assert _identity_error(record, config).endswith(f": pass --config.input.size=32 --config.input.channels=1 {fix}")
  with errors.python_caller():
    assert _identity_error(record, config).endswith(f": set config.input.size = 32; config.input.channels = 1 {fix}")


@pytest.mark.parametrize("report", ["[]", '{"step": 4', '{"step": 2}', '{"evaluators": {}}'])
def test_a_workdir_whose_report_names_no_best_step_gives_its_newest_step(tmp_path, report):
  """A report that is not a JSON object (edited by hand, cut short) ended in an AttributeError traceback."""
  for step in (2, 4):
    (tmp_path / "checkpoints" / str(step) / "state").mkdir(parents=True)
  (tmp_path / "eval_results.json").write_text(report)
  assert checkpointing.step_folder(str(tmp_path)) == str(tmp_path / "checkpoints" / "4")
  (tmp_path / "best" / "2" / "state").mkdir(parents=True)
  best = report == '{"step": 2}'
  assert checkpointing.step_folder(str(tmp_path)) == str(tmp_path / ("best/2" if best else "checkpoints/4"))
