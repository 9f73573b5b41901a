"""Host-side preprocessing and augmentation, spelled as a pipeline string in the configs.

A pipeline is ops joined by "|", each a call with literal arguments, e.g.
    "resize({size})|flip()|random_apply(0.2, 'rotate(20)|random_crop({size}, padding=32)')|
     normalize('imagenet')|random_erasing(p=0.5, scale=(0.02, 0.25))"
Every op maps (image, rng) → image, where rng is a NumPy Generator seeded from the example's
position in the run, so the whole pipeline is deterministic and resumable. Ops before
`normalize`/`to_float` see uint8 HWC arrays; ops after see float32. Semantics follow
torchvision's transforms of the same names (probabilities, sampling ranges, fill values).
"""

import ast
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]
OPS: dict[str, Callable[..., Op]] = {}
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
RESAMPLING = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}


def register(fn):
  OPS[fn.__name__] = fn
  return fn


def parse(pipeline: str, size: int | None = None) -> Op:
  """Compiles a pipeline string; "{size}" in it stands for `size` (config.input.size).

  Unknown ops or bad arguments raise naming the op.
  """
  if size is not None:
    pipeline = pipeline.replace("{size}", str(size))
  ops = [_parse_op(text) for text in _split_top_level(pipeline)]

  def run(image, rng):
    for op in ops:
      image = op(image, rng)
    return image

  return run


def _split_top_level(pipeline: str) -> list[str]:
  """Splits at "|" outside quotes and parentheses, so nested pipelines stay whole."""
  parts, current, depth, quote = [], [], 0, None
  for char in pipeline:
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


