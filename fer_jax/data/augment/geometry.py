"""Geometric ops: resizes, rotations, crops, affine warps and the Keras generator.

Each op imitates one library call (named in its docstring) and computes in float32 without
rounding of its own, so it works on 0–255 values and after normalize() alike; the pipeline's
rounding then gives the library's uint8 result to within one grey level, and exactly for crops and
PIL's nearest resize and warps (tests/test_augment_geometry.py measures every op against its
library on real photos). Where PIL's 8-bit arithmetic is not float-exact we keep the exact value:
PIL truncates bilinear/bicubic warp results (we round: −0.5 bias in PIL, ≤ 1 apart), and PIL's
bicubic resize stores its horizontal pass in 8 bits, clipping the cubic's overshoot at hard edges
(≤ 3 grey levels on 0.06 % of a photo's values, up to ~9 on flat-coloured graphics).

Two resamplers serve every op here (fer_jax.tta has its own: LHC-Net's test-time views follow
TensorFlow's resize and projective transform in TensorFlow's arithmetic order):

* Resizes are separable: one dense weight matrix per axis, (output, input), applied as two
  matmuls. A fixed resize computes them in NumPy float64 when the op is built; random_resized_crop
  computes them in jnp from the traced crop box (the box is zero-weighted outside, so the shapes
  stay static).
* Warps (rotate, random_affine, keras_image_generator) compute each output pixel's source
  coordinate and gather 1, 4 or 16 taps (`_sample`), with the library's border: PIL's (outside
  the input → fill, taps clamped), cv2's constant border (each tap outside reads fill) or
  scipy's "nearest" (taps clamped).

Coordinates: `rows`/`cols` of `_sample` are pixel-centre coordinates (pixel i is centred at i).
PIL's transforms work in continuous coordinates (pixel i spans [i, i + 1)): PIL's x is ours + 0.5.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.augment.basic import bernoulli, channel_values, check_area_and_aspect, check_number, check_pair
from fer_jax.data.augment.core import Op, register

PIL_METHODS = ("nearest", "bilinear", "bicubic")
RESIZE_METHODS = PIL_METHODS + ("cv2_bilinear",)
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls, not TF32 (GPU) or bfloat16 passes (TPU)


def _check_method(op: str, method: str, valid) -> None:
  if method not in valid:
    raise ValueError(f"{op}: unknown method {method!r}; valid: {', '.join(valid)}.")


def _whole(number, least: int) -> bool:
  return number >= least and number == int(number)


def _size(op: str, size) -> tuple[int, int]:
  """`size`, a side or (height, width), as (height, width) in pixels."""
  meaning = "a whole number of pixels, 1 or more, or a (height, width) pair of them"
  if isinstance(size, (tuple, list)):
    check_pair(op, "size", size, meaning, lambda height, width: _whole(height, 1) and _whole(width, 1))
    return int(size[0]), int(size[1])
  check_number(op, "size", size, meaning, lambda side: _whole(side, 1))
  return int(size), int(size)


def _angles(op: str, name: str, degrees) -> tuple[float, float]:
  """torchvision's `degrees`: d → (−d, d) for a number d ≥ 0, or a (min, max) pair."""
  meaning = "a number of degrees, 0 or more, or a (min, max) pair of them"
  if isinstance(degrees, (tuple, list)):
    check_pair(op, name, degrees, meaning, lambda low, high: low <= high)
    return degrees[0], degrees[1]
  check_number(op, name, degrees, meaning, lambda number: number >= 0)
  return -degrees, degrees


_ZOOM_PAIR = "a (min, max) pair of zoom factors, 0 < min <= max"


# ----------------------------------------------------------------------------------------------
# Resizing: one (output, input) weight matrix per axis.

def _pil_kernel(x, method: str, xp):
  """PIL's resize filters (Resample.c): triangle, and Keys' cubic with a = −0.5."""
  x = xp.abs(x)
  if method == "bilinear":
    return xp.maximum(1.0 - x, 0.0)
  a = -0.5
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return xp.where(x < 1.0, near, xp.where(x < 2.0, far, 0.0))


