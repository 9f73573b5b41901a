"""The one check of a whole config, run before any work: every value and every cross-field rule,
all problems listed at once with the keys and the fix."""

import os
import re

import jax
import ml_collections
import tensorflow_datasets as tfds

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import models
from fer_jax import optim
from fer_jax import tta
from fer_jax.data import augment
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.errors import ConfigError
from fer_jax.models import layers

SELECT_METRICS = ("", "accuracy", "mean_class_accuracy")
SELECT_TIES = ("earliest", "latest")


def validate(config, *, training: bool, new_run: bool = False, resumed: bool = False) -> None:
  """Checks every value and cross-field rule of `config` at once, before any work, after resolving
  config.model.dtype="auto" to this backend's dtype (`models.resolve_dtype`).

  `training`: the config will train (batch sizes must divide over this run's devices and
  processes). `new_run`: a run starting from scratch, which reads `init_from` (a `resumed`
  run ignores it, and keeps the batch it trained at). Raises ConfigError listing every problem with the keys and
  the fix.
  """
  models.resolve_dtype(config)
  problems = (_unknown_key_problems(config) + _value_problems(config) + _optimizer_problems(config)
              + _selection_problems(config) + _evaluator_problems(config) + _init_from_parts_problems(config))
  if training:
    problems += _training_problems(config, new_run, resumed)
  if problems:
    raise ConfigError("The config cannot run:\n  " + "\n  ".join(problems))


# The sections whose keys are the method's (config.model's checked against its module) or the evaluators'.
OPEN_SECTIONS = ("model.", "loss.", "evals.")


def _unknown_key_problems(config) -> list[str]:
  """A key that `config_lib.base_config` lacks, outside OPEN_SECTIONS: a config file's typo (`config.batchsize = 16`,
  `config.optimizer.update(nme="adam")`) adds a key nothing reads, and the run trained with the default."""
  known = [*config_lib.flat(config_lib.base_config()), *(f"optimizer.{key}" for _, key in _own_optimizer_keys(config))]
  problems = []
  for key in config_lib.flat(config):
    if key not in known and not key.startswith(OPEN_SECTIONS):
      section, _, name = key.rpartition(".")
      siblings = [other.rpartition(".")[2] for other in known if other.rpartition(".")[0] == section]
      hint = config_lib.did_you_mean(name, siblings, f"config.{section}." if section else "config.")
      where = f"config.{section}'s keys" if section else "the keys at the top"
      valid = "" if hint else f" {where} are {', '.join(siblings)};"
      yours = ("a schedule's or an optimiser's of yours are the keys its fer_jax.optim.register_schedule or "
               "register_optimizer names" + _read_under(name) if section == "optimizer" else
               "a method's own keys go in config.model or config.loss")
      problems.append(f"config.{key} is read by nothing{hint}:{valid} {yours}.")
  return problems


def _choice(key: str, value, valid) -> list[str]:
  if value in valid:
    return []
  return [f"config.{key}={value!r} is not one of: {', '.join(repr(v) for v in valid)}."]


def _yours(problems: list[str], how: str) -> list[str]:
  """`_choice`'s problems, saying how a value of yours is added (`how`: the call, in the config file)."""
  return [f"{problem.rstrip('.')} (or one of yours: {how} in the config file, docs/extending.md)."
          for problem in problems]


def _read_under(key: str) -> str:
  """" (read under config.optimizer.schedule='warmup_cosine')" where a registered schedule or optimiser reads the
  config.optimizer `key` but the config names another."""
  readers = [f"config.optimizer.{named_by}={name!r}" for named_by, registered in optim.OWN_KEYS.items()
             for name, keys in registered.items() if key in keys]
  return f" (read under {' or '.join(readers)})" if readers else ""


