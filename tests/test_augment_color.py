"""Device colour ops (fer_jax.data.augment.color) against the libraries they imitate.

`apply` with fixed draws against Pillow / torchvision on real photos (and, for the HSV round
trip, on all 2²⁴ colours); `sample` against the libraries' samplers with two-sample KS tests;
the ops through `augment.parse` under jit.
"""

import functools
import math

import jax
import jax.numpy as jnp
import matplotlib.cbook
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageEnhance
from scipy import stats

from fer_jax.data import augment
from fer_jax.data.augment import color

DRAWS = 10_000
P_MIN = 1e-3


@functools.cache
def photo(size: int, mode: str = "RGB") -> np.ndarray:
  """Grace Hopper resized with PIL: (size, size, C) uint8."""
  with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
    image = Image.open(f).convert(mode).resize((size, size), Image.BILINEAR)
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def array(image: Image.Image) -> np.ndarray:
  result = np.asarray(image)
  return result[..., None] if result.ndim == 2 else result


PHOTOS = [(100, "RGB"), (64, "RGB"), (64, "L")]


@functools.cache
def all_colours() -> np.ndarray:
  """Every RGB colour once, as a 4096×4096 image."""
  codes = np.arange(1 << 24, dtype=np.uint32)
  return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def ours(fn, image, *args):
  result = np.asarray(jax.jit(fn)(jnp.asarray(image, jnp.float32), *args))
  return np.asarray(augment.quantize(result))


def assert_close(result, reference, tolerance=1):
  """At most `tolerance` grey levels apart; returns the fraction of differing values."""
  difference = np.abs(result.astype(np.int64) - reference.astype(np.int64))
  assert difference.max() <= tolerance, f"max difference {difference.max()} > {tolerance}"
  return float(np.mean(difference > 0))


# --- apply, with fixed draws, against Pillow / torchvision -----------------------------------


@pytest.mark.parametrize("size,mode", PHOTOS)
def test_grayscale_matches_pil_convert_l(size, mode):
  image = photo(size, mode)
  op = augment.OPS["random_grayscale"](0.5)
  expected = np.asarray(pil(image).convert("L"))[..., None].repeat(image.shape[-1], -1)
  torch_expected = array(F.rgb_to_grayscale(pil(image), image.shape[-1]))
  result = ours(op.apply, image, jnp.bool_(True))
  np.testing.assert_array_equal(result, expected)
  np.testing.assert_array_equal(result, torch_expected)
  np.testing.assert_array_equal(ours(op.apply, image, jnp.bool_(False)), image)


ADJUST = {
    "brightness": (color.adjust_brightness, F.adjust_brightness, ImageEnhance.Brightness),
    "contrast": (color.adjust_contrast, F.adjust_contrast, ImageEnhance.Contrast),
    "saturation": (color.adjust_saturation, F.adjust_saturation, ImageEnhance.Color),
}


@pytest.mark.parametrize("size,mode", PHOTOS)
@pytest.mark.parametrize("name", list(ADJUST))
def test_enhance_matches_torchvision(name, size, mode):
  """Brightness/contrast/saturation: equal to torchvision (= PIL ImageEnhance) on real photos."""
  image = photo(size, mode)
  fn, torch_fn, enhancer = ADJUST[name]
  for factor in (0.0, 0.37, 0.6, 0.9999, 1.0, 1.2345, 1.6, 2.5):
    factor = float(np.float32(factor))  # what torch's float32 draw hands to PIL
    expected = array(torch_fn(pil(image), factor))
    np.testing.assert_array_equal(expected, array(enhancer(pil(image)).enhance(factor)))
    assert assert_close(ours(fn, image, jnp.float32(factor)), expected) == 0.0, (name, factor)


@pytest.mark.parametrize("size,mode", PHOTOS)
def test_hue_matches_torchvision(size, mode):
  image = photo(size, mode)
  for factor in (-0.5, -0.31, -0.1, -0.002, 0.0, 0.004, 0.05, 0.2, 0.45, 0.5):
    factor = float(np.float32(factor))
    expected = array(F.adjust_hue(pil(image), factor))
    assert assert_close(ours(color.adjust_hue, image, jnp.float32(factor)), expected) == 0.0, factor


