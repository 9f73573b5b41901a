"""Defaults shared by every config (each file in configs/ starts from `base_config()` and reads
its argument with `parse_arg`), the `--config` flag and the `--config` arguments of a command line;
`fer_jax.validation` checks a whole config."""

import difflib
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import shlex
from collections.abc import Collection, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

# One evaluator of `config.evals`: what `evaluator()` fills in; "" and 0 take the run's own value.
EVALUATOR_DEFAULTS = {
    "dataset": "",            # a TFDS builder name ("" = config.dataset.name); classes are mapped by name
    "data_dir": "",           # "" = config.dataset.data_dir
    "split": "test",
    "image_size": 0,          # side the host decodes images to (0 = config.dataset.image_size; for another data
                              # set than the run's, its own fixed size, if it has one)
    "pp": "",                 # device pipeline string ("" = config.input.eval_pp, which "{eval_pp}" in it stands for)
    "tta": "none",            # fer_jax.tta.NAMES; reported beside the single pass
    "every_epochs": 0,        # also evaluate every N epochs during training (0 = only in the final report)
    "skip_if_missing": False,  # a split the prepared set lacks is skipped with a warning instead of an error
}
# Evaluators every run has, made from config.dataset and config.eval; config.evals adds others.
BUILT_IN_EVALUATORS = ("eval", "test")


# In an evaluator's pipeline string, the run's own `config.input.eval_pp` (as set when the run starts, overrides too).
EVAL_PP = "{eval_pp}"


def evaluator_pp(pp: str, eval_pp: str) -> str:
  """The pipeline an evaluator's `pp` stands for, given the run's `eval_pp`."""
  return pp.replace(EVAL_PP, eval_pp) if pp else eval_pp


def evaluator(**fields) -> ml_collections.ConfigDict:
  """One entry of `config.evals`: EVALUATOR_DEFAULTS with `fields` in place."""
  unknown = sorted(set(fields) - set(EVALUATOR_DEFAULTS))
  if unknown:
    hint = did_you_mean(unknown[0], list(EVALUATOR_DEFAULTS))
    raise ValueError(f"Unknown evaluator keys {unknown}{hint}; valid: {', '.join(EVALUATOR_DEFAULTS)}.")
  return ml_collections.ConfigDict({**EVALUATOR_DEFAULTS, **fields})


# Keys that say where the data is read from, how fast, what is logged or kept, and what the recipe starts from (a
# note for the warning): not what a run trains.
NOT_OF_THE_TRAINING = ("dataset.data_dir", "dataset.cache", "dataset.cache_budget_mb", "data_workers",
                       "log_every_steps", "checkpoint_every_steps", "max_checkpoints", "init_from_recipe")
# Config keys that do not change a run's reported numbers: where and how often things are read, written and logged,
# the evaluation batch (its padding is masked) and what the backward pass recomputes (the same gradients).
NOT_OF_THE_RESULTS = (*NOT_OF_THE_TRAINING, "eval_batch_size", "model.remat")
INIT_FROM_KEYS = ("init_from", "init_from_")  # where a new run starts from: a resumed run reads none of them
# What a resumed run may change besides (a key, or a prefix ending in "." or "_"): the learning rate and gradient
# clipping (what a non-finite loss calls for), how long it trains (not under a schedule num_epochs shapes:
# NUM_EPOCHS_FREE_SCHEDULES), what it evaluates, reports, selects and stops on, where a new run would start
# from, and what the backward pass recomputes (the same gradients, `config.model.remat`).
RESUME_MAY_CHANGE = NOT_OF_THE_TRAINING + (
    "optimizer.lr", "optimizer.grad_clip_norm", "num_epochs", "eval.", "evals.", "eval_batch_size",
    "dataset.test_split", "select_", "restore_best", "early_stopping_patience", "init_from", "init_from_missing",
    "init_from_parts", "init_from_required", "model.remat")