def _own_optimizer_keys(config) -> list[tuple[str, str]]:
  """(config.optimizer key naming it, key it reads) of each config.optimizer key that the optimiser and the schedule
  of yours the config names read (`optim.register_optimizer`'s and `register_schedule`'s `keys`)."""
  return [(named_by, key) for named_by in ("name", "schedule")
          for key in optim.OWN_KEYS[named_by].get(config.optimizer[named_by], ())]


def _method_problems(config) -> list[str]:
  """An unknown method, a config.model key its module has no field for (`models.model_key_problems`), or the
  method's own rules (`Method.config_problems`)."""
  try:
    method = models.get_method(config.model.name)
  except models.UnknownMethodError as error:
    return [str(error)]
  return models.model_key_problems(method, config) + models.loss_key_problems(method, config) + \
      method.config_problems(config)


def _value_problems(config) -> list[str]:
  problems = (_method_problems(config)
              + _choice("model.dtype", config.model.dtype, models.DTYPES)
              + _choice("model.remat", config.model.remat, tuple(layers.REMAT_POLICIES))
              + _yours(_choice("dataset.class_order", config.dataset.class_order, sorted(labels.CLASS_ORDERS)),
                       "fer_jax.data.labels.add_class_order")
              + _choice("dataset.sampler", config.dataset.sampler, pipeline.SAMPLERS)
              + _choice("dataset.cache", config.dataset.cache, pipeline.CACHE_MODES)
              + _yours(_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS),
                       "fer_jax.optim.register_optimizer")
              + _yours(_choice("optimizer.schedule", config.optimizer.schedule, optim.SCHEDULES),
                       "fer_jax.optim.register_schedule")
              + _choice("eval.tta", config.eval.tta, tta.NAMES)
              + _choice("input.channels", config.input.channels, (1, 3)))
  if config.dataset.class_order in labels.CLASS_ORDERS:
    classes = labels.class_names(config.dataset.class_order)
    if len(classes) != config.model.num_classes:
      problems.append(f"config.dataset.class_order={config.dataset.class_order!r} names {len(classes)} classes "
                      f"({', '.join(classes)}) but config.model.num_classes={config.model.num_classes}: set one "
                      "to match the other.")
  if config.model.dtype == "float64" and not jax.config.jax_enable_x64:
    problems.append("config.model.dtype='float64' (the reference mode, docs/fidelity.md) needs 64-bit JAX: "
                    "run with the environment variable JAX_ENABLE_X64=1.")
  if config.inference_mode_from_epoch < 0:
    problems.append(f"config.inference_mode_from_epoch={config.inference_mode_from_epoch} must be 0 (never) "
                    "or an epoch number from 1.")
  for key in ("input.size", "batch_size", "eval_batch_size", "num_epochs", "eval.every_epochs", "log_every_steps",
              "max_checkpoints", "optimizer.step_epochs"):
    if config[key] < 1:
      problems.append(f"config.{key}={config[key]} must be at least 1.")
  for key, zero in (("dataset.image_size", "the set's own size"), ("dataset.max_per_class", "all"),
                    ("dataset.repeat_factor_threshold", "no repeats"),
                    ("dataset.cache_budget_mb", "a quarter of a device's memory"),
                    ("checkpoint_every_steps", "every epoch"), ("optimizer.lr", "no updates"),
                    ("optimizer.weight_decay", "none"), ("optimizer.grad_clip_norm", "no clipping")):
    if config[key] < 0:
      problems.append(f"config.{key}={config[key]} must be 0 ({zero}) or more.")
  if config.data_workers < -1:
    problems.append(f"config.data_workers={config.data_workers} must be −1 (one per CPU core), 0 (threads) or a "
                    "number of processes.")
  for key in ("dataset.train_split", "dataset.eval_split", "dataset.test_split"):
    problems += _split_problems(f"config.{key}", config[key], optional=key == "dataset.test_split")
  for key in ("input.train_pp", "input.eval_pp"):
    problems += _pipeline_problems(f"config.{key}", config[key], config.input.size)
  return problems


