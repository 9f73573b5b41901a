"""fer_jax.data.augment: the pipeline language, its value semantics and the basic ops.

The geometric and colour ops are tested against their libraries in test_augment_geometry.py
and test_augment_color.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from fer_jax.data import augment, pipeline as data_pipeline
from helpers import run_pipeline


def _image(h=8, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_unknown_op_and_bad_arguments_name_the_op():
  with pytest.raises(ValueError, match="Unknown preprocessing op 'fliq'"):
    augment.parse("flip()|fliq()")
  with pytest.raises(ValueError, match="Bad arguments in preprocessing op 'flip\\(q=1\\)'"):
    augment.parse("flip(q=1)")
  with pytest.raises(ValueError, match=r"'rotate\(angle=10\)': .*'angle'\. It takes rotate\(degrees, "
                                       r"method='nearest', fill=0\)\.$"):
    augment.parse("rotate(angle=10)")
  with pytest.raises(ValueError, match=r"It takes random_apply\(p, pipeline\)\.$"):
    augment.parse("random_apply(0.5)")
  with pytest.raises(ValueError, match="Cannot parse"):
    augment.parse("flip(")
  with pytest.raises(ValueError, match="Unknown normalisation 'imagenett'"):
    augment.parse("normalize('imagenett')")


def test_a_value_error_inside_an_op_keeps_its_message_and_names_the_call():
  """An op's own ValueError (here rotate refusing a string for its degrees) says which call
  raised it and how the op is called; errors of a nested pipeline keep naming their own op."""
  with pytest.raises(ValueError, match=r"^rotate: degrees='ten' must be .*\. Raised by preprocessing op "
                                       r"\"rotate\('ten'\)\", which takes rotate\(degrees, method='nearest', fill=0\)\.$"):
    augment.parse("resize(48)|rotate('ten')|to_float()")
  with pytest.raises(ValueError, match=r"^occlude: unknown region 'nose'; .*\. Raised by preprocessing op "
                                       r"\"occlude\('nose'\)\", which takes occlude\(region, "):
    augment.parse("occlude('nose')")
  with pytest.raises(ValueError, match=r"^Unknown preprocessing op 'fliq' in 'fliq\(\)'; .*, to_float\. An op of "
                                       r"yours is known once its module is imported \(docs/extending.md, 'An op of "
                                       r"yours'\)\.$"):
    augment.parse("random_apply(0.5, 'fliq()')")
  with pytest.raises(ValueError, match=r"^rotate: degrees='ten' must be .*\. Raised by preprocessing op "
                                       r"\"rotate\('ten'\)\", which takes rotate\("):
    augment.parse("random_apply(0.5, \"rotate('ten')\")")


@pytest.mark.parametrize("op", ["flip(p=2)", "random_apply(1.5, 'flip()')", "color_jitter(0.4, p=-0.1)",
                                "random_grayscale('half')", "random_erasing(p=True)"])
def test_a_probability_outside_0_to_1_is_refused(op):
  """flip(p=2) and random_apply(1.5, …) were taken (as always), a string p failed inside the first traced step."""
  with pytest.raises(ValueError, match=r"^p=.* must be a probability, from 0 to 1\. Raised by preprocessing op "):
    augment.parse(op)


def test_a_factory_that_returns_no_op_is_named(monkeypatch):
  monkeypatch.setitem(augment.OPS, "no_op_for_test", lambda: (lambda image, params: image))
  with pytest.raises(ValueError, match=r"^Preprocessing op 'no_op_for_test' \(in 'no_op_for_test\(\)'\) gave function, "
                                       r"not an Op: its factory must return a fer_jax.data.augment Op"):
    augment.parse("flip()|no_op_for_test()|to_float()")


def _crop_op(declare: bool) -> augment.Op:
  """Crops 2 pixels off each side, declaring its output shape or not."""
  if declare:
    return augment.Op(apply=lambda image, params: image[2:-2, 2:-2],
                      output_shape=lambda shape: (shape[0] - 4, shape[1] - 4, shape[2]))
  return augment.Op(apply=lambda image, params: image[2:-2, 2:-2])


def test_an_op_refusing_its_input_in_output_shape_is_named_with_the_input(monkeypatch):
  """Its ValueError (as docs/extending.md has center_crop raise) read "config.input.train_pp: too small", no op
  named."""
  config = ml_collections.ConfigDict({"input": {"size": 48, "channels": 3}})

  def refusing_output_shape(shape):
    raise ValueError("too small.")

  monkeypatch.setitem(augment.OPS, "crop_for_test",
                      lambda: augment.Op(apply=lambda image, params: image, output_shape=refusing_output_shape))
  with pytest.raises(data_pipeline.DataError, match=r"^config.input.train_pp: too small. Raised by preprocessing op "
                                                    r"'crop_for_test\(\)' on \(48, 48, 3\) images\.$"):
    data_pipeline.compile_pipeline(config, "resize(48)|crop_for_test()|to_float()", (60, 60, 3), "input.train_pp")


def test_an_op_that_changes_the_shape_undeclared_is_named_where_the_pipeline_is_compiled(monkeypatch):
  """Tracing compares every op's image with the shape its Op declares: an undeclared crop would
  otherwise feed the model 44² images declared as 48², or, followed by a resize, draw the later
  ops for the wrong size."""
  config = ml_collections.ConfigDict({"input": {"size": 48, "channels": 3}})
  monkeypatch.setitem(augment.OPS, "crop_for_test", lambda: _crop_op(declare=False))
  text = "resize(48)|crop_for_test()|to_float()"
  with pytest.raises(data_pipeline.DataError,
                     match=r"^config.input.train_pp: op 'crop_for_test\(\)' of pipeline 'resize\(48\)\|crop_for_test\(\)\|"
                           r"to_float\(\)' turns \(48, 48, 3\) images into \(44, 44, 3\), but its Op's output_shape says "
                           r"\(48, 48, 3\): an op whose apply changes the image's shape must declare it"):
    data_pipeline.compile_pipeline(config, text, (60, 60, 3), "input.train_pp")
  with pytest.raises(data_pipeline.DataError, match=r"op 'crop_for_test\(\)' .* into \(48, 48, 3\)"):
    data_pipeline.compile_pipeline(config, "crop_for_test()|resize(48)|to_float()", (52, 52, 3), "input.eval_pp")
  with pytest.raises(data_pipeline.DataError, match=r"op 'crop_for_test\(\)' of pipeline 'flip\(\)\|crop_for_test\(\)' "
                                                    r"turns \(48, 48, 3\) images into \(44, 44, 3\)"):
    data_pipeline.compile_pipeline(config, "resize(48)|random_apply(0.5, 'flip()|crop_for_test()')|to_float()",
                                   (60, 60, 3), "input.train_pp")
  monkeypatch.setitem(augment.OPS, "crop_for_test", lambda: _crop_op(declare=True))
  compiled = data_pipeline.compile_pipeline(config, "resize(52)|crop_for_test()|to_float()", (60, 60, 3),
                                            "input.train_pp")
  assert compiled.output_shape((60, 60, 3)) == (48, 48, 3)
  image = np.random.default_rng(0).integers(0, 256, (52, 52, 3), dtype=np.uint8)
  np.testing.assert_array_equal(run_pipeline("crop_for_test()|to_float()", None, image), image[2:-2, 2:-2])


def test_random_apply_must_keep_the_shape_and_cannot_hold_a_conversion():
  with pytest.raises(ValueError, match="must keep the image's shape"):
    augment.parse("random_apply(0.5, 'gray_to_rgb()')").output_shape((8, 8, 1))
  with pytest.raises(ValueError, match="cannot be applied at random"):
    augment.parse("random_apply(0.5, 'to_float()')")


def test_size_placeholder_and_output_shape():
  pipeline = augment.parse("gray_to_rgb()|random_apply(1.0, 'flip(1.0)|flip(1.0)')|normalize('half')", size=6)
  assert pipeline.output_shape((8, 10, 1)) == (8, 10, 3)
  assert pipeline.ends_uint8 and not augment.parse("flip()").ends_uint8


def test_flip_and_normalize_match_torchvision():
  image = _image()
  tensor = torch.from_numpy(image).permute(2, 0, 1)
  flipped = TF.hflip(tensor).permute(1, 2, 0).numpy()
  np.testing.assert_array_equal(run_pipeline("flip(1.0)", None, image), flipped)
  np.testing.assert_array_equal(run_pipeline("flip(0.0)", None, image), image)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  expected = TF.normalize(TF.to_tensor(image), mean, std).permute(1, 2, 0).numpy()
  np.testing.assert_allclose(run_pipeline("normalize('imagenet')", None, image), expected, rtol=1e-5, atol=1e-6)
  assert run_pipeline("to_float()", None, np.full((2, 2, 3), 255, np.uint8)).max() == 255.0


def test_a_colour_normalisation_of_a_grey_image_is_refused_as_torchvision_refuses_it():
  """normalize('imagenet') on one channel used the red channel's mean and std alone; torchvision's Normalize
  raises. A normalisation equal over the channels ('half') still applies to grey images."""
  gray = _image(c=1)
  with pytest.raises(RuntimeError):
    TF.normalize(TF.to_tensor(gray), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  with pytest.raises(ValueError, match=r"normalize: a 1-channel image and per-channel means .* put gray_to_rgb\(\) "
                                       "before it"):
    augment.parse("normalize('imagenet')").output_shape(gray.shape)
  expected = TF.normalize(TF.to_tensor(gray), (0.5,), (0.5,)).permute(1, 2, 0).numpy()
  np.testing.assert_allclose(run_pipeline("normalize('half')", None, gray), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, message", [
    ("normalize(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])",
     r"mean=\[123.675, 116.28, 103.53\] is on the 0–255 scale, .*: pass it divided by 255, "
     r"mean=\[0.485, 0.456, 0.406\]"),
    ("normalize(mean=0.5, std=127.5)", r"std=127.5 is on the 0–255 scale, .*, std=\[0.5\]"),
    ("normalize(mean=(0.5,), std=(0,))", r"std=\(0,\) must be on the 0–1 scale, above 0"),
    ("normalize(mean=-0.1, std=0.5)", r"mean=-0.1 must be on the 0–1 scale, from 0 to 1"),
    ("normalize(mean=(0.5, 0.5, 0.5))", r"mean=\(0.5, 0.5, 0.5\) needs its std"),
    ("normalize('imagenet', std=0.5)", r"'imagenet' brings its own std"),
    ("normalize(mean=(True,), std=(0.5,))", r"mean=\(True,\) must be a number or one number per channel"),
    ("normalize(mean=(0.5, 0.5), std=(0.5, 0.5))",
     r"mean=\(0.5, 0.5\) must be a number or one number per channel \(R, G, B\)"),
    ("normalize(mean=0.5, std=1e999)", r"std=inf must be a number or one number per channel"),
])
def test_a_normalisation_off_the_0_to_1_scale_or_without_its_std_is_refused(op, message):
  """normalize divides by 255 first: mmcv's 0–255 means were taken, and trained on inputs of about −2 everywhere;
  a zero std gave infinities, a mean without its std NaNs."""
  with pytest.raises(ValueError, match=rf"^normalize: {message}.*Raised by preprocessing op "):
    augment.parse(op)


def test_random_apply_refuses_an_inner_pipeline_that_is_no_string():
  with pytest.raises(ValueError, match=r"^random_apply: pipeline=3 must be a pipeline string, e\.g\. "
                                       r"'rotate\(10\)\|flip\(\)'\. Raised by preprocessing op "):
    augment.parse("random_apply(0.5, 3)")


def test_gray_to_rgb_copies_the_channel():
  gray = _image(c=1)
  np.testing.assert_array_equal(run_pipeline("gray_to_rgb()", None, gray), np.repeat(gray, 3, axis=-1))
  colour = _image()
  np.testing.assert_array_equal(run_pipeline("gray_to_rgb()", None, colour), colour)


def test_values_are_rounded_until_to_float_or_normalize():
  """An op's output is stored as uint8 (rounded half up, clipped) until the values become floats."""
  scale = augment.Op(apply=lambda image, params: image * 0.5 + 300.0 * (image > 250))
  augment.OPS["scale_for_test"] = lambda: scale
  try:
    image = np.array([[[1], [3], [255]]], np.uint8)
    np.testing.assert_array_equal(run_pipeline("scale_for_test()", None, image)[..., 0], [[1, 2, 255]])
    np.testing.assert_array_equal(run_pipeline("to_float()|scale_for_test()", None, image)[..., 0],
                                  [[0.5, 1.5, 427.5]])
  finally:
    del augment.OPS["scale_for_test"]