@pytest.mark.integration
def test_hsv_round_trip_matches_pil_on_every_colour():
  """Pillow's 8-bit HSV (float32 inside) reproduced exactly on all 2²⁴ colours, both ways."""
  colours = all_colours()
  hsv = jax.jit(lambda x: jnp.stack(color.rgb_to_hsv(x), -1))(colours)
  np.testing.assert_array_equal(np.asarray(hsv), np.asarray(Image.fromarray(colours).convert("HSV")))
  rgb = jax.jit(lambda x: color.hsv_to_rgb(*(x[..., i].astype(jnp.int32) for i in range(3))))(colours)
  np.testing.assert_array_equal(np.asarray(rgb), np.asarray(Image.fromarray(colours, "HSV").convert("RGB")))


def test_hue_shift_is_torchvisions_truncation():
  """np.int32(factor·255) in float64, for float32 factors, including those on whole levels."""
  levels = np.arange(-127, 128)
  factors = np.float32(levels / 255)
  factors = np.concatenate([factors, np.nextafter(factors, np.float32(1)), np.nextafter(factors, np.float32(-1)),
                            np.random.default_rng(0).uniform(-0.5, 0.5, 2000).astype(np.float32)])
  factors = factors[np.abs(factors) <= 0.5]
  expected = np.array([int(np.int32(float(f) * 255)) % 256 for f in factors])
  np.testing.assert_array_equal(np.asarray(jax.vmap(color._truncated_hue_shift)(jnp.asarray(factors))), expected)


def reference_jitter(image, order, factors, ranges):
  """torchvision's own T.ColorJitter.forward, with get_params fixed to these draws."""
  jitter = T.ColorJitter(*ranges)
  drawn = [None if r is None else float(f) for r, f in zip(jitter_ranges(jitter), factors)]
  jitter.get_params = lambda *args: (torch.tensor(order), *drawn)
  return array(jitter(pil(image)))


def jitter_ranges(jitter):
  return jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue


@pytest.mark.parametrize("size,mode", PHOTOS)
@pytest.mark.integration
def test_color_jitter_matches_torchvision_in_every_order(size, mode):
  image = photo(size, mode)
  rng = np.random.default_rng(size)
  settings = [(0.4, 0.4, 0.4, 0.1), (0.3, 0.0, 0.5, 0.0), (0.0, 0.8, 0.0, 0.5), (0.25, 0.25, 0.25, 0.0)]
  for ranges in settings:
    op = augment.OPS["color_jitter"](*ranges)
    apply = jax.jit(op.apply)
    for _ in range(6):
      order = rng.permutation(4)
      factors = np.float32([rng.uniform(max(0, 1 - ranges[0]), 1 + ranges[0]),
                            rng.uniform(max(0, 1 - ranges[1]), 1 + ranges[1]),
                            rng.uniform(max(0, 1 - ranges[2]), 1 + ranges[2]),
                            rng.uniform(-ranges[3], ranges[3])])
      params = {"applied": jnp.bool_(True), "order": jnp.asarray(order, jnp.int32), "factors": jnp.asarray(factors)}
      result = np.asarray(augment.quantize(apply(jnp.asarray(image, jnp.float32), params)))
      expected = reference_jitter(image, order, factors, ranges)
      assert assert_close(result, expected) == 0.0, (ranges, order, factors)
    params["applied"] = jnp.bool_(False)
    np.testing.assert_array_equal(np.asarray(apply(jnp.asarray(image, jnp.float32), params)), image)


