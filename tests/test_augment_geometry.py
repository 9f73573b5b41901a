"""Geometric augmentation ops against the libraries they imitate, never against our own code.

1. `apply` with hand-made draws, on real photos (matplotlib's bundled samples), against PIL,
   torchvision.transforms.functional on PIL images, cv2, and keras-preprocessing (scipy.ndimage).
2. `sample` against the library's sampler: a two-sample KS test on 10⁴ draws of each.
3. Through `augment.parse` on batches: shapes, jit, identity cases, per-example keys.

Tolerances, in grey levels of the uint8 result (ours rounded as the pipeline rounds):
  * exact (0) where the library is exact in integers: crops, PIL nearest resize, PIL nearest
    warps (we repeat PIL's 16.16 fixed point; ≥ 99.9 % of pixels equal allows a rare flip where
    a float32 coefficient rounds the other way at a pixel border).
  * ≤ 1 where the library computes in floats or fixed point and rounds once: PIL bilinear
    resize, cv2.resize (11-bit weights), cv2.warpAffine (OpenCV 5: exact coordinates), and PIL
    bilinear/bicubic warps (PIL truncates the float result; the pipeline rounds).
  * PIL bicubic resize: PIL stores its first (horizontal) pass in 8 bits, clipping the cubic's
    overshoot at hard edges to 0–255 before the vertical pass; our ops stay exact in floats (so
    they also work after normalize()). Photos: ≤ 1 on ≥ 99.9 % of values, ≤ 3 everywhere
    (measured 99.94 %, 3); the flat-coloured, hard-edged pack: ≤ 1 on ≥ 98.5 %, ≤ 10
    everywhere (measured 98.86 %, 9).
  * Keras (float images): |Δ| ≤ 0.01 (float32 coordinates against scipy's float64).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from matplotlib import cbook
from scipy import stats
import cv2
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode
from keras_preprocessing.image import ImageDataGenerator

from fer_jax.data import augment
from fer_jax.data.augment import geometry

pytestmark = pytest.mark.filterwarnings(  # keras-preprocessing 1.1.2 calls scipy's old namespace
    "ignore:Please import `affine_transform`:DeprecationWarning")

PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
KS_DRAWS = 10_000
KS_P = 1e-3


@functools.lru_cache(maxsize=None)
def _source(name: str) -> Image.Image:
  return Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB")


def _photo(height: int, width: int, gray: bool = False, name: str = "grace_hopper.jpg") -> Image.Image:
  """A real photo (or Minduka's flat-coloured pack, hard edges) at a small size, PIL-resized."""
  image = _source(name).resize((width, height), Image.BILINEAR)
  return image.convert("L") if gray else image


def _array(image) -> np.ndarray:
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


@functools.lru_cache(maxsize=None)
def _op(name: str, *args, **kwargs):
  """One op object per arguments, so its jitted apply compiles once per image shape."""
  return getattr(geometry, name)(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _jit_apply(op):
  return jax.jit(op.apply)


def _ours(op, image, params=()) -> np.ndarray:
  """op.apply on the uint8 image as float32, rounded and clipped as the pipeline does."""
  out = _jit_apply(op)(jnp.asarray(_array(image), jnp.float32), params)
  return np.asarray(augment.quantize(out)).astype(np.int32)


def _check(ours: np.ndarray, reference, max_diff: int = 1, min_equal: float = 0.0, at_most: int | None = None):
  """|ours − reference| ≤ max_diff on all pixels, or with `at_most`: ≤ max_diff on ≥ min_equal
  of them and ≤ at_most everywhere; `min_equal` alone: that share exactly equal."""
  reference = np.asarray(reference).astype(np.int32).reshape(ours.shape)
  diff = np.abs(ours - reference)
  share_close = (diff <= max_diff).mean()
  if at_most is None:
    assert diff.max() <= max_diff, f"max |Δ| {diff.max()} > {max_diff} ({100 * (1 - share_close):.3f} % of values)"
  else:
    assert share_close >= min_equal, f"only {100 * share_close:.3f} % within {max_diff}"
    assert diff.max() <= at_most, f"max |Δ| {diff.max()} > {at_most}"
  if min_equal and at_most is None:
    assert (diff == 0).mean() >= min_equal, f"only {100 * (diff == 0).mean():.3f} % equal"


def _assert_differences_are_neighbours(ours: np.ndarray, reference: np.ndarray) -> None:
  """Every pixel where `ours` differs holds a value of the reference's 3×3 neighbourhood there."""
  reference = reference.astype(np.int32).reshape(ours.shape)
  padded = np.pad(reference, ((1, 1), (1, 1), (0, 0)), mode="edge")
  for y, x, c in zip(*np.nonzero(ours != reference)):
    assert ours[y, x, c] in padded[y:y + 3, x:x + 3, c], (y, x, c, ours[y, x, c], padded[y:y + 3, x:x + 3, c])


def _check_pil_bicubic(ours, reference, name):
  """See the module docstring: PIL clips its first pass, which matters at hard edges."""
  if name == "grace_hopper.jpg":
    _check(ours, reference, max_diff=1, min_equal=0.999, at_most=3)
  else:
    _check(ours, reference, max_diff=1, min_equal=0.985, at_most=10)


def _f32(*values):
  return tuple(jnp.float32(v) for v in values)


# ---------------------------------------------------------------------------------------------
# 1. apply against the libraries

RESIZE_CASES = [  # (source h, w, gray, name) → (h, w)
    ((100, 100, False, "grace_hopper.jpg"), (48, 48)),
    ((100, 100, False, "grace_hopper.jpg"), (37, 61)),
    ((48, 48, True, "grace_hopper.jpg"), (100, 100)),
    ((64, 80, False, "grace_hopper.jpg"), (224, 224)),
    ((128, 128, False, "Minduka_Present_Blue_Pack.png"), (45, 90)),
    ((48, 48, False, "Minduka_Present_Blue_Pack.png"), (112, 112)),
]


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("source, size", RESIZE_CASES)
def test_resize_matches_pil_and_torchvision(source, size, method):
  image = _photo(*source)
  ours = _ours(_op("resize", size, method), image)
  pil = _array(image.resize(size[::-1], PIL_FILTERS[method]))
  torchvision = _array(TF.resize(image, list(size), InterpolationMode(method)))
  np.testing.assert_array_equal(pil, torchvision)  # torchvision's resize of a PIL image is PIL's
  if method == "nearest":
    _check(ours, pil, max_diff=0)
  elif method == "bilinear":
    _check(ours, pil, max_diff=1)
  else:
    _check_pil_bicubic(ours, pil, source[3])


@pytest.mark.parametrize("source, size", RESIZE_CASES)
def test_cv2_bilinear_resize_matches_cv2(source, size):
  image = _photo(*source)
  reference = cv2.resize(_array(image), size[::-1], interpolation=cv2.INTER_LINEAR)
  _check(_ours(_op("resize", size, "cv2_bilinear"), image), reference, max_diff=1)


ROTATIONS = [((100, 100, False, "grace_hopper.jpg"), 17.3), ((48, 48, True, "grace_hopper.jpg"), -11.0),
             ((64, 80, False, "grace_hopper.jpg"), 45.0), ((64, 80, False, "grace_hopper.jpg"), -3.21),
             ((96, 96, False, "Minduka_Present_Blue_Pack.png"), 28.0),
             ((48, 48, False, "grace_hopper.jpg"), 90.0)]


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("source, angle", ROTATIONS)
def test_rotate_matches_torchvision(source, angle, method):
  image = _photo(*source)
  fill = 7
  reference = TF.rotate(image, angle, InterpolationMode(method), fill=fill)
  ours = _ours(_op("rotate", 20, method, fill=fill), image, jnp.float32(angle))
  if method == "nearest":  # a source point on a pixel boundary may round to the other pixel: a neighbour's value
    _check(ours, _array(reference), max_diff=0, min_equal=0.999, at_most=255)
    _assert_differences_are_neighbours(ours, _array(reference))
  else:  # PIL truncates its float result to uint8; the pipeline rounds
    _check(ours, _array(reference), max_diff=1)


@pytest.mark.parametrize("source, angle", ROTATIONS)
def test_cv2_bilinear_rotate_matches_mmcv_warp_affine(source, angle):
  image = _photo(*source)
  array = _array(image)
  height, width = array.shape[:2]
  fill = 7
  matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1)  # mmcv.imrotate(img, -angle)
  reference = cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 3)
  _check(_ours(_op("rotate", 20, "cv2_bilinear", fill=fill), image, jnp.float32(angle)), reference, max_diff=1)