def test_flip_probability_matches_its_p():
  pipeline = augment.parse("flip(0.3)")
  keys = augment.example_keys(0, jnp.arange(10_000))
  flips = jax.vmap(lambda key: pipeline.sample(key, (4, 4, 3))[0])(keys)
  assert abs(float(flips.mean()) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 10_000)


@pytest.mark.integration
def test_keys_follow_the_example_position_not_the_batch():
  pipeline = jax.jit(augment.parse("random_apply(0.5, 'flip(1.0)')|normalize('half')"))
  images = np.stack([_image(seed=s) for s in range(6)])
  positions = jnp.arange(100, 106)
  whole = pipeline(images, augment.example_keys(3, positions))
  halves = [pipeline(images[i:i + 3], augment.example_keys(3, positions[i:i + 3])) for i in (0, 3)]
  np.testing.assert_array_equal(whole, np.concatenate(halves))
  other_seed = pipeline(images, augment.example_keys(4, positions))
  flipped = [not np.array_equal(np.asarray(whole[i]), np.asarray(other_seed[i])) for i in range(6)]
  assert any(flipped)


def test_an_op_of_yours_cannot_take_the_name_of_another_op():
  """`@augment.register def flip(...)` replaced fer_jax's flip in every pipeline, without a word."""
  library_flip = augment.OPS["flip"]

  def flip(p: float = 0.5) -> augment.Op:
    del p
    return augment.Op(apply=lambda image, params: image)

  with pytest.raises(ValueError, match=r"^The op 'flip' of test_augment would replace fer_jax.data.augment.basic's "
                                       r"wherever it is named: give its function another name\.$"):
    augment.register(flip)
  assert augment.OPS["flip"] is library_flip
  assert augment.register(library_flip) is library_flip  # its module imported again: the same op
