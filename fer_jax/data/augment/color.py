"""Colour ops: colour jitter, random grayscale (both on uint8 values) and random erasing.

The jitter and grayscale imitate torchvision on PIL images bit for bit: every adjustment
works in integers 0–255 as Pillow's C code does (ImageEnhance blends truncate, the "L"
conversion uses ITU-R 601-2 in 16-bit fixed point, the HSV round trip follows Convert.c),
so each op returns integral values itself and the pipeline's rounding leaves them as they are.
Random erasing imitates torchvision's RandomErasing on a float (normalised) image.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.augment.basic import (bernoulli, channel_values, check_area_and_aspect, check_number, check_pair,
                                        check_probability)
from fer_jax.data.augment.core import Op, register

# --- Pillow's conversions, in exact integer arithmetic ---------------------------------------


def luma(image: jax.Array) -> jax.Array:
  """PIL convert("L") of an (H, W, 3) image of integers 0–255, as int32 (H, W).

  ITU-R 601-2 in Pillow's fixed point: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16.
  A one-channel image is its own luma.
  """
  pixels = image.astype(jnp.int32)
  if image.shape[-1] == 1:
    return pixels[..., 0]
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


# Hue bytes Pillow rounds one level down. Pillow computes the hue in float32 and truncates
# h·255; where the exact hue is a whole level K (255·num divisible by 6·(max − min)), its
# float32 rounding lands just below K for exactly these K and on or above it for the others,
# whatever the colour (checked on all 2²⁴ colours in tests/test_augment_color.py).
_HUE_ROUNDED_DOWN = (
    *range(1, 32), 88, 92, 96, 100, 104, *range(129, 150, 2), 153, 157, 161, 165, 169, 173, 176, 177,
    181, 184, 185, 189, 193, 197, 201, 205, 209)
_HUE_ROUNDED_DOWN_WORDS = tuple(
    int(sum(1 << (k - 32 * word) for k in _HUE_ROUNDED_DOWN if k // 32 == word)) for word in range(8))


def _hue_rounded_down(level: jax.Array) -> jax.Array:
  """Whether Pillow's hue for an exact level `level` (int32 0–255) comes out one lower.

  A 256-bit constant read with eight selects and a shift: elementwise, no gather.
  """
  word = jnp.zeros_like(level, dtype=jnp.uint32)
  for index, bits in enumerate(_HUE_ROUNDED_DOWN_WORDS):
    if bits:
      word = jnp.where((level >> 5) == index, jnp.uint32(bits), word)
  return ((word >> (level & 31).astype(jnp.uint32)) & 1) == 1


def rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PIL convert("HSV") of an (H, W, 3) image of integers 0–255: three int32 (H, W) planes.

  Value = max; saturation = ⌊255·(max − min)/max⌋; hue = ⌊255·h⌋ with h the colorsys hue in
  [0, 1), all exact in integers, less the one level Pillow's float32 loses (see above).
  """
  pixels = image.astype(jnp.int32)
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  high = jnp.maximum(jnp.maximum(r, g), b)
  low = jnp.minimum(jnp.minimum(r, g), b)
  spread = high - low
  grey = spread == 0
  # 6·spread·h, with Pillow's tie order: red first, then green, then blue.
  sixths = jnp.where(r == high, g - b, jnp.where(g == high, 2 * spread + b - r, 4 * spread + r - g))
  sixths = jnp.where(sixths < 0, sixths + 6 * spread, sixths)
  denominator = jnp.maximum(6 * spread, 1)
  scaled = 255 * sixths
  level = scaled // denominator
  exact = scaled - level * denominator == 0
  hue = level - (exact & _hue_rounded_down(level)).astype(jnp.int32)
  hue = jnp.where(grey, 0, hue)
  saturation = jnp.where(grey, 0, (255 * spread) // jnp.maximum(high, 1))
  return hue, saturation, high


def hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
  """PIL convert("RGB") from HSV bytes (int32 planes) → (H, W, 3) int32.

  Pillow rounds v·(1 − s·f) in floating point; the exact rational rounding below gives the
  same bytes for all 2²⁴ inputs (no value lies at a half, and none close enough to one for
  Pillow's float error to cross it).
  """
  sector = (6 * hue) // 255          # 0–6, 6 only for hue 255 (then the fraction is 0)
  fraction = 6 * hue - 255 * sector  # f·255
  full = 255 * 255

  def rounded(numerator, denominator):  # round half up of numerator / denominator ≥ 0
    return (2 * numerator + denominator) // (2 * denominator)

  p = rounded(value * (255 - saturation), 255)
  q = rounded(value * (full - saturation * fraction), full)
  t = rounded(value * (full - saturation * (255 - fraction)), full)
  sector = sector % 6
  v = value

  def pick(choices):
    out = choices[5]
    for index in range(4, -1, -1):
      out = jnp.where(sector == index, choices[index], out)
    return out

  red = pick((v, q, p, p, t, v))
  green = pick((t, v, v, q, p, p))
  blue = pick((p, p, t, v, v, q))
  rgb = jnp.stack([red, green, blue], axis=-1)
  return jnp.where((saturation == 0)[..., None], value[..., None], rgb)


def _truncated_hue_shift(factor: jax.Array) -> jax.Array:
  """np.int32(factor·255) as torchvision computes it (in float64, truncated toward zero), mod 256.

  In float32, a·255 may round up onto a whole number that the exact product lies below;
  a·256 − k is exact, so comparing it with a decides.
  """
  magnitude = jnp.abs(factor).astype(jnp.float32)
  whole = jnp.floor(magnitude * 255.0)
  whole = whole - ((magnitude * 256.0 - whole) < magnitude).astype(jnp.float32)
  shift = jnp.where(factor < 0, -whole, whole).astype(jnp.int32)
  return shift & 255


# --- The four adjustments (PIL ImageEnhance / torchvision F.adjust_*), on one image ----------


def _split(factor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """factor = high + low, each with at most 12 significant bits (the low 12 mantissa bits cleared)."""
  bits = jax.lax.bitcast_convert_type(factor.astype(jnp.float32), jnp.uint32)
  high = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  return high, factor - high


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL Image.blend(degenerate, image, factor) on uint8: ⌊fl(d + fl(factor·(x − d)))⌋, clipped.

  Pillow rounds the product to float32 before adding. XLA may fuse a multiply and an add into
  one FMA (it does on CPU), which rounds once and truncates differently now and then; so the
  product is built from two exact halves (factor split in 12-bit parts, x − d has 9 bits) and
  their sum, rounded once, is Pillow's product however the compiler fuses it.
  """
  high, low = _split(factor)
  difference = image - degenerate
  product = high * difference + low * difference
  return jnp.clip(jnp.floor(degenerate + product), 0.0, 255.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Brightness: a blend with black."""
  return jnp.clip(jnp.floor(factor * image), 0.0, 255.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast: a blend with the mean of the "L" image, rounded to an integer."""
  gray = luma(image)
  count = gray.size
  mean = (2 * jnp.sum(gray) + count) // (2 * count)  # int(mean + 0.5), exactly
  return _blend(mean.astype(jnp.float32), image, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """ImageEnhance.Color: a blend with the "L" image (a one-channel image is unchanged)."""
  if image.shape[-1] == 1:
    return image
  return _blend(luma(image).astype(jnp.float32)[..., None], image, factor)


def adjust_hue(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision F.adjust_hue on PIL: HSV bytes, hue += int(factor·255) mod 256, back to RGB.

  One-channel images are unchanged, as PIL "L" images are.
  """
  if image.shape[-1] != 3:
    return image
  hue, saturation, value = rgb_to_hsv(image)
  hue = (hue + _truncated_hue_shift(factor)) & 255
  return hsv_to_rgb(hue, saturation, value).astype(jnp.float32)


ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _factor_range(value, name: str, center: float = 1.0, bound=(0.0, math.inf)):
  """torchvision ColorJitter._check_input: x → [max(0, c − x), c + x]; None when it cannot act."""
  meaning = "a number, 0 or more, or a (min, max) pair of numbers"
  if isinstance(value, (tuple, list)):
    check_pair("color_jitter", name, value, meaning)
    low, high = float(value[0]), float(value[1])
  else:
    check_number("color_jitter", name, value, meaning, lambda number: number >= 0)
    low, high = center - value, center + value
    if name != "hue":
      low = max(low, 0.0)
  if not bound[0] <= low <= high <= bound[1]:
    raise ValueError(f"color_jitter: {name} range ({low}, {high}) must be (min, max), min <= max, within {bound}.")
  if low == high == center:
    return None
  return float(low), float(high)


@register
def color_jitter(brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, p: float = 1.0) -> Op:
  """torchvision ColorJitter on a PIL image, applied with probability p (mmcls RandomApply).

  Params: {"applied": bool, "order": the permutation of the four adjustments (brightness,
  contrast, saturation, hue; torch.randperm(4)), "factors": float32[4]}. Adjustments whose
  range is trivial (argument 0) do nothing wherever the permutation puts them; each one's
  output is uint8 (integral) before the next, as with PIL.
  """
  check_probability(p)
  ranges = (_factor_range(brightness, "brightness"), _factor_range(contrast, "contrast"),
            _factor_range(saturation, "saturation"), _factor_range(hue, "hue", 0.0, (-0.5, 0.5)))
  active = [index for index, bounds in enumerate(ranges) if bounds is not None]
  low = np.array([bounds[0] if bounds else 1.0 for bounds in ranges], np.float32)
  high = np.array([bounds[1] if bounds else 1.0 for bounds in ranges], np.float32)
  low[3] = ranges[3][0] if ranges[3] else 0.0
  high[3] = ranges[3][1] if ranges[3] else 0.0

  def sample(key, shape):
    del shape
    apply_key, order_key, factor_key = jax.random.split(key, 3)
    factors = jax.random.uniform(factor_key, (4,), jnp.float32, low, high)
    return {"applied": bernoulli(apply_key, p), "order": jax.random.permutation(order_key, 4),
            "factors": factors}

  def apply(image, params):
    if not active:
      return image
    slot = jnp.argsort(params["order"])  # slot[i]: when adjustment i comes
    # Rank of each active adjustment among the active ones; step k runs the one ranked k.
    ranks = {i: sum((slot[j] < slot[i]).astype(jnp.int32) for j in active if j != i) for i in active}
    branches = [lambda x, f, fn=ADJUSTMENTS[i]: fn(x, f).astype(jnp.float32) for i in active]
    jittered = image
    for step in range(len(active)):
      branch = sum(jnp.where(ranks[i] == step, position, 0) for position, i in enumerate(active))
      which = jnp.asarray(active, jnp.int32)[branch]
      jittered = jax.lax.switch(branch, branches, jittered, params["factors"][which])
    return jnp.where(params["applied"], jittered, image)

  # PIL's integer arithmetic: after normalize() it would floor and clip the values to 0 or 1.
  return Op(apply=apply, sample=sample, needs_uint8=True)


@register
def random_grayscale(p: float = 0.1) -> Op:
  """With probability p, PIL convert("L") copied to every channel (torchvision RandomGrayscale).

  Params: bool. One-channel images are unchanged.
  """
  check_probability(p)
  def apply(image, gray):
    if image.shape[-1] == 1:
      return image
    return jnp.where(gray, luma(image).astype(jnp.float32)[..., None], image)
  return Op(apply=apply, sample=lambda key, shape: bernoulli(key, p), needs_uint8=True)


ERASING_TRIES = 10


@register
def random_erasing(p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0,
                   ratio_sampling: str = "log") -> Op:
  """torchvision RandomErasing on a float image; value "random" fills with N(0, 1) noise.

  Ten tries of area H·W·U(scale) and aspect exp(U(log ratio)) (U(ratio) when
  ratio_sampling="uniform", APViT's mmcls copy), h = round(√(area·aspect)),
  w = round(√(area/aspect)); the first with h < H and w < W is erased at a uniform position,
  none → unchanged. All tries are drawn at once and the first valid one taken.

  Params: {"erase": bool, "top", "left", "height", "width": int32, and "noise" (H, W, C)
  float32 when value="random"}.
  """
  check_probability(p)
  if ratio_sampling not in ("log", "uniform"):
    raise ValueError(f"random_erasing: unknown ratio_sampling {ratio_sampling!r}; valid: 'log', 'uniform'.")
  check_area_and_aspect("random_erasing", scale, ratio, "height / width")
  random_fill = value == "random"
  fill = None if random_fill else channel_values("random_erasing", "value", value, " or 'random'")
  if ratio_sampling == "log":
    aspect_low, aspect_high = math.log(ratio[0]), math.log(ratio[1])
  else:
    aspect_low, aspect_high = ratio

  def sample(key, shape):
    height, width, channels = shape
    keys = jax.random.split(key, 6)
    area = height * width * jax.random.uniform(keys[0], (ERASING_TRIES,), jnp.float32, scale[0], scale[1])
    aspect = jax.random.uniform(keys[1], (ERASING_TRIES,), jnp.float32, aspect_low, aspect_high)
    if ratio_sampling == "log":
      aspect = jnp.exp(aspect)
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # round half to even, as Python
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    valid = (h < height) & (w < width)
    first = jnp.argmax(valid)
    h, w = jnp.where(valid[first], h[first], 0), jnp.where(valid[first], w[first], 0)
    params = {
        "erase": bernoulli(keys[2], p) & valid[first],
        "top": jax.random.randint(keys[3], (), 0, height - h + 1),
        "left": jax.random.randint(keys[4], (), 0, width - w + 1),
        "height": h, "width": w,
    }
    if random_fill:
      params["noise"] = jax.random.normal(keys[5], (height, width, channels), jnp.float32)
    return params

  def output_shape(shape):
    if fill is not None and fill.size not in (1, shape[-1]):
      raise ValueError(f"random_erasing: value={value!r} has {fill.size} per-channel values for a {shape[-1]}-channel "
                       "image: give one number, or one per channel.")
    return tuple(shape)

  def apply(image, params):
    height, width = image.shape[:2]
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = ((rows >= params["top"]) & (rows < params["top"] + params["height"])
              & (cols >= params["left"]) & (cols < params["left"] + params["width"]) & params["erase"])
    replacement = params["noise"] if random_fill else jnp.broadcast_to(fill, image.shape)
    return jnp.where(inside[..., None], replacement, image)

  return Op(apply=apply, sample=sample, output_shape=output_shape)