@pytest.mark.parametrize("size, padding, top, left", [(32, 4, 0, 0), (32, 4, 8, 3), (40, 0, 4, 2), (44, 2, 4, 4)])
def test_random_crop_matches_torchvision(size, padding, top, left):
  image = _photo(44, 44)
  reference = TF.crop(TF.pad(image, padding, fill=0), top, left, size, size)
  ours = _ours(_op("random_crop", size, padding), image, (jnp.int32(top), jnp.int32(left)))
  _check(ours, _array(reference), max_diff=0)


CROP_BOXES = [  # (source h, w, gray, name), (top, left, h, w), output size
    ((100, 100, False, "grace_hopper.jpg"), (10, 20, 70, 55), 48),
    ((100, 100, False, "grace_hopper.jpg"), (0, 0, 100, 100), 64),
    ((64, 80, False, "grace_hopper.jpg"), (30, 41, 13, 17), 40),
    ((48, 48, True, "grace_hopper.jpg"), (3, 5, 40, 40), 48),
    ((128, 128, False, "Minduka_Present_Blue_Pack.png"), (17, 9, 101, 77), 56),
]


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "cv2_bilinear"])
@pytest.mark.parametrize("source, box, size", CROP_BOXES)
def test_random_resized_crop_matches_torchvision_and_cv2(source, box, size, method):
  image = _photo(*source)
  top, left, h, w = box
  ours = _ours(_op("random_resized_crop", size, method=method), image, tuple(jnp.int32(v) for v in box))
  if method == "cv2_bilinear":
    reference = cv2.resize(_array(image)[top:top + h, left:left + w], (size, size), interpolation=cv2.INTER_LINEAR)
    _check(ours, reference, max_diff=1)
    return
  reference = _array(TF.resized_crop(image, top, left, h, w, [size, size], InterpolationMode(method)))
  if method == "nearest":  # exact rational positions; PIL's accumulated doubles may flip an exact tie
    _check(ours, reference, max_diff=0, min_equal=0.99, at_most=255)
  elif method == "bilinear":
    _check(ours, reference, max_diff=1)
  else:
    _check_pil_bicubic(ours, reference, source[3])