def _optimizer_problems(config) -> list[str]:
  """The optimiser's bounded values and its regexes over parameter paths (init_from_missing's too)."""
  problems = []
  for key in ("optimizer.momentum", "optimizer.b1", "optimizer.b2"):
    if not 0 <= config[key] < 1:
      problems.append(f"config.{key}={config[key]} must be in [0, 1).")
  for key in ("optimizer.gamma", "optimizer.eps"):
    if config[key] <= 0:
      problems.append(f"config.{key}={config[key]} must be more than 0.")
  if config.optimizer.nesterov and not (config.optimizer.name == "sgd" and config.optimizer.momentum > 0):
    problems.append(f"config.optimizer.nesterov=True is Nesterov momentum, which needs optimizer.name='sgd' with "
                    f"optimizer.momentum > 0 (here {config.optimizer.name!r}, momentum {config.optimizer.momentum}): "
                    "set the momentum, or --config.optimizer.nesterov=False.")
  for named_by, key in _own_optimizer_keys(config):
    if key not in config.optimizer:
      problems.append(f"config.optimizer.{named_by}={config.optimizer[named_by]!r} reads config.optimizer.{key}, "
                      f"which the config does not set: set it in the config file (config.optimizer.{key} = ...).")
  for key in ("optimizer.trainable", "optimizer.weight_decay_exclude", "init_from_missing"):
    problems += _regex_problems(f"config.{key}", config[key])
  for index, group in enumerate(config.optimizer.lr_groups):
    key = f"config.optimizer.lr_groups[{index}]"
    if not (isinstance(group, (tuple, list)) and len(group) == 2 and isinstance(group[0], str)
            and isinstance(group[1], (int, float)) and group[1] >= 0):
      problems.append(f"{key}={group!r} must be a (regex, learning-rate multiplier ≥ 0) pair, e.g. ('^trunk/', 0.1).")
    else:
      problems += _regex_problems(key, group[0])
  return problems


def _regex_problems(key: str, pattern: str) -> list[str]:
  try:
    re.compile(pattern)
  except re.error as error:
    return [f"{key}={pattern!r} is not a regular expression ({error}): correct it, with a backslash before a "
            "literal ( [ . or +."]
  return []


def _split_problems(key: str, spec: str, optional: bool = False) -> list[str]:
  """A split as TFDS reads it: a name, `+` joins and slices such as 'train[:10%]' or 'test[100:]'."""
  if optional and not spec:
    return []
  try:
    tfds.core.ReadInstruction.from_spec(spec)
  except ValueError:
    return [f"{key}={spec!r} is not a split: give a split name, '+' joins and slices such as 'train[:10%]' "
            "or 'train[100:]' (https://www.tensorflow.org/datasets/splits)."]
  return []


def _selection_problems(config) -> list[str]:
  problems = (_choice("select_metric", config.select_metric, SELECT_METRICS)
              + _choice("select_ties", config.select_ties, SELECT_TIES))
  if config.select_decimals < 0:
    problems.append(f"config.select_decimals={config.select_decimals} must be 0 (unrounded) or more.")
  if config.early_stopping_patience < 0:
    problems.append(f"config.early_stopping_patience={config.early_stopping_patience} must be 0 (never) or more.")
  if not config.select_metric:
    for key, value, off in (("early_stopping_patience", config.early_stopping_patience, 0),
                            ("restore_best", config.restore_best, False)):
      if value:
        problems.append(f"config.{key}={value} needs a metric to compare epochs by: set "
                        f"{errors.config_setting('select_metric', 'accuracy')} (or mean_class_accuracy), or turn it "
                        f"off ({errors.config_setting(key, off)}).")
  return problems


EVALUATOR_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # names become file names and TensorBoard tags
EVALUATOR_TYPES = {key: (bool if isinstance(value, bool) else type(value))
                   for key, value in config_lib.EVALUATOR_DEFAULTS.items()}


