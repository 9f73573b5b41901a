"""The four methods behind one contract, and the helpers every tool builds and loads models with.

Each method module defines `METHOD = Method(...)`: fer_jax's own are `fer_jax.models.<name>`
(config.model.name = "dan", ...); config.model.name may also be the module path of a method of
yours, importable from where the command runs ("my_methods.plain_resnet"; docs/extending.md).
  build(model_config) -> flax.linen.Module, whose `__call__(images, train)` returns a dict of arrays
      (or tuples of arrays) with at least "logits" ([batch, num_classes], float32, or float64 in the
      float64 reference mode: `layers.at_least_float32`); `functools.partial(from_config, Module)` fills
      the module's fields from config.model, and a config.model key that is neither a field nor one
      every config has (BASE_MODEL_KEYS) is a ConfigError;
  loss(outputs, labels, loss_config) -> (scalar loss, dict of scalar metrics, logged to TensorBoard as
      train/<name>, none named as TRAIN_STEP_METRICS), by default
      the mean softmax cross-entropy (`cross_entropy`); loss_config is config.loss, whose
      `class_counts=()`, where it has that key, the loop fills with the training split's count of
      each class (in the model's class order);
  loss_keys: the config.loss keys the loss reads, any other refused before any work (a misspelt weight would
      train with none); None: not checked;
  auxiliary_params: top-level parameter names that are training-only state (DAN's affinity
      centres), left out of the model's parameter count;
  save_attention_maps(images, outputs, out_dir) -> written paths, for methods that have them;
  attention_outputs(model, variables, images) -> the outputs save_attention_maps draws, where they are
      not the eval outputs (DAN's Grad-CAM++ maps, which take gradients); by default model.apply(variables,
      images, train=False);
  config_problems(config) -> list of problems (one line each: the key and the fix) with values that
      would fail only once the model is traced or the loss computed; fer_jax.validation adds them.

What the loop gives a model: batches of config.batch_size images but an epoch's last, short one (the module and the
loss may not assume the batch size); one random stream, "dropout" (`init` also gets "params"); two variable
collections, `params` and `batch_stats`, of which the module may update only `batch_stats` in training
(the optimiser updates `params`), the only ones kept (checkpoints, init_from). The loss sees only the
outputs and the labels, so a parameter it needs is an output (DAN returns its `centres`). Training traces the
module and the loss before its first step and names what breaks this contract (`check_contract`).
"""

import dataclasses
import functools
import importlib
import inspect
import math
import traceback
from collections.abc import Mapping
from typing import Callable

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax.data import labels
from fer_jax.errors import ConfigError
from fer_jax.models import layers

METHODS = ("dan", "lhcnet", "apvit", "scan_cci")  # fer_jax's own
# config.model.dtype: the compute dtype of activations, convolutions and matmuls; "auto" is bfloat16 on a
# GPU or TPU and float32 on the CPU. Parameters, BatchNorm statistics, logits and losses stay in at
# least float32 (`layers.at_least_float32`); float64 is the reference mode (docs/fidelity.md).
DTYPES = ("auto", "float32", "bfloat16", "float64")
ACCELERATOR_BACKENDS = ("gpu", "tpu")


def compute_dtype(name: str) -> str:
  """A config.model.dtype as the dtype it runs in: "auto" by this process's default backend."""
  if name != "auto":
    return name
  return "bfloat16" if jax.default_backend() in ACCELERATOR_BACKENDS else "float32"


def resolve_dtype(config) -> None:
  """Replaces config.model.dtype="auto" by the dtype it runs in, so that checkpoints and reports
  record it and another machine runs the same precision; logs the dtype in use."""
  requested = config.model.dtype
  config.model.dtype = compute_dtype(requested)
  logging.info("Model compute dtype %s (config.model.dtype=%r, %s backend)", config.model.dtype, requested,
               jax.default_backend())


