"""Synthetic occlusion for robustness evaluation: `occlude(region, ...)` paints a region of the face.

Regions are placed from a face geometry: where an aligned face's features sit, as fractions of
the image height (y) and width (x), so the op works at any image size (put it before
to_float/normalize so that `fill` is a 0–255 colour):

  eyes        a band across the face over both eyes and brows;
  mouth       a box over the mouth;
  lower_half  everything below the nose;
  mask        a surgical-mask shape from just below the nose to the chin, rounded at the bottom;
  boxes       `count` squares of `area` / `count` of the image each, at random places drawn from
              the example's key; they may overlap, so together they cover at most `area`. In
              evaluation the key depends only on the example's record in its split
              (`core.evaluation_keys`): every run covers each image the same way.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.augment.basic import channel_values, is_number
from fer_jax.data.augment.core import Op, register

# y: fractions of the height, x: half widths as fractions of the width; every region is centred
# on the vertical mid-line. Band half-heights leave room for the faces' own pose jitter.
GEOMETRIES = {
    # fer_jax.data.synthetic_faces: eyes 0.12 face heights above the centre (brows 0.09 higher),
    # nose tip 0.05 and mouth 0.25 below, the face 0.9 of the image high and 0.74 wide, then posed
    # (±12°, scale 0.85–1.05, shift ±6 %). Over 200 posed renders the eye whites lie within
    # y 0.28–0.49, |x − 0.5| ≤ 0.28, and the inside of an open mouth within y 0.57–0.86
    # (99 % in 0.61–0.82), |x − 0.5| ≤ 0.21.
    "synthetic": {"eye_y": 0.37, "eye_half_height": 0.13, "eye_half_width": 0.34, "nose_y": 0.55,
                  "mouth_y": 0.72, "mouth_half_height": 0.12, "mouth_half_width": 0.27,
                  "chin_y": 0.95, "face_half_width": 0.38},
    # insightface's 5-point template for 112×112 aligned crops (eyes at y 51.6/112, x 38.3 and
    # 73.5; nose 71.7; mouth corners 92.3, x 41.5 and 70.7).
    "arcface112": {"eye_y": 0.44, "eye_half_height": 0.1, "eye_half_width": 0.3, "nose_y": 0.64,
                   "mouth_y": 0.825, "mouth_half_height": 0.09, "mouth_half_width": 0.2,
                   "chin_y": 1.0, "face_half_width": 0.4},
}
REGIONS = ("eyes", "mouth", "lower_half", "mask", "boxes")
DEFAULT_FILL = {"mask": (170, 205, 230)}  # light blue; every other region black
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _geometry(geometry) -> dict:
  if not isinstance(geometry, dict):
    if not (isinstance(geometry, str) and geometry in GEOMETRIES):
      raise ValueError(f"occlude: unknown geometry {geometry!r}; known: {', '.join(GEOMETRIES)} "
                       "(or give a dict with the keys of one).")
    return GEOMETRIES[geometry]
  missing = sorted(set(GEOMETRIES["synthetic"]) - set(geometry))
  if missing:
    raise ValueError(f"occlude: the geometry dict lacks {missing}.")
  wrong = [f"{key}={value!r}" for key, value in geometry.items() if key in GEOMETRIES["synthetic"] and not (
      is_number(value) and (0 < value <= 0.5 if "half" in key else 0 <= value <= 1))]
  if wrong or not geometry["nose_y"] < geometry["mouth_y"] < geometry["chin_y"]:
    raise ValueError(f"occlude: the geometry dict's {', '.join(wrong) or 'nose_y, mouth_y and chin_y'} place no region "
                     "in the image: the *_y keys are fractions of the height in [0, 1], nose_y < mouth_y < chin_y, "
                     "the half widths and heights fractions in (0, 0.5].")
  return geometry


def _colour(region: str, fill) -> np.ndarray:
  """`fill` as float32: a 0–255 grey level, or one 0–255 value per channel (1 or 3)."""
  fill = DEFAULT_FILL.get(region, 0) if fill is None else fill
  colour = channel_values("occlude", "fill", fill)
  if not np.all((colour >= 0) & (colour <= 255)):
    raise ValueError(f"occlude: fill={fill!r} must be in 0–255, as the uint8 image it covers.")
  return colour


def _fill_of(colour: np.ndarray, channels: int) -> np.ndarray:
  """The fill of an image with `channels` channels: an (R, G, B) fill on a grey image is its grey level (ITU-R 601
  luma, PIL's convert("L")), not its red value."""
  if colour.size == 3 and channels == 1:
    return np.float32(np.round(colour @ LUMA))[None]
  return np.broadcast_to(colour, (3,))[:channels] if colour.ndim else colour


def _box(ys, xs, top, bottom, left, right):
  return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)


