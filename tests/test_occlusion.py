"""occlude(): regions land on the synthetic faces' features as the renderer draws them; random
boxes have the asked area and depend only on the example's position."""

import jax
import numpy as np
from PIL import Image, ImageDraw
import pytest

from fer_jax.data import augment
from fer_jax.data.augment import occlusion
from fer_jax.data import synthetic_faces
from helpers import run_pipeline

EYE_WHITE, MOUTH_INSIDE = (245, 245, 245), (90, 20, 30)  # synthetic_faces' fills


def _covered(region: str, size: int) -> np.ndarray:
  """Where occlude(region) paints, at size × size (the op on a white image, painting black)."""
  image = np.full((size, size, 3), 255, np.uint8)
  return run_pipeline(f"occlude('{region}', geometry='synthetic', fill=0)|to_float()", size, image)[..., 0] == 0


def _posed_face(index: int) -> np.ndarray:
  """A surprised face (open mouth, wide eyes) drawn and posed by the renderer, without blur,
  lighting or noise, so its eye whites and mouth inside keep their exact colours."""
  rng = np.random.default_rng(index)
  expression = synthetic_faces._jitter(synthetic_faces.PROTOTYPES["surprise"], rng)
  background = (0, 0, 255)
  image = Image.new("RGB", (synthetic_faces.CANVAS,) * 2, background)
  synthetic_faces._draw_face(ImageDraw.Draw(image), expression, (0, 200, 0), (20, 20, 20), rng)
  return np.asarray(synthetic_faces._pose(image, rng, background))


def _pixels_of(face: np.ndarray, colour) -> np.ndarray:
  return np.abs(face.astype(int) - colour).max(axis=-1) <= 8


@pytest.mark.parametrize("region, colour", [("eyes", EYE_WHITE), ("mouth", MOUTH_INSIDE), ("mask", MOUTH_INSIDE),
                                            ("lower_half", MOUTH_INSIDE)])
def test_regions_cover_the_features_of_posed_synthetic_faces(region, colour):
  covered = _covered(region, synthetic_faces.CANVAS)
  inside = total = 0
  for index in range(40):
    feature = _pixels_of(_posed_face(index), colour)
    inside, total = inside + (feature & covered).sum(), total + feature.sum()
  assert total > 150  # the features are there to be covered
  assert inside / total > 0.99, (region, inside / total)


def test_mouth_and_eye_regions_leave_the_other_feature_visible():
  covered_eyes, covered_mouth = _covered("eyes", 128), _covered("mouth", 128)
  faces = [_posed_face(index) for index in range(20)]
  mouths = sum(_pixels_of(face, MOUTH_INSIDE) for face in faces)
  eyes = sum(_pixels_of(face, EYE_WHITE) for face in faces)
  assert (mouths * covered_eyes).sum() == 0 and (eyes * covered_mouth).sum() == 0


def test_boxes_have_the_area_asked_for_and_follow_the_example_position():
  size, area = 32, 0.25
  boxes = jax.jit(augment.parse(f"occlude('boxes', area={area}, fill=0)|to_float()"))
  images = np.full((4, size, size, 3), 200, np.uint8)
  outputs = np.asarray(boxes(images, augment.example_keys(0, np.arange(4))))
  painted = (outputs[..., 0] == 0).mean(axis=(1, 2))
  np.testing.assert_allclose(painted, area, atol=2 * 0.5 / size)  # a square of side 0.5, ± a pixel row and column
  assert len({tuple(np.argwhere(o[..., 0] == 0)[0]) for o in outputs}) > 1  # placed per example
  # The same position gives the same box whatever batch it is in; another seed moves it.
  elsewhere = np.asarray(boxes(images, augment.example_keys(0, np.array([2, 7, 8, 9]))))
  np.testing.assert_array_equal(elsewhere[0], outputs[2])
  reseeded = np.asarray(boxes(images, augment.example_keys(1, np.arange(4))))
  assert not np.array_equal(reseeded[2], outputs[2])