@pytest.mark.parametrize("value", [0.0, (0.1, -0.2, 0.3), "random"])
def test_erasing_matches_torchvision_erase(value):
  image = (photo(64).astype(np.float32) / 255 - 0.45) / 0.225  # normalised, like the pipeline
  op = augment.OPS["random_erasing"](value=value)
  tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
  noise = np.random.default_rng(0).standard_normal(image.shape).astype(np.float32)
  for top, left, h, w in [(3, 5, 20, 11), (0, 0, 63, 1), (40, 17, 24, 47), (10, 10, 0, 0)]:
    params = {"erase": jnp.bool_(True), "top": jnp.int32(top), "left": jnp.int32(left),
              "height": jnp.int32(h), "width": jnp.int32(w)}
    if value == "random":
      params["noise"] = jnp.asarray(noise)
      fill = torch.from_numpy(noise[top:top + h, left:left + w].transpose(2, 0, 1).copy())
    else:
      fill = torch.tensor(value, dtype=torch.float32).reshape(-1, 1, 1)
    expected = F.erase(tensor, top, left, h, w, fill).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(jax.jit(op.apply)(jnp.asarray(image), params)), expected)
  params["erase"] = jnp.bool_(False)
  np.testing.assert_array_equal(np.asarray(op.apply(jnp.asarray(image), params)), image)


def test_erasing_rejects_unknown_ratio_sampling():
  with pytest.raises(ValueError, match="log.*uniform"):
    augment.OPS["random_erasing"](ratio_sampling="linear")
  with pytest.raises(ValueError, match="random_erasing"):
    augment.parse("random_erasing(ratio_sampling='loguniform')")


@pytest.mark.parametrize("arguments, message", [
    ("scale=(-0.5, 0.1)", r"scale=\(-0.5, 0.1\) must be a \(min, max\) pair of fractions of the image's area, "
                          r"0 <= min <= max <= 1"),
    ("scale=(0.5, 2.0)", r"scale=\(0.5, 2.0\) must be"),
    ("scale=(0.3, 0.1)", r"scale=\(0.3, 0.1\) must be"),
    ("scale=(0.1,)", r"scale=\(0.1,\) must be"),
    ("scale=0.2", r"scale=0.2 must be"),
    ("ratio=(0, 2)", r"ratio=\(0, 2\) must be a \(min, max\) pair of aspect ratios \(height / width\), 0 < min"),
    ("ratio=(-1, 2), ratio_sampling='uniform'", r"ratio=\(-1, 2\) must be"),
    ("value=[1, 'a', 3]", r"value=\[1, 'a', 3\] must be a number or one number per channel \(R, G, B\) or 'random'"),
])
def test_erasing_refuses_ranges_it_cannot_draw_from_naming_the_argument(arguments, message):
  """A negative or above-1 scale and a uniform ratio below 0 were taken and erased boxes of wrong sizes at other
  rates; a one-number scale or a ratio of 0 failed with Python's own words, scale=(0.1,) with a bare IndexError."""
  with pytest.raises(ValueError, match=rf"^random_erasing: {message}.*Raised by preprocessing op "):
    augment.parse(f"to_float()|random_erasing({arguments})")


@pytest.mark.parametrize("op, message", [
    ("color_jitter(True)", r"brightness=True must be a number, 0 or more, or a \(min, max\) pair of numbers"),
    ("color_jitter(1e999)", r"brightness=inf must be"),
    ("color_jitter(0.4, -0.1)", r"contrast=-0.1 must be"),
    ("color_jitter(saturation=(True, 2))", r"saturation=\(True, 2\) must be"),
    ("color_jitter(brightness=(2, 1))", r"brightness range \(2.0, 1.0\) must be \(min, max\), min <= max, within "
                                        r"\(0.0, inf\)"),
    ("random_erasing(ratio=(0.3, 1e999))", r"ratio=\(0.3, inf\) must be a \(min, max\) pair of aspect ratios"),
])
def test_colour_arguments_that_are_no_numbers_or_out_of_range_are_refused(op, message):
  """color_jitter(True) jittered by ±1 and color_jitter(1e999) drew infinite factors (NaN images); an infinite
  erasing ratio drew NaN aspects."""
  with pytest.raises(ValueError, match=rf"^{op.split('(')[0]}: {message}.*\. Raised by preprocessing op "):
    augment.parse(f"to_float()|{op}" if op.startswith("random_erasing") else op)