def differences(recorded: dict, config, ignored: Sequence[str], unshared: str = "") -> list[tuple[str, object, object]]:
  """(key, `config`'s value, the recorded one) for each flat key in which `config` differs from a `recorded` flat
  config, but for the keys `ignored` names (`named_by`). Keys one side lacks (another fer_jax version's) are not
  compared, but for those under the prefix `unshared` (e.g. evaluators added or removed)."""
  current = flat(config)
  keys = (set(recorded) & set(current)) | {key for key in set(recorded) ^ set(current) if unshared and
                                           key.startswith(unshared)}
  return [(key, current.get(key), recorded.get(key)) for key in sorted(keys)
          if not named_by(key, ignored) and recorded.get(key) != current.get(key)]


# config.seed is below this: NumPy seeds each epoch's order from the 32-bit words of [seed, epoch], so seed 2**32 + s
# would train epoch 0 in seed s's epoch-1 order (fer_jax.data.pipeline.epoch_indices), and it takes no negative seed.
SEED_LIMIT = 2**32

# The schedules whose rates num_epochs does not change (fer_jax.optim's); cosine's, and those of yours, it may.
NUM_EPOCHS_FREE_SCHEDULES = ("constant", "step", "exponential")


def num_epochs_shaped(config) -> str:
  """Said beside a num_epochs a resume or a seed may not change: " (it shapes the cosine schedule)"."""
  return f" (it shapes the {config.optimizer.schedule} schedule)"


# Keys added since configs were first recorded that change what a run trains, with the value that gives what runs
# recorded before them trained: such a record is read with it, so that a new default does not change a resumed run.
ADDED_SINCE = {"dataset.train_jpeg_round_trip": False,  # 2026-12-06: LHC-Net's training images round-tripped
               "dataset.drop_last": True}  # 2026-12-06: an epoch's last, short batch trained on


def as_trained(recorded: dict) -> dict:
  """A run's recorded flat config with ADDED_SINCE's values for the keys it lacks: what the run trained with."""
  return {**ADDED_SINCE, **recorded}


def resume_differences(saved: dict, config) -> list[tuple[str, object, object]]:
  """`differences` in the keys a run resumed from a checkpoint recording `saved` (its flat config) must not change
  (all but RESUME_MAY_CHANGE's; num_epochs too under a schedule it shapes), a record without a key of
  ADDED_SINCE read as its earlier behaviour (`as_trained`): where nothing is recorded (checkpoints before 2026-12-05),
  only ADDED_SINCE's keys are compared."""
  saved = as_trained(saved)
  shaped = flat(config).get("optimizer.schedule", "constant") not in NUM_EPOCHS_FREE_SCHEDULES
  return differences(saved, config, [key for key in RESUME_MAY_CHANGE if not (key == "num_epochs" and shaped)])


def named_by(key: str, entries) -> bool:
  """Whether the flat `key` is one of `entries`: a key, or a prefix ending in "." or "_" (RESUME_MAY_CHANGE's)."""
  return any(key == entry or (entry[-1] in "._" and key.startswith(entry)) for entry in entries)


def override(key: str, value) -> str:
  """The command-line argument setting flat `key` to a value of `flat`'s (lists as tuples), quoted for a shell."""
  text = repr(tuple(value)) if isinstance(value, list) else value if isinstance(value, str) else json.dumps(value)
  return shlex.quote(f"--config.{key}={text}")


# RAF-DB's occlusion and pose test subsets (fer_jax.data.builders.rafdb), present when their list
# files were there at prepare time; skipped with a warning otherwise.
SUBSETS = ("occlusion", "pose30", "pose45")  # Wang et al.'s lists, prepared as "<split>_<subset>"


def subset_evaluators(split: str = "test") -> ml_collections.ConfigDict:
  """config.evals entries for the occlusion and pose subsets of `split` (RAF-DB and FERPlus: test,
  AffectNet: validation), named after the subsets; skipped where the set lacks them."""
  return ml_collections.ConfigDict({subset: evaluator(split=f"{split}_{subset}", skip_if_missing=True)
                                    for subset in SUBSETS})


def synthetic_occlusion_evaluators() -> ml_collections.ConfigDict:
  """The synthetic faces' test split with the mouth, the eyes and the lower face covered
  (fer_jax.data.augment.occlusion) before the run's `input.eval_pp`."""
  return ml_collections.ConfigDict({
      f"occluded_{region}": evaluator(pp=f"occlude('{region}', geometry='synthetic')|{EVAL_PP}")
      for region in ("mouth", "eyes", "mask")})


