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


@register
def resize(size, method: str = "bilinear") -> Op:
  """PIL resize to (size, size) or (height, width)."""
  height, width = (size, size) if isinstance(size, int) else size
  return lambda image, rng: _array(_pil(image).resize((width, height), RESAMPLING[method]))


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
  """Rotation by U(−degrees, degrees) about the centre, same size (torchvision RandomRotation)."""
  def op(image, rng):
    angle = rng.uniform(-degrees, degrees)
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
    crop = _pil(image[top:top + h, left:left + w])
    return _array(crop.resize((size, size), RESAMPLING[method]))
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
def random_erasing(p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0) -> Op:
  """torchvision RandomErasing on a float image; value "random" fills with N(0, 1) noise."""
  def op(image, rng):
    if rng.random() >= p:
      return image
    height, width, channels = image.shape
    area = height * width
    for _ in range(10):
      erase_area = area * rng.uniform(*scale)
      aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
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
