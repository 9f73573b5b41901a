"""Defaults shared by every config (each file in configs/ starts from `base_config()` and reads
its argument with `parse_arg`), and the one check of a whole config before any work (`validate`)."""

import os
from collections.abc import Sequence

import ml_collections
from ml_collections import config_flags

from fer_jax.errors import ConfigError

SELECT_METRICS = ("", "accuracy", "mean_class_accuracy")
MODEL_DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: `name` picks fer_jax.models.<name>; the rest is read by that module's build().
  config.model = ml_collections.ConfigDict({"name": "", "num_classes": 7, "dtype": "float32"})
  # Loss settings, read by the method's loss().
  config.loss = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict({
      "name": "synthetic",          # a TFDS builder name (fer_jax.data.builders registers ours)
      "data_dir": "",               # where prepared TFDS sets live; "" = TFDS default
      "train_split": "train",
      "eval_split": "test",         # evaluated every eval.every_epochs; model selection uses it
      "test_split": "",             # the final report's split ("" = eval_split)
      "class_order": "fer2013",     # fer_jax.data.labels.CLASS_ORDERS key: the model's output order
      "sampler": "uniform",         # uniform | class_balanced | repeat_factor
      "repeat_factor_threshold": 0.15,
      "max_per_class": 0,           # training split: only the first N per class, in annotation order (0 = all)
      "image_size": 0,              # side the host decodes every image to (0 = the set's own size)
      "cache": "auto",              # decoded uint8 images kept in: auto | none | host | device
      "cache_budget_mb": 0.0,         # device cache limit per device (0 = a quarter of its memory, 2 GiB on CPU)
  })
  config.input = ml_collections.ConfigDict({
      "size": 224,                  # height = width fed to the model
      "channels": 3,
      "train_pp": "",               # fer_jax.data.augment pipeline strings, run on the device
      "eval_pp": "",
  })

  config.batch_size = 256            # global, over all devices and hosts
  config.eval_batch_size = 256
  config.num_epochs = 40
  config.optimizer = ml_collections.ConfigDict({
      "name": "sgd",                # sgd | adam | adamw
      "lr": 0.1,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 0.0,          # SGD/Adam: coupled L2 as in PyTorch; AdamW: decoupled
      "schedule": "constant",       # constant | step | exponential | cosine (per epoch, as PyTorch)
      "step_epochs": 10,
      "gamma": 0.1,
      "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # Adam (PyTorch defaults; Keras uses eps 1e-7)
      "grad_clip_norm": 0.0,        # 0 = no clipping
      "lr_groups": (),              # ((regex over parameter paths, lr multiplier), ...)
      "trainable": "",              # regex: only matching parameters train ("" = all)
      "weight_decay_exclude": "",   # regex: parameters without weight decay
  })

  config.eval = ml_collections.ConfigDict({"every_epochs": 1, "tta": "none"})  # tta: fer_jax.tta.NAMES
  # Model selection on dataset.eval_split: "" (keep the last epoch), "accuracy" or
  # "mean_class_accuracy"; the best epoch is kept in workdir/best.
  config.select_metric = ""
  config.early_stopping_patience = 0  # stop after this many evaluations without a strict gain (0 = never)
  config.restore_best = False         # report with the best epoch's weights instead of the last
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0 = at the end of every epoch
  config.max_checkpoints = 2
  config.init_from = ""              # Orbax checkpoint whose params/batch_stats start the run
  config.init_from_missing = ""      # regex over "params/…" paths that init_from may lack (kept fresh)
  config.init_from_required = False  # a fine-tuning recipe: refuse to start a new run without init_from
  # From this (1-based) epoch on, train with the model in inference mode (BatchNorm on running
  # statistics, frozen; no dropout), as official scripts that never switch back after evaluating
  # do (SCAN-CCI); 0 = always training mode.
  config.inference_mode_from_epoch = 0
  config.data_workers = -1           # decoding processes when not cached (-1 = one per CPU core)
  return config


def define_config_flag(help_text: str = "configs/<method>.py:<dataset>"):
  """Every command's `--config`: a config file and its argument, locked so that a misspelt
  `--config.KEY` override fails with the valid keys. Returns the flag holder."""
  return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def parse_arg(arg: str, config_file: str, data_sets: Sequence[str],
              **options: Sequence[str]) -> ml_collections.ConfigDict:
  """Reads a config file's argument, "<data set>[,<option>=<value>…]" (e.g. "fer2013,stage=B").

  `config_file`: the config's `__file__`; `data_sets`: the valid data-set names; `options`: each
  option's valid values, the first being its default. Returns a ConfigDict with `data` and every
  option; raises ValueError naming the valid arguments on a bad one.
  """
  data, *settings = arg.split(",")
  name, valid = f"configs/{os.path.basename(config_file)}", _valid_args(data_sets, options)
  if data not in data_sets:
    raise ValueError(f"Unknown argument {data!r} for {name}; {valid}")
  parsed = ml_collections.ConfigDict({"data": data, **{key: values[0] for key, values in options.items()}})
  for setting in settings:
    key, _, value = setting.partition("=")
    if value not in options.get(key, ()):
      raise ValueError(f"Unknown option {setting!r} in {arg!r} for {name}; {valid}")
    parsed[key] = value
  return parsed


