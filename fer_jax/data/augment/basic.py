"""Ops without interpolation: flip, channel copies, value conversions, random_apply; and the checks every op's
arguments go through."""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.augment.core import Op, parse, register

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def is_number(value) -> bool:
  """A finite real number: not a bool (True would read as 1), nor 1e999 (infinity) or NaN."""
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def check_number(op: str, name: str, value, meaning: str, valid=lambda value: True) -> None:
  """A ValueError naming `op`'s argument `name` unless `value` is a number that `valid` accepts."""
  if not (is_number(value) and valid(value)):
    raise ValueError(f"{op}: {name}={value!r} must be {meaning}.")


def check_pair(op: str, name: str, pair, meaning: str, valid=lambda first, second: True) -> None:
  """A ValueError naming `op`'s argument `name` unless `pair` is two numbers that `valid` accepts."""
  if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(is_number, pair)) and valid(*pair)):
    raise ValueError(f"{op}: {name}={pair!r} must be {meaning}.")


def check_area_and_aspect(op: str, scale, ratio, aspect: str, largest: float = 1.0) -> None:
  """The box draws of random_erasing and random_resized_crop: `scale`, areas as fractions of the image's, up to
  `largest`, and `ratio`, aspect ratios (`aspect`: "height / width" or "width / height")."""
  upper = "" if largest == math.inf else f" <= {largest:g}"
  check_pair(op, "scale", scale, f"a (min, max) pair of fractions of the image's area, 0 <= min <= max{upper}",
             lambda low, high: 0 <= low <= high <= largest)
  check_pair(op, "ratio", ratio, f"a (min, max) pair of aspect ratios ({aspect}), 0 < min <= max",
             lambda low, high: 0 < low <= high)


def channel_values(op: str, name: str, values, alternative: str = "") -> np.ndarray:
  """An op's per-channel argument (a fill, a mean) as float32: one number, or three, one per channel of an RGB
  image (the data sets decode to grey or RGB, and gray_to_rgb makes three); `alternative`: what else the op
  takes there, for the message."""
  given = values if isinstance(values, (tuple, list)) else [values]
  if len(given) not in (1, 3) or not all(map(is_number, given)):
    raise ValueError(f"{op}: {name}={values!r} must be a number or one number per channel (R, G, B){alternative}.")
  return np.asarray(given, np.float32)


def check_probability(p) -> None:
  """A ValueError unless `p` (an op's argument) is a probability."""
  if not (is_number(p) and 0 <= p <= 1):
    raise ValueError(f"p={p!r} must be a probability, from 0 to 1")


def bernoulli(key, p: float) -> jax.Array:
  """True with probability p, drawn as torchvision does: U[0, 1) < p."""
  return jax.random.uniform(key) < p


@register
def flip(p: float = 0.5) -> Op:
  """Horizontal mirror with probability p (torchvision RandomHorizontalFlip)."""
  check_probability(p)
  return Op(apply=lambda image, flipped: jnp.where(flipped, image[:, ::-1], image),
            sample=lambda key, shape: bernoulli(key, p))


@register
def gray_to_rgb() -> Op:
  """A one-channel image copied to three channels; three-channel images pass unchanged."""
  def output_shape(shape):
    return (*shape[:2], 3)
  return Op(apply=lambda image, params: jnp.broadcast_to(image, (*image.shape[:2], 3)), output_shape=output_shape)


@register
def to_float() -> Op:
  """Values become floats with the 0–255 range kept (LHC-Net feeds raw pixels)."""
  return Op(apply=lambda image, params: image, ends_uint8=True)


def _unit_scale_values(name: str, values, low_open: bool) -> np.ndarray:
  """normalize's `mean` or `std` (`name`) as float32, refused unless a number or numbers of the 0–1 scale (above 0
  for a std): the op divides the pixels by 255 before it subtracts and divides by them."""
  array = channel_values("normalize", name, values)
  if array.max() > 1:
    divided = [round(float(v) / 255, 4) for v in np.atleast_1d(values)]
    raise ValueError(f"normalize: {name}={values!r} is on the 0–255 scale, but normalize divides the pixels by 255 "
                     f"first: pass it divided by 255, {name}={divided}.")
  if array.min() < 0 or (low_open and array.min() == 0):
    raise ValueError(f"normalize: {name}={values!r} must be on the 0–1 scale, "
                     + ("above 0 (the pixels are divided by it)." if low_open else "from 0 to 1."))
  return array


@register
def normalize(mean="imagenet", std=None) -> Op:
  """x / 255, minus mean, over std (torchvision ToTensor + Normalize): both on the 0–1 scale; `mean` may name a
  pair (NORMALIZATIONS)."""
  if isinstance(mean, str):
    if mean not in NORMALIZATIONS:
      raise ValueError(f"Unknown normalisation {mean!r}; known: {', '.join(NORMALIZATIONS)}.")
    if std is not None:
      raise ValueError(f"normalize: {mean!r} brings its own std: pass std only with numbers for the mean.")
    mean, std = NORMALIZATIONS[mean]
  elif std is None:
    raise ValueError(f"normalize: mean={mean!r} needs its std=... too (or name a pair: {', '.join(NORMALIZATIONS)}).")
  mean, std = _unit_scale_values("mean", mean, low_open=False), _unit_scale_values("std", std, low_open=True)

  def apply(image, params):
    channels = image.shape[-1]
    return (image / 255.0 - mean[:channels]) / std[:channels]

  def output_shape(shape):
    channels = shape[-1]
    if channels < mean.size and (np.ptp(mean) or np.ptp(std)):  # a grey image and a colour normalisation
      raise ValueError(f"normalize: a {channels}-channel image and per-channel means {mean.tolist()} (stds "
                       f"{std.tolist()}), which differ: put gray_to_rgb() before it, or pass one mean and std.")
    return tuple(shape)
  return Op(apply=apply, output_shape=output_shape, ends_uint8=True)


@register
def random_apply(p: float, pipeline: str, uint8: bool = True) -> Op:
  """With probability p, the whole inner pipeline (torchvision RandomApply); it must keep the shape."""
  check_probability(p)
  if not isinstance(pipeline, str):
    raise ValueError(f"random_apply: pipeline={pipeline!r} must be a pipeline string, e.g. 'rotate(10)|flip()'.")
  inner = parse(pipeline, uint8=uint8)
  if inner.ends_uint8:
    raise ValueError(f"random_apply({p}, {pipeline!r}): to_float/normalize cannot be applied at random.")

  def output_shape(shape):
    if inner.output_shape(shape) != tuple(shape):
      raise ValueError(f"random_apply({p}, {pipeline!r}) maps {tuple(shape)} to {inner.output_shape(shape)}; "
                       "its inner pipeline must keep the image's shape.")
    return tuple(shape)

  def sample(key, shape):
    apply_key, inner_key = jax.random.split(key)
    return bernoulli(apply_key, p), inner.sample(inner_key, shape)

  def apply(image, params):
    applied, inner_params = params
    changed = inner.apply(image, inner_params)
    if changed.shape != image.shape:  # an inner op that changes the shape undeclared
      inner.check_shapes(image.shape)
    return jnp.where(applied, changed, image)
  return Op(apply=apply, sample=sample, output_shape=output_shape)