def test_erasing_refuses_a_fill_of_other_than_one_value_or_one_per_channel():
  with pytest.raises(ValueError, match=r"^random_erasing: value=\(1, 2\) must be a number or one number per channel "
                                       r"\(R, G, B\) or 'random'\."):
    augment.parse("to_float()|random_erasing(value=(1, 2))")
  pipeline = augment.parse("to_float()|random_erasing(value=(1, 2, 3))")
  assert pipeline.output_shape((8, 8, 3)) == (8, 8, 3)
  with pytest.raises(ValueError, match=r"^random_erasing: value=\(1, 2, 3\) has 3 per-channel values for a "
                                       r"1-channel image: give one number, or one per channel\.$"):
    pipeline.output_shape((8, 8, 1))


# --- sample, against the libraries' samplers ------------------------------------------------


def draws(op, shape, count=DRAWS, seed=0):
  keys = jax.random.split(jax.random.key(seed), count)
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda key: op.sample(key, shape)))(keys))


def assert_same_distribution(ours_, theirs, what):
  result = stats.ks_2samp(ours_, theirs)
  assert result.pvalue > P_MIN, f"{what}: KS p = {result.pvalue:.2g}"


def assert_rate(successes, trials, p, what):
  result = stats.binomtest(int(successes), int(trials), p)
  assert result.pvalue > P_MIN, f"{what}: {successes}/{trials} vs p={p}, binomial p = {result.pvalue:.2g}"


def test_color_jitter_sampler_matches_torchvision():
  ranges = (0.4, 0.3, 0.6, 0.1)
  params = draws(augment.OPS["color_jitter"](*ranges, p=0.8), (8, 8, 3))
  torch.manual_seed(0)
  jitter = T.ColorJitter(*ranges)
  theirs = [jitter.get_params(*jitter_ranges(jitter)) for _ in range(DRAWS)]
  for index, name in enumerate(["brightness", "contrast", "saturation", "hue"]):
    assert_same_distribution(params["factors"][:, index], [draw[index + 1] for draw in theirs], name)
  assert_same_distribution(params["order"][:, 0], [int(draw[0][0]) for draw in theirs], "first adjustment")
  assert_same_distribution(params["order"] @ 4 ** np.arange(4), [int(draw[0] @ 4 ** torch.arange(4)) for draw in theirs],
                           "whole order")
  assert (np.sort(params["order"], axis=1) == np.arange(4)).all()
  assert_rate(params["applied"].sum(), DRAWS, 0.8, "color_jitter p")


def test_random_grayscale_rate():
  assert_rate(draws(augment.OPS["random_grayscale"](0.3), (8, 8, 3)).sum(), DRAWS, 0.3, "random_grayscale p")


ERASE_SHAPE = (64, 48, 3)  # not square, so that rows and columns cannot be swapped unnoticed


def erasing_draws(**kwargs):
  params = draws(augment.OPS["random_erasing"](p=1.0, **kwargs), ERASE_SHAPE)
  accepted = params["erase"]
  return accepted, {name: params[name][accepted] for name in ("top", "left", "height", "width")}


def compare_erasing(accepted, ours_, theirs, what):
  their_accepted = np.array([draw is not None for draw in theirs])
  # acceptance: ours against the library's observed rate (two binomial samples)
  table = [[accepted.sum(), (~accepted).sum()], [their_accepted.sum(), (~their_accepted).sum()]]
  assert stats.fisher_exact(table).pvalue > P_MIN, f"{what}: acceptance {table}"
  for index, name in enumerate(("top", "left", "height", "width")):
    assert_same_distribution(ours_[name], [draw[index] for draw in theirs if draw is not None], f"{what} {name}")


@pytest.mark.parametrize("scale,ratio", [((0.02, 0.33), (0.3, 3.3)), ((0.3, 0.9), (0.5, 4.0))])
@pytest.mark.integration
def test_erasing_sampler_matches_torchvision(scale, ratio):
  accepted, ours_ = erasing_draws(scale=scale, ratio=ratio)
  torch.manual_seed(0)
  dummy = torch.zeros(ERASE_SHAPE[2], *ERASE_SHAPE[:2])
  theirs = []
  for _ in range(DRAWS):
    i, j, h, w, v = T.RandomErasing.get_params(dummy, scale, ratio, [0.0])
    theirs.append(None if v is dummy else (i, j, h, w))
  compare_erasing(accepted, ours_, theirs, f"scale={scale} ratio={ratio}")


