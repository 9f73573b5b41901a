"""validation.validate: every shipped config passes, and each cross-field rule names its keys and the fix."""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import main
from fer_jax import models
from fer_jax import validation
from fer_jax.errors import ConfigError, UserError
from helpers import ROOT, assert_user_error, cpu_devices_env, get_config, load_script, shipped_configs

SHIPPED = shipped_configs()
FINE_TUNING = ["configs/scan_cci.py:sfew"] + [f"configs/lhcnet.py:{d},stage={s}" for d in ("fer2013", "synthetic")
                                               for s in ("A2", "A3", "B", "C")]


def test_the_shipped_configs_are_every_data_set_of_every_method_and_their_options():
  assert {"configs/dan.py:synthetic,occlusion=yes", "configs/lhcnet.py:synthetic,stage=C",
          "configs/scan_cci.py:sfew", "configs/apvit.py:ferplus"} <= set(SHIPPED)
  assert "configs/dan.py:rafdb,occlusion=yes" not in SHIPPED  # refused: occlusion=yes is synthetic-only
  assert {spec.partition(":")[0] for spec in SHIPPED} == {f"configs/{m}.py" for m in ("apvit", "dan", "lhcnet",
                                                                                       "scan_cci")}


CONFIG_FILES = sorted({spec.partition(":")[0] for spec in SHIPPED}) + ["examples/plain_resnet_config.py",
                                                                       "examples/dan_confidence_penalty_config.py"]


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_a_data_set_named_without_its_settings_is_refused(path, monkeypatch):
  """A name added to a config's DATA_SETS alone was given the synthetic CPU demo's settings (each config ended with
  `else:  # synthetic`); the arguments are the keys of SETTINGS, each data set's settings."""
  monkeypatch.chdir(ROOT)
  module = load_script(path, "config_module")
  valid = ", ".join(module.DATA_SETS)
  module.DATA_SETS = (*module.DATA_SETS, "newset")
  with pytest.raises(ValueError, match=rf"^Unknown argument 'newset' for {path}; valid: {valid}\b"):
    module.get_config("newset")


