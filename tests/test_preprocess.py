import numpy as np
import pytest

from fer_jax.data import preprocess


def _image(h=8, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_nested_pipeline_and_size_placeholder():
  op = preprocess.parse("resize({size})|random_apply(1.0, 'flip(1.0)|flip(1.0)')", size=6)
  image = _image()
  out = op(image, np.random.default_rng(0))
  assert out.shape == (6, 6, 3)


def test_unknown_op_and_bad_arguments_name_the_op():
  with pytest.raises(ValueError, match="Unknown preprocessing op 'fliq'"):
    preprocess.parse("flip()|fliq()")
  with pytest.raises(ValueError, match="Bad arguments in preprocessing op 'flip\\(q=1\\)'"):
    preprocess.parse("flip(q=1)")
  with pytest.raises(ValueError, match="Cannot parse"):
    preprocess.parse("flip(")


def test_same_rng_same_result():
  op = preprocess.parse("flip()|random_crop(8, padding=2)|normalize('imagenet')|random_erasing(p=1.0)")
  a = op(_image(), np.random.default_rng([3, 7]))
  b = op(_image(), np.random.default_rng([3, 7]))
  np.testing.assert_array_equal(a, b)


def test_flip_and_probability():
  image = _image()
  np.testing.assert_array_equal(preprocess.parse("flip(1.0)")(image, np.random.default_rng(0)), image[:, ::-1])
  np.testing.assert_array_equal(preprocess.parse("flip(0.0)")(image, np.random.default_rng(0)), image)


def test_random_crop_pads_with_zeros():
  image = np.full((4, 4, 1), 200, np.uint8)
  crops = [preprocess.parse("random_crop(4, padding=2)")(image, np.random.default_rng(s)) for s in range(20)]
  assert all(c.shape == (4, 4, 1) for c in crops)
  assert any((c == 0).any() for c in crops) and any((c == 200).all() for c in crops)


def test_normalize_and_to_float():
  image = np.full((2, 2, 3), 255, np.uint8)
  out = preprocess.parse("normalize('imagenet')")(image, None)
  np.testing.assert_allclose(out[0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                             rtol=1e-6)
  assert preprocess.parse("to_float()")(image, None).max() == 255.0


def test_random_erasing_fills_one_rectangle():
  image = np.ones((20, 20, 3), np.float32)
  out = preprocess.parse("random_erasing(p=1.0, scale=(0.1, 0.1), ratio=(1.0, 1.0), value=0.0)")(
      image, np.random.default_rng(0))
  erased = np.argwhere(out[..., 0] == 0)
  (top, left), (bottom, right) = erased.min(0), erased.max(0)
  assert (bottom - top + 1) * (right - left + 1) == len(erased) == 36  # round(sqrt(40)) = 6
  assert image.min() == 1.0  # the input is not modified


def test_gray_to_rgb():
  out = preprocess.parse("gray_to_rgb()")(_image(c=1), None)
  assert out.shape == (8, 10, 3) and (out[..., 0] == out[..., 2]).all()


def test_random_affine_identity_and_translation():
  image = _image(9, 9, 3)
  identity = preprocess.parse("random_affine(0)")(image, np.random.default_rng(0))
  np.testing.assert_array_equal(identity, image)
  # translate only: the content moves by whole pixels, the uncovered border is zero
  shifted = preprocess.parse("random_affine(0, translate=(0.3, 0.0))")(image, np.random.default_rng(1))
  rng = np.random.default_rng(1)
  rng.uniform(0, 0)
  dx = round(rng.uniform(-0.3 * 9, 0.3 * 9))
  assert dx != 0
  if dx > 0:
    np.testing.assert_array_equal(shifted[:, dx:], image[:, :-dx])
    assert (shifted[:, :dx] == 0).all()
  else:
    np.testing.assert_array_equal(shifted[:, :dx], image[:, -dx:])


def test_keras_image_generator_shift_and_clamped_edges():
  image = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
  same = preprocess.parse("keras_image_generator()")(image, np.random.default_rng(0))
  np.testing.assert_allclose(same, image)
  op = preprocess.parse("keras_image_generator(height_shift_range=0.5)")
  rng = np.random.default_rng(3)
  shift = rng.uniform(-0.5, 0.5) * 6  # the op's only draw besides the flip coin
  out = op(image, np.random.default_rng(3))
  # output row r samples input row r + shift (Keras' inverse map), clamped at the borders
  rows = np.clip(np.arange(6) + shift, 0, 5)
  expected = np.stack([np.interp(rows, np.arange(6), image[:, j, 0]) for j in range(6)], axis=1)
  np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5)
