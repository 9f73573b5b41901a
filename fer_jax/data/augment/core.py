"""The pipeline language and its compiler: pipeline strings → one function over a batch.

A pipeline is ops joined by "|", each a call with literal arguments, e.g.
    "resize({size})|flip()|random_apply(0.2, 'rotate(20)|random_crop({size}, padding=32)')|
     normalize('imagenet')|random_erasing(p=0.5, scale=(0.02, 0.25))"
It runs on the device, inside the jitted step, on uint8 batches at the stored size: every op
maps one HWC float32 image to another, vmapped over the batch, with its random draws taken
from the example's own key (derived from the seed and the example's position in the run), so
a resumed run augments every example exactly as an uninterrupted one; evaluation keys derive
from the example's record alone, its index in the split read (`evaluation_keys`).

Values keep uint8 semantics until `to_float()` or `normalize()`: while they do, the pipeline
rounds and clips every op's output to integers in 0–255, as the libraries the ops imitate
(torchvision on PIL images, cv2) return uint8 after every step. Ops after those two see
float values and are not rounded.
"""

import ast
import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fer_jax import errors

Shape = tuple[int, int, int]


def _no_params(key, shape):
  del key, shape
  return ()


def _same_shape(shape: Shape) -> Shape:
  return shape


@dataclasses.dataclass(frozen=True)
class Op:
  """One step on a single image (H, W, C) float32.

  apply(image, params) → image: the transformation, given the op's random draws.
  sample(key, shape) → params: every random draw the op makes for one image of input `shape`
    (a pytree of arrays, `()` for a deterministic op). Kept apart from `apply` so that tests
    can fix the draws and compare `apply` with the library the op imitates, and compare
    `sample`'s distribution with the library's sampler.
  output_shape(shape) → shape, static.
  ends_uint8: values are floats from this op on (to_float, normalize).
  needs_uint8: the op works on 0–255 values (e.g. paints a 0–255 colour): refused after those two.
  """
  apply: Callable[[jax.Array, Any], jax.Array]
  sample: Callable[[jax.Array, Shape], Any] = _no_params
  output_shape: Callable[[Shape], Shape] = _same_shape
  ends_uint8: bool = False
  needs_uint8: bool = False


OPS: dict[str, Callable[..., Op]] = {}


def register(factory: Callable[..., Op]) -> Callable[..., Op]:
  """Makes `factory` an op of the pipeline language under its function name, which another op's must not hold (its
  own, from a module imported again, may: it replaces itself)."""
  return errors.registered(OPS, factory, "op")


def quantize(image: jax.Array) -> jax.Array:
  """Round half up and clip to 0–255, as PIL and cv2 store an 8-bit result."""
  return jnp.clip(jnp.floor(image + 0.5), 0.0, 255.0)


class OpError(ValueError):
  """A pipeline string's error that already names its op (kept as it is when a nested pipeline raises it)."""


@dataclasses.dataclass(frozen=True)
class Step:
  name: str
  op: Op
  rounds: bool          # in the uint8 part of the pipeline: output rounded to integers
  arguments: dict = dataclasses.field(default_factory=dict)  # the op's, by parameter name, defaults included
  call: str = ""        # as the pipeline string writes it, "rotate(10)"

  def output_shape(self, shape: Shape) -> Shape:
    """The op's output_shape, its error (an op of one's own refusing an input) naming the op and the input."""
    try:
      return tuple(self.op.output_shape(tuple(shape)))
    except OpError:
      raise
    except (ValueError, TypeError) as e:
      if str(e).startswith(self.name):  # fer_jax's ops name themselves
        raise OpError(str(e)) from e
      raise OpError(f"{str(e).rstrip('.')}. Raised by preprocessing op {self.call or self.name!r} on "
                    f"{tuple(shape)} images.") from e


class Pipeline:
  """A compiled pipeline string for images of one input shape."""

  def __init__(self, text: str, steps: list[Step]):
    self.text = text
    self.steps = steps

  @property
  def ends_uint8(self) -> bool:
    return any(step.op.ends_uint8 for step in self.steps)

  def output_shape(self, shape: Shape) -> Shape:
    for step in self.steps:
      shape = step.output_shape(shape)
    return tuple(shape)

  def check_shapes(self, shape: Shape) -> None:
    """Traces every op on one abstract image of its input shape, from input `shape`, and raises
    naming the first whose image comes out at another shape than its `output_shape` declares
    (an op of one's own that crops or resizes without declaring it): the ops after it would draw
    for the wrong shape, and the model would get the wrong one."""
    for step in self.steps:
      shape = tuple(shape)
      declared = step.output_shape(shape)
      run = lambda image, key, op=step.op, shape=shape: op.apply(image, op.sample(key, shape))
      traced = jax.eval_shape(run, jax.ShapeDtypeStruct(shape, jnp.float32), jax.random.key(0))
      traced = tuple(getattr(traced, "shape", ()))
      if traced != declared:
        raise ValueError(f"op {step.call or step.name!r} of pipeline {self.text!r} turns {shape} images into {traced}, "
                         f"but its Op's output_shape says {declared}: an op whose apply changes the image's shape must "
                         "declare it, Op(..., output_shape=lambda shape: ...) (docs/extending.md, \"An op of yours\").")
      shape = declared

  def sample(self, key: jax.Array, shape: Shape) -> list:
    """The random draws of every op for one image of input `shape`."""
    params = []
    for step, op_key in zip(self.steps, jax.random.split(key, max(len(self.steps), 1))):
      params.append(step.op.sample(op_key, tuple(shape)))
      shape = step.output_shape(shape)
    return params

  def apply(self, image: jax.Array, params: list) -> jax.Array:
    """One image through every op, given the draws from `sample`."""
    image = image.astype(jnp.float32)
    for step, op_params in zip(self.steps, params):
      image = step.op.apply(image, op_params)
      if step.rounds:
        image = quantize(image)
    return image

  def __call__(self, images: jax.Array, keys: jax.Array) -> jax.Array:
    """A batch (B, H, W, C) of uint8 (or float) images and B keys → float32 model inputs."""
    shape = tuple(images.shape[1:])
    return jax.vmap(lambda image, key: self.apply(image, self.sample(key, shape)))(images, keys)

  def visible_part(self, images: jax.Array, keys: jax.Array) -> jax.Array:
    """The batch after the ops before the first to_float/normalize, with the random draws the
    whole pipeline makes for these keys: 0–255 images as the model's input was made from."""
    shape = tuple(images.shape[1:])
    count = next((i for i, step in enumerate(self.steps) if step.op.ends_uint8), len(self.steps))

    def one(image, key):
      params = self.sample(key, shape)
      return Pipeline(self.text, self.steps[:count]).apply(image, params[:count])
    return jax.vmap(one)(images, keys)