def module_of_yours(path: str, named_by: str, error: type[Exception]):
  """The module `path` (dotted) of a method or data set of the user's, importable from the working folder or
  PYTHONPATH; `error` naming `named_by` (the key or flag) and the fix when there is no such module."""
  try:
    return importlib.import_module(path)
  except ModuleNotFoundError as missing:
    if not path.startswith(missing.name or "\0"):
      raise  # the module itself imports something missing
    package, _, name = missing.name.rpartition(".")
    hint = did_you_mean(name, _modules_in(package), f"{package}.") if package else ""
    raise error(f"{named_by}: no module {missing.name!r} on the Python path ({os.getcwd()} and PYTHONPATH){hint}: run "
                "from the folder that holds it, or add that folder to PYTHONPATH.") from None


def _modules_in(package: str) -> list[str]:
  """The names of the modules in an importable `package` (none where it cannot be imported)."""
  try:
    return [module.name for module in pkgutil.iter_modules(importlib.import_module(package).__path__)]
  except (ImportError, AttributeError):
    return []


PART = re.compile(r"[\w.-]+(/[\w.-]+)*")  # a variable's path below params/ and batch_stats/: "trunk", "trunk/layer1"


def init_from_parts(text: str) -> dict[str, str]:
  """{source path: target path} of config.init_from_parts ("trunk,features=backbone"); ValueError naming a bad part."""
  parts = {}
  for item in filter(None, (item.strip() for item in text.split(","))):
    source, equals, target = item.partition("=")
    target = target if equals else source
    if not (PART.fullmatch(source) and PART.fullmatch(target)):
      raise ValueError(f"{item!r} is not a part: write NAME (the same in both) or SOURCE=TARGET, each a path of names "
                       "joined by '/' (\"trunk\", \"features=trunk/stem\")")
    if source in parts or target in parts.values():
      raise ValueError(f"{item!r} names {source if source in parts else target!r} again: name each part once")
    parts[source] = target
  return parts


def did_you_mean(key: str, valid: Sequence[str], prefix: str = "", cutoff: float = 0.6) -> str:
  """" (did you mean PREFIX+VALID?)" for the valid key nearest a misspelt `key` (difflib's `cutoff`), or "" where none
  is near."""
  close = difflib.get_close_matches(key, valid, n=1, cutoff=cutoff)
  return f" (did you mean {prefix}{close[0]}?)" if close else ""