def _parse_op(text: str) -> Op:
  try:
    call = ast.parse(text if text.endswith(")") else text + "()", mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    args = [ast.literal_eval(a) for a in call.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
  except (SyntaxError, ValueError, AssertionError) as e:
    raise ValueError(f"Cannot parse preprocessing op {text!r}: write it as name(literal, key=literal).") from e
  if call.func.id not in OPS:
    raise ValueError(f"Unknown preprocessing op {call.func.id!r} in {text!r}; known ops: {', '.join(sorted(OPS))}.")
  try:
    return OPS[call.func.id](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad arguments in preprocessing op {text!r}: {e}") from e


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(image: Image.Image) -> np.ndarray:
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def _cv2_linear_taps(source: int, target: int):
  """cv2 INTER_LINEAR sampling along one axis: half-pixel centres, edges clamped."""
  position = (np.arange(target) + 0.5) * (source / target) - 0.5
  low = np.floor(position).astype(np.int64)
  fraction = position - low
  fraction[(low < 0) | (low >= source - 1)] = 0.0
  low = np.clip(low, 0, source - 1)
  return low, np.minimum(low + 1, source - 1), fraction


def _cv2_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """cv2.resize(INTER_LINEAR): no antialiasing, so shrinking samples rather than averages.

  uint8 follows OpenCV's 11-bit fixed point and its vectorised vertical pass (equal to
  cv2 4.x when shrinking; upscaled first and last rows may differ by 1).
  """
  top, bottom, dy = _cv2_linear_taps(image.shape[0], height)
  left, right, dx = _cv2_linear_taps(image.shape[1], width)
  if image.dtype != np.uint8:
    rows = image[:, left] * (1 - dx)[:, None] + image[:, right] * dx[:, None]
    return (rows[top] * (1 - dy)[:, None, None] + rows[bottom] * dy[:, None, None]).astype(image.dtype)
  scale = 1 << 11
  ax = np.rint((1 - dx) * scale).astype(np.int64), np.rint(dx * scale).astype(np.int64)
  ay = np.rint((1 - dy) * scale).astype(np.int64), np.rint(dy * scale).astype(np.int64)
  pixels = image.astype(np.int64)
  rows = pixels[:, left] * ax[0][:, None] + pixels[:, right] * ax[1][:, None]
  upper = ((rows[top] >> 4) * ay[0][:, None, None]) >> 16
  lower = ((rows[bottom] >> 4) * ay[1][:, None, None]) >> 16
  return np.clip((upper + lower + 2) >> 2, 0, 255).astype(np.uint8)


def _cv2_rotate(image: np.ndarray, angle: float, fill) -> np.ndarray:
  """mmcv.imrotate: cv2.warpAffine bilinear about ((w−1)/2, (h−1)/2), constant border.

  Counter-clockwise by `angle` degrees, like PIL. Taps outside the image read `fill`, so the
  edges blend into the border as in OpenCV.
  """
  height, width = image.shape[:2]
  cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
  cx, cy = (width - 1) / 2, (height - 1) / 2
  ys, xs = np.mgrid[0:height, 0:width]
  source_x = cos * (xs - cx) - sin * (ys - cy) + cx
  source_y = sin * (xs - cx) + cos * (ys - cy) + cy
  result = _bilinear_at(image, source_y, source_x, fill)
  if image.dtype == np.uint8:
    return np.clip(np.floor(result + 0.5), 0, 255).astype(np.uint8)
  return result.astype(image.dtype)


def _bilinear_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, fill=None) -> np.ndarray:
  """`image` (HWC) sampled bilinearly at float (rows, cols), in float64.

  Taps outside the image read `fill`, or the nearest edge pixel when `fill` is None.
  """
  height, width = image.shape[:2]
  top, left = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
  dy, dx = rows - top, cols - left
  result = np.zeros(rows.shape + image.shape[2:], np.float64)
  for row, row_weight in ((top, 1 - dy), (top + 1, dy)):
    for column, column_weight in ((left, 1 - dx), (left + 1, dx)):
      taps = image[np.clip(row, 0, height - 1), np.clip(column, 0, width - 1)]
      if fill is not None:
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        taps = np.where(inside[..., None], taps, fill)
      result += (row_weight * column_weight)[..., None] * taps
  return result


def _resize(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
  """PIL resampling (antialiased when shrinking), or "cv2_bilinear" as mmcv's default resize."""
  if method == "cv2_bilinear":
    return _cv2_bilinear(image, height, width)
  return _array(_pil(image).resize((width, height), RESAMPLING[method]))


@register
def resize(size, method: str = "bilinear") -> Op:
  """Resize to (size, size) or (height, width); `method` is a PIL filter name or "cv2_bilinear"."""
  height, width = (size, size) if isinstance(size, int) else size
  return lambda image, rng: _resize(image, height, width, method)


@register
def gray_to_rgb() -> Op:
  return lambda image, rng: np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


@register
def flip(p: float = 0.5) -> Op:
  return lambda image, rng: image[:, ::-1] if rng.random() < p else image


@register
def random_apply(p: float, pipeline: str) -> Op:
  """With probability p, apply the whole inner pipeline (torchvision RandomApply)."""
  inner = parse(pipeline)
  return lambda image, rng: inner(image, rng) if rng.random() < p else image


@register
def rotate(degrees: float, method: str = "nearest", fill: int = 0) -> Op:
  """Rotation by U(−degrees, degrees) about the centre, same size (torchvision RandomRotation).

  `method` is a PIL filter name or "cv2_bilinear" (mmcv.imrotate).
  """
  def op(image, rng):
    angle = rng.uniform(-degrees, degrees)
    if method == "cv2_bilinear":
      return _cv2_rotate(image, angle, fill)
    return _array(_pil(image).rotate(angle, RESAMPLING[method], fillcolor=fill))
  return op


@register
def random_crop(size: int, padding: int = 0) -> Op:
  """Zero-pad by `padding` on every side, then crop size×size at a uniform position."""
  def op(image, rng):
    image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top = rng.integers(0, image.shape[0] - size + 1)
    left = rng.integers(0, image.shape[1] - size + 1)
    return image[top:top + size, left:left + size]
  return op


@register
def random_resized_crop(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bilinear") -> Op:
  """torchvision RandomResizedCrop: 10 tries at area × aspect, then a central fallback."""
  def op(image, rng):
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
      target_area = area * rng.uniform(*scale)
      aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
      w = int(round(math.sqrt(target_area * aspect)))
      h = int(round(math.sqrt(target_area / aspect)))
      if 0 < w <= width and 0 < h <= height:
        top = rng.integers(0, height - h + 1)
        left = rng.integers(0, width - w + 1)
        break
    else:
      in_ratio = width / height
      if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
      elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
      else:
        w, h = width, height
      top, left = (height - h) // 2, (width - w) // 2
    return _resize(image[top:top + h, left:left + w], size, size, method)
  return op


@register
def random_grayscale(p: float = 0.1) -> Op:
  """With probability p, ITU-R 601 luma copied to every channel (PIL "L" conversion)."""
  def op(image, rng):
    if rng.random() >= p or image.shape[-1] == 1:
      return image
    gray = np.asarray(_pil(image).convert("L"))
    return np.repeat(gray[..., None], image.shape[-1], axis=-1)
  return op


@register
def color_jitter(brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, p: float = 1.0) -> Op:
  """torchvision ColorJitter: factors drawn per image, applied in a random order."""
  def adjust_hue(img, shift):
    if img.mode in ("L", "1", "I", "F"):
      return img
    h, s, v = img.convert("HSV").split()
    h = h.point(lambda x: (x + int(round(shift * 255))) % 256)
    return Image.merge("HSV", (h, s, v)).convert(img.mode)

  def op(image, rng):
    if rng.random() >= p:
      return image
    img = _pil(image)
    adjustments = []
    if brightness:
      adjustments.append((ImageEnhance.Brightness, rng.uniform(max(0, 1 - brightness), 1 + brightness)))
    if contrast:
      adjustments.append((ImageEnhance.Contrast, rng.uniform(max(0, 1 - contrast), 1 + contrast)))
    if saturation:
      adjustments.append((ImageEnhance.Color, rng.uniform(max(0, 1 - saturation), 1 + saturation)))
    if hue:
      adjustments.append((None, rng.uniform(-hue, hue)))
    for index in rng.permutation(len(adjustments)):
      enhancer, factor = adjustments[index]
      img = adjust_hue(img, factor) if enhancer is None else enhancer(img).enhance(factor)
    return _array(img)
  return op


@register
def to_float() -> Op:
  """uint8 → float32 with the 0–255 range kept (LHC-Net feeds raw pixels)."""
  return lambda image, rng: image.astype(np.float32)


@register
def normalize(mean="imagenet", std=None) -> Op:
  """x / 255, minus mean, over std; `mean` may name a pair in NORMALIZATIONS."""
  if isinstance(mean, str):
    if mean not in NORMALIZATIONS:
      raise ValueError(f"Unknown normalisation {mean!r}; known: {', '.join(NORMALIZATIONS)}.")
    mean, std = NORMALIZATIONS[mean]
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def op(image, rng):
    channels = image.shape[-1]
    return (image.astype(np.float32) / 255.0 - mean[:channels]) / std[:channels]
  return op


@register
def random_erasing(p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0,
                   ratio_sampling: str = "log") -> Op:
  """torchvision RandomErasing on a float image; value "random" fills with N(0, 1) noise.

  The aspect ratio is log-uniform as in torchvision; ratio_sampling="uniform" draws it uniformly
  in `ratio`, as APViT's mmcls copy does.
  """
  if ratio_sampling not in ("log", "uniform"):
    raise ValueError(f"Unknown ratio_sampling {ratio_sampling!r}; valid: log, uniform.")

  def sample_aspect(rng):
    if ratio_sampling == "uniform":
      return rng.uniform(*ratio)
    return math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))

  def op(image, rng):
    if rng.random() >= p:
      return image
    height, width, channels = image.shape
    area = height * width
    for _ in range(10):
      erase_area = area * rng.uniform(*scale)
      aspect = sample_aspect(rng)
      h = int(round(math.sqrt(erase_area * aspect)))
      w = int(round(math.sqrt(erase_area / aspect)))
      if h < height and w < width:
        top = rng.integers(0, height - h + 1)
        left = rng.integers(0, width - w + 1)
        image = image.copy()
        fill = rng.standard_normal((h, w, channels)) if value == "random" else value
        image[top:top + h, left:left + w] = fill
        return image
    return image
  return op


@register
def random_affine(degrees: float, translate=(0.0, 0.0), scale=(1.0, 1.0), method: str = "nearest",
                  fill: int = 0) -> Op:
  """torchvision RandomAffine without shear: rotation, integer translation and scale about the centre."""
  def op(image, rng):
    height, width = image.shape[:2]
    angle = math.radians(rng.uniform(-degrees, degrees))
    dx = round(rng.uniform(-translate[0] * width, translate[0] * width))
    dy = round(rng.uniform(-translate[1] * height, translate[1] * height))
    factor = rng.uniform(*scale)
    cx, cy = width * 0.5, height * 0.5
    # PIL wants the output → input map: undo the translation, then the rotation and scale.
    cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
    a, b, d, e = cos, -sin, sin, cos
    c = cx - a * (cx + dx) - b * (cy + dy)
    f = cy - d * (cx + dx) - e * (cy + dy)
    return _array(_pil(image).transform((width, height), Image.AFFINE, (a, b, c, d, e, f), RESAMPLING[method],
                                        fillcolor=fill))
  return op


@register
def keras_image_generator(rotation_range: float = 0.0, width_shift_range: float = 0.0,
                          height_shift_range: float = 0.0, zoom_range: float = 0.0,
                          horizontal_flip: bool = False) -> Op:
  """Keras ImageDataGenerator.random_transform on a float image (LHC-Net's A1/A2 stages).

  Same draws and matrix: rotation · shift · zoom about the centre (size / 2 + 0.5), sampled
  like scipy.ndimage.affine_transform with order 1 and mode "nearest"; the flip comes last.
  """
  def op(image, rng):
    height, width = image.shape[:2]
    theta = np.deg2rad(rng.uniform(-rotation_range, rotation_range)) if rotation_range else 0.0
    shift_rows = rng.uniform(-height_shift_range, height_shift_range) * height if height_shift_range else 0.0
    shift_cols = rng.uniform(-width_shift_range, width_shift_range) * width if width_shift_range else 0.0
    zoom_rows, zoom_cols = rng.uniform(1 - zoom_range, 1 + zoom_range, 2) if zoom_range else (1.0, 1.0)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shift = np.array([[1, 0, shift_rows], [0, 1, shift_cols], [0, 0, 1]])
    zoom = np.array([[zoom_rows, 0, 0], [0, zoom_cols, 0], [0, 0, 1]])
    centre = np.array([height / 2 + 0.5, width / 2 + 0.5])
    to_centre, back = np.eye(3), np.eye(3)
    to_centre[:2, 2], back[:2, 2] = centre, -centre
    matrix = to_centre @ rotation @ shift @ zoom @ back
    rows, cols = np.mgrid[0:height, 0:width]
    source = np.einsum("ij,jhw->ihw", matrix[:2], np.stack([rows, cols, np.ones_like(rows)]))
    image = _bilinear_at(image.astype(np.float32), source[0], source[1]).astype(np.float32)
    flip = rng.random() < 0.5
    return image[:, ::-1] if horizontal_flip and flip else image
  return op