def test_fill_colour_and_bad_arguments():
  image = np.full((20, 20, 3), 100, np.uint8)
  out = run_pipeline("occlude('lower_half', fill=(10, 20, 30))|to_float()", 20, image)
  rows = np.flatnonzero(np.all(out[:, 0] == [10, 20, 30], axis=-1))
  np.testing.assert_array_equal(rows, np.arange(11, 20))  # pixel centres (i + 0.5) / 20 ≥ nose_y 0.55
  assert np.all(out[:11] == 100)
  with pytest.raises(ValueError, match="unknown region 'nose'; valid: eyes, mouth, lower_half, mask, boxes"):
    augment.parse("occlude('nose')")
  with pytest.raises(ValueError, match="unknown geometry 'rafdb'; known: synthetic, arcface112"):
    augment.parse("occlude('eyes', geometry='rafdb')")
  with pytest.raises(ValueError, match="lacks"):
    augment.parse("occlude('eyes', geometry={'eye_y': 0.4})")
  outside = {**occlusion.GEOMETRIES["synthetic"], "mouth_y": 1.8, "mouth_half_width": -0.2}  # painted nothing
  with pytest.raises(ValueError, match=r"the geometry dict's mouth_y=1.8, mouth_half_width=-0.2 place no region"):
    augment.parse(f"occlude('mouth', geometry={outside!r})")
  with pytest.raises(ValueError, match=r"unknown geometry 5; known: synthetic, arcface112 \(or give a dict"):
    augment.parse("occlude('eyes', geometry=5)")
  with pytest.raises(ValueError, match=r"the geometry dict's eye_y=True place no region"):
    augment.parse(f"occlude('eyes', geometry={ {**occlusion.GEOMETRIES['synthetic'], 'eye_y': True}!r})")
  upside_down = {**occlusion.GEOMETRIES["synthetic"], "chin_y": 0.6}
  with pytest.raises(ValueError, match=r"nose_y, mouth_y and chin_y place no region in the image: .*nose_y < mouth_y"):
    augment.parse(f"occlude('mask', geometry={upside_down!r})")


@pytest.mark.parametrize("arguments", ["area=0.3", "count=2", "area=0.2, count=1"])
def test_area_and_count_given_for_another_region_than_boxes_are_refused(arguments):
  """They size the boxes only: given with 'mouth' they did nothing, silently."""
  with pytest.raises(ValueError, match=r"^occlude\('mouth'\): area and count size the 'boxes' region only"):
    augment.parse(f"occlude('mouth', {arguments})")
  assert augment.parse(f"occlude('boxes', {arguments})").output_shape((8, 8, 3)) == (8, 8, 3)


def test_an_rgb_fill_on_a_grey_image_is_its_grey_level():
  """The mask's light blue (170, 205, 230) painted grey images 170, its red value."""
  out = run_pipeline("occlude('lower_half', fill=(170, 205, 230))|to_float()", 20, np.full((20, 20, 1), 100, np.uint8))
  grey = np.asarray(Image.new("RGB", (1, 1), (170, 205, 230)).convert("L"))[0, 0]
  assert out.shape == (20, 20, 1) and np.all(out[-1] == grey) and np.all(out[0] == 100)


@pytest.mark.parametrize("fill, message", [
    ("(1, 2)", "a number or one number per channel"), ("'red'", "a number or one number per channel"),
    ("True", "a number or one number per channel"), ("300", "in 0–255"), ("-1", "in 0–255"),
    ("(0, 0, 256)", "in 0–255"), ("(0, 1e999, 0)", "a number or one number per channel")])
def test_a_fill_that_is_not_a_0_255_grey_level_or_rgb_triple_is_refused_when_parsed(fill, message):
  with pytest.raises(ValueError, match=f"occlude: fill=.* must be {message}"):
    augment.parse(f"occlude('mouth', fill={fill})|to_float()")


def test_a_one_value_fill_paints_every_channel():
  out = run_pipeline("occlude('lower_half', fill=(7,))|to_float()", 20, np.full((20, 20, 3), 100, np.uint8))
  assert np.all(out[-1] == 7) and np.all(out[0] == 100)


@pytest.mark.parametrize("boxes", ["area=1.5", "count=0", "count=1.5", "area='big'", "count=True"])
def test_box_arguments_are_checked_when_parsed(boxes):
  with pytest.raises(ValueError, match="must be a number in \\(0, 1\\) and count=.* a whole number"):
    augment.parse(f"occlude('boxes', {boxes})|to_float()")


@pytest.mark.parametrize("text", ["resize(32)|normalize('imagenet')|occlude('mouth')",
                                  "to_float()|random_apply(0.5, \"occlude('boxes')\")"])
def test_occlusion_after_values_become_floats_is_refused(text):
  with pytest.raises(ValueError, match="occlude\\(.*\\) comes after to_float\\(\\)/normalize\\(\\), .* put it before them"):
    augment.parse(text)