def _resize_weights(out_size: int, in_size: int, start, length, method: str, xp):
  """Weights (out_size, in_size) resampling pixels [start, start + length) of an axis to out_size.

  PIL methods follow `Image.resize` of that box cropped out (torchvision resized_crop): output
  pixel i is centred at (i + 0.5)·scale in the box, scale = length / out_size; when shrinking,
  the filter is stretched by the scale (antialiasing) and the weights inside the box are
  renormalised to sum to one (PIL's support window is exactly the kernel's non-zero span, so
  the dense row equals PIL's taps). PIL's nearest takes input floor((i + 0.5)·scale). "cv2_bilinear"
  is cv2.resize INTER_LINEAR: half-pixel centres, two taps, edges clamped, no antialiasing.
  `start` and `length` are ints with xp=np (weights in float64) or traced with xp=jnp.
  """
  i = xp.arange(out_size)
  j = xp.arange(in_size) - start  # input pixel's position in the box
  inside = (j >= 0) & (j < length)
  if method == "nearest":
    if xp is np:  # PIL accumulates the position in doubles; repeat it bit for bit
      steps = np.full(out_size, length / out_size)
      steps[0] = steps[0] * 0.5
      source = np.floor(np.cumsum(steps)).astype(np.int64)
    else:  # exact rational floor((2i + 1)·length / (2·out_size)); PIL may differ at exact ties
      source = ((2 * i + 1) * length) // (2 * out_size)
    weights = (j[None, :] == source[:, None]) & inside[None, :]
    return weights.astype(xp.float64 if xp is np else jnp.float32)
  scale = length / out_size
  if method == "cv2_bilinear":
    position = (i + 0.5) * scale - 0.5
    low = xp.floor(position)
    fraction = position - low
    fraction = xp.where((low < 0) | (low >= length - 1), 0.0, fraction)
    low = xp.clip(low, 0, length - 1)
    jj = j[None, :]
    return (xp.where(jj == low[:, None], 1.0 - fraction[:, None], 0.0)
            + xp.where(jj == low[:, None] + 1, fraction[:, None], 0.0))
  filterscale = xp.maximum(scale, 1.0)
  centre = (i + 0.5) * scale
  weights = _pil_kernel((j[None, :] + 0.5 - centre[:, None]) / filterscale, method, xp)
  weights = xp.where(inside[None, :], weights, 0.0)
  total = weights.sum(axis=1, keepdims=True)
  return weights / xp.where(total == 0.0, 1.0, total)


def _apply_weights(image: jax.Array, rows, cols) -> jax.Array:
  """image (H, W, C) → (rows @ image @ colsᵀ); None leaves that axis as it is."""
  if rows is not None:
    image = jnp.einsum("oh,hwc->owc", rows, image, precision=_HIGHEST)
  if cols is not None:
    image = jnp.einsum("pw,hwc->hpc", cols, image, precision=_HIGHEST)
  return image


@register
def resize(size, method: str = "bilinear") -> Op:
  """Resize to (size, size) or (height, width): PIL `Image.resize` with the `method` filter
  (antialiased when shrinking), or "cv2_bilinear" for cv2.resize INTER_LINEAR (mmcv's resize).
  """
  _check_method("resize", method, RESIZE_METHODS)
  height, width = _size("resize", size)

  def weights(out_size, in_size):
    if out_size == in_size:  # every method is the identity there, as PIL and cv2 copy
      return None
    return jnp.asarray(_resize_weights(out_size, in_size, 0, in_size, method, np), jnp.float32)

  def apply(image, params):
    return _apply_weights(image, weights(height, image.shape[0]), weights(width, image.shape[1]))

  return Op(apply=apply, output_shape=lambda shape: (height, width, shape[2]))


# ----------------------------------------------------------------------------------------------
# Warping: a source coordinate per output pixel, then gathered taps.

def _fill_vector(fill, channels: int) -> jax.Array:
  fill = jnp.asarray(fill, jnp.float32).reshape(-1)
  return jnp.broadcast_to(fill, (channels,)) if fill.shape[0] == 1 else fill[:channels]


