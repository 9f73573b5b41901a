"""The machinery every converter shares: source tensors, the model's variables, layout rules.

A converter is a key map plus layout rules. The key map names, for each Flax module of the
model, the module of the source checkpoint that holds its weights; the layout rules say how
one framework names and lays out the weights of each kind of layer. The kind is read off the
model's own variables (a 4-D kernel is a 2-D convolution, `mean`/`var` statistics make a
BatchNorm, …), so a key map never repeats what the model already says.

Every source tensor must be used or dropped with a stated reason, every model variable must
be filled or explicitly left to its fresh initialisation, and every shape must match: the
leftovers are reported by name and shape in one `ConversionError`.
"""

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from fer_jax import errors
from fer_jax.errors import UserError

COLLECTIONS = ("params", "batch_stats")


class ConversionError(UserError, ValueError):
  """A source checkpoint that cannot be mapped onto the configured model."""


RESAVE_IN_FLOAT = "re-save the checkpoint with its weights in float32 or float16."


def unreadable(path: str, kind: str, reason: str) -> ConversionError:
  """The error for a file that does not read as `kind` ("a PyTorch checkpoint"): most often a download
  that stopped early or saved a web page in the file's place, so the fix is to download it again."""
  if _is_web_page(path):
    return ConversionError(f"{path} is a web page (HTML), not {kind}: the download saved a page in its place (as "
                           "Google Drive does for large files or an exceeded download quota); download it again, "
                           "in a browser if need be.")
  return ConversionError(f"Could not read {path} as {kind} ({reason}): the file is incomplete or damaged (an "
                         f"interrupted download?) or not {kind} at all; download it again, or check the path.")