# angle (torchvision: clockwise), (tx, ty), scale. A round scale at angle 0 (0.9: source columns
# on exact pixel borders every 9 pixels) would test PIL's double rounding at ties, not the op.
AFFINES = [
    (17.3, (3, -5), 1.0), (-11.0, (0, 0), 0.83), (45.0, (-7, 2), 1.17), (0.0, (4, 1), 0.913), (-2.5, (0, 0), 1.0)]


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("angle, translate, scale", AFFINES)
@pytest.mark.parametrize("source", [(100, 100, False, "grace_hopper.jpg"), (64, 80, True, "grace_hopper.jpg"),
                                    (96, 96, False, "Minduka_Present_Blue_Pack.png")])
def test_random_affine_matches_torchvision(source, angle, translate, scale, method):
  image = _photo(*source)
  fill = 3
  reference = _array(TF.affine(image, angle, list(translate), scale, [0.0, 0.0], InterpolationMode(method), fill=fill))
  ours = _ours(_op("random_affine", 20, method=method, fill=fill), image, _f32(angle, *translate, scale))
  if method == "nearest":
    _check(ours, reference, max_diff=0, min_equal=0.999, at_most=255)
    _assert_differences_are_neighbours(ours, reference)
  else:  # PIL truncates, the pipeline rounds
    _check(ours, reference, max_diff=1)


KERAS_SETTINGS = [dict(rotation_range=30, horizontal_flip=True),
                  dict(rotation_range=10, width_shift_range=0.1, height_shift_range=0.2, zoom_range=0.15,
                       horizontal_flip=True)]


@pytest.mark.parametrize("settings", KERAS_SETTINGS)
@pytest.mark.parametrize("source", [(48, 48, True, "grace_hopper.jpg"),
                                    (56, 72, False, "Minduka_Present_Blue_Pack.png")])
def test_keras_image_generator_matches_keras(source, settings):
  image = _array(_photo(*source)).astype(np.float32)
  generator = ImageDataGenerator(**settings)
  op = _op("keras_image_generator", **settings)
  for seed in range(4):
    draw = generator.get_random_transform(image.shape, seed=seed)
    reference = generator.apply_transform(image, draw)
    params = (*_f32(draw["theta"], draw["tx"], draw["ty"], draw["zx"], draw["zy"]), jnp.bool_(draw["flip_horizontal"]))
    ours = np.asarray(_jit_apply(op)(jnp.asarray(image), params))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=0.01)