def _sample(image: jax.Array, rows, cols, method: str, border: str, fill=0) -> jax.Array:
  """`image` (H, W, C) read at pixel-centre coordinates `rows`, `cols` (any equal shapes).

  method: "nearest" (the pixel at floor(coordinate + 0.5)), "bilinear", or "bicubic" (PIL's
    transform cubic, a = −1, over 4×4 taps).
  border: "clamp" — taps outside read the nearest edge pixel (scipy.ndimage mode "nearest");
    "pil" — points outside [−0.5, size − 0.5) read `fill`, taps otherwise clamped (PIL
    Image.transform); "taps" — each tap outside reads `fill` (cv2 BORDER_CONSTANT).
  """
  height, width, channels = image.shape
  flat = image.reshape(height * width, channels)
  fill = _fill_vector(fill, channels)

  def tap(row, col):
    value = jnp.take(flat, jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1), axis=0)
    if border == "taps":
      inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
      value = jnp.where(inside[..., None], value, fill)
    return value

  if method == "nearest":
    result = tap(jnp.floor(rows + 0.5).astype(jnp.int32), jnp.floor(cols + 0.5).astype(jnp.int32))
  else:
    top, left = jnp.floor(rows), jnp.floor(cols)
    dy, dx = rows - top, cols - left
    top, left = top.astype(jnp.int32), left.astype(jnp.int32)
    if method == "bilinear":
      row_taps = ((0, 1.0 - dy), (1, dy))
      col_taps = ((0, 1.0 - dx), (1, dx))
    else:  # PIL's BICUBIC macro: v = p1 + d(p2 + d(p3 + d·p4)) as weights of the four taps
      def cubic(d):
        d2, d3 = d * d, d * d * d
        return ((-1, -d + 2 * d2 - d3), (0, 1 - 2 * d2 + d3), (1, d + d2 - d3), (2, d3 - d2))
      row_taps, col_taps = cubic(dy), cubic(dx)
    result = 0.0
    for row_offset, row_weight in row_taps:
      for col_offset, col_weight in col_taps:
        result = result + (row_weight * col_weight)[..., None] * tap(top + row_offset, left + col_offset)
  if border == "pil":
    inside = (rows >= -0.5) & (rows < height - 0.5) & (cols >= -0.5) & (cols < width - 0.5)
    result = jnp.where(inside[..., None], result, fill)
  return result


def _grid(height: int, width: int):
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  return jnp.broadcast_to(rows, (height, width)), jnp.broadcast_to(cols, (height, width))


def _inverse_affine(angle, translate_x, translate_y, scale, centre_x, centre_y):
  """torchvision's `_get_inverse_affine_matrix` without shear: (a, b, c, d, e, f) taking an
  output point (x, y) to the input point (a·x + b·y + c, d·x + e·y + f) for a clockwise
  rotation by `angle` degrees and a scale about the centre, then a translation."""
  rotation = jnp.deg2rad(jnp.asarray(angle, jnp.float32))
  cos, sin = jnp.cos(rotation) / scale, jnp.sin(rotation) / scale
  a, b, d, e = cos, sin, -sin, cos
  x, y = -centre_x - translate_x, -centre_y - translate_y
  return a, b, a * x + b * y + centre_x, d, e, d * x + e * y + centre_y


def _pil_warp(image: jax.Array, matrix, method: str, fill) -> jax.Array:
  """PIL `Image.transform(image.size, Image.AFFINE, matrix, method, fillcolor=fill)`.

  Output pixel (x, y) reads the input at matrix · (x + 0.5, y + 0.5) in PIL's coordinates.
  Nearest repeats PIL's 16.16 fixed-point arithmetic (affine_fixed in Geometry.c), so the chosen
  pixels agree even where a source point lies on a pixel border. (With no rotation PIL instead
  accumulates doubles, ImagingScaleAffine; the two differ only where a source point falls exactly
  on a pixel border, which a drawn scale practically never produces.)
  """
  height, width, _ = image.shape
  a, b, c, d, e, f = matrix
  rows, cols = _grid(height, width)
  if method == "nearest":
    def fix(value):
      return jnp.floor(value * 65536.0 + 0.5).astype(jnp.int32)
    y, x = rows.astype(jnp.int32), cols.astype(jnp.int32)
    source_x = jnp.right_shift(fix(c + a * 0.5 + b * 0.5) + x * fix(a) + y * fix(b), 16)
    source_y = jnp.right_shift(fix(f + d * 0.5 + e * 0.5) + x * fix(d) + y * fix(e), 16)
    return _sample(image, source_y.astype(jnp.float32), source_x.astype(jnp.float32), "nearest", "pil", fill)
  source_x = a * (cols + 0.5) + b * (rows + 0.5) + c
  source_y = d * (cols + 0.5) + e * (rows + 0.5) + f
  return _sample(image, source_y - 0.5, source_x - 0.5, method, "pil", fill)