def cross_entropy(logits, labels, weights=None):
  """Softmax cross-entropy of integer `labels`, as PyTorch's CrossEntropyLoss(weight) and Keras'
  categorical cross-entropy: the mean over the batch, or with per-class `weights` Σ w_y·CE / Σ w_y."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return jnp.mean(losses)
  sample_weights = jnp.asarray(weights, losses.dtype)[labels]
  return jnp.sum(sample_weights * losses) / jnp.sum(sample_weights)


def cross_entropy_loss(outputs, labels, loss_config):
  """Mean softmax cross-entropy of outputs["logits"], with no options."""
  del loss_config
  ce = cross_entropy(outputs["logits"], labels)
  return ce, {"ce_loss": ce}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  build: Callable[..., nn.Module]
  loss: Callable = cross_entropy_loss
  loss_keys: tuple[str, ...] | None = None
  auxiliary_params: tuple[str, ...] = ()
  save_attention_maps: Callable | None = None
  attention_outputs: Callable | None = None
  config_problems: Callable = lambda config: []

  def __post_init__(self):
    if isinstance(self.build, type) and issubclass(self.build, nn.Module):
      name = self.build.__name__
      raise ConfigError(f"Method(build={name}) is given the module class, where build takes config.model and returns "
                        f"the module: write Method(build=functools.partial(fer_jax.models.from_config, {name})) "
                        "(docs/extending.md, 'A method of yours').")


# The config.model keys every config has (config_lib.base_config); a method's module may take them as fields or not.
BASE_MODEL_KEYS = tuple(config_lib.base_config().model.keys())


def module_fields(module_class) -> tuple[str, ...]:
  """The fields of a Flax module class that its user sets, in order: all but Flax's `parent` and `name`."""
  return tuple(field.name for field in dataclasses.fields(module_class) if field.name not in ("parent", "name"))


def unknown_key_problems(module_class, model_config) -> list[str]:
  """One line for each key of `model_config` that is neither in BASE_MODEL_KEYS nor a field of
  `module_class`, naming the method, the closest valid key and the valid ones."""
  valid = BASE_MODEL_KEYS + tuple(key for key in module_fields(module_class) if key not in BASE_MODEL_KEYS)
  problems = []
  for key in model_config.keys():
    if key not in valid:
      problems.append(f"config.model.{key} is not a key of method {model_config.get('name', '')!r}"
                      f"{config_lib.did_you_mean(key, valid)}: rename or remove it; its keys are {', '.join(valid)}.")
  return problems


def loss_key_problems(method: Method, config) -> list[str]:
  """One line for each config.loss key that `method.loss_keys` (where it says) does not name."""
  if method.loss_keys is None:
    return []
  valid = ", ".join(method.loss_keys) or "none"
  return [f"config.loss.{key} is not a key of the loss of method {config.model.name!r}"
          f"{config_lib.did_you_mean(key, method.loss_keys)}: rename or remove it (or, for a method of yours whose "
          f"loss reads it, name it in its Method's loss_keys); its keys are {valid}."
          for key in config.loss.keys() if key not in method.loss_keys]


def model_key_problems(method: Method, config) -> list[str]:
  """`unknown_key_problems` of config.model where `method` is built by `functools.partial(from_config,
  Module)` (as fer_jax's are), for the check before any work; none for a build that reads config.model its way."""
  build = method.build
  if isinstance(build, functools.partial) and build.func is from_config and build.args:
    return unknown_key_problems(build.args[0], config.model)
  return []


def from_config(module_class, model_config, **values) -> nn.Module:
  """`module_class` with every field that `model_config` holds (lists as tuples, dtype names as
  dtypes), then `values`: one new model option is one config key and one module field. A key that
  is no field (nor in BASE_MODEL_KEYS) is a ConfigError naming it."""
  problems = unknown_key_problems(module_class, model_config)
  if problems:
    raise ConfigError("\n".join(problems))
  fields = {key: model_config[key] for key in module_fields(module_class) if key in model_config}
  fields = {key: tuple(v) if isinstance(v, list) else v for key, v in fields.items()}
  if "dtype" in fields:
    fields["dtype"] = jnp.dtype(compute_dtype(fields["dtype"]))
  return module_class(**{**fields, **values})