def test_a_config_file_s_own_error_names_the_file_and_no_flag_help(tmp_path):
  """A mistake inside a config file ended "(--helpshort lists the flags)", naming neither the file nor a fix."""
  config_file = tmp_path / "my_config.py"
  config_file.write_text("from fer_jax import config_lib\n\n\ndef get_config():\n"
                         "  config = config_lib.base_config()\n"
                         "  config.evals.occluded = config_lib.evaluator(splt='test')\n  return config\n")
  result = subprocess.run([sys.executable, "-m", "fer_jax.main", f"--config={config_file}",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                          text=True, timeout=300)
  assert_user_error(result, f"error: the config file {config_file}: Unknown evaluator keys ['splt'] (did you mean "
                            "split?); valid: dataset, data_dir, split,")
  assert "helpshort" not in result.stderr


def test_an_unknown_argument_names_the_config_file_as_given(tmp_path, monkeypatch):
  """`cd examples && … --config=plain_resnet_config.py:rafdb` printed "Unknown argument 'rafdb' for
  configs/plain_resnet_config.py", a file that is not there: the file is named relative to the working folder (as
  --config gives it), or absolute outside it."""
  result = subprocess.run([sys.executable, "-m", "fer_jax.main", "--config=plain_resnet_config.py:rafdb",
                           f"--workdir={tmp_path / 'run'}"], cwd=os.path.join(ROOT, "examples"),
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
  assert_user_error(result, "Unknown argument 'rafdb' for plain_resnet_config.py; valid: synthetic.")
  result = subprocess.run([sys.executable, "-m", "fer_jax.main", "--config=../configs/dan.py:raf",
                           f"--workdir={tmp_path / 'run'}"], cwd=os.path.join(ROOT, "examples"),
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
  assert_user_error(result, "Unknown argument 'raf' for ../configs/dan.py; valid: rafdb, affectnet7, affectnet8, "
                    "synthetic (optionally followed by ,occlusion=<no|yes>).")
  monkeypatch.chdir(tmp_path)
  module = load_script("configs/dan.py", "config_module")
  with pytest.raises(ValueError, match=rf"^Unknown argument 'raf' for {ROOT}/configs/dan\.py; valid: rafdb, "):
    module.get_config("raf")


@pytest.mark.parametrize("spec", SHIPPED)
def test_every_shipped_config_is_valid(spec, tmp_path):
  config = get_config(spec)
  validation.validate(config, training=False)
  if config.init_from_required:  # the checkpoint of the stage before (test_fine_tuning_needs_init_from…)
    config.init_from = checkpointing.save_model(str(tmp_path), {"params": {"w": jnp.ones(2)}}, config)
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


@pytest.mark.parametrize("resumed, fix", [
    (False, "use a multiple of 3 (e.g. --config.batch_size=30)."),
    (True, "a resumed run keeps the global batch it trained at: resume it on a device count that divides 32, or start "
           "a new --workdir with --config.batch_size=30 (and --config.init_from=<this workdir> to start from its "
           "weights).")])
def test_a_batch_that_does_not_divide_over_the_devices_is_told_the_fix_that_works(monkeypatch, resumed, fix):
  """A run resumed on 3 devices was told to use batch 30, which the checkpoint then refused (it trained at 32)."""
  monkeypatch.setattr(validation.jax, "device_count", lambda: 3)
  config = get_config("configs/dan.py:synthetic")
  config.batch_size = 32
  assert _problems(config, training=True, resumed=resumed) == (
      "The config cannot run:\n  config.batch_size=32 must divide evenly over this run's 3 devices and 1 processes: "
      + fix)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_the_data_order_cannot_take_is_refused_before_training(seed):
  """Seed -1 stopped in the data pipeline with NumPy's traceback; seed 2**32 trained its first epoch in seed 0's
  second epoch's order (NumPy seeds from the 32-bit words of [seed, epoch])."""
  config = get_config("configs/dan.py:synthetic")
  config.seed = seed
  assert _problems(config, training=True, new_run=True) == (
      f"The config cannot run:\n  config.seed={seed} must be from 0 to 4294967295.")
  validation.validate(config, training=False)  # evaluating draws no data order
  config.seed = 2**32 - 1
  validation.validate(config, training=True, new_run=True)


@pytest.mark.parametrize("spec", FINE_TUNING)
def test_fine_tuning_needs_init_from_only_when_a_new_run_starts(spec):
  config = get_config(spec)
  assert "pass --config.init_from=CHECKPOINT" in _problems(config, training=True, new_run=True)
  validation.validate(config, training=True, new_run=False)  # resuming ignores init_from
  validation.validate(config, training=False)                 # evaluation, prediction, benchmarks


def test_only_the_fine_tuning_configs_need_init_from():
  assert sorted(spec for spec in SHIPPED if get_config(spec).init_from_required) == sorted(FINE_TUNING)


PRETRAINED_START = ([f"configs/dan.py:{a}" for a in ("rafdb", "affectnet7", "affectnet8")]
                    + [f"configs/apvit.py:{a}" for a in ("rafdb", "ferplus", "affectnet7", "affectnet8")]
                    + [f"configs/scan_cci.py:{a}" for a in ("rafdb", "ferplus", "affectnet7", "affectnet8")]
                    + ["configs/lhcnet.py:fer2013"])


def test_a_random_start_is_warned_of_where_the_paper_starts_from_pretrained_weights():
  """The official DAN, APViT and SCAN-CCI scripts load their pretrained backbones by default, LHC-Net's stage A1
  its ImageNet ResNet34v2; fine-tuning configs refuse to start without init_from instead."""
  warned = [spec for spec in SHIPPED if validation.random_start_warning(get_config(spec))]
  assert sorted(warned) == sorted(PRETRAINED_START)
  config = get_config("configs/scan_cci.py:rafdb")
  assert validation.random_start_warning(config) == (
      "The paper's run starts from the VGGFace2 ResNet-50 (vgg_msceleb_resnet50_ft_weight.pkl); without "
      "--config.init_from this one starts from random weights and will not reach the paper's accuracy. Convert them "
      "(docs/weights.md) and pass --config.init_from=FOLDER.")
  config.init_from = "converted/scan_init"
  assert validation.random_start_warning(config) is None


def test_init_from_must_exist(tmp_path):
  config = get_config("configs/dan.py:synthetic")
  config.init_from = str(tmp_path / "missing")
  assert f"config.init_from={tmp_path / 'missing'} does not exist" in _problems(config, training=True, new_run=True)


def test_init_from_must_hold_a_checkpoint_of_the_method_trained(tmp_path):
  """Another method's checkpoint was read after all the data was decoded, and refused with ~1,700 characters of
  parameter paths."""
  dan = get_config("configs/dan.py:synthetic")
  checkpointing.save_model(str(tmp_path / "dan"), {"params": {"w": jnp.ones(2)}}, dan)
  config = get_config("configs/scan_cci.py:synthetic")
  config.init_from = str(tmp_path / "dan")
  assert (f"config.init_from={tmp_path / 'dan'} holds a dan model, but this config trains scan_cci: pass a scan_cci "
          "checkpoint (a run's, a conversion, or an earlier stage's best/): no part of it fits this model.") \
      in _problems(config, training=True, new_run=True)
  validation.validate(config, training=True, new_run=False)  # a resumed run ignores init_from
  (tmp_path / "empty").mkdir()
  config.init_from = str(tmp_path / "empty")
  assert f"config.init_from: No checkpoint found at {tmp_path / 'empty'}" in _problems(config, training=True,
                                                                                       new_run=True)
  dan.init_from = str(tmp_path / "dan")
  validation.validate(dan, training=True, new_run=True)


def test_an_unknown_class_order_names_how_to_add_one():
  config = get_config("configs/dan.py:synthetic")
  config.dataset.class_order = "valence"
  assert ("config.dataset.class_order='valence' is not one of: 'affectnet7', " in _problems(config, training=False)
          and "(or one of yours: fer_jax.data.labels.add_class_order in the config file, docs/extending.md)." in
          _problems(config, training=False))


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


def test_a_key_no_one_reads_is_named_with_the_key_it_may_stand_for():
  """A config file's `config.batchsize = 16` or `config.optimizer.update(nme="adam")` added a key nothing read: the
  run trained at the default batch with SGD, without a word (locking covers the command line's overrides only)."""
  config = get_config("configs/dan.py:synthetic")
  config.batchsize = 16
  config.optimizer.update(nme="adam")
  config.dataset.provenance = "mine"
  config.loss.partition_weight = 0.5  # the method's own keys: its loss reads them
  config.model.extra_width = 2  # checked apart, against the module's fields
  problems = _problems(config, training=False).splitlines()[1:]
  why = "a method's own keys go in config.model or config.loss."
  dataset_keys = ", ".join(get_config("configs/dan.py:synthetic").dataset.keys())
  assert problems[:3] == [f"  config.batchsize is read by nothing (did you mean config.batch_size?): {why}",
                          f"  config.dataset.provenance is read by nothing: config.dataset's keys are {dataset_keys}; "
                          f"{why}",
                          "  config.optimizer.nme is read by nothing (did you mean config.optimizer.name?): a "
                          "schedule's or an optimiser's of yours are the keys its fer_jax.optim.register_schedule or "
                          "register_optimizer names."]
  assert len(problems) == 4 and "config.model.extra_width" in problems[3]


@pytest.mark.parametrize("spec, key, message", [
    ("configs/dan.py:synthetic", "afinity_weight", "(did you mean affinity_weight?): rename or remove it (or, for a "
                                                   "method of yours whose loss reads it, name it in its Method's "
                                                   "loss_keys); its keys are affinity_weight, partition_weight."),
    ("configs/apvit.py:synthetic", "label_smoothing", ": rename or remove it (or, for a method of yours whose loss "
                                                      "reads it, name it in its Method's loss_keys); its keys are "
                                                      "none.")])
def test_a_loss_key_the_method_s_loss_does_not_read_is_named(spec, key, message):
  """DAN's `config.loss.afinity_weight = 0.5` in a config file trained with the default weight, without a word."""
  config = get_config(spec)
  config.loss[key] = 0.5
  assert f"config.loss.{key} is not a key of the loss of method {config.model.name!r} {message}".replace(" :", ":") \
      in _problems(config, training=False)


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


def test_evaluator_entries_partly_written_or_not_dicts_reach_validation_from_main():
  """main checks paths for URLs before validation: it read every entry's data_dir, and crashed (AttributeError)."""
  config = get_config("configs/dan.py:synthetic")
  config.evals = {"partial": {"split": "test"}, "text": "test_occlusion",
                  "bucket": {"dataset": "rafdb", "data_dir": "gs://bucket/tfds"}}
  with pytest.raises(UserError, match=r"^config\.evals\.bucket\.data_dir=gs://bucket/tfds is a URL"):
    main.reject_urls(config)
  del config.evals["bucket"]
  main.reject_urls(config)
  assert _problems(config, training=False) == "The config cannot run:\n  config.evals.text must be config_lib.evaluator(...), not str."
  del config.evals["text"]
  validation.validate(config, training=False)
  assert evaluate.evaluator_specs(config)["partial"].split == "test"  # the other keys take their defaults


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
  assert "config.evals.mouth.pp: occlude: fill=(1, 2) must be a number or one number per channel (R, G, B)" in message
  assert "config.evals.bright.pp: occlude: fill=300 must be" in message


@pytest.mark.parametrize("key, pp, message", [
    ("train_pp", "resize({size})|normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])",
     "normalize: mean=[123.675, 116.28, 103.53] is on the 0–255 scale, but normalize divides the pixels by 255 "
     "first: pass it divided by 255, mean=[0.485, 0.456, 0.406]."),
    ("eval_pp", "resize({size})|normalize('imagenet')|random_erasing(p=0.5, scale=(2, 33))",
     "random_erasing: scale=(2, 33) must be a (min, max) pair of fractions of the image's area, 0 <= min <= max <= 1."),
    ("train_pp", "resize({size})|rotate(-10)|normalize('imagenet')",
     "rotate: degrees=-10 must be a number of degrees, 0 or more, or a (min, max) pair of them."),
    ("eval_pp", "resize({size})|normalize(mean=(0.5, 0.5), std=(0.5, 0.5))",
     "normalize: mean=(0.5, 0.5) must be a number or one number per channel (R, G, B)."),
], ids=["mean_0_255", "erasing_scale_above_1", "negative_rotation", "two_channel_mean"])
def test_an_op_argument_off_its_scale_or_range_names_its_key_and_fix(key, pp, message):
  """normalize((0.5, 0.5), ...) failed only inside the first traced step, once the data set was open (images have
  1 or 3 channels); rotate(-10) turned every image by 10°."""
  config = get_config("configs/dan.py:synthetic")
  config.input[key] = pp
  assert f"config.input.{key}: {message}" in _problems(config, training=False)


def test_eval_pp_placeholder_inside_an_ops_arguments_is_refused_naming_where_it_goes():
  """Substituted inside quotes, APViT's eval_pp (its own quotes) broke them: a parse error quoting text never written."""
  config = get_config("configs/apvit.py:synthetic")
  config.evals = {"nested": config_lib.evaluator(pp="random_apply(1.0, '{eval_pp}')"),
                  "stage": config_lib.evaluator(pp="gray_to_rgb() | {eval_pp}")}
  message = _problems(config, training=False)
  assert ("config.evals.nested.pp=\"random_apply(1.0, '{eval_pp}')\": {eval_pp} stands for the run's whole "
          "input.eval_pp, a stage of its own between '|'") in message
  assert "cv2_bilinear" not in message and "evals.stage" not in message


@pytest.mark.parametrize("data", ["rafdb", "affectnet7", "affectnet8"])
def test_dan_occlusion_option_is_refused_where_it_would_add_nothing(data):
  with pytest.raises(ValueError, match=f"occlusion=yes applies to 'synthetic' only .*, not '{data}': drop it"):
    get_config(f"configs/dan.py:{data},occlusion=yes")


@pytest.mark.parametrize("key, value, expected", [
    ("optimizer.step_epochs", 0, "config.optimizer.step_epochs=0 must be at least 1"),
    ("optimizer.grad_clip_norm", -1.0, "config.optimizer.grad_clip_norm=-1.0 must be 0 (no clipping) or more"),
    ("optimizer.lr", -0.1, "config.optimizer.lr=-0.1 must be 0 (no updates) or more"),
    ("optimizer.weight_decay", -1e-4, "config.optimizer.weight_decay=-0.0001 must be 0 (none) or more"),
    ("optimizer.gamma", 0.0, "config.optimizer.gamma=0.0 must be more than 0"),
    ("optimizer.eps", 0.0, "config.optimizer.eps=0.0 must be more than 0"),
    ("optimizer.momentum", 1.0, "config.optimizer.momentum=1.0 must be in [0, 1)"),
    ("optimizer.b1", -0.1, "config.optimizer.b1=-0.1 must be in [0, 1)"),
    ("optimizer.b2", 1.0, "config.optimizer.b2=1.0 must be in [0, 1)"),
    ("dataset.repeat_factor_threshold", -1.0,
     "config.dataset.repeat_factor_threshold=-1.0 must be 0 (no repeats) or more")])
def test_numeric_values_out_of_range(key, value, expected):
  config = get_config("configs/dan.py:synthetic")
  section, name = key.split(".")
  config[section][name] = value
  assert expected in _problems(config, training=False)


@pytest.mark.parametrize("key, value, expected", [
    ("optimizer.trainable", "(bias", "config.optimizer.trainable='(bias' is not a regular expression (missing ), "
     "unterminated subpattern at position 0)"),
    ("optimizer.weight_decay_exclude", "bias|(", "config.optimizer.weight_decay_exclude='bias|(' is not a regular"),
    ("optimizer.lr_groups", (("^trunk/", 0.1), ("head[", 2.0)),
     "config.optimizer.lr_groups[1]='head[' is not a regular expression (unterminated character set at position 4)"),
    ("init_from_missing", "^params/lhc[", "config.init_from_missing='^params/lhc[' is not a regular expression")])
def test_regexes_must_compile(key, value, expected):
  config = get_config("configs/dan.py:synthetic")
  if "." in key:
    section, key = key.split(".")
    config[section][key] = value
  else:
    config[key] = value
  message = _problems(config, training=False)
  assert expected in message and "with a backslash before a literal" in message


def test_lr_groups_are_regex_and_multiplier_pairs():
  config = get_config("configs/dan.py:synthetic")
  config.optimizer.lr_groups = (("^trunk/", -0.1), ("^head/",))
  message = _problems(config, training=False)
  assert "config.optimizer.lr_groups[0]=('^trunk/', -0.1) must be a (regex, learning-rate multiplier ≥ 0)" in message
  assert "config.optimizer.lr_groups[1]=('^head/',) must be a (regex" in message


@pytest.mark.parametrize("spec, overrides, expected", [
    ("configs/apvit.py:rafdb", {"depth": 9},
     "config.model.atp_keep_rates=(1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9) needs one keep rate in (0, 1] per block, "
     "config.model.depth=9: give 9 rates or change the depth"),
    ("configs/apvit.py:rafdb", {"atp_keep_rates": (1.0,) * 7 + (1.5,)}, "needs one keep rate in (0, 1] per block"),
    ("configs/apvit.py:rafdb", {"num_heads": 7},
     "config.model.num_heads=7 must divide config.model.width=768: choose a head count that does"),
    ("configs/apvit.py:rafdb", {"ir_stage_sizes": (3, 4)}, "config.model.ir_stage_sizes=(3, 4) needs the unit counts "
                                                           "of the 3 IR stages APViT uses"),
    ("configs/dan.py:rafdb", {"num_heads": 0}, "config.model.num_heads=0 must be at least 1 (the paper's 4)"),
    ("configs/dan.py:rafdb", {"num_centres": 6}, "config.model.num_centres=6 must be at least "
                                                 "config.model.num_classes=7: the affinity loss keeps a centre per"),
    ("configs/lhcnet.py:fer2013,stage=B", {"lhc_heads": (8, 8, 7, 7)},
     "config.model.lhc_heads=(8, 8, 7, 7) needs one entry per LHC module: give 5"),
    ("configs/lhcnet.py:fer2013,stage=B", {"lhc_embed_dims": (196, 196, 56, 14, 0)},
     "config.model.lhc_embed_dims=(196, 196, 56, 14, 0): every entry must be at least 1"),
    ("configs/lhcnet.py:fer2013,stage=C", {"controller_init": (0.0, 0.0)},
     "config.model.controller_init=(0.0, 0.0) needs one entry per LHC module: give 5")])
def test_per_block_model_values_are_checked_before_any_work(spec, overrides, expected):
  config = get_config(spec)
  config.model.update(overrides)
  assert expected in _problems(config, training=False)


def test_scan_cci_class_counts_must_give_one_positive_count_per_class():
  config = get_config("configs/scan_cci.py:rafdb")
  config.loss.update(class_weights="effective_number", class_counts=(10, 20, 30))
  assert ("config.loss.class_counts=(10, 20, 30) needs 7 positive counts (config.model.num_classes), one per class "
          "in the model's class order: give them, or leave it () to count the training split") in \
      _problems(config, training=False)
  config.loss.class_counts = (10, 20, 30, 40, 50, 60, 0)
  assert "config.loss.class_counts=(10, 20, 30, 40, 50, 60, 0) needs 7 positive counts" in \
      _problems(config, training=False)
  config.loss.update(class_counts=(), class_weights="inverse")
  assert "config.loss.class_weights='inverse' is not one of: '', 'effective_number'" in \
      _problems(config, training=False)
  config.loss.update(class_weights="effective_number", effective_number_beta=1.0)  # a NaN loss, told to lower the lr
  assert "config.loss.effective_number_beta=1.0 must be in [0, 1) (at 1 every class weight is 0/0" in \
      _problems(config, training=False)


@pytest.mark.parametrize("name, momentum", [("sgd", 0.0), ("adam", 0.9), ("keras_adam", 0.0)])
def test_nesterov_without_sgd_momentum_is_refused(name, momentum):
  """optax's sgd drops nesterov without momentum (every LHC-Net stage's SGD has none), and Adam has no such flag:
  the setting did nothing, without a word (PyTorch's SGD raises)."""
  config = get_config("configs/dan.py:synthetic")
  config.optimizer.update(name=name, momentum=momentum, nesterov=True)
  assert (f"config.optimizer.nesterov=True is Nesterov momentum, which needs optimizer.name='sgd' with "
          f"optimizer.momentum > 0 (here {name!r}, momentum {momentum})") in _problems(config, training=False)
  config.optimizer.update(name="sgd", momentum=0.9)
  validation.validate(config, training=False)


@pytest.mark.parametrize("key, value, expected", [
    ("checkpoint_every_steps", -1, "config.checkpoint_every_steps=-1 must be 0 (every epoch) or more"),
    ("data_workers", -2, "config.data_workers=-2 must be −1 (one per CPU core), 0 (threads) or a number"),
    ("dataset.cache_budget_mb", -5.0,
     "config.dataset.cache_budget_mb=-5.0 must be 0 (a quarter of a device's memory) or more")])
def test_negative_counts_and_budgets_are_refused(key, value, expected):
  """A negative checkpoint_every_steps saved every step, data_workers=-2 started processes, and a negative cache
  budget failed later as 'exceeds the device cache budget of -5,120 KiB'."""
  config = get_config("configs/dan.py:synthetic")
  config.update_from_flattened_dict({key: value})
  assert expected in _problems(config, training=False)


def test_method_rules_are_listed_beside_other_problems():
  config = get_config("configs/apvit.py:rafdb")
  config.model.update(dtype="fp8", depth=3)
  message = _problems(config, training=False)
  assert "config.model.dtype='fp8' is not one of" in message and "config.model.depth=3: give 3 rates" in message


def test_a_misspelt_model_key_is_listed_with_the_other_problems_before_any_work():
  config = get_config("configs/scan_cci.py:synthetic")
  config.model.shared_local_unit = False
  config.batch_size = 0
  message = _problems(config, training=False)
  assert "config.model.shared_local_unit is not a key of method 'scan_cci' (did you mean shared_local_units?)" in message
  assert "config.batch_size=0 must be at least 1." in message


def test_a_method_given_its_module_class_as_build_is_told_to_build_it_from_the_config():
  """Method(build=MyModule) failed inside the module's first layer, once the data was read, with Python's own
  TypeError ('ConfigDict' + int): MyModule(config.model) took the config for its first field."""
  class Plain(nn.Module):
    num_classes: int = 7

  with pytest.raises(ConfigError, match=r"^Method\(build=Plain\) is given the module class.*functools\.partial\("
                                        r"fer_jax\.models\.from_config, Plain\)"):
    models.Method(build=Plain)
  models.Method(build=functools.partial(models.from_config, Plain))