def _cv2_rotate(image: jax.Array, angle, fill) -> jax.Array:
  """mmcv.imrotate: cv2.warpAffine with getRotationMatrix2D(((w − 1)/2, (h − 1)/2), angle, 1),
  INTER_LINEAR, BORDER_CONSTANT `fill`; counter-clockwise by `angle` degrees. Taps outside the
  image read `fill`, so the edges blend into the border as in OpenCV.

  Source coordinates are exact, as OpenCV 5 computes them; OpenCV 4 rounded them to 1/32 pixel
  (INTER_TAB_SIZE), which moves a few values on sharp edges by up to ~4 grey levels.
  """
  height, width, _ = image.shape
  theta = jnp.deg2rad(jnp.asarray(angle, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = (width - 1) / 2, (height - 1) / 2
  rows, cols = _grid(height, width)
  source_cols = cos * (cols - cx) - sin * (rows - cy) + cx
  source_rows = sin * (cols - cx) + cos * (rows - cy) + cy
  return _sample(image, source_rows, source_cols, "bilinear", "taps", fill)


@register
def rotate(degrees, method: str = "nearest", fill=0) -> Op:
  """torchvision RandomRotation on a PIL image: angle ~ U(−degrees, degrees), PIL `Image.rotate`
  (counter-clockwise about the centre, same size, `fill` outside); method "nearest", "bilinear",
  "bicubic", or "cv2_bilinear" (mmcv.imrotate, see `_cv2_rotate`). Params: the angle."""
  _check_method("rotate", method, RESIZE_METHODS)
  low, high = _angles("rotate", "degrees", degrees)
  fill = channel_values("rotate", "fill", fill)

  def sample(key, shape):
    return jax.random.uniform(key, (), jnp.float32, low, high)

  def apply(image, angle):
    if method == "cv2_bilinear":
      return _cv2_rotate(image, angle, fill)
    height, width, _ = image.shape
    # PIL rotate: the inverse map of a counter-clockwise turn about (w/2, h/2)
    return _pil_warp(image, _inverse_affine(-angle, 0.0, 0.0, 1.0, width * 0.5, height * 0.5), method, fill)

  return Op(apply=apply, sample=sample)


@register
def random_affine(degrees, translate=(0.0, 0.0), scale=(1.0, 1.0), method: str = "nearest", fill=0) -> Op:
  """torchvision RandomAffine without shear on a PIL image: angle ~ U(−degrees, degrees)
  (clockwise, as torchvision's affine), translation round(U(±translate·size)) pixels (Python's
  round, half to even), scale ~ U(scale); PIL transform with torchvision's inverse matrix about
  (w/2, h/2). Params: (angle, tx, ty, scale)."""
  _check_method("random_affine", method, PIL_METHODS)
  low, high = _angles("random_affine", "degrees", degrees)
  translate = (0.0, 0.0) if translate is None else translate
  scale = (1.0, 1.0) if scale is None else scale
  check_pair("random_affine", "translate", translate, "a (horizontal, vertical) pair of fractions of the width and "
             "height, each from 0 to 1", lambda horizontal, vertical: 0 <= horizontal <= 1 and 0 <= vertical <= 1)
  check_pair("random_affine", "scale", scale, _ZOOM_PAIR, lambda low, high: 0 < low <= high)
  fill = channel_values("random_affine", "fill", fill)

  def sample(key, shape):
    height, width = shape[:2]
    k_angle, k_x, k_y, k_scale = jax.random.split(key, 4)
    max_dx, max_dy = translate[0] * width, translate[1] * height
    return (jax.random.uniform(k_angle, (), jnp.float32, low, high),
            jnp.round(jax.random.uniform(k_x, (), jnp.float32, -max_dx, max_dx)),
            jnp.round(jax.random.uniform(k_y, (), jnp.float32, -max_dy, max_dy)),
            jax.random.uniform(k_scale, (), jnp.float32, scale[0], scale[1]))

  def apply(image, params):
    angle, tx, ty, factor = params
    height, width, _ = image.shape
    return _pil_warp(image, _inverse_affine(angle, tx, ty, factor, width * 0.5, height * 0.5), method, fill)

  return Op(apply=apply, sample=sample)


# ----------------------------------------------------------------------------------------------
# Crops.

@register
def random_crop(size, padding: int = 0) -> Op:
  """torchvision RandomCrop: zero padding on every side, then a size×size (or (h, w)) crop at
  top ~ U{0..H + 2p − h}, left ~ U{0..W + 2p − w}. Params: (top, left) in the padded image."""
  height, width = _size("random_crop", size)
  check_number("random_crop", "padding", padding, "a whole number of pixels, 0 or more",
               lambda number: _whole(number, 0))
  padding = int(padding)

  def check(shape):
    if shape[0] + 2 * padding < height or shape[1] + 2 * padding < width:
      raise ValueError(f"random_crop({size}, padding={padding}): the padded image "
                       f"{shape[0] + 2 * padding}×{shape[1] + 2 * padding} is smaller than the crop.")

  def output_shape(shape):
    check(shape)
    return (height, width, shape[2])

  def sample(key, shape):
    check(shape)
    k_top, k_left = jax.random.split(key)
    return (jax.random.randint(k_top, (), 0, shape[0] + 2 * padding - height + 1),
            jax.random.randint(k_left, (), 0, shape[1] + 2 * padding - width + 1))

  def apply(image, params):
    top, left = params
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, image.shape[2]))

  return Op(apply=apply, sample=sample, output_shape=output_shape)