# ---------------------------------------------------------------------------------------------
# 2. samplers against the libraries' samplers

def _our_draws(op, shape, seed=0):
  keys = jax.random.split(jax.random.key(seed), KS_DRAWS)
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda key: op.sample(key, shape)))(keys))


def _same_distribution(ours, theirs, name):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  p = stats.ks_2samp(ours, theirs, method="asymp").pvalue
  assert p > KS_P, f"{name}: KS p = {p:.2e} (ours mean {ours.mean():.3f}, library {theirs.mean():.3f})"


def test_rotate_sampler_matches_random_rotation():
  torch.manual_seed(0)
  theirs = [T.RandomRotation.get_params([-20.0, 20.0]) for _ in range(KS_DRAWS)]
  _same_distribution(_our_draws(_op("rotate", 20), (48, 48, 3)), theirs, "angle")


def test_random_crop_sampler_matches_random_crop():
  torch.manual_seed(0)
  padded = torch.zeros(3, 40 + 8, 50 + 8)
  theirs = np.array([T.RandomCrop.get_params(padded, (36, 44)) for _ in range(KS_DRAWS)])
  top, left = _our_draws(_op("random_crop", (36, 44), padding=4), (40, 50, 3))
  _same_distribution(top, theirs[:, 0], "top")
  _same_distribution(left, theirs[:, 1], "left")


@pytest.mark.parametrize("height, width, scale, ratio", [
    (100, 100, (0.08, 1.0), (3 / 4, 4 / 3)),   # torchvision's defaults
    (112, 112, (0.8, 1.0), (1.0, 1.0)),        # APViT
    (32, 96, (0.3, 1.0), (0.5, 2.0)),          # many tries fail: the first that fits wins
    (32, 96, (0.5, 1.0), (0.25, 0.5)),         # every try fails: the central fallback
    (100, 100, (0.5, 2.0), (3 / 4, 4 / 3)),    # areas above the image's: those tries fail
])
@pytest.mark.integration
def test_random_resized_crop_sampler_matches_torchvision(height, width, scale, ratio):
  torch.manual_seed(0)
  dummy = torch.zeros(3, height, width)
  theirs = np.array([T.RandomResizedCrop.get_params(dummy, list(scale), list(ratio)) for _ in range(KS_DRAWS)])
  ours = np.stack(_our_draws(_op("random_resized_crop", 24, scale, ratio), (height, width, 3)), axis=1)
  assert ((ours[:, 2] > 0) & (ours[:, 0] + ours[:, 2] <= height)).all()
  assert ((ours[:, 3] > 0) & (ours[:, 1] + ours[:, 3] <= width)).all()
  for column, name in enumerate(["top", "left", "h", "w"]):
    if np.ptp(theirs[:, column]) == 0:  # a constant (the fallback): equal, not just alike
      np.testing.assert_array_equal(ours[:, column], theirs[:, column])
    else:
      _same_distribution(ours[:, column], theirs[:, column], name)


def test_random_affine_sampler_matches_random_affine():
  torch.manual_seed(0)
  height, width = 40, 60
  theirs = [T.RandomAffine.get_params([-20.0, 20.0], [0.2, 0.1], [0.8, 1.2], None, [width, height])
            for _ in range(KS_DRAWS)]
  angle, tx, ty, scale = _our_draws(_op("random_affine", 20, (0.2, 0.1), (0.8, 1.2)), (height, width, 3))
  _same_distribution(angle, [t[0] for t in theirs], "angle")
  _same_distribution(tx, [t[1][0] for t in theirs], "tx")
  _same_distribution(ty, [t[1][1] for t in theirs], "ty")
  _same_distribution(scale, [t[2] for t in theirs], "scale")
  assert set(np.unique(tx)) == {float(v) for v in np.unique([t[1][0] for t in theirs])}


def test_keras_sampler_matches_image_data_generator():
  np.random.seed(0)
  settings = KERAS_SETTINGS[1]
  shape = (48, 64, 3)
  generator = ImageDataGenerator(**settings)
  theirs = [generator.get_random_transform(shape) for _ in range(KS_DRAWS)]
  ours = _our_draws(_op("keras_image_generator", **settings), shape)
  for value, name in zip(ours, ["theta", "tx", "ty", "zx", "zy", "flip_horizontal"]):
    _same_distribution(value, [draw[name] for draw in theirs], name)


# ---------------------------------------------------------------------------------------------
# 3. through the pipeline

