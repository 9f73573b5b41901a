"""TTA views against direct NumPy versions of the TensorFlow ops the official code calls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import tta


def _views(name: str, images):
  """All views of a float NHWC batch at once: (views [V, B, H, W, C], weights [V])."""
  _, height, width, _ = images.shape
  return (jax.vmap(lambda table: tta.apply_view(images, table))(tta.tables(name, height, width)),
          jnp.asarray(tta.weights(name)))


def np_projective(image, transform):
  """TF ImageProjectiveTransform (bilinear, fill "nearest") on one HWC image, pixel by pixel."""
  height, width, _ = image.shape
  a0, a1, a2, b0, b1, b2 = transform
  out = np.zeros_like(image)

  def read(y, x):
    return image[y, x] if 0 <= y < height and 0 <= x < width else 0.0

  for oy in range(height):
    for ox in range(width):
      x = min(max(a0 * ox + a1 * oy + a2, 0.0), width - 1.0)
      y = min(max(b0 * ox + b1 * oy + b2, 0.0), height - 1.0)
      x0, y0 = math.floor(x), math.floor(y)
      top = (x0 + 1 - x) * read(y0, x0) + (x - x0) * read(y0, x0 + 1)
      bottom = (x0 + 1 - x) * read(y0 + 1, x0) + (x - x0) * read(y0 + 1, x0 + 1)
      out[oy, ox] = (y0 + 1 - y) * top + (y - y0) * bottom
  return out


def np_rotate(image, angle):
  """tfa.image.rotate(bilinear, nearest): rotation about the image centre."""
  height, width, _ = image.shape
  cos, sin = math.cos(angle), math.sin(angle)
  x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2
  y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2
  return np_projective(image, (cos, -sin, x_offset, sin, cos, y_offset))


def np_translate(image, dx, dy):
  return np_projective(image, (1, 0, -dx, 0, 1, -dy))


def np_central_zoom(image, fraction):
  """tf.image.central_crop, then tf.image.resize (bilinear, half-pixel centres) back."""
  height, width, _ = image.shape
  top, left = int((height - height * fraction) / 2), int((width - width * fraction) / 2)
  crop = image[top:height - top, left:width - left]

  def axis(out_size, in_size):
    position = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    lower = np.maximum(np.floor(position), 0).astype(int)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(int)
    return lower, upper, position - np.floor(position)

  rows, cols = axis(height, crop.shape[0]), axis(width, crop.shape[1])
  out = np.zeros_like(image)
  for i in range(height):
    for j in range(width):
      top_value = crop[rows[0][i], cols[0][j]] + (crop[rows[0][i], cols[1][j]] - crop[rows[0][i], cols[0][j]]) * cols[2][j]
      bottom = crop[rows[1][i], cols[0][j]] + (crop[rows[1][i], cols[1][j]] - crop[rows[1][i], cols[0][j]]) * cols[2][j]
      out[i, j] = top_value + (bottom - top_value) * rows[2][i]
  return out


def np_view(image, flip, fraction, dx, dy, angle):
  """The official `augment`: flip → central crop & resize → translate → rotate, each if asked."""
  if flip:
    image = image[:, ::-1]
  if fraction < 1:
    image = np_central_zoom(image, fraction)
  if dx or dy:
    image = np_translate(image, dx, dy)
  if angle:
    image = np_rotate(image, angle)
  return image


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(0, 255, (2, 23, 26, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def lhc62_views(images):
  return jax.jit(lambda x: _views("lhc62", x))(jnp.asarray(images))


def test_lhc62_has_60_views_weighted_to_62():
  views = tta.VIEW_SETS["lhc62"]
  weights = tta.weights("lhc62")
  assert len(views) == 60 and weights.shape == (60,)
  assert weights[0] == 3 and np.all(weights[1:] == 1) and weights.sum() == 62
  assert views[0][:5] == (False, 1.0, 0.0, 0.0, 0.0)
  assert len(set(view[:5] for view in views)) == 60
  grid = [view for view in views[1:] if view[1] == 1.0]
  assert len(grid) == 53
  assert {view[4] for view in grid} == {0.0, 0.4, -0.4}
  assert {(view[2], view[3]) for view in grid} == {(dx, dy) for dx in (0.0, 10.0, -10.0) for dy in (0.0, 10.0, -10.0)}
  zooms = [view for view in views if view[1] == 0.9]
  assert [(view[0], view[4]) for view in zooms] == [(False, 0.0), (True, 0.0), (False, 0.15), (True, 0.15),
                                                     (False, -0.15), (True, -0.15)]


@pytest.mark.integration
def test_none_and_flip_sets():
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (3, 8, 9, 3)), jnp.float32)
  views, weights = _views("none", x)
  np.testing.assert_array_equal(views[0], x)
  np.testing.assert_array_equal(weights, [1.0])
  views, weights = _views("flip", x)
  np.testing.assert_array_equal(views[1], x[:, :, ::-1])
  np.testing.assert_array_equal(weights, [1.0, 1.0])
  with pytest.raises(ValueError, match="valid: none, flip, lhc62"):
    tta.weights("five_crop")


@pytest.mark.parametrize("view", [
    (False, 1.0, 0.0, 0.0, 0.0),       # identity: an exact copy
    (True, 1.0, 0.0, 0.0, 0.0),        # flip
    (False, 1.0, 10.0, -10.0, 0.0),    # translation with nearest fill
    (True, 1.0, -10.0, 0.0, 0.4),      # flip, translation, rotation
    (False, 1.0, 0.0, 10.0, -0.4),
    (False, 0.9, 0.0, 0.0, 0.0),       # central 90 % zoom
    (True, 0.9, 0.0, 0.0, -0.15),      # zoom of the mirror, then rotation
])
def test_views_match_the_official_ops(images, lhc62_views, view):
  index = [v[:5] for v in tta.VIEW_SETS["lhc62"]].index(view)
  got = np.asarray(lhc62_views[0][index])
  flip, fraction, dx, dy, angle = view
  _, height, width, _ = images.shape  # the official shifts are of 224² images, scaled to these
  want = np.stack([np_view(image.astype(np.float64), flip, fraction, dx * width / 224, dy * height / 224, angle)
                   for image in images])
  if view[1:] == (1.0, 0.0, 0.0, 0.0):
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


def test_combine_is_the_weighted_mean_of_softmax_outputs():
  probabilities = jax.nn.softmax(jnp.asarray(np.random.default_rng(2).normal(size=(60, 4, 7))), axis=-1)
  weights = jnp.asarray(tta.weights("lhc62"))
  want = (3 * probabilities[0] + probabilities[1:].sum(axis=0)) / 62
  np.testing.assert_allclose(tta.combine(probabilities, weights), want, rtol=1e-6)