class UnknownMethodError(ConfigError):
  """A config.model.name that names no method."""


def get_method(name: str) -> Method:
  """The METHOD of fer_jax.models.<name> for fer_jax's own, else of the module `name` names;
  UnknownMethodError naming the fix when there is none."""
  if name in METHODS:
    module = importlib.import_module(f"fer_jax.models.{name}")
  elif "." in name:
    module = config_lib.module_of_yours(name, f"config.model.name={name!r}", UnknownMethodError)
  else:
    raise UnknownMethodError(f"config.model.name={name!r} is not one of fer_jax's methods ({', '.join(METHODS)}) nor "
                             "a module path of yours, which names a module inside a package folder with its package "
                             "(my_methods.plain_resnet for my_methods/plain_resnet.py; docs/extending.md).")
  method = getattr(module, "METHOD", None)
  if not isinstance(method, Method):
    raise UnknownMethodError(f"config.model.name={name!r}: {module.__file__} defines no METHOD = "
                             "fer_jax.models.Method(build=..., loss=..., ...) (docs/extending.md).")
  return method


def build_model(config) -> nn.Module:
  return get_method(config.model.name).build(config.model)


CONTRACT = "the Method contract (docs/extending.md, 'A method of yours')"
# What the train step logs beside a loss's metrics (fer_jax.train): a metric of the same name would replace it.
TRAIN_STEP_METRICS = ("loss", "accuracy", "lr", "grad_norm", "img_per_s")


def check_contract(method: Method, model, abstract_variables: dict, loss_config, config) -> None:
  """Traces (computing nothing) the module in training mode and the method's loss on a batch of 2, before any
  step: a ConfigError naming the Method contract where the module does not take `(images, train)`, does not
  return a dict with "logits" of [batch, config.model.num_classes], or the loss does not return (a scalar,
  {name: scalar}) with names other than TRAIN_STEP_METRICS. Found otherwise after the first epoch (more logits than
  classes, at the evaluation), as a NaN loss (fewer), a JAX traceback, or (a metric named "loss", say) never: the
  log and TensorBoard showed the metric in the train step's place."""
  name, classes = config.model.name, config.model.num_classes

  def fail(what: str):
    raise contract_error(name, what)

  def forward(variables, images):
    return model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[0]

  images = jax.ShapeDtypeStruct((2, config.input.size, config.input.size, config.input.channels), jnp.float32)
  try:
    outputs = jax.eval_shape(forward, abstract_variables, images)
  except TypeError as error:
    fail(f"its module, called as model.apply(variables, images, train=True), raised TypeError: {error}")
  except flax.errors.ScopeCollectionNotFound as error:
    fail(f"its module keeps variables of another collection than \"params\" and \"batch_stats\", the two a "
         f"method's variables may be in ({str(error).split(' (https:')[0]})")
  except flax.errors.InvalidRngError as error:
    fail(f"its module asks for a random stream the train step does not give: \"dropout\" is the one stream "
         f"(self.make_rng(\"dropout\"), nn.Dropout) ({str(error).split(' (https:')[0]})")
  if not isinstance(outputs, Mapping) or "logits" not in outputs:
    got = f"a dict of {', '.join(map(repr, outputs))}" if isinstance(outputs, Mapping) else _kind(outputs)
    fail(f"its module returns {got}, not a dict with \"logits\" ([batch, {classes}]).")
  shape, dtype = getattr(outputs["logits"], "shape", None), getattr(outputs["logits"], "dtype", None)
  if shape != (2, classes):
    fail(f"its \"logits\" for a batch of 2 have shape {shape}, not (2, {classes}): config.model.num_classes={classes} "
         "(the class order's count) is what the module must predict.")
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    fail(f"its \"logits\" are {dtype}: softmax and losses would round in it; return them in float32, "
         "logits.astype(layers.at_least_float32(dtype)).")
  labels_struct = jax.ShapeDtypeStruct((2,), jnp.int32)
  try:
    result = jax.eval_shape(lambda outputs, labels: method.loss(outputs, labels, loss_config), outputs, labels_struct)
  except TypeError as error:
    fail(f"its loss, called as loss(outputs, labels, loss_config), raised TypeError: {error}")
  except (AttributeError, KeyError) as error:
    key = str(error.args[0]).strip("'\"") if error.args else ""
    raised_in = traceback.extract_tb(error.__traceback__)[-1].filename
    if not key or key in loss_config or "ml_collections" not in raised_in:  # the loss's own bug, not a missing key
      raise
    fail(f"its loss reads config.loss.{key}, which the config does not set: set it in the config file (and name it "
         "in the Method's loss_keys).")
  if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
    fail(f"its loss returns {_kind(result)}, not a pair (scalar loss, {{name: scalar metric}}).")
  loss, metrics = result
  if getattr(loss, "shape", None) != ():
    fail(f"its loss has shape {getattr(loss, 'shape', None)}, not () : reduce it over the batch (its mean, say).")
  if not_scalar := [key for key, value in metrics.items() if getattr(value, "shape", None) != ()]:
    fail(f"its loss's metrics {', '.join(map(repr, not_scalar))} are not scalars.")
  if taken := [key for key in metrics if key in TRAIN_STEP_METRICS]:
    fail(f"its loss's metrics {', '.join(map(repr, taken))} take names the train step logs "
         f"({', '.join(TRAIN_STEP_METRICS)}), whose values they would replace: rename them (\"ce_loss\", say).")