def flat(config) -> dict:
  """{"optimizer.lr": 0.1, …}: every key of `config` dotted, values as JSON has them (tuples as lists)."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel  (prepare imports this module, not JAX)
  return json.loads(json.dumps(traverse_util.flatten_dict(config.to_dict(), sep="."), default=str))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: `name` picks fer_jax.models.<name>; the rest is read by that module's build().
  # dtype "auto": bfloat16 compute on a GPU or TPU, float32 on the CPU (fer_jax.models.DTYPES).
  # remat: what each block computes again in the backward pass to save memory
  # (fer_jax.models.layers.REMAT_POLICIES: none | elementwise | blocks).
  config.model = ml_collections.ConfigDict({"name": "", "num_classes": 7, "dtype": "auto", "remat": "none"})
  # Loss settings, read by the method's loss().
  config.loss = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict({
      "name": "",                   # a TFDS builder name (fer_jax.data.builders registers ours); each config sets it
      "data_dir": "",               # where prepared TFDS sets live; "" = TFDS default
      "train_split": "train",
      "eval_split": "test",         # evaluated every eval.every_epochs; model selection uses it
      "test_split": "",             # the final report's split ("" = eval_split)
      "class_order": "fer2013",     # fer_jax.data.labels.CLASS_ORDERS key: the model's output order
      "sampler": "uniform",         # uniform | class_balanced | repeat_factor
      "repeat_factor_threshold": 0.15,
      "max_per_class": 0,           # training split: only the first N per class, in annotation order (0 = all)
      "image_size": 0,              # side the host decodes every image to (0 = the set's own size)
      "train_jpeg_round_trip": False,  # training images resized to input.size, floored, JPEG q100 (LHC-Net's ETL)
      "drop_last": False,           # True: an epoch's examples after its last whole batch are not trained on
      "cache": "auto",              # decoded uint8 images kept in: auto | none | host | device
      "cache_budget_mb": 0.0,         # device cache limit per device in MiB (0 = a quarter of its memory, 2 GiB on CPU)
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
      "name": "sgd",                # sgd | adam | adamw | keras_adam | yours (optim.register_optimizer)
      "lr": 0.1,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 0.0,          # SGD/Adam: coupled L2 as in PyTorch; AdamW: decoupled
      "schedule": "constant",       # constant | step | exponential | cosine | yours (optim.register_schedule)
      "step_epochs": 10,
      "gamma": 0.1,
      "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # Adam (PyTorch defaults; Keras uses eps 1e-7)
      "grad_clip_norm": 0.0,        # 0 = no clipping
      "lr_groups": (),              # ((regex over parameter paths, lr multiplier), ...)
      "trainable": "",              # regex: only matching parameters train ("" = all)
      "weight_decay_exclude": "",   # regex: parameters without weight decay
  })

  # The built-in evaluators: "eval" (dataset.eval_split every eval.every_epochs) and "test"
  # (dataset.test_split, else eval_split, in the final report, also with eval.tta).
  # predictions: the final report writes predictions_<evaluator>.csv, a row per example (fer_jax.evaluate).
  config.eval = ml_collections.ConfigDict({"every_epochs": 1, "tta": "none", "predictions": False})  # tta: tta.NAMES
  # More named evaluators, each `evaluator(...)`: other splits or data sets, occlusions, TTA.
  config.evals = ml_collections.ConfigDict()
  # Model selection on the evaluator `select_on` (one that runs every N epochs): "" (keep the
  # last epoch), "accuracy" or "mean_class_accuracy"; the best epoch is kept in workdir/best.
  config.select_on = "eval"
  config.select_metric = ""
  config.select_decimals = 0          # compare the metric rounded to this many decimals (0 = unrounded)
  config.select_ties = "earliest"     # earliest | latest: which of equally good epochs is kept
  config.early_stopping_patience = 0  # stop after this many epochs without a strict gain (0 = never)
  config.restore_best = False         # report with the best epoch's weights instead of the last
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0 = at the end of every epoch
  config.max_checkpoints = 2
  config.init_from = ""              # Orbax checkpoint whose params/batch_stats start the run
  config.init_from_missing = ""      # regex over "params/…" paths that init_from may lack (kept fresh)
  # Parts of init_from that start the run, the rest fresh: "trunk" (the same name in both) or "SOURCE=TARGET",
  # comma-separated (e.g. another method's converted backbone for a method of yours); "" = the whole model.
  config.init_from_parts = ""
  config.init_from_required = False  # a fine-tuning recipe: refuse to start a new run without init_from
  config.init_from_recipe = ""       # the weights the paper's run starts from: a new run without init_from warns
  # From this (1-based) epoch on, train with the model in inference mode (BatchNorm on running
  # statistics, frozen; no dropout), as official scripts that never switch back after evaluating
  # do (SCAN-CCI); 0 = always training mode.
  config.inference_mode_from_epoch = 0
  config.data_workers = -1           # decoding processes when not cached (-1 = one per CPU core)
  return config


def _flag_name(name: str, flag_values) -> str:
  """The flag an argument names: `noNAME` sets the boolean flag NAME to false."""
  if name not in flag_values and name.startswith("no") and name[2:] in flag_values and flag_values[name[2:]].boolean:
    return name[2:]
  return name


def config_arguments(argv, flag_values=flags.FLAGS) -> list[str]:
  """The --config and --config.* arguments of the command line `argv` (sys.argv: the program first), without
  --config.seed, each one word (--name=value). Read as absl reads them: --flagfile's files in place, one dash or
  two, `--name value` for a flag that takes a value, `--name` / `--noname` for a boolean, nothing after `--`."""
  arguments, words = [], iter(flag_values.read_flags_from_files(list(argv), force_gnu=False)[1:])
  for word in words:
    if word == "--":
      break
    if not word.startswith("-"):
      continue
    name, has_value, value = word.lstrip("-").partition("=")
    flag = _flag_name(name, flag_values)
    boolean = flag in flag_values and flag_values[flag].boolean
    if not has_value and not boolean:
      value = next(words, "")
    if flag.split(".")[0] == "config" and flag != "config.seed":
      arguments.append(f"--{name}" if boolean and not has_value else f"--{name}={value}")
  return arguments


def define_config_flag(help_text: str = "configs/<method>.py:<dataset>"):
  """Every command's `--config`: a config file and its argument, locked so that a misspelt
  `--config.KEY` override fails with the valid keys. Returns the flag holder."""
  return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


# The options of the config files read in this process, each with the --config argument that sets it: a
# `--config.OPTION` override names it (the config holds no such key).
ARGUMENT_OPTIONS: dict[str, str] = {}


def parse_arg(arg: str, config_file: str, data_sets: Collection[str],
              **options: Sequence[str]) -> ml_collections.ConfigDict:
  """Reads a config file's argument, "<data set>[,<option>=<value>…]" (e.g. "fer2013,stage=B").

  `config_file`: the config's `__file__`; `data_sets`: the valid data-set names (a config's `SETTINGS`, each
  data set's settings by name); `options`: each option's valid values, the first being its default. Returns a
  ConfigDict with `data` and every option; raises ValueError naming the valid arguments on a bad one.
  """
  data, *settings = arg.split(",")
  name, valid = shown_path(config_file), _valid_args(data_sets, options)
  ARGUMENT_OPTIONS.update({key: f"--config={name}:{data},{key}=<{'|'.join(values)}>" for key, values in options.items()})
  if data not in data_sets:
    raise ValueError(f"Unknown argument {data!r} for {name}; {valid}")
  parsed = ml_collections.ConfigDict({"data": data, **{key: values[0] for key, values in options.items()}})
  given = set()
  for setting in settings:
    key, _, value = setting.partition("=")
    if value not in options.get(key, ()):
      raise ValueError(f"Unknown option {setting!r} in {arg!r} for {name}; {valid}")
    if key in given:
      raise ValueError(f"Option {key!r} is given twice in {arg!r} for {name}: keep one.")
    given.add(key)
    parsed[key] = value
  return parsed


def shown_path(path: str) -> str:
  """A config file's path (its `__file__`) as a message names it: as --config gave it where relative (configs/dan.py,
  or plain_resnet_config.py from examples/), else relative to the working folder where it lies under it."""
  if not os.path.isabs(path):
    return os.path.normpath(path)
  relative = os.path.relpath(path)
  return path if relative.split(os.sep)[0] == os.pardir else relative


def _valid_args(data_sets, options) -> str:
  usage = "".join(f",{key}=<{'|'.join(values)}>" for key, values in options.items())
  return f"valid: {', '.join(data_sets)}" + (f" (optionally followed by {usage})" if usage else "") + "."


# The paper configs (configs/<method>.py), in the checkout fer_jax is installed from (pip install -e, README).
PAPER_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def paper_config(method: str):
  """configs/<method>.py of fer_jax's checkout as a module (`config_module`), wherever the config file of yours that
  builds on it lies: `DAN = config_lib.paper_config("dan")`, then `DAN.get_config(arg)`."""
  path = os.path.join(PAPER_CONFIGS, f"{method}.py")
  if not os.path.isfile(path):
    shipped = sorted(name[:-3] for name in os.listdir(PAPER_CONFIGS) if name.endswith(".py") and name[0] != "_") \
        if os.path.isdir(PAPER_CONFIGS) else []
    raise ValueError(f"No paper config {method!r} in {PAPER_CONFIGS}" + (
        f": they are {', '.join(shipped)}." if shipped else
        ": the configs ship with fer_jax's checkout; install fer_jax from it (pip install -e CHECKOUT)."))
  return config_module(path)


def config_module(path: str):
  """A config file (configs/<method>.py) as a module: its get_config and the names it defines."""
  module_spec = importlib.util.spec_from_file_location(f"fer_jax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module