def _central_fallback(height: int, width: int, ratio):
  """torchvision RandomResizedCrop's box when all ten tries fail: (top, left, h, w)."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@register
def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bilinear") -> Op:
  """torchvision RandomResizedCrop: a box of area·U(scale) and aspect exp(U(log ratio)), the
  first of ten tries that fits (else the central fallback), resized to size×size with `method`
  (PIL with antialiasing at the box's scale, or "cv2_bilinear" = cv2.resize of the cropped
  box). Params: (top, left, h, w)."""
  _check_method("random_resized_crop", method, RESIZE_METHODS)
  out_height, out_width = _size("random_resized_crop", size)
  # Areas above the image's are taken, as torchvision and mmcls take them: those tries do not fit (the fallback).
  check_area_and_aspect("random_resized_crop", scale, ratio, "width / height", largest=math.inf)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

  def sample(key, shape):
    height, width = shape[:2]
    k_area, k_aspect, k_top, k_left = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(k_area, (10,), jnp.float32, scale[0], scale[1])
    aspect = jnp.exp(jax.random.uniform(k_aspect, (10,), jnp.float32, *log_ratio))
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    found = fits[first]
    top0, left0, h0, w0 = _central_fallback(height, width, ratio)
    h = jnp.where(found, h[first], h0)
    w = jnp.where(found, w[first], w0)
    top = jnp.where(found, jax.random.randint(k_top, (), 0, height - h + 1), top0)
    left = jnp.where(found, jax.random.randint(k_left, (), 0, width - w + 1), left0)
    return top, left, h, w

  def apply(image, params):
    top, left, h, w = params
    rows = _resize_weights(out_height, image.shape[0], top, h, method, jnp)
    cols = _resize_weights(out_width, image.shape[1], left, w, method, jnp)
    return _apply_weights(image, rows, cols)

  return Op(apply=apply, sample=sample, output_shape=lambda shape: (out_height, out_width, shape[2]))


# ----------------------------------------------------------------------------------------------
# Keras.

@register
def keras_image_generator(rotation_range: float = 0.0, width_shift_range: float = 0.0,
                          height_shift_range: float = 0.0, zoom_range: float = 0.0,
                          horizontal_flip: bool = False) -> Op:
  """Keras ImageDataGenerator.random_transform on a float image (LHC-Net's A1/A2 stages), as
  keras-preprocessing 1.1.2: theta ~ U(±rotation_range) degrees, shifts U(±range)·size pixels,
  zooms (zx, zy) ~ U(1 ± zoom_range); the matrix rotation · shift · zoom about (h/2 + 0.5,
  w/2 + 0.5) maps output (row, col) to input, sampled like scipy.ndimage.affine_transform with
  order 1 and mode "nearest"; then the flip with probability 0.5.
  Params: (theta, tx, ty, zx, zy, flip) with tx the row shift and ty the column shift in pixels.
  Shift ranges are fractions of the size (Keras reads ranges ≥ 1 as pixels; preprocess.py and
  LHC-Net use fractions). Later tf.keras versions swap rows and columns in this matrix; with
  LHC-Net's symmetric draws and equal width/height ranges the distribution is the same.
  zoom_range may also be a (low, high) pair, as in Keras.
  """
  op = "keras_image_generator"
  check_number(op, "rotation_range", rotation_range, "a number of degrees, 0 or more", lambda number: number >= 0)
  for name, value in (("width_shift_range", width_shift_range), ("height_shift_range", height_shift_range)):
    check_number(op, name, value, f"a fraction of the size, 0 <= {name} < 1 (Keras reads values >= 1 as pixels: "
                 "divide them by the image size)", lambda number: 0 <= number < 1)
  zooms = f"a number from 0 to below 1 (zooms 1 ± it) or {_ZOOM_PAIR}"
  if isinstance(zoom_range, (tuple, list)):
    check_pair(op, "zoom_range", zoom_range, zooms, lambda low, high: 0 < low <= high)
    zoom_low, zoom_high = zoom_range
  else:
    check_number(op, "zoom_range", zoom_range, zooms, lambda number: 0 <= number < 1)
    zoom_low, zoom_high = 1 - zoom_range, 1 + zoom_range
  if not isinstance(horizontal_flip, bool):
    raise ValueError(f"{op}: horizontal_flip={horizontal_flip!r} must be True or False.")

  def sample(key, shape):
    height, width = shape[:2]
    keys = jax.random.split(key, 5)
    zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
    theta = (jax.random.uniform(keys[0], (), jnp.float32, -rotation_range, rotation_range)
             if rotation_range else zero)
    tx = (jax.random.uniform(keys[1], (), jnp.float32, -height_shift_range, height_shift_range) * height
          if height_shift_range else zero)
    ty = (jax.random.uniform(keys[2], (), jnp.float32, -width_shift_range, width_shift_range) * width
          if width_shift_range else zero)
    if (zoom_low, zoom_high) != (1, 1):
      zx, zy = jax.random.uniform(keys[3], (2,), jnp.float32, zoom_low, zoom_high)
    else:
      zx, zy = one, one
    flip = bernoulli(keys[4], 0.5) & horizontal_flip
    return theta, tx, ty, zx, zy, flip

  def apply(image, params):
    theta, tx, ty, zx, zy, flip = params
    height, width, _ = image.shape
    angle = jnp.deg2rad(theta)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # rotation · shift · zoom, then offset to the centre: input = A · (output − o) + o
    a00, a01 = cos * zx, -sin * zy
    a10, a11 = sin * zx, cos * zy
    b0, b1 = cos * tx - sin * ty, sin * tx + cos * ty
    o_row, o_col = height / 2 + 0.5, width / 2 + 0.5
    rows, cols = _grid(height, width)
    source_rows = a00 * (rows - o_row) + a01 * (cols - o_col) + b0 + o_row
    source_cols = a10 * (rows - o_row) + a11 * (cols - o_col) + b1 + o_col
    image = _sample(image, source_rows, source_cols, "bilinear", "clamp")
    return jnp.where(flip, image[:, ::-1], image)

  return Op(apply=apply, sample=sample)