def _evaluator_problems(config) -> list[str]:
  """config.evals: names, keys, value types and values of every entry; select_on names a periodic evaluator."""
  problems, periodic = [], {"eval"} if config.eval.every_epochs else set()
  for name, entry in config.evals.items():
    key = f"config.evals.{name}"
    if name in config_lib.BUILT_IN_EVALUATORS or not EVALUATOR_NAME.match(name):
      problems.append(f"{key}: evaluator names are letters, digits, '_' and '-', and not "
                      f"{' or '.join(config_lib.BUILT_IN_EVALUATORS)} (built in: dataset.eval_split and test_split).")
    if not isinstance(entry, (dict, ml_collections.ConfigDict)):
      problems.append(f"{key} must be config_lib.evaluator(...), not {type(entry).__name__}.")
      continue
    unknown = sorted(set(entry.keys()) - set(config_lib.EVALUATOR_DEFAULTS))
    if unknown:
      problems.append(f"{key} has unknown keys {unknown}; valid: {', '.join(config_lib.EVALUATOR_DEFAULTS)}.")
    fields = {**config_lib.EVALUATOR_DEFAULTS, **{k: v for k, v in entry.items() if k not in unknown}}
    wrong = [f"{k}={v!r}" for k, v in fields.items() if type(v) is not EVALUATOR_TYPES[k]]
    if wrong:
      problems.append(f"{key}: {', '.join(wrong)} of the wrong type; the defaults: {config_lib.EVALUATOR_DEFAULTS}.")
      continue
    problems += _evaluator_value_problems(key, fields, config.input)
    if fields["every_epochs"] > 0:
      periodic.add(name)
  if config.select_metric and config.select_on not in periodic:
    problems.append(f"config.select_on={config.select_on!r} must name an evaluator that runs during training "
                    f"(every_epochs ≥ 1): {', '.join(sorted(periodic)) or 'none does'}.")
  return problems


def _evaluator_value_problems(key: str, fields: dict, input_config) -> list[str]:
  problems = _choice(f"{key[len('config.'):]}.tta", fields["tta"], tta.NAMES)
  if not fields["split"]:
    problems.append(f"{key}.split is empty: name a split of the data set (e.g. 'test').")
  else:
    problems += _split_problems(f"{key}.split", fields["split"])
  for name in ("every_epochs", "image_size"):
    if fields[name] < 0:
      problems.append(f"{key}.{name}={fields[name]} must be 0 or more.")
  if fields["data_dir"] and not fields["dataset"]:
    problems.append(f"{key}.data_dir is set without {key}.dataset: name the data set it holds.")
  if fields["pp"]:
    problems += (_eval_pp_placement_problems(f"{key}.pp", fields["pp"]) or
                 _pipeline_problems(f"{key}.pp", config_lib.evaluator_pp(fields["pp"], input_config.eval_pp),
                                    input_config.size))
  return problems


def _eval_pp_placement_problems(key: str, pp: str) -> list[str]:
  """"{eval_pp}" stands for whole stages: inside an op's arguments the run's pipeline would break their quoting."""
  if pp.count(config_lib.EVAL_PP) == augment.split_stages(pp).count(config_lib.EVAL_PP):
    return []
  return [f"{key}={pp!r}: {config_lib.EVAL_PP} stands for the run's whole input.eval_pp, a stage of its own "
          f"between '|' (e.g. \"occlude('mouth')|{config_lib.EVAL_PP}\"), not a value inside an op's arguments."]


def _pipeline_problems(key: str, text: str, size: int) -> list[str]:
  """A pipeline string's ops and arguments (fer_jax.data.pipeline.compile_pipeline also traces it at
  the stored shape, once the data set is open)."""
  try:
    augment.parse(text, size=size)
  except ValueError as e:
    return [f"{key}: {e}"]
  return []