def with_size(text: str, size: int) -> str:
  """A pipeline string with "{size}" as `size` (config.input.size): what runs, as reports write it."""
  return text.replace("{size}", str(size))


def parse(text: str, size: int | None = None, uint8: bool = True) -> Pipeline:
  """Compiles a pipeline string; "{size}" in it stands for `size` (config.input.size).

  Unknown ops or bad arguments raise naming the op. `uint8` says whether the values entering
  have uint8 semantics (False for a pipeline nested after `normalize`).
  """
  if size is not None:
    text = with_size(text, size)
  steps = []
  for part in split_stages(text):
    name, op, arguments = _parse_op(part, uint8)
    uint8 = uint8 and not op.ends_uint8
    steps.append(Step(name, op, rounds=uint8, arguments=arguments, call=part))
  return Pipeline(text, steps)


def split_stages(text: str) -> list[str]:
  """Splits at "|" outside quotes and parentheses, so nested pipelines stay whole."""
  parts, current, depth, quote = [], [], 0, None
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([":
      depth += 1
    elif char in ")]":
      depth -= 1
    elif char == "|" and depth == 0:
      parts.append("".join(current))
      current = []
      continue
    current.append(char)
  parts.append("".join(current))
  return [part.strip() for part in parts if part.strip()]


def _parse_op(text: str, uint8: bool) -> tuple[str, Op, dict]:
  try:
    call = ast.parse(text if text.endswith(")") else text + "()", mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    args = [ast.literal_eval(a) for a in call.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
  except (SyntaxError, ValueError, AssertionError) as e:
    raise OpError(f"Cannot parse preprocessing op {text!r}: write it as name(literal, key=literal).") from e
  name = call.func.id
  if name not in OPS:
    raise OpError(f"Unknown preprocessing op {name!r} in {text!r}; the device pipeline knows: "
                  f"{', '.join(sorted(OPS))}. An op of yours is known once its module is imported (docs/extending.md, "
                  "'An op of yours').")
  if name == "random_apply":  # its inner pipeline continues in the current value semantics
    kwargs["uint8"] = uint8
  try:
    op = OPS[name](*args, **kwargs)
  except TypeError as e:
    raise OpError(f"Bad arguments in preprocessing op {text!r}: {e}. It takes {signature(name)}.") from e
  except OpError:  # from a nested pipeline (random_apply's), naming its own op
    raise
  except ValueError as e:  # the op's own message first ("occlude: unknown region ..."), then the call
    raise OpError(f"{str(e).rstrip('.')}. Raised by preprocessing op {text!r}, which takes {signature(name)}.") from e
  if not isinstance(op, Op):
    raise OpError(f"Preprocessing op {name!r} (in {text!r}) gave {type(op).__name__}, not an Op: its factory "
                  "must return a fer_jax.data.augment Op, augment.Op(apply=...).")
  if op.needs_uint8 and not uint8:
    raise OpError(f"{text} comes after to_float()/normalize(), where values are no longer 0–255: "
                  "put it before them.")
  bound = inspect.signature(OPS[name]).bind(*args, **kwargs)
  bound.apply_defaults()
  return name, op, dict(bound.arguments)


def signature(name: str) -> str:
  """How a pipeline string calls op `name`: "rotate(degrees, method='nearest', fill=0)"."""
  parameters = [str(p.replace(annotation=inspect.Parameter.empty))
                for p in inspect.signature(OPS[name]).parameters.values() if p.name != "uint8"]
  return f"{name}({', '.join(parameters)})"


AUGMENT_STREAM = 0x61756720  # separates augmentation keys from the step's dropout keys


def example_keys(seed: int, positions: jax.Array) -> jax.Array:
  """One key per example from (seed, global example position): the same wherever the run resumes."""
  base = jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM)
  return jax.vmap(lambda position: jax.random.fold_in(base, position))(positions)


# Evaluation pipelines draw (random occluders) from this seed, not config.seed: models trained
# with different seeds are tested on the same inputs.
EVALUATION_SEED = 0


def evaluation_keys(records: jax.Array) -> jax.Array:
  """One key per example of an evaluated split, from its record (its index in the split read) alone: whatever the
  run's seed or the classes a model leaves out, an image gets the same draws."""
  return example_keys(EVALUATION_SEED, records)