@pytest.mark.integration
def test_erasing_uniform_ratio_sampler_matches_formula():
  """APViT's mmcls RandomErasing: aspect ~ U(ratio), otherwise torchvision's loop (NumPy reference)."""
  scale, ratio = (0.02, 0.4), (0.3, 3.3)
  accepted, ours_ = erasing_draws(scale=scale, ratio=ratio, ratio_sampling="uniform")
  rng = np.random.default_rng(0)
  height, width = ERASE_SHAPE[:2]
  theirs = []
  for tries in zip(rng.uniform(*scale, (DRAWS, 10)), rng.uniform(*ratio, (DRAWS, 10)), rng.random((DRAWS, 2))):
    draw = None
    for fraction, aspect in zip(*tries[:2]):
      area = height * width * fraction
      h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if h < height and w < width:
        draw = (int(tries[2][0] * (height - h + 1)), int(tries[2][1] * (width - w + 1)), h, w)
        break
    theirs.append(draw)
  compare_erasing(accepted, ours_, theirs, "uniform ratio")
  # and it is a different distribution from the log-uniform one
  _, log_draws = erasing_draws(scale=scale, ratio=ratio)
  assert stats.ks_2samp(ours_["height"], log_draws["height"]).pvalue < P_MIN


@pytest.mark.integration
def test_erasing_rate_and_noise():
  params = draws(augment.OPS["random_erasing"](p=0.5, scale=(0.02, 0.05), value="random"), (16, 12, 1))
  assert_rate(params["erase"].sum(), DRAWS, 0.5, "random_erasing p")  # every try is valid at this scale
  noise = params["noise"][:50].ravel()
  assert_same_distribution(noise, np.random.default_rng(0).standard_normal(noise.size), "noise")


# --- through the pipeline --------------------------------------------------------------------


@pytest.mark.integration
def test_pipeline_jits_and_is_deterministic_per_position():
  pipeline = augment.parse("color_jitter(0.4, 0.4, 0.4, 0.1, p=0.8)|random_grayscale(0.2)|"
                           "normalize('imagenet')|random_erasing(p=0.5, value='random')")
  images = jnp.asarray(np.stack([np.roll(photo(64), shift, axis=1) for shift in range(0, 48, 4)]))
  run = jax.jit(pipeline.__call__)
  first = np.asarray(run(images[:8], augment.example_keys(3, jnp.arange(8))))
  second = np.asarray(run(images[4:], augment.example_keys(3, jnp.arange(4, 12))))
  assert first.shape == (8, 64, 64, 3) and first.dtype == np.float32
  np.testing.assert_array_equal(first[4:], second[:4])
  third = np.asarray(run(images[:8], augment.example_keys(4, jnp.arange(8))))
  assert not np.array_equal(first, third)
  # each colour op alone keeps values integral in 0–255 (uint8 semantics before normalize)
  jitter = augment.parse("color_jitter(0.5, 0.5, 0.5, 0.2)|random_grayscale(0.5)")
  out = np.asarray(jax.jit(jitter.__call__)(images, augment.example_keys(0, jnp.arange(12))))
  assert np.array_equal(out, np.round(out)) and out.min() >= 0 and out.max() <= 255
  assert not np.array_equal(out, np.asarray(images, np.float32))


@pytest.mark.parametrize("op", ["color_jitter(0.4, 0.4, 0.4, 0.1)", "random_grayscale(0.2)"])
@pytest.mark.parametrize("before", ["normalize('imagenet')", "to_float()"])
def test_colour_ops_are_refused_after_the_values_leave_0_to_255(op, before):
  """PIL's integer arithmetic floors and clips: after normalize() the image would turn into 0s and 1s."""
  with pytest.raises(ValueError, match=r"comes after to_float\(\)/normalize\(\)"):
    augment.parse(f"{before}|{op}")
  with pytest.raises(ValueError, match=r"comes after to_float\(\)/normalize\(\)"):
    augment.parse(f"{before}|random_apply(0.5, \"{op}\")")
  augment.parse(f"{op}|{before}")  # before them: accepted