def _training_problems(config, new_run: bool, resumed: bool) -> list[str]:
  problems = []
  devices, processes = jax.device_count(), jax.process_count()
  size = config.batch_size
  if size >= 1 and (size % devices or size % processes):
    fitting = max(devices, size // devices * devices)
    fix = (f"a resumed run keeps the global batch it trained at: resume it on a device count that divides {size}, "
           f"or start a new --workdir with --config.batch_size={fitting} (and --config.init_from=<this workdir> to "
           "start from its weights)" if resumed else
           f"use a multiple of {devices} (e.g. --config.batch_size={fitting})")
    problems.append(f"config.batch_size={size} must divide evenly over this run's {devices} devices and {processes} "
                    f"processes: {fix}.")
  if config.seed < 0 or (config.seed >= config_lib.SEED_LIMIT and not resumed):  # a resumed run keeps its order
    problems.append(f"config.seed={config.seed} must be from 0 to {config_lib.SEED_LIMIT - 1}.")
  if new_run:
    if config.init_from_required and not config.init_from:
      problems.append("This config fine-tunes a trained model (config.init_from_required): pass "
                      "--config.init_from=CHECKPOINT (see the config file's docstring for which one).")
    if config.init_from and not os.path.exists(os.path.expanduser(config.init_from)):
      problems.append(f"config.init_from={config.init_from} does not exist: pass a training workdir, a checkpoint "
                      "or the output of `python -m fer_jax.convert`.")
    elif config.init_from:
      problems += _init_from_problems(config)
  return problems


def random_start_warning(config) -> str | None:
  """For a new run of a recipe that starts from pretrained weights (`config.init_from_recipe`) without them."""
  if config.init_from or not config.init_from_recipe:
    return None
  return (f"The paper's run starts from {config.init_from_recipe}; without --config.init_from this one starts from "
          "random weights and will not reach the paper's accuracy. Convert them (docs/weights.md) "
          "and pass --config.init_from=FOLDER.")


def _init_from_problems(config) -> list[str]:
  """config.init_from must hold a checkpoint of the method the config trains, unless config.init_from_parts takes
  parts of it."""
  try:
    saved = checkpointing.read_meta(config.init_from).get("model", {}).get("name")
  except checkpointing.CheckpointError as error:
    return [f"config.init_from: {error}"]
  if saved and saved != config.model.name and not config.init_from_parts:
    return [f"config.init_from={config.init_from} holds {errors.with_article(saved)} model, but this config trains "
            f"{config.model.name}: pass {errors.with_article(config.model.name)} checkpoint (a run's, a conversion, "
            f"or an earlier stage's best/){_parts_that_fit(config)}."]
  return []


def _parts_that_fit(config) -> str:
  """", or start from the parts of it that fit: --config.init_from_parts=…" for config.init_from of another method."""
  try:  # advice alone: a model the config cannot build, or weights that cannot be read, are said elsewhere
    fitting = checkpointing.fitting_parts(config.init_from,
                                          models.abstract_variables(models.build_model(config), config))
  except Exception:  # pylint: disable=broad-except
    return ", or name the parts of it to start from (--config.init_from_parts)"
  if not fitting:
    return ": no part of it fits this model"
  return f", or start from the parts of it that fit: {checkpointing.parts_flags(fitting, config.init_from_missing)}"


def _init_from_parts_problems(config) -> list[str]:
  try:
    parts = config_lib.init_from_parts(config.init_from_parts)
  except ValueError as error:
    return [f"config.init_from_parts={config.init_from_parts!r}: {error}."]
  if parts and config.init_from_missing:
    return ["config.init_from_parts and config.init_from_missing are both set: with parts, whatever they do not "
            "name starts fresh; drop config.init_from_missing."]
  if parts and not config.init_from:
    return [f"config.init_from_parts={config.init_from_parts!r} names parts of config.init_from, which is not set: "
            "pass --config.init_from=CHECKPOINT too."]
  return []