def contract_error(name: str, what: str) -> ConfigError:
  return ConfigError(f"Method {name!r} does not keep {CONTRACT}: {what}")


def _kind(value) -> str:
  """What a traced function returned, as its author wrote it: an array, or the type's name."""
  return "an array" if isinstance(value, jax.ShapeDtypeStruct) else type(value).__name__


def check_call(model, name: str) -> None:
  """A contract error where the module cannot be called as `model(images, train=...)`: Flax's own TypeError came
  from the first initialisation, with a traceback and no word of the contract."""
  try:
    inspect.signature(model.__call__).bind("images", train=False)
  except TypeError as error:
    raise contract_error(name, f"its module is called as module(images, train=...), which its __call__"
                               f"{inspect.signature(model.__call__)} cannot take ({error}).") from None


def parameter_count(method: Method, params) -> int:
  """The model's parameters as the official code counts them (README, `fer_jax.summary`'s last line): without the
  method's training-only `auxiliary_params`."""
  return sum(math.prod(leaf.shape) for name, tree in params.items() if name not in method.auxiliary_params
             for leaf in jax.tree.leaves(tree))


def dummy_images(config, batch: int = 1):
  return jnp.zeros((batch, config.input.size, config.input.size, config.input.channels), jnp.float32)


def init_variables(model, config, rng) -> dict:
  """{params, batch_stats} as `model.init` draws them from `rng` (batch_stats {} if it has none),
  float32, or float64 in the float64 reference mode (docs/fidelity.md)."""
  variables = model.init({"params": rng, "dropout": rng}, dummy_images(config), train=False)
  variables = checkpointing.model_variables(variables)
  dtype = layers.at_least_float32(compute_dtype(config.model.dtype))
  return jax.tree.map(lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
                      variables)


def abstract_variables(model, config) -> dict:
  check_call(model, config.model.name)
  return jax.eval_shape(lambda: init_variables(model, config, jax.random.key(0)))


def load_trained_variables(config, model, checkpoint: str, initialisation_ok: bool = False) -> dict:
  """A checkpoint's variables for evaluation or inference: the checkpoint's method, class count,
  class order, input size and channels, names and shapes are checked against the (validated) config.
  `initialisation_ok`: read a model marked as only an initialisation too (to fingerprint, not to run)."""
  return checkpointing.restore_model(checkpoint, abstract_variables(model, config), expected_model=config.model,
                                     class_names=labels.class_names(config.dataset.class_order),
                                     expected_input=config.input, initialisation_ok=initialisation_ok)