def _valid_args(data_sets, options) -> str:
  usage = "".join(f",{key}=<{'|'.join(values)}>" for key, values in options.items())
  return f"valid: {', '.join(data_sets)}" + (f" (optionally followed by {usage})" if usage else "") + "."


def validate(config, *, training: bool, new_run: bool = False) -> None:
  """Checks every value and cross-field rule of `config` at once, before any work.

  `training`: the config will train (batch sizes must divide over this run's devices and
  processes). `new_run`: a run starting from scratch, which reads `init_from` (a resumed
  run ignores it). Raises ConfigError listing every problem with the keys and the fix.
  """
  problems = _value_problems(config) + _selection_problems(config)
  if training:
    problems += _training_problems(config, new_run)
  if problems:
    raise ConfigError("The config cannot run:\n  " + "\n  ".join(problems))


def _choice(key: str, value, valid) -> list[str]:
  if value in valid:
    return []
  return [f"config.{key}={value!r} is not one of: {', '.join(repr(v) for v in valid)}."]


def _value_problems(config) -> list[str]:
  from fer_jax import optim
  from fer_jax import tta
  from fer_jax.data import labels
  from fer_jax.data import pipeline
  from fer_jax.models import METHODS
  problems = (_choice("model.name", config.model.name, METHODS)
              + _choice("model.dtype", config.model.dtype, MODEL_DTYPES)
              + _choice("dataset.class_order", config.dataset.class_order, sorted(labels.CLASS_ORDERS))
              + _choice("dataset.sampler", config.dataset.sampler, pipeline.SAMPLERS)
              + _choice("dataset.cache", config.dataset.cache, pipeline.CACHE_MODES)
              + _choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
              + _choice("optimizer.schedule", config.optimizer.schedule, optim.SCHEDULES)
              + _choice("eval.tta", config.eval.tta, tta.NAMES)
              + _choice("input.channels", config.input.channels, (1, 3)))
  if config.dataset.class_order in labels.CLASS_ORDERS:
    classes = labels.class_names(config.dataset.class_order)
    if len(classes) != config.model.num_classes:
      problems.append(f"config.dataset.class_order={config.dataset.class_order!r} names {len(classes)} classes "
                      f"({', '.join(classes)}) but config.model.num_classes={config.model.num_classes}: set one "
                      "to match the other.")
  if config.inference_mode_from_epoch < 0:
    problems.append(f"config.inference_mode_from_epoch={config.inference_mode_from_epoch} must be 0 (never) "
                    "or an epoch number from 1.")
  for key in ("input.size", "batch_size", "eval_batch_size", "num_epochs", "eval.every_epochs", "log_every_steps",
              "max_checkpoints"):
    if _get(config, key) < 1:
      problems.append(f"config.{key}={_get(config, key)} must be at least 1.")
  return problems


def _selection_problems(config) -> list[str]:
  problems = _choice("select_metric", config.select_metric, SELECT_METRICS)
  if config.early_stopping_patience < 0:
    problems.append(f"config.early_stopping_patience={config.early_stopping_patience} must be 0 (never) or more.")
  if not config.select_metric:
    for key, value in (("early_stopping_patience", config.early_stopping_patience),
                       ("restore_best", config.restore_best)):
      if value:
        problems.append(f"config.{key}={value} needs a metric to compare epochs by: set "
                        "--config.select_metric=accuracy (or mean_class_accuracy), or turn it off "
                        f"(--config.{key}={0 if key == 'early_stopping_patience' else False}).")
  return problems


def _training_problems(config, new_run: bool) -> list[str]:
  import jax
  problems = []
  devices, processes = jax.device_count(), jax.process_count()
  for key in ("batch_size", "eval_batch_size"):
    size = _get(config, key)
    if size >= 1 and (size % devices or size % processes):
      fitting = max(devices, size // devices * devices)
      problems.append(f"config.{key}={size} must divide evenly over this run's {devices} devices and {processes} "
                      f"processes: use a multiple of {devices} (e.g. --config.{key}={fitting}).")
  if new_run:
    if config.init_from_required and not config.init_from:
      problems.append("This config fine-tunes a trained model (config.init_from_required): pass "
                      "--config.init_from=CHECKPOINT (see the config file's docstring for which one).")
    if config.init_from and not os.path.exists(os.path.expanduser(config.init_from)):
      problems.append(f"config.init_from={config.init_from} does not exist: pass a training workdir, a checkpoint "
                      "or the output of `python -m fer_jax.convert`.")
  return problems


def _get(config, dotted_key: str):
  for part in dotted_key.split("."):
    config = config[part]
  return config