def _batch(n=4, height=48, width=48, gray=False):
  images = [_array(_photo(height, width, gray, name)) for name in ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"]]
  return jnp.asarray(np.stack([images[i % 2] for i in range(n)]))


@pytest.mark.integration
def test_pipeline_shapes_and_jit():
  images = _batch(4)
  keys = augment.example_keys(0, jnp.arange(4))
  text = ("resize(40)|rotate(15, method='bilinear')|random_crop({size}, padding=4)|"
          "random_affine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))|"
          "random_resized_crop(24, scale=(0.5, 1.0), method='cv2_bilinear')|rotate(6, method='cv2_bilinear')|"
          "resize((20, 28), method='bicubic')|to_float()|keras_image_generator(rotation_range=10, zoom_range=0.1, "
          "horizontal_flip=True)")
  pipeline = augment.parse(text, size=36)
  assert pipeline.output_shape((48, 48, 3)) == (20, 28, 3)
  step = jax.jit(pipeline.__call__)
  out = np.asarray(step(images, keys))
  assert out.shape == (4, 20, 28, 3) and out.dtype == np.float32
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255.001
  np.testing.assert_array_equal(out, step(images, keys))
  assert not np.array_equal(out[0], out[2])  # same image, other keys


@pytest.mark.parametrize("text", [
    "rotate(0)", "rotate(0, method='bilinear')", "rotate(0, method='bicubic')", "rotate(0, method='cv2_bilinear')",
    "random_affine(0)", "random_affine(0, method='bilinear')", "resize(48)", "resize(48, method='cv2_bilinear')",
    "random_crop(48)", "random_resized_crop(48, scale=(1.0, 1.0), ratio=(1.0, 1.0))",
    "random_resized_crop(48, scale=(1.0, 1.0), ratio=(1.0, 1.0), method='bicubic')",
    "to_float()|keras_image_generator()"])
def test_identity_cases(text):
  images = _batch(3, gray=True)
  out = jax.jit(augment.parse(text).__call__)(images, augment.example_keys(1, jnp.arange(3)))
  np.testing.assert_array_equal(out, images.astype(jnp.float32))


@pytest.mark.integration
def test_same_positions_same_augmentation():
  images = _batch(2)
  pipeline = augment.parse("rotate(20, method='bilinear')|random_resized_crop(32)|random_crop(28, padding=4)|"
                           "random_affine(15, translate=(0.2, 0.2), scale=(0.8, 1.2))")
  step = jax.jit(pipeline.__call__)
  same = jnp.stack([images[0]] * 4)
  out = np.asarray(step(same, augment.example_keys(7, jnp.array([5, 9, 5, 11]))))
  np.testing.assert_array_equal(out[0], out[2])
  assert not np.array_equal(out[0], out[1])
  again = np.asarray(step(same, augment.example_keys(7, jnp.array([11, 5, 3, 9]))))
  for row, position in zip(again, [11, 5, 3, 9]):  # an example's key, not its slot in the batch, decides
    if position != 3:
      np.testing.assert_array_equal(row, out[[5, 9, 5, 11].index(position)])


def test_bad_arguments_name_the_op():
  with pytest.raises(ValueError, match="resize"):
    augment.parse("resize(32, method='lanczos')")
  with pytest.raises(ValueError, match="random_affine"):
    augment.parse("random_affine(10, method='cv2_bilinear')")
  with pytest.raises(ValueError, match="random_crop"):
    augment.parse("random_crop(60, padding=4)").output_shape((48, 48, 3))


@pytest.mark.parametrize("argument", ["width_shift_range=10", "height_shift_range=1.5", "width_shift_range=-0.1",
                                      "zoom_range=(0.9, 1.1, 1.2)"])
def test_keras_ranges_it_does_not_read_as_keras_are_refused(argument):
  """Keras reads shift ranges >= 1 as pixels; ours are fractions, so 10 would shift by ±10 image widths."""
  with pytest.raises(ValueError, match="keras_image_generator"):
    augment.parse(f"to_float()|keras_image_generator({argument})")


@pytest.mark.parametrize("op, message", [
    ("resize(0)", r"size=0 must be a whole number of pixels, 1 or more, or a \(height, width\) pair of them"),
    ("resize((48, -1))", r"size=\(48, -1\) must be a whole number of pixels"),
    ("resize(True)", r"size=True must be"),
    ("random_crop(48, padding=-4)", r"padding=-4 must be a whole number of pixels, 0 or more"),
    ("random_crop(48, padding=2.5)", r"padding=2.5 must be"),
    ("random_resized_crop(48, ratio=(0, 1))",
     r"ratio=\(0, 1\) must be a \(min, max\) pair of aspect ratios \(width / height\), 0 < min <= max"),
    ("random_resized_crop(48, scale=(-0.1, 0.5))",
     r"scale=\(-0.1, 0.5\) must be a \(min, max\) pair of fractions of the image's area, 0 <= min <= max(?! <=)"),
    ("random_resized_crop(48, scale=(0.9, 0.1))", r"scale=\(0.9, 0.1\) must be"),
    ("rotate(-10)", r"degrees=-10 must be a number of degrees, 0 or more, or a \(min, max\) pair of them"),
    ("rotate((10, -10))", r"degrees=\(10, -10\) must be"),
    ("rotate(1e999)", r"degrees=inf must be"),
    ("rotate(10, fill=(1, 2))", r"fill=\(1, 2\) must be a number or one number per channel \(R, G, B\)"),
    ("random_affine(True)", r"degrees=True must be"),
    ("random_affine(10, translate=(1.5, 0))",
     r"translate=\(1.5, 0\) must be a \(horizontal, vertical\) pair of fractions of the width and height, each "
     r"from 0 to 1"),
    ("random_affine(10, translate=(0.1,))", r"translate=\(0.1,\) must be"),
    ("random_affine(10, scale=(0, 1))", r"scale=\(0, 1\) must be a \(min, max\) pair of zoom factors, 0 < min <= max"),
    ("random_affine(10, scale=(1.2, 0.8))", r"scale=\(1.2, 0.8\) must be"),
    ("keras_image_generator(rotation_range=-5)", r"rotation_range=-5 must be a number of degrees, 0 or more"),
    ("keras_image_generator(width_shift_range=True)", r"width_shift_range=True must be a fraction of the size"),
    ("keras_image_generator(zoom_range=1.5)",
     r"zoom_range=1.5 must be a number from 0 to below 1 \(zooms 1 ± it\) or a \(min, max\) pair of zoom factors"),
    ("keras_image_generator(zoom_range=(1.1, 0.9))", r"zoom_range=\(1.1, 0.9\) must be"),
    ("keras_image_generator(horizontal_flip=1)", r"horizontal_flip=1 must be True or False"),
])
def test_geometric_arguments_out_of_range_are_refused_naming_the_op_and_the_argument(op, message):
  """rotate(-10), rotate((10, -10)) and rotation_range=-5 turned every image by the same angle (jax's uniform
  clamps a reversed range to its min), ratio=(0, 1) failed with "math domain error", resize(0) divided by zero
  in the first traced step; the others were taken."""
  name = op.split("(")[0]
  with pytest.raises(ValueError, match=rf"^{name}: {message}.*\. Raised by preprocessing op "):
    augment.parse(op)


def test_geometric_arguments_at_the_ends_of_their_ranges_are_taken():
  augment.parse("resize((48, 1))|rotate(0, fill=(1, 2, 3))|rotate((-5, -5))|random_crop(48, padding=0)|"
                "random_resized_crop(48, scale=(0, 1), ratio=(1, 1))|random_affine(0, translate=(1, 0), scale=None)|"
                "to_float()|keras_image_generator(zoom_range=0, horizontal_flip=False)")


def test_random_resized_crop_takes_areas_above_the_image_s_as_torchvision_does():
  """It refused scale=(0.5, 2), which torchvision and mmcls take: draws above the image's area do not fit, and
  the central fallback comes more often (the sampler test compares the draws)."""
  pipeline = augment.parse("random_resized_crop(48, scale=(0.5, 2))")
  assert pipeline.steps[0].arguments["scale"] == (0.5, 2)
  assert pipeline.output_shape((100, 100, 3)) == (48, 48, 3)


def test_keras_zoom_pair_matches_image_data_generator():
  np.random.seed(0)
  shape = (48, 64, 3)
  generator = ImageDataGenerator(zoom_range=(0.8, 1.3))
  theirs = [generator.get_random_transform(shape) for _ in range(KS_DRAWS)]
  ours = _our_draws(_op("keras_image_generator", zoom_range=(0.8, 1.3)), shape)
  for value, name in zip(ours[3:5], ["zx", "zy"]):
    _same_distribution(value, [draw[name] for draw in theirs], name)
