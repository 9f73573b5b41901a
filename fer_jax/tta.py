"""Test-time augmentation: named sets of views and their weighted softmax average.

`config.eval.tta` names a set:
  none   the image itself;
  flip   the image and its horizontal mirror, equal weights;
  lhc62  LHC-Net's 60-view average, weights summing to 62 (docs/methods/lhcnet.md §1.9): the image
         with weight 3; 53 views, one per (rotation 0/±0.4 rad, x shift 0/±10 px, y shift 0/±10 px,
         flip no/yes) except the identity; 6 views of the central 90 % resized back, one per
         (rotation 0/±0.15 rad, flip no/yes); each weight 1, divisor 62. The shifts are the official
         10 px at its 224² input, scaled to other sizes (10/224 of the side: 5 px at APViT's 112²).

Every view is flip → central crop + bilinear resize back → translate → rotate, with the
official code's TensorFlow semantics: `tf.image.central_crop` box, `tf.image.resize` bilinear
with half-pixel centres, and tfa `translate`/`rotate` as projective transforms with bilinear
interpolation on pixel-index coordinates and "nearest" fill (coordinates clamped to the image).
A view whose step is the identity leaves the pixels unchanged bit for bit, so the steps are
applied to every view with per-view tables and parameters: the whole set is one vectorised
computation inside a jitted eval step. Any per-channel affine normalisation commutes with
these interpolations, so views may be taken of normalised images.
"""

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import errors

# (flip, central fraction, x shift px, y shift px, rotation rad, weight), in the official order; the shifts in pixels
# of a SHIFT_SIZE² image.
SHIFT_SIZE = 224
_IDENTITY = (False, 1.0, 0.0, 0.0, 0.0, 3.0)
_LHC62 = ((_IDENTITY,)
          + tuple((flip, 1.0, dx, dy, angle, 1.0)
                  for angle, dx, dy, flip in itertools.product((0.0, 0.4, -0.4), (0.0, 10.0, -10.0),
                                                               (0.0, 10.0, -10.0), (False, True))
                  if (angle, dx, dy, flip) != (0.0, 0.0, 0.0, False))
          + tuple((flip, 0.9, 0.0, 0.0, angle, 1.0)
                  for angle, flip in itertools.product((0.0, 0.15, -0.15), (False, True))))
VIEW_SETS = {
    "none": ((False, 1.0, 0.0, 0.0, 0.0, 1.0),),
    "flip": ((False, 1.0, 0.0, 0.0, 0.0, 1.0), (True, 1.0, 0.0, 0.0, 0.0, 1.0)),
    "lhc62": _LHC62,
}
NAMES = tuple(VIEW_SETS)


def _view_set(name: str):
  return errors.chosen(VIEW_SETS, name, "eval.tta")


def weights(name: str) -> np.ndarray:
  """The views' weights, float32 [V]."""
  return np.array([view[-1] for view in _view_set(name)], np.float32)


