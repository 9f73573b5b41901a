"""validation.validate: every shipped config passes, and each cross-field rule names its keys and the fix."""

import pytest

from fer_jax import config_lib
from fer_jax import validation
from fer_jax.errors import ConfigError
from helpers import get_config

SHIPPED = ([f"configs/dan.py:{a}" for a in ("rafdb", "affectnet7", "affectnet8", "synthetic", "synthetic,occlusion=yes")]
           + [f"configs/apvit.py:{a}" for a in ("rafdb", "ferplus", "affectnet7", "affectnet8", "synthetic")]
           + [f"configs/scan_cci.py:{a}" for a in ("rafdb", "ferplus", "affectnet7", "affectnet8", "synthetic")]
           + [f"configs/lhcnet.py:{d},stage={s}" for d in ("fer2013", "synthetic") for s in ("A1", "A2", "A3", "B", "C")])


@pytest.mark.parametrize("spec", SHIPPED)
def test_every_shipped_config_is_valid(spec):
  config = get_config(spec)
  validation.validate(config, training=False)
  validation.validate(config, training=True, new_run=True)


def _problems(config, **kwargs) -> str:
  with pytest.raises(ConfigError) as error:
    validation.validate(config, **kwargs)
  return str(error.value)


@pytest.mark.parametrize("key, value, turn_off", [("early_stopping_patience", 3, "--config.early_stopping_patience=0"),
                                                  ("restore_best", True, "--config.restore_best=False")])
def test_selection_settings_need_a_select_metric(key, value, turn_off):
  config = get_config("configs/dan.py:synthetic")
  config.update({key: value, "select_metric": ""})
  message = _problems(config, training=False)
  assert f"config.{key}={value} needs a metric" in message
  assert "--config.select_metric=accuracy" in message and turn_off in message


def test_sfew_needs_init_from_only_when_a_new_run_starts():
  config = get_config("configs/scan_cci.py:sfew")
  assert "pass --config.init_from=CHECKPOINT" in _problems(config, training=True, new_run=True)
  validation.validate(config, training=True, new_run=False)  # resuming ignores init_from
  validation.validate(config, training=False)                 # evaluation, prediction, benchmarks


def test_init_from_must_exist(tmp_path):
  config = get_config("configs/dan.py:synthetic")
  config.init_from = str(tmp_path / "missing")
  assert f"config.init_from={tmp_path / 'missing'} does not exist" in _problems(config, training=True, new_run=True)


def test_class_order_must_name_num_classes():
  config = get_config("configs/dan.py:rafdb")
  config.model.num_classes = 8
  message = _problems(config, training=False)
  assert "config.dataset.class_order='rafdb' names 7 classes" in message
  assert "config.model.num_classes=8" in message


def test_every_problem_is_listed_at_once():
  config = get_config("configs/dan.py:synthetic")
  config.optimizer.name = "rmsprop"
  config.dataset.cache = "disk"
  config.eval.tta = "ten_crop"
  config.batch_size = 0
  message = _problems(config, training=True)
  assert "config.optimizer.name='rmsprop' is not one of: 'sgd', 'adam', 'adamw'" in message
  assert "config.dataset.cache='disk' is not one of: 'auto', 'none', 'host', 'device'" in message
  assert "config.eval.tta='ten_crop' is not one of: 'none', 'flip', 'lhc62'" in message
  assert "config.batch_size=0 must be at least 1" in message


@pytest.mark.parametrize("key, value, expected", [
    ("dataset.image_size", -1, "config.dataset.image_size=-1 must be 0 (the set's own size) or more"),
    ("dataset.max_per_class", -5, "config.dataset.max_per_class=-5 must be 0 (all) or more"),
    ("dataset.train_split", "train[:abc]", "config.dataset.train_split='train[:abc]' is not a split"),
    ("dataset.test_split", "test[", "config.dataset.test_split='test[' is not a split")])
def test_dataset_values_out_of_range(key, value, expected):
  config = get_config("configs/dan.py:synthetic")
  section, name = key.split(".")
  config[section][name] = value
  assert expected in _problems(config, training=False)


def test_an_evaluator_split_must_parse():
  config = get_config("configs/dan.py:synthetic")
  config.evals = {"held_out": config_lib.evaluator(split="test[:10%")}
  assert "config.evals.held_out.split='test[:10%' is not a split" in _problems(config, training=False)


def test_slices_and_joins_are_splits():
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(train_split="train[:80%]+validation", eval_split="train[80%:]", test_split="")
  validation.validate(config, training=False)


def test_pipelines_are_checked_op_by_op_with_their_keys():
  config = get_config("configs/dan.py:synthetic")
  config.input.update(train_pp="resize({size})|jitter()|normalize('imagenet')",
                      eval_pp="resize({size})|normalize('imagenet')|occlude('mouth')")
  config.evals = {"mouth": config_lib.evaluator(pp="occlude('mouth', fill=(1, 2))|" + config.input.eval_pp),
                  "bright": config_lib.evaluator(pp="occlude('eyes', fill=300)|resize({size})|to_float()")}
  message = _problems(config, training=False)
  assert "config.input.train_pp: Unknown preprocessing op 'jitter'" in message
  assert ("config.input.eval_pp: occlude('mouth') comes after to_float()/normalize(), where values are no longer "
          "0–255: put it before them.") in message
  assert "config.evals.mouth.pp: occlude: fill=(1, 2) must be a grey level or an (R, G, B) triple" in message
  assert "config.evals.bright.pp: occlude: fill=300 must be" in message


@pytest.mark.parametrize("data", ["rafdb", "affectnet7", "affectnet8"])
def test_dan_occlusion_option_is_refused_where_it_would_add_nothing(data):
  with pytest.raises(ValueError, match=f"occlusion=yes applies to 'synthetic' only .*, not '{data}': drop it"):
    get_config(f"configs/dan.py:{data},occlusion=yes")