def _is_web_page(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
  except OSError:
    return False
  return head.startswith((b"<!doctype html", b"<html"))


DATA_PARALLEL_PREFIX = "module."
WRAPPER_PREFIXES = (DATA_PARALLEL_PREFIX, "_orig_mod.")  # what nn.DataParallel and torch.compile add to the names


def state_dict(loaded, *keys: str) -> dict | None:
  """The non-empty dict under each of `keys` in turn where there is one ("model", "state_dict": a bare state dict
  passes as is), with its keys as the bare model names them; None if `loaded` holds none."""
  for key in keys:
    if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
      loaded = loaded[key]
  return module_keys(loaded, data_parallel=False) if isinstance(loaded, dict) and loaded else None


def module_keys(state: dict, data_parallel: bool) -> dict:
  """`state` with its keys as a model wrapped in DataParallel names them (each prefixed "module.") if
  `data_parallel`, else as the bare model does: torch.save of either is the same checkpoint, and the official
  code saved some methods' models wrapped and others bare. A torch.compile'd model's prefix goes too."""
  while prefix := next((prefix for prefix in WRAPPER_PREFIXES
                        if all(isinstance(key, str) and key.startswith(prefix) for key in state)), None):
    state = {key[len(prefix):]: value for key, value in state.items()}
  return {DATA_PARALLEL_PREFIX + key: value for key, value in state.items()} if data_parallel else state


@dataclasses.dataclass(frozen=True)
class Selector:
  """Recognises a source's files by their tensor names: called on a file's contents, returns its tensors by name
  if they hold every name in `present` and none in `absent` (a name ending in "*" stands for any name so begun),
  else None. `containers` are the keys a PyTorch checkpoint may wrap its state dict in (`state_dict`); None takes
  the contents as read (NumPy, Keras and TensorFlow files, whose names are never DataParallel's)."""
  present: tuple[str, ...]
  absent: tuple[str, ...] = ()
  containers: tuple[str, ...] | None = None

  def __call__(self, loaded) -> dict | None:
    tensors = loaded if self.containers is None else state_dict(loaded, *self.containers)
    held = lambda name: _holds(tensors, name)
    if isinstance(tensors, dict) and all(map(held, self.present)) and not any(map(held, self.absent)):
      return tensors
    return None

  def describe(self) -> str:
    """What a file of this source holds, for messages: "keys a, b, and no c"."""
    return "keys " + ", ".join(self.present) + "".join(f", and no {name}" for name in self.absent)


def _holds(tensors: dict, name: str) -> bool:
  if name.endswith("*"):
    return any(str(key).startswith(name[:-1]) for key in tensors)
  return name in tensors


def _describe(name: str, value) -> str:
  try:
    shape = tuple(np.shape(value))
  except (ValueError, RecursionError):  # a ragged or deeply nested list beside the weights
    return f"{_shown(name)} ({type(value).__name__})"
  return f"{_shown(name)} {shape}"


def _shown(name) -> str:
  """A name from the file as messages show it: quoted where it holds line breaks or terminal control characters."""
  return name if str(name).isprintable() else repr(name)


class Tensors:
  """A source checkpoint's tensors by name; records which ones a key map used or dropped."""

  def __init__(self, tensors: Mapping[str, np.ndarray], origin: str):
    self.tensors = dict(tensors)
    self.origin = origin
    self.used: set[str] = set()
    self.dropped: dict[str, str] = {}
    self.expected: set[str] = set()  # the reasons of drops every checkpoint of the format holds
    self.missing: list[str] = []

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def names(self) -> list[str]:
    return list(self.tensors)

  def get(self, name: str) -> np.ndarray | None:
    """The tensor called `name`, marked used; None (and recorded as missing) if absent. Every tensor read
    is a model weight, so one that is not floating-point (a quantized model's int8 weights) is refused."""
    if name not in self.tensors:
      self.missing.append(name)
      return None
    value = np.asarray(self.tensors[name])
    if not np.issubdtype(value.dtype, np.floating):
      raise ConversionError(f"{self.origin}: {name} is {value.dtype}, where fer_jax expects floating-point weights "
                            "(a quantized model?): " + RESAVE_IN_FLOAT)
    self.used.add(name)
    return value

  def drop(self, pattern: str, reason: str, expected: bool = False) -> None:
    """Drops every not yet used tensor whose whole name matches the regex `pattern`. An `expected` drop (what every
    checkpoint of the format holds beside the weights: step counters, optimizer state) is logged by count only: its
    names tell nothing about whether the checkpoint fits."""
    compiled = re.compile(pattern)
    for name in self.tensors:
      if name not in self.used and isinstance(name, str) and compiled.fullmatch(name):
        self.dropped[name] = reason
    if expected:
      self.expected.add(reason)

  def unknown(self) -> list[str]:
    return [name for name in self.tensors if name not in self.used and name not in self.dropped]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one framework names and lays out the weights of each kind of layer.

  `rules[kind][leaf]` is (source weight name, transform to the Flax layout); `extras[kind]`
  lists source weights of that kind that Flax has no variable for, with the reason.
  """
  join: Callable[[str, str], str]
  rules: Mapping[str, Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]]
  extras: Mapping[str, tuple[tuple[str, str], ...]] = dataclasses.field(default_factory=dict)


def _same(x):
  return x


TORCH = Layout(
    join=lambda module, weight: f"{module}.{weight}",
    rules={
        # Conv2d (O, I, kh, kw) → (kh, kw, I, O); Conv1d (O, I, k) → (k, I, O); Linear (out, in) → (in, out).
        "conv": {"kernel": ("weight", lambda w: w.transpose(2, 3, 1, 0)), "bias": ("bias", _same)},
        "conv1d": {"kernel": ("weight", lambda w: w.transpose(2, 1, 0)), "bias": ("bias", _same)},
        "dense": {"kernel": ("weight", lambda w: w.T), "bias": ("bias", _same)},
        "batch_norm": {"scale": ("weight", _same), "bias": ("bias", _same),
                       "mean": ("running_mean", _same), "var": ("running_var", _same)},
        "layer_norm": {"scale": ("weight", _same), "bias": ("bias", _same)},
        "prelu": {"slope": ("weight", _same)},
    },
    extras={"batch_norm": (("num_batches_tracked", "BatchNorm step counter; fer_jax's BatchNorm keeps none, as "
                                                   "its running averages use a fixed momentum"),)},
)

# Keras kernels are already (kh, kw, in, out) and (in, out).
KERAS = Layout(
    join=lambda module, weight: f"{module}/{weight}",
    rules={
        "conv": {"kernel": ("kernel", _same), "bias": ("bias", _same)},
        "dense": {"kernel": ("kernel", _same), "bias": ("bias", _same)},
        "batch_norm": {"scale": ("gamma", _same), "bias": ("beta", _same),
                       "mean": ("moving_mean", _same), "var": ("moving_variance", _same)},
    },
)


class Target:
  """The configured model's variables, filled leaf by leaf with shape checks."""

  def __init__(self, abstract_variables: dict):
    self.abstract = traverse_util.flatten_dict(abstract_variables, sep="/")
    self.values: dict[str, np.ndarray] = {}
    self.origins: dict[str, str] = {}
    self.problems: list[str] = []
    self.attempted: set[str] = set()
    self._leaves: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for path, leaf in self.abstract.items():
      collection, rest = path.split("/", 1)
      module, _, name = rest.rpartition("/")
      self._leaves.setdefault(module, {})[name] = (collection, tuple(leaf.shape))

  def modules(self, under: str = "") -> list[str]:
    """Paths (without collection) of the modules that own variables, sorted, under `under`."""
    return [m for m in self._leaves if not under or m == under or m.startswith(under + "/")]

  def leaves(self, module: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{leaf name: (collection, shape)} of the variables a module owns directly."""
    return self._leaves.get(module, {})

  def kind(self, module: str) -> str | None:
    """The kind of layer a module is, from its own variables."""
    leaves = self.leaves(module)
    names = set(leaves)
    if {"mean", "var"} <= names:
      return "batch_norm"
    if "kernel" in names and names <= {"kernel", "bias"}:
      return {4: "conv", 3: "conv1d", 2: "dense"}.get(len(leaves["kernel"][1]))
    if names == {"scale", "bias"}:
      return "layer_norm"
    if names == {"slope"}:
      return "prelu"
    return None

  def put(self, module: str, leaf: str, value: np.ndarray, origin: str, source_shape=None) -> None:
    """Sets one variable from `origin` (of shape `source_shape` before any layout change).

    A variable the model lacks, a wrong shape or a second filling is recorded as a problem.
    """
    source = f"{origin} {tuple(np.shape(value) if source_shape is None else source_shape)}"
    if leaf not in self.leaves(module):
      self.problems.append(f"{source} maps to {module}/{leaf}, which the model does not have")
      return
    collection, shape = self.leaves(module)[leaf]
    path = f"{collection}/{module}/{leaf}"
    self.attempted.add(path)
    if tuple(np.shape(value)) != shape:
      self.problems.append(f"{source} does not fit {path} {shape}")
    elif path in self.values:
      self.problems.append(f"{path} is given by both {self.origins[path]} and {origin}")
    else:
      with np.errstate(over="ignore"):  # a float64 beyond the range: infinite, named below
        converted = np.asarray(value, self.abstract[path].dtype)
      if np.issubdtype(converted.dtype, np.floating) and not np.isfinite(converted).all():
        self.problems.append(f"{source} holds NaN or infinite values (or values beyond {converted.dtype}'s range): "
                             "the file is damaged; download it again")
      self.values[path] = converted
      self.origins[path] = origin

  def put_transformed(self, module: str, leaf: str, value, transform: Callable, origin: str) -> None:
    """`put` of `transform(value)` (a layout change of a tensor, or the joining of a list of them); a value the
    transform cannot take (a tensor of another rank, a scalar, parts of unequal shapes) is recorded as not fitting,
    as a wrong shape is."""
    single = isinstance(value, np.ndarray)
    try:
      converted = transform(value)
    except (ValueError, IndexError):
      collection, shape = self.leaves(module).get(leaf, ("params", "?"))
      shapes = tuple(value.shape) if single else ", ".join(str(tuple(part.shape)) for part in value)
      self.attempted.add(f"{collection}/{module}/{leaf}")
      self.problems.append(f"{origin} {shapes} does not fit {collection}/{module}/{leaf} {shape}")
      return
    self.put(module, leaf, converted, origin, value.shape if single else None)

  def unfilled(self) -> list[str]:
    """Variables no source tensor was mapped to."""
    return [path for path in self.abstract if path not in self.attempted]


def copy_module(tensors: Tensors, target: Target, module: str, source: str, layout: Layout) -> None:
  """Fills one Flax module from the source module `source`, by the module's kind and `layout`."""
  kind = target.kind(module)
  if kind is None or kind not in layout.rules:
    raise ValueError(f"No {kind} layout rule for {module}: map its variables one by one.")
  for leaf in target.leaves(module):
    weight, transform = layout.rules[kind][leaf]
    name = layout.join(source, weight)
    value = tensors.get(name)
    if value is not None:
      target.put_transformed(module, leaf, value, transform, name)
  for weight, reason in layout.extras.get(kind, ()):
    tensors.drop(re.escape(layout.join(source, weight)), reason, expected=True)


def copy_leaf(tensors: Tensors, target: Target, module: str, leaf: str, name: str,
              transform: Callable[[np.ndarray], np.ndarray] = _same) -> None:
  """Fills one variable from the source tensor `name`."""
  value = tensors.get(name)
  if value is not None:
    target.put_transformed(module, leaf, value, transform, name)


Rule = tuple[str, str | Callable[[re.Match], str]]


def rename(path: str, rules: Iterable[Rule]) -> str:
  """The source name of a Flax module path: the first rule whose regex matches the whole path."""
  for pattern, replacement in rules:
    match = re.fullmatch(pattern, path)
    if match:
      return replacement(match) if callable(replacement) else match.expand(replacement)
  raise ValueError(f"No key-map rule for the model's module {path!r}.")


FLAX = Layout(
    join=lambda module, weight: f"{module}/{weight}",
    rules={
        "conv": {"kernel": ("kernel", _same), "bias": ("bias", _same)},
        "dense": {"kernel": ("kernel", _same), "bias": ("bias", _same)},
        "layer_norm": {"scale": ("scale", _same), "bias": ("bias", _same)},
    },
)


@dataclasses.dataclass
class Report:
  """What a conversion did, for the log and the tests."""
  converted: dict[str, int] = dataclasses.field(default_factory=dict)      # origin → tensors used
  dropped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # origin → {name: reason}
  expected: set[str] = dataclasses.field(default_factory=set)              # reasons of drops logged by count only
  fresh: list[str] = dataclasses.field(default_factory=list)               # variable paths left as initialised
  seed: int = 0
  # Some of what inference needs (a classifier, …) is freshly initialised: a starting point for training only.
  initialisation_only: bool = False

  def lines(self) -> list[str]:
    lines = [f"{origin}: {errors.counted(count, 'tensor')} converted" for origin, count in self.converted.items()]
    for origin, dropped in self.dropped.items():
      by_reason: dict[str, list[str]] = {}
      for name, reason in dropped.items():
        by_reason.setdefault(reason, []).append(name)
      for reason, names in by_reason.items():
        listed = "" if reason in self.expected else f": {errors.first(names, 6)}"
        lines.append(f"{origin}: dropped {errors.counted(len(names), 'tensor')} ({reason}){listed}")
    if self.fresh:
      modules = sorted({path.split("/")[1] for path in self.fresh})
      lines.append(f"freshly initialised (seed {self.seed}, not in the source): "
                   f"{errors.counted(len(self.fresh), 'variable')} in {', '.join(modules)}")
    return lines


def _failure(problems: list[str], diagnoses: list[str], limit: int = 12) -> ConversionError:
  shown = problems[:limit] + ([f"… ({len(problems)} problems in all)"] if len(problems) > limit else [])
  details = "\n  " + "\n  ".join(shown)
  if diagnoses:
    return ConversionError(" ".join(diagnoses) + "\nWhat does not fit the configured model:" + details)
  return ConversionError("The checkpoint does not fit the configured model:" + details
                         + "\nPass the --config (method, data set, number of classes) and --source the "
                           "checkpoint belongs to.")


def finish(target: Target, sources: list[Tensors], fresh_variables: Callable[[list[str]], dict],
           may_stay_fresh: Callable[[str], bool], seed: int, diagnoses: Iterable[str] = ()) -> tuple[dict, Report]:
  """Checks that every source tensor and model variable is accounted for; returns the variables.

  Variables no source filled take their value from `fresh_variables(paths)` ({path: value}, called only if some
  are left) when `may_stay_fresh(path)`; otherwise they are reported missing. `diagnoses`
  (what a checkpoint holds and the --config it needs) lead the error message if anything is left.
  """
  problems = []
  for tensors in sources:  # the unknown names first: beside the missing ones they show how the names differ
    unknown = [_describe(name, tensors.tensors[name]) for name in tensors.unknown()]
    if unknown:
      problems.append(f"{tensors.origin}: unknown to this model: {errors.first(unknown, 12)}")
    if tensors.missing:
      verb = "is" if len(tensors.missing) == 1 else "are"
      problems.append(f"{tensors.origin}: {errors.first(tensors.missing, 12)} {verb} missing")
  problems += target.problems
  unfilled = target.unfilled()
  not_allowed = [f"{path} {tuple(target.abstract[path].shape)}" for path in unfilled if not may_stay_fresh(path)]
  if not_allowed:
    problems.append(f"model variables no source provides: {errors.first(not_allowed, 12)}")
  if problems:
    raise _failure(problems, list(diagnoses))
  values = dict(target.values)
  if unfilled:
    values.update({path: np.asarray(value) for path, value in fresh_variables(unfilled).items()})
  variables = traverse_util.unflatten_dict({tuple(path.split("/")): value for path, value in values.items()})
  report = Report(converted={t.origin: len(t.used) for t in sources},
                  dropped={t.origin: t.dropped for t in sources if t.dropped},
                  expected=set().union(*(t.expected for t in sources)), fresh=unfilled, seed=seed)
  return {c: variables.get(c, {}) for c in COLLECTIONS}, report