def _resize_table(length: int, fraction: float, flip: bool) -> np.ndarray:
  """Rows (lower, upper, lerp) of output pixel i over the input axis: optional mirror, then
  `tf.image.central_crop(fraction)` and a half-pixel bilinear resize back to `length`."""
  start = int((length - length * fraction) / 2)
  size = length - 2 * start
  scale = np.float32(size) / np.float32(length)
  position = (np.arange(length, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(position)
  lower = start + np.maximum(floor, 0).astype(np.int32)
  upper = start + np.minimum(np.ceil(position), size - 1).astype(np.int32)
  lerp = position - floor  # 0 everywhere without a crop, so that view is an exact copy
  if flip:
    lower, upper = length - 1 - lower, length - 1 - upper
  return np.stack([lower.astype(np.float32), upper.astype(np.float32), lerp])


def _rotation(angle: float, height: int, width: int) -> np.ndarray:
  """tfa `angles_to_projective_transforms`: output pixel → input pixel, about the centre."""
  angle = np.float32(angle)
  cos, sin = np.cos(angle), np.sin(angle)
  h, w = np.float32(height - 1), np.float32(width - 1)
  x_offset = (w - (cos * w - sin * h)) / np.float32(2)
  y_offset = (h - (sin * w + cos * h)) / np.float32(2)
  return np.array([cos, -sin, x_offset, sin, cos, y_offset], np.float32)


def tables(name: str, height: int, width: int) -> dict:
  """Per-view parameters of a named set for height×width images, each with leading axis V."""
  rows, cols, shifts, rotations = [], [], [], []
  for flip, fraction, dx, dy, angle, _ in _view_set(name):
    rows.append(_resize_table(height, fraction, False))
    cols.append(_resize_table(width, fraction, flip))
    shifts.append(np.array([1, 0, -dx * width / SHIFT_SIZE, 0, 1, -dy * height / SHIFT_SIZE], np.float32))
    rotations.append(_rotation(angle, height, width))
  return {"rows": np.stack(rows), "cols": np.stack(cols), "shift": np.stack(shifts),
          "rotation": np.stack(rotations)}


def _resize(images, rows, cols):
  """Separable bilinear resampling from (lower, upper, lerp) tables, in TF's arithmetic order."""
  lerp_y = rows[2][None, :, None, None]
  lerp_x = cols[2][None, None, :, None]
  row_lo, row_hi = images[:, rows[0].astype(jnp.int32)], images[:, rows[1].astype(jnp.int32)]
  col_lo, col_hi = cols[0].astype(jnp.int32), cols[1].astype(jnp.int32)
  top = row_lo[:, :, col_lo] + (row_lo[:, :, col_hi] - row_lo[:, :, col_lo]) * lerp_x
  bottom = row_hi[:, :, col_lo] + (row_hi[:, :, col_hi] - row_hi[:, :, col_lo]) * lerp_x
  return top + (bottom - top) * lerp_y


def _warp(images, transform):
  """TF ImageProjectiveTransform, bilinear, fill mode "nearest", for an affine transform."""
  _, height, width, _ = images.shape
  out_y, out_x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
  x = jnp.clip(transform[0] * out_x + transform[1] * out_y + transform[2], 0.0, width - 1.0)
  y = jnp.clip(transform[3] * out_x + transform[4] * out_y + transform[5], 0.0, height - 1.0)
  x_floor, y_floor = jnp.floor(x), jnp.floor(y)
  x_ceil, y_ceil = x_floor + 1, y_floor + 1

  def read(yy, xx):
    inside = (yy < height) & (xx < width)
    pixels = images[:, jnp.minimum(yy, height - 1).astype(jnp.int32), jnp.minimum(xx, width - 1).astype(jnp.int32)]
    return jnp.where(inside[None, :, :, None], pixels, 0.0)

  wx_floor, wx_ceil = (x_ceil - x)[None, :, :, None], (x - x_floor)[None, :, :, None]
  value_y_floor = wx_floor * read(y_floor, x_floor) + wx_ceil * read(y_floor, x_ceil)
  value_y_ceil = wx_floor * read(y_ceil, x_floor) + wx_ceil * read(y_ceil, x_ceil)
  return (y_ceil - y)[None, :, :, None] * value_y_floor + (y - y_floor)[None, :, :, None] * value_y_ceil


def apply_view(images, table: dict):
  """One view of a float NHWC batch; `table` is one row of `tables(...)`."""
  images = _resize(images, table["rows"], table["cols"])
  images = _warp(images, table["shift"])
  return _warp(images, table["rotation"]).astype(images.dtype)


def combine(probabilities, view_weights):
  """Weighted mean over views of softmax outputs: [V, B, K] × [V] → [B, K]."""
  return jnp.einsum("vbk,v->bk", probabilities, view_weights) / jnp.sum(view_weights)


def predict(name: str, logits_fn: Callable, images):
  """TTA class probabilities [B, K] of `logits_fn` (a batch of images → logits).

  Runs one view per model call (`jax.lax.map`), so memory stays that of one plain forward pass
  while the whole set is one traced computation; a plain loop, without vmap: an exported program
  (`jax.export`) has no batching rule.
  """
  _, height, width, _ = images.shape
  probabilities = jax.lax.map(
      lambda table: jax.nn.softmax(logits_fn(apply_view(images, table)).astype(jnp.float32), axis=-1),
      tables(name, height, width))
  return combine(probabilities, jnp.asarray(weights(name)))