def _fixed_region(region: str, g: dict):
  """(ys, xs) pixel-centre fractions → bool mask of a region placed by the geometry."""
  def mask(ys, xs):
    if region == "eyes":
      return _box(ys, xs, g["eye_y"] - g["eye_half_height"], g["eye_y"] + g["eye_half_height"],
                  0.5 - g["eye_half_width"], 0.5 + g["eye_half_width"])
    if region == "mouth":
      return _box(ys, xs, g["mouth_y"] - g["mouth_half_height"], g["mouth_y"] + g["mouth_half_height"],
                  0.5 - g["mouth_half_width"], 0.5 + g["mouth_half_width"])
    if region == "lower_half":
      return ys >= g["nose_y"]
    # mask: full width down to the mouth, then an elliptical taper to the chin
    top, middle, bottom, half = g["nose_y"] - 0.03, g["mouth_y"], g["chin_y"], g["face_half_width"]
    taper = jnp.sqrt(jnp.clip(1.0 - ((ys - middle) / (bottom - middle)) ** 2, 0.0, 1.0))
    half_width = jnp.where(ys < middle, half, half * taper)
    return (ys >= top) & (ys < bottom) & (jnp.abs(xs - 0.5) <= half_width)
  return mask


@register
def occlude(region: str, geometry="synthetic", fill=None, area: float | None = None, count: int | None = None) -> Op:
  """Paints `region` (REGIONS) with `fill` (a grey level or an RGB triple, 0–255), on 0–255 values only.

  `geometry`: a name in GEOMETRIES or a dict of the same keys. `area` (default 0.2) and `count` (default 1): the
  "boxes" region only (`count` squares of area / count of the image each, wholly inside it, which may overlap).
  """
  if region not in REGIONS:
    raise ValueError(f"occlude: unknown region {region!r}; valid: {', '.join(REGIONS)}.")
  if region != "boxes" and (area, count) != (None, None):
    raise ValueError(f"occlude({region!r}): area and count size the 'boxes' region only; drop them, or occlude "
                     "'boxes'.")
  area, count = 0.2 if area is None else area, 1 if count is None else count
  if region == "boxes" and not (is_number(area) and 0 < area < 1 and isinstance(count, int)
                                and not isinstance(count, bool) and count >= 1):
    raise ValueError(f"occlude('boxes'): area={area!r} must be a number in (0, 1) and count={count!r} a whole "
                     "number, at least 1.")
  colour = _colour(region, fill)
  side = float(np.sqrt(area / count))

  def sample(key, shape):
    if region != "boxes":
      return ()
    return jax.random.uniform(key, (count, 2), maxval=1.0 - side)  # top-left corners (y, x)

  def apply(image, corners):
    height, width, channels = image.shape
    ys = ((jnp.arange(height) + 0.5) / height)[:, None]
    xs = ((jnp.arange(width) + 0.5) / width)[None, :]
    if region == "boxes":
      inside = jnp.any(jax.vmap(lambda c: _box(ys, xs, c[0], c[0] + side, c[1], c[1] + side))(corners), axis=0)
    else:
      inside = _fixed_region(region, _geometry(geometry))(ys, xs)
    return jnp.where(inside[:, :, None], _fill_of(colour, channels), image)

  _geometry(geometry)  # fail when the op is built, not when traced
  return Op(apply=apply, sample=sample, needs_uint8=True)
