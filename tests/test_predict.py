"""fer_jax.predict: the method's eval preprocessing, batched inference, TTA, outputs, bad images."""

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import types
import tempfile

import cv2
import jax
import numpy as np
import pytest
from PIL import features
from PIL import Image
import tensorflow_datasets as tfds

from fer_jax import api
from fer_jax import checkpointing
from fer_jax import evaluate
from fer_jax import inference
from fer_jax import models
from fer_jax import predict
from fer_jax.data import decode
from fer_jax.data import generate_layout
from fer_jax.data import prepare
from fer_jax.data import video
from fer_jax.errors import UserError
from fer_jax.face import detector
from fer_jax.face import draw
from fer_jax.face import tracks
from helpers import get_config, random_variables

SIZE = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config():
  config = get_config("configs/dan.py:synthetic")
  config.input.size = SIZE
  return config


@pytest.fixture(scope="module")
def checkpoint(config, tmp_path_factory):
  variables = random_variables(config)
  return variables, checkpointing.save_model(str(tmp_path_factory.mktemp("dan_checkpoint")), variables, config)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
  """Three readable images (RGB PNG, JPEG, grayscale in a subfolder), a corrupt one, a text file."""
  folder = tmp_path_factory.mktemp("faces")
  rng = np.random.default_rng(1)
  Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "a.png")
  Image.fromarray(rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)).save(folder / "b.jpg", quality=95)
  (folder / "sub").mkdir()
  Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / "sub" / "c.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  (folder / "notes.txt").write_text("not an image")
  return folder


@pytest.fixture(scope="module")
def reference_logits(config, checkpoint, faces):
  """Logits of the images and of their mirror images, by direct model calls on the eval pipeline."""
  variables, _ = checkpoint
  preprocess = inference.FilePreprocessor(config)
  paths = [faces / "a.png", faces / "b.jpg", faces / "sub" / "c.png"]
  images = np.asarray(jax.jit(preprocess)(np.stack([preprocess.read(str(p)) for p in paths])))
  model = models.build_model(config)
  both = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(variables, np.concatenate([images, images[:, :, ::-1]]))
  return np.asarray(both[:3]), np.asarray(both[3:])


@pytest.mark.integration
@pytest.mark.parametrize("spec, layout, images", [("configs/dan.py:rafdb", "rafdb", "Image/aligned"),
                                                  ("configs/apvit.py:rafdb", "rafdb_aligned224", "Image/aligned_224")])
def test_a_test_image_gets_from_predict_the_probabilities_its_evaluation_reports(tmp_path, spec, layout, images):
  """Two paths to one face: the prepared set through the data pipeline and the config's eval_pp (`--mode=eval`'s
  predictions_test.csv), and the owners' file through `fer_jax.load(...).predict` (fer_jax.predict, the API)."""
  release = tmp_path / "release"
  generate_layout.generate(layout, str(release), scale=0.002)
  config = get_config(spec)
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.eval.predictions = True
  prepare.make_builder(config.dataset.name, config.dataset.data_dir).download_and_prepare(
      file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(release)))
  checkpoint = checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config)
  evaluate.evaluate_checkpoint(config, checkpoint, str(tmp_path / "eval"))
  with open(tmp_path / "eval" / evaluate.predictions_file("test"), newline="") as f:
    reported = {row["file_name"]: row for row in csv.DictReader(f)}
  paths = sorted((release / images).glob("test_*"))
  assert len(paths) == len(reported) == 8
  for path, prediction in zip(paths, api.load(checkpoint, config=config).predict([str(p) for p in paths])):
    row = reported[path.name.replace("_aligned.", ".")]  # RAF-DB's label file names test_0001.jpg
    assert prediction.label == row["prediction"]
    np.testing.assert_allclose([prediction.probabilities[name] for name in prediction.probabilities],
                               [float(row[f"p_{name}"]) for name in prediction.probabilities], atol=1e-6)  # 6 decimals


def test_images_are_found_recursively_and_sorted(faces):
  found = [os.path.relpath(p, faces) for p in inference.list_images(str(faces))]
  assert found == ["a.png", "b.jpg", "broken.jpg", os.path.join("sub", "c.png")]
  assert inference.list_images(str(faces / "notes.txt")) == [str(faces / "notes.txt")]


@pytest.mark.integration
def test_flip_tta_averages_the_softmax_of_both_views_in_padded_batches(config, checkpoint, faces, reference_logits, tmp_path):
  variables, _ = checkpoint
  predictor = inference.Predictor(config, variables, tta_name="flip", batch_size=2)
  devices = jax.device_count()
  assert predictor.batch_size == -(-2 // devices) * devices  # a multiple of the device count
  results = predict.predict_inputs(api.Model(predictor), inference.list_images(str(faces)), str(faces), detect=False,
                                   min_face_size=0, min_score=0)
  rows, skipped = results.rows, results.skipped
  plain, mirrored = reference_logits
  expected = np.asarray(jax.nn.softmax(plain) + jax.nn.softmax(mirrored)) / 2
  got = np.array([[row["probabilities"][c] for c in predictor.class_names] for row in rows])
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose([[row["logits"][c] for c in predictor.class_names] for row in rows], plain, atol=1e-4)
  assert [os.path.basename(p) for p, _ in skipped] == ["broken.jpg"]
  assert [row["prediction"] for row in rows] == [predictor.class_names[i] for i in np.argmax(expected, axis=1)]

  out = tmp_path / "preds.csv"
  predict.write_predictions(rows, skipped, predictor.class_names, str(out), face_columns=False)
  with open(out) as f:
    table = list(csv.DictReader(f))
  assert [os.path.basename(r["image"]) for r in table] == ["a.png", "b.jpg", "c.png", "broken.jpg"]
  assert list(table[0]) == ["image", "skipped", "prediction", "confidence", *(f"p_{c}" for c in predictor.class_names),
                            *(f"logit_{c}" for c in predictor.class_names)]
  assert table[3]["skipped"] == skipped[0][1] and table[3]["prediction"] == "" and table[0]["skipped"] == ""
  assert float(table[1]["confidence"]) == pytest.approx(expected[1].max(), abs=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("config_flags", [["--config=configs/dan.py:synthetic", "--config.input.size=32"], []],
                         ids=["config", "the_checkpoints_record"])
def test_command_line_writes_json_and_reports_unreadable_images(config, checkpoint, faces, reference_logits, tmp_path,
                                                                config_flags):
  """Without --config the checkpoint's meta record gives the model, as for fer_jax.load (was: --config is required)."""
  _, path = checkpoint
  out = tmp_path / "preds.json"
  result = subprocess.run(
      [sys.executable, "-m", "fer_jax.predict", *config_flags, f"--checkpoint={os.path.dirname(path)}",
       f"--input={faces}", f"--output={os.path.relpath(out, ROOT)}", "--tta=none"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Skipping unreadable input" in result.stderr and "broken.jpg" in result.stderr
  assert f"Wrote 3 predictions to {out}; skipped 1 of 4 inputs (1 unreadable; see the warning above)." in result.stderr
  assert [line.split("] ")[-1] for line in result.stderr.splitlines() if line.endswith("%)")] == [
      f"{faces / name}: {prediction['prediction']} ({prediction['confidence']:.1%})"
      for name, prediction in zip(("a.png", "b.jpg", "sub/c.png"), json.loads(out.read_text())["predictions"])]
  written = json.loads(out.read_text())
  assert written["class_names"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
  assert [os.path.basename(s["image"]) for s in written["skipped"]] == ["broken.jpg"]
  probabilities = np.array([[p["probabilities"][c] for c in written["class_names"]] for p in written["predictions"]])
  np.testing.assert_allclose(probabilities, np.asarray(jax.nn.softmax(reference_logits[0])), atol=1e-5)


@pytest.mark.integration
def test_no_readable_image_is_an_error(config, checkpoint, tmp_path):
  (tmp_path / "x.png").write_bytes(b"garbage")
  result = subprocess.run(
      [sys.executable, "-m", "fer_jax.predict", "--config=configs/dan.py:synthetic", "--config.input.size=32",
       f"--checkpoint={os.path.dirname(checkpoint[1])}", f"--input={tmp_path / 'x.png'}",
       f"--output={tmp_path / 'p.csv'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode != 0
  assert result.returncode == 2 and "error: No readable input under --input=" in result.stderr


# `python -m fer_jax.predict`, SIGINT sent by the process to itself as it reads a video's frame 1 (where no face is
# found: the detector is not needed).
_PREDICT_INTERRUPTED_AT_FRAME_1 = """
import os, signal, sys
from fer_jax import cli, predict

def add_frame(results, source, image, name, frame=None, time=None):
  if frame == 1:
    os.kill(os.getpid(), signal.SIGINT)
  return 0

predict.FacePredictions.add_frame = add_frame
predict.define_flags()
cli.run(predict.main)
"""


@pytest.mark.integration
def test_an_interrupted_run_writes_the_rows_done_beside_the_output_lists_the_rest_and_exits_75(checkpoint, tmp_path):
  """Ctrl-C lost every input already done: exit status 130, a traceback, no output. Then the partial rows replaced the
  complete output an earlier run wrote, and the message said to run "again to complete it", which predict does not."""
  folder = tmp_path / "inputs"
  folder.mkdir()
  Image.fromarray(np.random.default_rng(8).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "a.png")
  video = _flat_video(str(folder / "b.avi"))
  Image.new("RGB", (48, 48)).save(folder / "c.png")
  out, partial = tmp_path / "preds.csv", tmp_path / "preds.partial.csv"
  out.write_text("an earlier run's complete output\n")
  result = subprocess.run(
      [sys.executable, "-c", _PREDICT_INTERRUPTED_AT_FRAME_1, "--config=configs/dan.py:synthetic",
       "--config.input.size=32", f"--checkpoint={os.path.dirname(checkpoint[1])}", f"--input={folder}",
       f"--output={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 75, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "SIGINT received: stopping after the image or video frame in hand" in result.stderr
  assert f"Stopped early: {partial} is partial (2 inputs not done, listed as skipped); {out} is not replaced. Run " \
         "the command again for the whole output: it predicts every input anew." in result.stderr
  assert out.read_text() == "an earlier run's complete output\n"
  with open(partial) as f:
    table = list(csv.DictReader(f))
  assert [(row["image"], row["skipped"], row["prediction"] != "") for row in table] == [
      (str(folder / "a.png"), "", True), (video, "interrupted at frame 2 by SIGINT", False),
      (str(folder / "c.png"), "not reached: stopped by SIGINT", False)]


# `python -m fer_jax.predict` on a full disk: every file written under the folder $FULL_DISK fails with ENOSPC; with
# $FAIL_ON, reading that input fails as a bug would.
_PREDICT_ON_A_FULL_DISK = """
import contextlib, errno, os
from fer_jax import cli, files, predict

written_whole, add_image = files.written_whole, predict.FacePredictions.add_image

@contextlib.contextmanager
def full_disk(path, **open_kwargs):
  with written_whole(path, **open_kwargs) as f:
    yield f
    if os.path.realpath(path).startswith(os.environ["FULL_DISK"] + os.sep):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

def failing_add_image(results, path, *args):
  if path == os.environ.get("FAIL_ON"):
    raise RuntimeError("device broke")
  return add_image(results, path, *args)

files.written_whole, predict.FacePredictions.add_image = full_disk, failing_add_image
predict.define_flags()
cli.run(predict.main)
"""


@pytest.mark.integration
@pytest.mark.parametrize("error_mid_run", [False, True], ids=["complete", "error_mid_run"])
def test_an_output_that_cannot_be_written_at_the_end_leaves_the_rows_in_the_temporary_folder(error_mid_run, checkpoint,
                                                                                             tmp_path):
  """A full disk at the end lost every row computed (minutes of a folder or video): "No space left on device: …".
  After an error mid-run the error is still raised, its traceback shown."""
  inputs, full, spill_folder = tmp_path / "inputs", tmp_path / "full", tmp_path / "tmp"
  for folder in (inputs, full, spill_folder):
    folder.mkdir()
  Image.fromarray(np.random.default_rng(8).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(inputs / "a.png")
  Image.new("RGB", (48, 48)).save(inputs / "b.png")
  out = full / "preds.csv"
  out.write_text("an earlier run's complete output\n")
  result = subprocess.run(
      [sys.executable, "-c", _PREDICT_ON_A_FULL_DISK, "--config=configs/dan.py:synthetic", "--config.input.size=32",
       f"--checkpoint={os.path.dirname(checkpoint[1])}", f"--input={inputs}", f"--output={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "FULL_DISK": str(full), "TMPDIR": str(spill_folder),
           "FAIL_ON": str(inputs / "b.png") if error_mid_run else ""})
  assert result.returncode == (1 if error_mid_run else 2), result.stderr[-3000:]
  [spill] = os.listdir(spill_folder)
  written = full / ("preds.partial.csv" if error_mid_run else "preds.csv")
  assert re.fullmatch(r"preds\.partial\.\d+\.csv" if error_mid_run else r"preds\.\d+\.csv", spill)
  message = (f"{written} could not be written (No space left on device); the predictions went to "
             f"{spill_folder / spill} instead. Free space or choose another --output.")
  if error_mid_run:  # the write's error logged, then the run's own raised
    assert message in result.stderr and result.stderr.splitlines()[-1] == "RuntimeError: device broke"
  else:
    assert result.stderr.splitlines()[-1] == f"error: {message}"
  with open(spill_folder / spill) as f:
    assert [(os.path.basename(row["image"]), row["prediction"] != "") for row in csv.DictReader(f)] == [
        ("a.png", True), ("b.png", not error_mid_run)]
  assert os.listdir(full) == ["preds.csv"] and out.read_text() == "an earlier run's complete output\n"


def test_each_batch_is_padded_to_the_size_padded_size_gives_and_its_padding_dropped():
  """Predictor's steps go through the helper visualize's do: a last step of few images runs at a smaller size."""
  sizes = []

  def forward(offset, batch):
    sizes.append(len(batch))
    return batch.sum(axis=(1, 2, 3)) + offset, (batch[:, 0, 0, 0],)

  images = [np.full((2, 2, 1), index, np.int32) for index in range(5)]
  totals, (firsts,) = inference.forward_in_batches(forward, 10, images, 3, lambda count: 4 if count > 2 else 2)
  assert sizes == [4, 2]
  np.testing.assert_array_equal(totals, [4 * index + 10 for index in range(5)])
  np.testing.assert_array_equal(firsts, range(5))


class _InputPredictor(inference.Predictor):
  """A Predictor whose "model" returns its input: `inputs` is what a model is given for uint8 images."""

  def __init__(self, config):
    super().__init__(config, {}, batch_size=1, logits_fn=lambda v, x: x.reshape(x.shape[0], -1))

  def inputs(self, images: list[np.ndarray]) -> np.ndarray:
    return self(images)[1].reshape(len(images), self.config.input.size, self.config.input.size, -1)


def test_a_colour_crop_reaches_a_grey_data_sets_model_as_its_grey_conversion(tmp_path):
  """FER2013 is stored grey (converted with PIL's "L", as its builder does) and its detected faces are
  cropped grey: a crop given as it is (--nodetect, Model.predict) is decoded grey too, then gray_to_rgb()."""
  config = get_config("configs/lhcnet.py:fer2013")
  colour = np.random.default_rng(3).integers(0, 256, (60, 60, 3), dtype=np.uint8)
  Image.fromarray(colour).save(tmp_path / "colour.png")
  Image.fromarray(colour).convert("L").save(tmp_path / "grey.png")
  model = api.Model(_InputPredictor(config))
  stored = [model.predictor.preprocess.read(str(tmp_path / "colour.png")),
            model._stored(Image.fromarray(colour)),
            model.predictor.preprocess.read(str(tmp_path / "grey.png"))]
  assert all(image.shape == (48, 48, 1) for image in stored)
  inputs = model.predictor.inputs(stored)
  assert inputs.shape == (3, 224, 224, 3) and np.array_equal(inputs[..., 0], inputs[..., 2])
  np.testing.assert_array_equal(inputs[0], inputs[2])
  np.testing.assert_array_equal(inputs[1], inputs[2])


def test_a_colour_data_sets_crops_stay_in_colour(tmp_path):
  config = get_config("configs/dan.py:rafdb")
  colour = np.random.default_rng(4).integers(0, 256, (120, 120, 3), dtype=np.uint8)
  Image.fromarray(colour).save(tmp_path / "colour.png")
  predictor = _InputPredictor(config)
  stored = predictor.preprocess.read(str(tmp_path / "colour.png"))
  np.testing.assert_array_equal(stored, np.asarray(Image.fromarray(colour).resize((100, 100), Image.BILINEAR)))
  inputs = predictor.inputs([stored])
  assert inputs.shape == (1, 224, 224, 3) and not np.allclose(inputs[..., 0], inputs[..., 1])


def test_each_image_is_opened_once_whether_a_crop_or_a_photo(tmp_path, monkeypatch):
  """Whether an image is a face crop or a photo is read from the file opened to decode it."""
  model = api.Model(_InputPredictor(get_config("configs/dan.py:rafdb")))
  monkeypatch.setattr(model, "faces", lambda image, *_: ([], [], []))  # no face found: the detector is not needed
  crop, photo = str(tmp_path / "crop.png"), str(tmp_path / "photo.png")
  Image.new("RGB", (100, 100)).save(crop)
  Image.new("RGB", (640, 480)).save(photo)
  opened, real_open = [], Image.open
  monkeypatch.setattr(Image, "open", lambda path, *args: opened.append(path) or real_open(path, *args))
  results = predict.predict_inputs(model, [crop, photo], str(tmp_path), None, 24, 0.9)
  assert opened == [crop, photo]
  assert [row["image"] for row in results.rows] == [crop] and results.skipped == [(photo, predict.NO_FACE)]


def _recording_model(monkeypatch, faces_found: bool = True) -> tuple[api.Model, list[np.ndarray]]:
  """A RAF-DB model (crops at 100×100) whose `classify` records the crops it is given; with `faces_found`
  False, no face is found in any photo (the detector is not needed)."""
  model = api.Model(_InputPredictor(get_config("configs/dan.py:rafdb")))
  classified = []
  monkeypatch.setattr(model, "classify", lambda crops: classified.extend(crops) or
                      [api.Prediction("anger", 1.0, {}, {}) for _ in crops])
  if not faces_found:
    monkeypatch.setattr(model, "faces", lambda image, *_: ([], [], []))
  return model, classified


def _fake_detector(monkeypatch) -> tuple[list[float], list[np.ndarray]]:
  """detector.Detector replaced by one that finds no face: (the minimum face size of each one built, the photos
  searched)."""
  built, searched = [], []

  class Fake:
    def __init__(self, min_face_size=20.0):
      built.append(min_face_size)

    def __call__(self, image):
      searched.append(image)
      return []

  monkeypatch.setattr(detector, "Detector", Fake)
  return built, searched


def test_a_face_crop_is_read_upright_as_its_exif_orientation_says(tmp_path, monkeypatch):
  """Photos were turned upright, face crops (predict, Model.predict, visualize) were read as stored: sideways."""
  model, classified = _recording_model(monkeypatch)
  upright = np.random.default_rng(5).integers(0, 256, (90, 80, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # the pixels lie a quarter turn left of upright
  path = str(tmp_path / "sideways.png")
  Image.fromarray(np.rot90(upright)).save(path, exif=exif)
  predict.predict_inputs(model, [path], str(tmp_path), None, 24, 0.9)
  model.predict([path])
  expected = decode.to_stored(Image.fromarray(upright), model.predictor.preprocess.shape)
  assert len(classified) == 2 and all(np.array_equal(crop, expected) for crop in classified)
  np.testing.assert_array_equal(model.predictor.preprocess.read(path), expected)


def test_an_open_file_is_read_as_its_path_is_for_crops_and_photos(tmp_path, monkeypatch):
  """A service holds an upload as a file object: io.BytesIO and open files were refused as "got object ()"."""
  model, classified = _recording_model(monkeypatch)
  _, searched = _fake_detector(monkeypatch)
  upright = np.random.default_rng(6).integers(0, 256, (90, 80, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  path = tmp_path / "sideways.png"
  Image.fromarray(np.rot90(upright)).save(path, exif=exif)
  with open(path, "rb") as file:
    model.predict([path, io.BytesIO(path.read_bytes()), file])
  assert len(classified) == 3 and all(np.array_equal(crop, classified[0]) for crop in classified)
  for photo in (path, io.BytesIO(path.read_bytes())):
    assert model.detect_and_predict(photo) == []
  assert len(searched) == 2 and all(np.array_equal(image, upright) for image in searched)


def test_a_truncated_pil_image_or_stream_is_an_unreadable_image_named_by_its_place(tmp_path, monkeypatch):
  """PIL opens lazily: PIL.Image.open(io.BytesIO(data)), as docs/predict.md advised, of a cut-off upload raised PIL's
  bare OSError (a service catching UnreadableImageError answered 500, not 400)."""
  model, classified = _recording_model(monkeypatch)
  _fake_detector(monkeypatch)
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(7).integers(0, 256, (90, 80, 3), dtype=np.uint8)).save(buffer, "JPEG")
  cut = buffer.getvalue()[:len(buffer.getvalue()) // 2]  # the header whole: PIL opens it, its pixels fail
  for call, name in [(lambda image: model.predict([np.zeros((9, 9, 3), np.uint8), image]), "image 1"),
                     (model.detect_and_predict, "the photo")]:
    with pytest.raises(decode.UnreadableImageError, match=rf"^{name} is truncated or corrupt \(.*\): replace it"):
      call(Image.open(io.BytesIO(cut)))
    with pytest.raises(decode.UnreadableImageError, match=rf"^{name} is truncated or corrupt \("):
      call(io.BytesIO(cut))
  assert classified == []


@pytest.mark.parametrize("given", [None, object()], ids=["none", "object"])
def test_what_is_no_image_is_refused_naming_its_type_and_what_is_taken(given, monkeypatch):
  model, _ = _recording_model(monkeypatch)
  kind = type(given).__name__
  with pytest.raises(UserError, match=rf"^image 0: An image is a path, an open binary file, a PIL image or a uint8 "
                                      rf"array, not a {kind}\.$"):
    model.predict([given])
  with pytest.raises(UserError, match=rf"^the photo: An image is .* not a {kind}\.$"):
    model.detect_and_predict(given)


@pytest.mark.parametrize("limits", [{"min_face_size": "24"}, {"min_score": None}, {"max_side": True}],
                         ids=["text", "none", "bool"])
def test_limits_that_are_no_numbers_are_refused_by_name(limits, monkeypatch):
  """min_face_size='24' raised TypeError: '>=' not supported between instances of 'str' and 'int'."""
  model, _ = _recording_model(monkeypatch)
  (name, value), = limits.items()
  with pytest.raises(UserError, match=rf"^{name}={re.escape(repr(value))} must be a number, not a "):
    model.detect_and_predict(np.zeros((50, 50, 3), np.uint8), **limits)


def test_numpy_and_jax_scalars_are_numbers_as_limits(monkeypatch):
  model, _ = _recording_model(monkeypatch)
  _fake_detector(monkeypatch)
  for size in (np.float32(24), np.asarray(24.0), jax.numpy.float32(24), 24):
    assert model.detect_and_predict(np.zeros((50, 50, 3), np.uint8), min_face_size=size, max_side=np.int64(1600)) == []


def test_a_closed_or_text_file_is_refused_with_the_way_to_open_it(tmp_path, monkeypatch):
  """Both were reported as a damaged image ("is truncated or corrupt"): the caller's mistake, not the file's."""
  model, _ = _recording_model(monkeypatch)
  path = tmp_path / "face.png"
  Image.new("RGB", (40, 40)).save(path)
  with open(path, encoding="latin-1") as text:
    with pytest.raises(UserError, match=r"^image 0 is a file opened as text: pass it open, in binary mode "
                                        r"\(open\(path, 'rb'\), io\.BytesIO\(data\)\)\.$"):
      model.predict([text])
  with open(path, "rb") as closed:
    pass
  with pytest.raises(UserError, match=r"^the photo is a closed file: pass it open"):
    model.detect_and_predict(closed)


def test_a_crop_smaller_than_the_minimum_face_size_is_skipped_with_the_reason(tmp_path, monkeypatch, caplog):
  """An 8×8 image, or a 1×1 array, was a face crop and got a confident prediction."""
  model, classified = _recording_model(monkeypatch)
  tiny = str(tmp_path / "tiny.png")
  Image.new("RGB", (8, 8)).save(tiny)
  reason = "face smaller than the minimum size (8 < 24 px)"
  for detect in (None, False):
    results = predict.predict_inputs(model, [tiny], str(tmp_path), detect, 24, 0.9)
    assert results.rows == [] and results.skipped == [(tiny, reason)] and classified == []
  assert f"Skipping {tiny}: {reason}." in caplog.text
  assert len(model.predict([tiny, np.zeros((1, 1), np.uint8)], min_face_size=0)) == 2


def test_predict_returns_none_for_a_crop_below_the_minimum_face_size_and_classifies_the_others(tmp_path, monkeypatch,
                                                                                               caplog):
  """One small crop raised a UserError for the whole list, its other crops' predictions lost; the command line
  skips such a file and detect_and_predict returns such a face unclassified."""
  model, classified = _recording_model(monkeypatch)
  tiny = str(tmp_path / "tiny.png")
  Image.new("RGB", (8, 8)).save(tiny)
  face = np.zeros((30, 30, 3), np.uint8)
  predictions = model.predict([face, np.zeros((1, 1, 3), np.uint8), tiny, face])
  assert [p is None for p in predictions] == [False, True, True, False] and len(classified) == 2
  assert ("Model.predict: 2 of 4 images (the first: image 1, face smaller than the minimum size (1 < 24 px)) are "
          "not classified, their entries None; pass larger crops, or min_face_size=0 to classify them.") in caplog.text
  assert model.predict([tiny]) == [None]


def test_alpha_is_dropped_and_an_array_that_is_no_uint8_image_is_refused_alike_by_both_paths(monkeypatch):
  """detect_and_predict(RGBA) failed to broadcast (60, 60, 4) into (60, 60, 3); predict([float32]) raised PIL's
  "Cannot handle this data type"."""
  model, classified = _recording_model(monkeypatch)
  _, searched = _fake_detector(monkeypatch)
  rgb = np.random.default_rng(6).integers(0, 256, (60, 60, 3), dtype=np.uint8)
  alpha = np.full((60, 60, 1), 7, np.uint8)
  rgba, grey_alpha = np.concatenate([rgb, alpha], -1), np.concatenate([rgb[..., :1], alpha], -1)
  assert model.detect_and_predict(rgba) == [] and model.detect_and_predict(grey_alpha) == []
  np.testing.assert_array_equal(searched[0], rgb)
  np.testing.assert_array_equal(searched[1], np.repeat(rgb[..., :1], 3, -1))
  model.predict([rgba, grey_alpha])
  for crop, array in zip(classified, (rgba, grey_alpha)):
    as_pil_converts = decode.to_stored(Image.fromarray(array).convert("RGB"), model.predictor.preprocess.shape)
    np.testing.assert_array_equal(crop, as_pil_converts)
  for array in (rgb.astype(np.float32) / 255, np.zeros((60, 60, 5), np.uint8)):
    refusal = rf"An image array must be uint8 .* got {array.dtype} \(60, 60, {array.shape[-1]}\): convert it"
    with pytest.raises(UserError, match=f"^image 0: {refusal}"):
      model.predict([array])
    with pytest.raises(UserError, match=f"^the photo: {refusal}"):
      model.detect_and_predict(array)


def test_a_pil_image_of_any_mode_is_read_as_its_file_would_be(monkeypatch, tmp_path):
  """A palette, CMYK or YCbCr PIL image was read as its raw bands (palette indices as grey, C, M, Y as R, G, B:
  another label), and an EXIF-rotated one sideways, where the same image given by its path was read right."""
  model, classified = _recording_model(monkeypatch)
  _, searched = _fake_detector(monkeypatch)
  rgb = Image.fromarray(np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8))
  rotated = tmp_path / "rotated.jpg"
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: turn 90° clockwise to view
  rgb.save(rotated, exif=exif)
  grey_alpha = rgb.convert("LA")
  images = [rgb.convert("P"), rgb.convert("CMYK"), rgb.convert("YCbCr"), grey_alpha.convert("La")]  # La: an array's
  with Image.open(rotated) as from_file:
    model.predict([*images, from_file, str(rotated)])
    model.detect_and_predict(from_file)
  model.detect_and_predict(str(rotated))
  for crop, image in zip(classified, [*images[:3], grey_alpha]):  # La as the LA it premultiplies (alpha 255 here)
    np.testing.assert_array_equal(crop, decode.to_stored(image.convert("RGB"), model.predictor.preprocess.shape))
  np.testing.assert_array_equal(classified[4], classified[5])
  assert searched[0].shape == (80, 60, 3)
  np.testing.assert_array_equal(searched[0], searched[1])


@pytest.mark.parametrize("one_image", [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8),
                                       Image.new("RGB", (40, 40)), io.BytesIO(b"")],
                         ids=["rgb_array", "grey_array", "pil", "file"])
def test_one_image_where_a_list_belongs_is_refused_and_a_stack_of_grey_faces_is_not(monkeypatch, one_image, caplog):
  """An RGB array [40, 40, 3] was read as 40 grey images of 40×3 pixels: 40 predictions. One with its channels first
  ([3, 40, 50], PyTorch's order) is read as 3 grey faces, as documented, but no longer without a word."""
  model, classified = _recording_model(monkeypatch)
  with pytest.raises(TypeError, match=r"takes a list of face crops .* wrap the one image in a list"):
    model.predict(one_image)
  with pytest.raises(TypeError, match=r"^One photo is taken \(a path, an open binary file, a PIL image or an array\), "
                                      r"not a list: call it "):
    model.detect_and_predict([one_image])  # was "An image array must be uint8 … got <U33 (1,)" for a list of a path
  with caplog.at_level(logging.WARNING):
    assert len(model.predict(np.zeros((5, 48, 48), np.uint8))) == 5 == len(classified)  # [count, 48, 48]: FER2013's
    assert not caplog.records
    assert len(model.predict(np.zeros((3, 40, 50), np.uint8))) == 3
  assert caplog.messages == ["Model.predict reads the array (3, 40, 50) as a stack of 3 grey faces of 50×40; if it is "
                             "one image with its channels first (PyTorch's order), pass [np.moveaxis(image, 0, -1)]."]


@pytest.mark.parametrize("arguments, message", [
    ({"tta": "bogus"}, r"^tta='bogus' is no test-time augmentation: pass one of none, flip, lhc62"),
    ({"batch_size": 0}, r"^batch_size=0 must be a positive integer"),
    ({"batch_size": 2.5}, r"^batch_size=2.5 must be a positive integer"),
    ({"config": "configs/dan.py:syntheticc"},
     r"^config='configs/dan.py:syntheticc': Unknown argument 'syntheticc' for configs/dan\.py; valid: rafdb, "
     r"affectnet7, affectnet8, synthetic \(optionally followed by ,occlusion=<no\|yes>\)\.$"),
    ({"config": "configs/dann.py:rafdb"},
     r"^config='configs/dann.py:rafdb': configs/dann.py is not a file; pass configs/<method>\.py:<dataset>\.$"),
    ({"config": {"model": {"name": "dan"}}},
     r'^config= takes an ml_collections\.ConfigDict or "configs/<method>\.py:<dataset>", not a dict\.$'),
    ({"config": 3}, r"^config= takes an ml_collections\.ConfigDict .*, not an int\.$"),
], ids=["tta", "zero", "float", "config_argument", "config_file", "config_dict", "config_int"])
def test_load_refuses_a_bad_argument_by_its_name(tmp_path, arguments, message):
  """They failed on the first prediction, deep inside (range() arg 3 must not be zero), or named config.eval.tta; a
  config file's unknown argument was its ValueError, a dict an AttributeError."""
  with pytest.raises(UserError, match=message):
    api.load(str(tmp_path), **arguments)


def test_an_array_refused_in_a_list_is_named_by_its_place(monkeypatch):
  """Model.predict's refusal of one array among several did not say which one."""
  model, classified = _recording_model(monkeypatch)
  crops = [np.zeros((60, 60, 3), np.uint8), np.zeros((60, 60, 3), np.float32)]
  with pytest.raises(UserError, match=r"^image 1: An image array must be uint8 .* got float32 \(60, 60, 3\)"):
    model.predict(crops)
  assert not classified


@pytest.mark.parametrize("array, conversions", [
    (np.zeros((60, 60, 3), np.float32), "floats in 0–1: (image * 255).round().astype(np.uint8)"),
    (np.zeros((60, 60), np.uint16), "16-bit: (image // 257).astype(np.uint8)"),
    (np.zeros((60, 60, 3), np.int64), "int64: scale it to 0–255 if needed, then image.astype(np.uint8)"),
    (np.zeros((3, 60, 60), np.uint8), "channels first: np.moveaxis(image, 0, -1)"),
    (np.zeros((1, 60, 60), np.float64),
     "channels first: np.moveaxis(image, 0, -1); floats in 0–1: (image * 255).round().astype(np.uint8)"),
    (np.full((60, 60, 3), 128.0, np.float32), "floats in 0–255: np.clip(image, 0, 255).round().astype(np.uint8)"),
    (np.ones((60, 60), bool), "a mask: (image * 255).astype(np.uint8)"),  # was told astype: 0 and 1, black
    (np.full((60, 60), np.nan, np.float32), "floats in 0–1: (image * 255).round().astype(np.uint8)"),  # no warning
], ids=["float", "uint16", "int64", "channels_first", "channels_first_float", "float_0_255", "bool", "nan"])
def test_an_array_that_is_no_uint8_image_is_refused_with_the_conversion_it_needs(array, conversions):
  """Every refusal gave the hint for floats in 0–1, a 16-bit or channels-first array's too; floats in 0–255 were
  told to multiply by 255 (which wraps around in uint8: garbage classified without an error)."""
  with pytest.raises(UserError, match=rf"got {array.dtype} {re.escape(str(array.shape))}: convert it "
                                      rf"\({re.escape(conversions)}\)\.$"):
    api.as_rgb(array)
  with pytest.raises(UserError, match=r"got uint8 \(60, 60, 5\): convert it\.$"):  # no conversion fits
    api.as_rgb(np.zeros((60, 60, 5), np.uint8))


@pytest.mark.parametrize("given", [b"\xff\xd8\xff\xe0", [b"\xff\xd8\xff\xe0"]], ids=["one", "in_a_list"])
def test_encoded_bytes_are_refused_with_the_way_to_pass_them(given, monkeypatch):
  """Model.predict(b"…") read the bytes as 4 images of one number each: "image 0: … got int64 ()"."""
  model = api.Model.__new__(api.Model)
  with pytest.raises(UserError, match=r"Encoded image bytes are no image here: pass the file's path, or them as a "
                                      r"file, io\.BytesIO\(data\)\.$"):
    model.predict(given)


def test_a_video_given_as_an_image_is_named_a_video_with_the_command_that_reads_it(tmp_path, monkeypatch):
  """It was "not an image PIL can identify (corrupt, or not an image at all)"."""
  model, classified = _recording_model(monkeypatch)
  _fake_detector(monkeypatch)
  video = _flat_video(str(tmp_path / "clip.avi"))
  (tmp_path / "clip.MP4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # named a video: not decoded to tell
  for path in (video, str(tmp_path / "clip.MP4")):
    for call in (lambda: model.predict([path]), lambda: model.detect_and_predict(path)):
      with pytest.raises(UserError, match=rf"^{re.escape(path)} is a video: Model\.predict and detect_and_predict "
                                          r"read images\. Pass its frames \(fer_jax\.data\.video\.frames reads "
                                          rf"them\) to detect_and_predict, or run `python -m fer_jax\.predict "
                                          rf"--input={re.escape(path)}` \(with --config, --checkpoint and --output\)"):
        call()
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(decode.UnreadableImageError, match="is not an image PIL can identify"):
    model.predict([str(tmp_path / "notes.txt")])
  with pytest.raises(decode.UnreadableImageError, match=r"missing\.mp4 cannot be opened \(No such file"):
    model.detect_and_predict(str(tmp_path / "missing.mp4"))
  assert classified == []


def test_images_not_shaped_like_face_crops_are_classified_with_one_warning_naming_detect_and_predict(
    tmp_path, monkeypatch, caplog):
  """A whole photo given to Model.predict was classified as one face without a word (the command line searches it
  for faces)."""
  model, classified = _recording_model(monkeypatch)  # RAF-DB: crops at 100×100, taken for crops up to 200 px
  Image.new("RGB", (300, 300)).save(tmp_path / "large.png")
  crop, photo, large = np.zeros((100, 90, 3), np.uint8), np.zeros((480, 640, 3), np.uint8), str(tmp_path / "large.png")
  assert len(model.predict([crop, photo, large])) == 3 == len(classified)
  warnings = [record.getMessage() for record in caplog.records if "Model.predict" in record.getMessage()]
  assert warnings == ["Model.predict: 2 of 3 images (the first: image 1, 640×480) are not shaped like face crops "
                      "(nearly square, at most 200 px a side); each is classified whole, as one face. For the faces "
                      "in photos, call detect_and_predict."]
  caplog.clear()
  model.predict([crop, Image.new("RGB", (200, 180))])
  assert "Model.predict" not in caplog.text


def test_the_detector_searches_for_faces_down_to_a_little_below_the_minimum_face_size(monkeypatch):
  """A 42 MP photo was searched down to 20-px faces when 200 px were asked for (7.7 s instead of 1.7 s)."""
  built, _ = _fake_detector(monkeypatch)
  model, _ = _recording_model(monkeypatch)
  photo = np.zeros((300, 400, 3), np.uint8)
  for min_face_size in (240, 240, api.MIN_FACE_SIZE, 0):
    model.detect_and_predict(photo, min_face_size=min_face_size)
  assert built == [200, 20, detector.CELL]  # 5/6 of it (a face just below it is reported), one detector each


@pytest.mark.parametrize("limits, message", [
    ((-5, 0.9), r"^min_face_size=-5 must be 0 or more"), ((24, 2), r"^min_score=2 must be between 0 and 1"),
    ((float("nan"), 0.9), r"^min_face_size=nan must be 0 or more"),
    ((24, 0.9, 8), r"^max_side=8 must be 0 \(the whole picture\) or at least 12 pixels")],
    ids=["size", "score", "nan", "max_side"])
def test_a_minimum_out_of_range_is_refused(limits, message, monkeypatch, tmp_path):
  """They were accepted: every face was then skipped."""
  model, _ = _recording_model(monkeypatch)
  _fake_detector(monkeypatch)
  with pytest.raises(UserError, match=message):
    model.detect_and_predict(np.zeros((60, 60, 3), np.uint8), *limits)
  with pytest.raises(UserError, match=message):
    predict.predict_inputs(model, [str(tmp_path / "any.png")], str(tmp_path), None, *limits[:2],
                           max_side=limits[2] if len(limits) > 2 else 0)


def _flat_video(path: str, frames: int = 3) -> str:
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
  for _ in range(frames):
    writer.write(np.full((48, 64, 3), 90, np.uint8))
  writer.release()
  return path


def _noise_video(path: str, fourcc: str = "mp4v", frames: int = 20) -> str:
  """Frames of noise (which a muxer of MPEG transport streams flushes, where a few flat frames leave it empty)."""
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 25.0, (64, 48))
  rng = np.random.default_rng(9)
  for _ in range(frames):
    writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
  writer.release()
  return path


def test_photos_and_videos_without_a_face_are_listed_and_the_columns_do_not_depend_on_what_is_found(
    tmp_path, monkeypatch, caplog):
  """A video without a face left no trace and no warning; a CSV lost its face columns when no face was found."""
  model, _ = _recording_model(monkeypatch, faces_found=False)
  photo, video = str(tmp_path / "flat.png"), _flat_video(str(tmp_path / "clip.avi"))
  Image.new("RGB", (640, 480), (128, 128, 128)).save(photo)
  results = predict.predict_inputs(model, [photo, video], str(tmp_path), None, 24, 0.9)
  assert results.rows == [] and results.skipped == [(photo, predict.NO_FACE), (video, predict.NO_FACE)]
  assert f"Skipping {photo}: no face found (if it is a face crop, pass --nodetect)." in caplog.text
  assert f"Skipping {video}: no face found (in any frame read at --stride=1)." in caplog.text
  out = tmp_path / "faces.csv"
  predict.write_predictions(results.rows, results.skipped, model.class_names, str(out),
                            predict.detects_faces([photo, video], None))
  with open(out) as f:
    table = list(csv.DictReader(f))
  assert list(table[0])[:len(predict.FACE_COLUMNS) + 3] == ["image", *predict.FACE_COLUMNS, "skipped", "prediction"]
  assert [(row["image"], row["skipped"], row["prediction"]) for row in table] == [
      (photo, predict.NO_FACE, ""), (video, predict.NO_FACE, "")]
  predict.write_predictions(results.rows, results.skipped, model.class_names, str(tmp_path / "faces.json"), True)
  assert json.loads((tmp_path / "faces.json").read_text())["skipped"] == [
      {"image": photo, "reason": predict.NO_FACE}, {"image": video, "reason": predict.NO_FACE}]
  assert not predict.detects_faces([photo], False) and predict.detects_faces([photo, video], False)


def test_drawings_of_inputs_that_share_a_base_name_do_not_overwrite_each_other(tmp_path, monkeypatch):
  """person.jpg and person.png were both drawn to person.png, the last one kept."""
  model, _ = _recording_model(monkeypatch, faces_found=False)
  (tmp_path / "in").mkdir()
  paths = [str(tmp_path / "in" / name) for name in ("person.jpg", "person.png")]
  for path, grey in zip(paths, (50, 200)):
    Image.new("RGB", (640, 480), (grey,) * 3).save(path)
  predict.predict_inputs(model, paths, str(tmp_path / "in"), None, 24, 0.9, annotate=str(tmp_path / "drawn"))
  assert sorted(os.listdir(tmp_path / "drawn")) == ["person.jpg.png", "person.png.png"]
  assert np.asarray(Image.open(tmp_path / "drawn" / "person.png.png"))[0, 0, 0] == 200


def _logged(caplog, run) -> list[str]:
  """The messages logged (INFO and above) while `run()` runs."""
  caplog.clear()
  with caplog.at_level(logging.INFO):
    run()
  return [record.getMessage() for record in caplog.records]


def _happy_model(monkeypatch) -> api.Model:
  model, _ = _recording_model(monkeypatch)
  monkeypatch.setattr(model, "classify", lambda crops: [api.Prediction("happiness", 0.9314, {}, {}) for _ in crops])
  return model


def test_a_few_predictions_are_logged_each_then_one_summary_names_the_absolute_output(tmp_path, monkeypatch, caplog):
  """One photo's prediction was only in the --output file; the summary read "Wrote 1 predictions to preds.csv;
  skipped 0 of 1 inputs (0 unreadable)", the path as typed."""
  model = _happy_model(monkeypatch)
  crop = str(tmp_path / "crop.png")
  Image.new("RGB", (100, 100)).save(crop)
  results = predict.predict_inputs(model, [crop], str(tmp_path), None, 24, 0.9)
  assert _logged(caplog, lambda: predict.log_results(results, 1, "/abs/out.csv", "/abs/out.csv")) == [
      f"{crop}: happiness (93.1%)", "Wrote 1 prediction to /abs/out.csv."]


def test_each_skipped_input_is_named_once_and_the_summary_counts_them(tmp_path, monkeypatch, caplog):
  """The summary listed every skipped input again after its warning."""
  model = _happy_model(monkeypatch)
  paths = [str(tmp_path / name) for name in ("a.png", "b.png", "broken.jpg", "tiny.png")]
  for path in paths[:2]:
    Image.new("RGB", (100, 100)).save(path)
  (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
  Image.new("RGB", (8, 8)).save(paths[3])
  messages = _logged(caplog, lambda: predict.log_results(
      predict.predict_inputs(model, paths, str(tmp_path), None, 24, 0.9), len(paths), "/abs/out.csv", "/abs/out.csv"))
  assert messages[-1] == ("Wrote 2 predictions to /abs/out.csv; skipped 2 of 4 inputs (1 unreadable; see the warnings "
                          "above).")
  assert [sum(path in message for message in messages) for path in paths[2:]] == [1, 1]


def test_faces_are_logged_with_their_index_and_many_rows_by_the_summary_alone(tmp_path, monkeypatch, caplog):
  """A photo's faces are told apart by their index; past FEW_ROWS rows the summary alone is logged."""
  model = _happy_model(monkeypatch)
  found = [detector.Face((0.0, 0.0, 40.0, 40.0), ((10.0, 10.0),) * 5, 0.99) for _ in range(2)]
  reason = "face smaller than the minimum size (40 < 48 px)"
  aligned = [np.zeros((100, 100, 3), np.uint8), None]
  monkeypatch.setattr(model, "faces", lambda image, *_: (found, aligned, ["", reason]))
  photo = str(tmp_path / "group.jpg")
  Image.new("RGB", (640, 480)).save(photo)
  results = predict.predict_inputs(model, [photo], str(tmp_path), None, 48, 0.9)
  assert _logged(caplog, lambda: predict.log_results(results, 1, "/abs/out.json", "/abs/out.json")) == [
      f"{photo} face 0: happiness (93.1%)", f"{photo} face 1: not classified ({reason})",
      "Wrote 1 prediction to /abs/out.json.",
      "1 face not classified, too small (< --min_face_size=48 px) or too unsure (< --min_score=0.9): the output's "
      "rows say why."]
  crops = [str(tmp_path / f"{index:02d}.png") for index in range(predict.FEW_ROWS + 1)]
  for crop in crops:
    Image.new("RGB", (100, 100)).save(crop)
  results = predict.predict_inputs(model, crops, str(tmp_path), None, 24, 0.9)
  assert _logged(caplog, lambda: predict.log_results(results, len(crops), "/abs/out.csv", "/abs/out.csv")) == [
      f"Wrote {len(crops)} predictions to /abs/out.csv."]


def _damaged_video(path: str) -> str:
  """20 frames of noise (MPEG-4 in MP4) with 2000 bytes zeroed in the middle: OpenCV fails to read frame 5, then
  reads on."""
  plain = _noise_video(path + ".plain.mp4")
  with open(plain, "rb") as f:
    data = bytearray(f.read())
  data[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
  with open(path, "wb") as f:
    f.write(data)
  os.remove(plain)
  return path


def test_a_damaged_video_is_read_past_its_bad_frames_with_one_warning(tmp_path, caplog):
  """Reading stopped at its first bad frame (5 frames of 20 read), without a word."""
  path = _damaged_video(str(tmp_path / "damaged.mp4"))
  frames, count = video.frames(path, 1)
  indices = [index for index, _, _ in frames]
  assert count == 20 and len(indices) > 10 and indices == sorted(indices)
  assert [record.getMessage() for record in caplog.records] == [
      f"{path}: {20 - len(indices)} of its 20 frames could not be read (the file is damaged or truncated); the others "
      "were read. Re-copy or re-encode it to read them all."]


def test_a_video_whose_first_frame_is_damaged_is_read_from_its_first_readable_frame_at_any_stride(tmp_path):
  """Frame 0 unreadable, a video shorter than --stride yielded no frame and was reported unreadable."""
  data = bytearray(open(_flat_video(str(tmp_path / "plain.avi"), frames=12), "rb").read())
  first_jpeg = data.index(b"\xff\xd8\xff")
  data[first_jpeg:first_jpeg + 200] = bytes(200)
  path = tmp_path / "first_damaged.avi"
  path.write_bytes(data)
  assert [index for index, _, _ in video.frames(str(path), 1)[0]][:2] == [1, 2]
  assert [index for index, _, _ in video.frames(str(path), 20)[0]] == [1]
  assert [index for index, _, _ in video.frames(str(tmp_path / "plain.avi"), 5)[0]] == [0, 5, 10]


def test_a_stop_signal_during_a_videos_last_frame_leaves_the_video_complete(tmp_path, monkeypatch):
  """The signal was checked after each frame, the last included: a video done whole was listed as interrupted."""
  model = _happy_model(monkeypatch)
  monkeypatch.setattr(model, "faces", lambda image, *_: os.kill(os.getpid(), signal.SIGINT) or ([], [], []))
  paths = [_flat_video(str(tmp_path / "one_frame.avi"), frames=1), str(tmp_path / "b.png")]
  Image.new("RGB", (100, 100)).save(paths[1])
  outer = signal.signal(signal.SIGINT, _signal_reached_the_test)
  try:
    results = predict.predict_inputs(model, paths, str(tmp_path), None, 24, 0.9)
  finally:
    signal.signal(signal.SIGINT, outer)
  assert results.cut_off == paths[1:]
  assert results.skipped == [(paths[0], predict.NO_FACE), (paths[1], "not reached: stopped by SIGINT")]


def test_a_video_whose_name_is_not_utf8_is_read_and_ffmpeg_says_nothing(tmp_path):
  """OpenCV crashed the process (SIGSEGV) opening a name with a Latin-1 'é' as its raw byte; FFmpeg printed hundreds
  of lines on a damaged video."""
  path = os.path.join(os.fsencode(tmp_path), b"clip\xe9.mp4")
  os.rename(_damaged_video(str(tmp_path / "clip.mp4")), path)
  script = ("import sys; from fer_jax.data import video; frames, count = video.frames(sys.argv[1], 1); "
            "print(count, len(list(frames)))")
  result = subprocess.run([sys.executable, "-c", script, path], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  count, read = map(int, result.stdout.split())
  assert count == 20 and read > 10
  assert f"clip\\udce9.mp4: {20 - read} of its 20 frames could not be read" in result.stderr
  assert not re.search(r"^\[", result.stderr, re.MULTILINE), result.stderr[-3000:]  # FFmpeg's "[mpeg4 @ 0x…] …"


def test_names_that_are_not_utf8_are_written_and_a_failed_write_leaves_the_previous_output(tmp_path):
  """The CSV failed after all the work (UnicodeEncodeError on '\\udce9') and was left truncated."""
  video, photo = os.fsdecode(b"clip\xe9.mp4"), os.fsdecode(b"caf\xe9.jpg")
  face = {"image": video, "frame": 0, "time": 0.0, "face": 0, "track": None, "box": [0.0, 0.0, 9.0, 9.0],
          "landmarks": [[1.0, 2.0]] * 5, "score": 0.99, "skipped": "too small"}
  for name in ("preds.csv", "preds.json"):
    predict.write_predictions([face], [(photo, f"{photo} is empty")], ("anger",), str(tmp_path / name), True)
  with open(tmp_path / "preds.csv", encoding="utf-8") as f:  # UTF-8 throughout, as every reader takes it
    table = list(csv.DictReader(f))
  assert [(row["image"], row["skipped"], row["track"]) for row in table] == [
      ("clip\\udce9.mp4", "too small", ""), ("caf\\udce9.jpg", "caf\\udce9.jpg is empty", "")]
  written = json.loads((tmp_path / "preds.json").read_text())  # JSON's escape: loaded back as the very name
  assert written["predictions"][0]["image"] == video and written["skipped"][0]["image"] == photo

  (tmp_path / "preds.csv").write_text("kept\n")
  with pytest.raises(ValueError):
    predict.write_predictions([{"image": "a.png", "prediction": "anger", "confidence": "not a number"}], [],
                              ("anger",), str(tmp_path / "preds.csv"), False)
  assert (tmp_path / "preds.csv").read_text() == "kept\n"
  assert sorted(os.listdir(tmp_path)) == ["preds.csv", "preds.json"]


def _full_disk(monkeypatch, *folders) -> None:
  """Every file written (`files.written_whole`) under one of `folders` fails with ENOSPC, the write under way."""
  written_whole = predict.files.written_whole

  @contextlib.contextmanager
  def full_disk(path, **open_kwargs):
    with written_whole(path, **open_kwargs) as f:
      yield f
      if any(os.path.realpath(path).startswith(f"{folder}{os.sep}") for folder in folders):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(predict.files, "written_whole", full_disk)


def _crops_done(monkeypatch, tmp_path, stopped: str = "") -> predict.FacePredictions:
  """Two face crops classified, or with `stopped` ("signal", "error") the first, the run stopped on the second."""
  model = _happy_model(monkeypatch)
  paths = [str(tmp_path / name) for name in ("a.png", "b.png")]
  for path in paths:
    Image.new("RGB", (100, 100)).save(path)
  batches, classify = [], model.classify

  def failing_on_the_second_batch(crops):
    batches.append(crops)
    if stopped == "error" and len(batches) > 1:
      raise RuntimeError("device broke")
    if stopped == "signal" and len(batches) == 1:  # sent as the first crop is classified: the second is not reached
      os.kill(os.getpid(), signal.SIGINT)
    return classify(crops)

  monkeypatch.setattr(model, "classify", failing_on_the_second_batch)
  monkeypatch.setattr(model.predictor, "batch_size", 1)
  return predict.predict_inputs(model, paths, str(tmp_path), None, 24, 0.9)


@pytest.mark.parametrize("stopped", ["signal", "error"])
def test_a_run_stopped_early_writes_beside_the_output_and_a_complete_run_replaces_it_and_the_partial_file(
    stopped, tmp_path, monkeypatch):
  """The partial rows of a run stopped early (Ctrl-C, an error) replaced the complete output an earlier run wrote."""
  out, partial = tmp_path / "out" / "preds.csv", tmp_path / "out" / "preds.partial.csv"
  out.parent.mkdir()
  out.write_text("an earlier run's complete output\n")
  outer = signal.signal(signal.SIGINT, _signal_reached_the_test)
  try:
    stopped_early = _crops_done(monkeypatch, tmp_path, stopped)
  finally:
    signal.signal(signal.SIGINT, outer)
  assert stopped_early.cut_off == [str(tmp_path / "b.png")]
  assert predict.write_output(stopped_early, (), str(out), False) == str(partial)
  assert out.read_text() == "an earlier run's complete output\n"
  with open(partial) as f:
    assert [row["prediction"] for row in csv.DictReader(f)] == ["happiness", ""]

  monkeypatch.undo()
  assert predict.write_output(_crops_done(monkeypatch, tmp_path), (), str(out), False) == str(out)
  with open(out) as f:
    assert [row["prediction"] for row in csv.DictReader(f)] == ["happiness", "happiness"]
  assert os.listdir(out.parent) == ["preds.csv"]


@pytest.mark.parametrize("spill_fails", [False, True], ids=["spilled", "lost"])
def test_an_output_that_cannot_be_written_spills_its_rows_to_the_temporary_folder_and_says_where(
    spill_fails, tmp_path, monkeypatch):
  """A full disk lost every row computed at the end: the message was "No space left on device: …/preds.csv"."""
  results = _crops_done(monkeypatch, tmp_path)
  out, spill_folder = tmp_path / "out" / "preds.csv", tmp_path / "tmp"
  spill_folder.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(spill_folder))
  _full_disk(monkeypatch, str(out.parent), *([str(spill_folder)] if spill_fails else []))
  spill = spill_folder / f"preds.{os.getpid()}.csv"
  with pytest.raises(UserError) as raised:
    predict.write_output(results, (), str(out), False)
  if spill_fails:
    assert str(raised.value) == (
        f"{out} could not be written (No space left on device), nor {spill} (No space left on device): the "
        "predictions are lost. Free space or choose another --output, then run again.")
    assert not os.listdir(spill_folder)
  else:
    assert str(raised.value) == (f"{out} could not be written (No space left on device); the predictions went to "
                                 f"{spill} instead. Free space or choose another --output.")
    with open(spill) as f:
      assert [row["prediction"] for row in csv.DictReader(f)] == ["happiness", "happiness"]
  assert os.listdir(out.parent) == []


def test_a_frame_whose_faces_are_all_unclassified_keeps_the_tracks():
  """It reset them, as a frame without a face does not: the face came back as a new track, its smoothing restarted."""
  followed = tracks.Tracks()

  def frame(index: int, skipped: str, anger: float) -> list[dict]:
    return [{"frame": index, "box": [10.0, 10.0, 50.0, 50.0], "skipped": skipped,
             "probabilities": {"anger": anger, "fear": 1 - anger}}]

  first, unsure, back = frame(0, "", 0.9), frame(1, "detection score below the minimum", 0.0), frame(2, "", 0.1)
  for rows in (first, unsure, back):
    followed.follow("clip.mp4", rows, 0.5, ("anger", "fear"))
  assert first[0]["track"] == back[0]["track"] == 0
  assert back[0]["probabilities"] == pytest.approx({"anger": 0.25 * 0.9 + 0.75 * 0.1, "fear": 0.25 * 0.1 + 0.75 * 0.9})


def test_every_face_row_has_a_track_none_unless_followed(tmp_path, monkeypatch):
  """A photo's faces and a video's unclassified ones had no "track" key in the JSON (the CSV: an empty cell)."""
  model, _ = _recording_model(monkeypatch)
  monkeypatch.setattr(model, "classify", lambda crops: [
      api.Prediction("anger", 1.0, {c: float(c == "anger") for c in model.class_names},
                     {c: 0.0 for c in model.class_names}) for _ in crops])
  found = [detector.Face((0.0, 0.0, 40.0, 40.0), ((10.0, 10.0),) * 5, 0.99),
           detector.Face((50.0, 0.0, 60.0, 10.0), ((55.0, 5.0),) * 5, 0.99)]
  reason = "face smaller than the minimum size (10 < 24 px)"
  monkeypatch.setattr(model, "faces", lambda image, *_: (found, [np.zeros((100, 100, 3), np.uint8), None],
                                                         ["", reason]))
  photo = str(tmp_path / "group.jpg")
  Image.new("RGB", (640, 480)).save(photo)
  video = _flat_video(str(tmp_path / "clip.avi"), frames=2)
  results = predict.predict_inputs(model, [photo, video], str(tmp_path), None, 24, 0.9)
  predict.write_predictions(results.rows, results.skipped, model.class_names, str(tmp_path / "p.json"), True)
  predict.write_predictions(results.rows, results.skipped, model.class_names, str(tmp_path / "p.csv"), True)
  tracks = [None, None, 0, None, 0, None]  # the photo's two faces, then each frame's
  written = json.loads((tmp_path / "p.json").read_text())["predictions"]
  assert [row["track"] for row in written] == tracks
  assert [row["skipped"] for row in written] == [None, reason] * 3  # a classified face's was "", not null
  with open(tmp_path / "p.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["track"] for row in rows] == ["" if track is None else str(track) for track in tracks]
  assert [row["skipped"] for row in rows] == ["", reason] * 3


def _signal_reached_the_test(signum, frame):
  del frame
  raise AssertionError(f"{signal.Signals(signum).name} was not caught")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_loop_after_the_frame_in_hand_and_lists_what_is_left(signum, tmp_path, monkeypatch):
  """SIGTERM and SIGINT ended the run at once, the inputs done lost (fer_jax.predict then writes them, exit 75)."""
  model = _happy_model(monkeypatch)
  monkeypatch.setattr(model, "faces", lambda image, *_: os.kill(os.getpid(), signum) or ([], [], []))
  paths = [str(tmp_path / "a.png"), _flat_video(str(tmp_path / "b.avi")), str(tmp_path / "c.png")]
  for path in paths[::2]:
    Image.new("RGB", (100, 100)).save(path)
  outer = {s: signal.signal(s, _signal_reached_the_test) for s in (signal.SIGTERM, signal.SIGINT)}
  try:  # the signal fails the test, not pytest, where predict_inputs does not catch it
    results = predict.predict_inputs(model, paths, str(tmp_path), None, 24, 0.9)
    assert signal.getsignal(signum) is _signal_reached_the_test  # set back
  finally:
    for s, handler in outer.items():
      signal.signal(s, handler)
  name = signal.Signals(signum).name
  assert [row["image"] for row in results.rows] == paths[:1] and results.cut_off == paths[1:]
  assert results.skipped == [(paths[1], f"interrupted at frame 1 by {name}"),
                             (paths[2], f"not reached: stopped by {name}")]


@pytest.mark.parametrize("failing", ["detector", "model", "drawing"])
def test_an_error_mid_run_keeps_the_rows_done_and_lists_the_inputs_left(failing, tmp_path, monkeypatch):
  """An error in the hours of a long folder or video (a bug, a failing device) lost every row made before it: the output
  is written at the end. Now the rows done are kept, what is left is listed, and the error is raised after. An error
  within a batch's frames (b.png's drawing) had the frames taken before it taken twice."""
  model = _happy_model(monkeypatch)
  paths = [str(tmp_path / name) for name in ("a.png", "b.png", "c.png")]
  for path in paths:
    Image.new("RGB", (640, 480)).save(path)
  calls, classify, draw_faces = [], model.classify, predict.draw.draw_faces

  def one_face(image, *_):
    calls.append(image)
    if failing == "detector" and len(calls) == 2:  # b.png's detection fails: a.png's row was classified
      raise RuntimeError("detector broke")
    return [detector.Face((0.0, 0.0, 40.0, 40.0), ((10.0, 10.0),) * 5, 0.99)], [np.zeros((100, 100, 3), np.uint8)], [""]

  def failing_classify(crops):
    if failing == "model" and len(calls) >= 2:  # the model fails on b.png's batch: its queued face is lost with it
      raise RuntimeError("device broke")
    return classify(crops)

  def failing_draw(image, rows, path):
    if "b.png" in path:  # one batch of the three photos: a.png's rows are taken, then b.png's drawing fails
      raise RuntimeError("drawing broke")
    return draw_faces(image, rows, path)

  monkeypatch.setattr(model, "faces", one_face)
  monkeypatch.setattr(model, "classify", failing_classify)
  monkeypatch.setattr(predict.draw, "draw_faces", failing_draw)
  monkeypatch.setattr(model.predictor, "batch_size", 1 if failing == "model" else 3)  # a.png queued, or flushed
  annotate = str(tmp_path / "drawn") if failing == "drawing" else ""
  results = predict.predict_inputs(model, paths, str(tmp_path), True, 24, 0.0, annotate=annotate)
  assert isinstance(results.failed, RuntimeError)
  assert [row["image"] for row in results.rows] == paths[:1]
  assert sorted(results.cut_off) == paths[1:]
  assert sorted(results.skipped) == [(path, "not done: the run failed (RuntimeError) in b.png") for path in paths[1:]]


# --- --annotate, the files a folder holds, videos without frames -------------------------------------------------


def test_drawings_of_names_over_255_bytes_are_cut_short_and_kept_apart(tmp_path, monkeypatch):
  """A photo named with 251 characters was drawn to a 255-byte-plus name: "OSError: [Errno 36] File name too long"
  once every prediction was made, and no output was written."""
  model, _ = _recording_model(monkeypatch, faces_found=False)
  (tmp_path / "in").mkdir()
  stem = "é" * 100 + "x" * 50  # 250 bytes in UTF-8
  paths = [str(tmp_path / "in" / f"{stem}{extension}") for extension in (".jpg", ".png")]
  for path in paths:
    Image.new("RGB", (640, 480)).save(path)
  results = predict.predict_inputs(model, paths, str(tmp_path / "in"), None, 24, 0.9, annotate=str(tmp_path / "drawn"))
  assert results.skipped == [(path, predict.NO_FACE) for path in paths]
  drawn = os.listdir(tmp_path / "drawn")
  assert len(set(drawn)) == 2 and all(name.startswith(stem[:100]) and name.endswith(".png") for name in drawn)
  assert all(len(name.encode("utf-8")) <= 255 for name in drawn)


def test_a_drawing_that_cannot_be_written_stops_the_drawing_with_one_warning_not_the_run(tmp_path, monkeypatch,
                                                                                          caplog):
  """With --annotate the input folder, clip.avi's frames were to be drawn into clip.avi/, a file: FileExistsError
  ended the run after every prediction was made, none written."""
  model, _ = _recording_model(monkeypatch, faces_found=False)
  crop, photo = str(tmp_path / "crop.png"), str(tmp_path / "photo.png")
  Image.new("RGB", (100, 100)).save(crop)
  Image.new("RGB", (640, 480)).save(photo)
  video = _flat_video(str(tmp_path / "clip.avi"))
  with caplog.at_level(logging.INFO):
    results = predict.predict_inputs(model, [video, crop, photo], str(tmp_path), None, 24, 0.9, annotate=str(tmp_path))
  drawing = tmp_path / "clip.avi" / "frame_000000.png"
  assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stopped drawing")] == [
      f"Stopped drawing: {drawing} cannot be written (File exists); the predictions go on. Fix --annotate={tmp_path} "
      "or pass another, then run again for the drawings."]
  assert [row["image"] for row in results.rows] == [crop] and results.rows[0]["prediction"] == "anger"
  assert results.skipped == [(video, predict.NO_FACE), (photo, predict.NO_FACE)]
  assert not os.path.exists(tmp_path / "photo.png.png")  # drawn no more


def test_an_annotate_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path):
  """It was found only when the first drawing was written, after the model had run: a traceback, no output."""
  (tmp_path / "notes.txt").write_text("a file")
  with pytest.raises(UserError, match=rf"^--annotate={re.escape(str(tmp_path))}/notes\.txt/drawn cannot be created: "
                                      r".*notes\.txt is a file, not a folder; choose another path\.$"):
    predict.check_annotate(str(tmp_path / "notes.txt" / "drawn"))
  predict.check_annotate(str(tmp_path / "new" / "drawn"))  # a folder to be made
  predict.check_annotate("")  # no --annotate


def test_an_annotate_folder_inside_the_input_folder_is_refused_before_any_work(tmp_path):
  """The next run (after a stop, as the log asks) read its drawings as photos: their faces were predicted again as
  rows of their own and drawn into drawn/drawn/."""
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "face.jpg").write_bytes(b"")
  (tmp_path / "link").symlink_to(photos)
  for annotate in (photos / "drawn", photos, tmp_path / "link" / "drawn"):
    named = re.escape(f"--annotate={annotate} is inside --input={photos}")
    with pytest.raises(UserError, match=rf"^{named}: the next run would read its drawings as photos\. Pass a folder "
                                        r"outside --input\.$"):
      predict.check_annotate(str(annotate), str(photos))
  predict.check_annotate(str(tmp_path / "photos_drawn"), str(photos))  # beside it, its name starting alike
  predict.check_annotate(str(photos / "drawn"), str(photos / "face.jpg"))  # one photo as --input
  # One photo's own folder: face.jpg.png, drawn beside it, was read as a photo by a run over the folder.
  with pytest.raises(UserError, match=rf"^--annotate={re.escape(str(photos))} is the folder of "
                                      rf"--input={re.escape(str(photos / 'face.jpg'))}: a run over that folder would "
                                      r"read its drawings as photos\. Pass another folder\.$"):
    predict.check_annotate(str(photos), str(photos / "face.jpg"))


def test_face_crops_are_not_drawn_and_one_warning_says_so(tmp_path, monkeypatch, caplog):
  """--annotate with face crops wrote nothing and said nothing."""
  model, _ = _recording_model(monkeypatch)
  crops = [str(tmp_path / f"{index}.png") for index in range(2)]
  for crop in crops:
    Image.new("RGB", (100, 100)).save(crop)
  messages = _logged(caplog, lambda: predict.predict_inputs(model, crops, str(tmp_path), None, 24, 0.9,
                                                            annotate=str(tmp_path / "drawn")))
  assert [message for message in messages if "--annotate" in message] == [
      f"--annotate draws photos and video frames, not face crops such as {crops[0]} (classified whole, they have no "
      "box to draw); pass --detect to search them for faces and draw those."]


# Each container with a codec that OpenCV's FFmpeg writes into it here.
CONTAINERS = {".wmv": "WMV2", ".flv": "FLV1", ".3gp": "mp4v", ".mpg": "PIM1", ".MPEG": "PIM1", ".ts": "mpg2",
              ".mts": "mpg2", ".m2ts": "mpg2"}


def test_the_video_containers_opencv_reads_are_read_as_videos(tmp_path):
  """A .wmv, .flv, .3gp, .mpg, .mpeg, .ts, .mts or .m2ts was left out of a folder, and called "not an image PIL can
  identify" when named."""
  videos = [_noise_video(str(tmp_path / f"clip{extension}"), fourcc, frames=10)
            for extension, fourcc in CONTAINERS.items()]
  assert inference.list_images(str(tmp_path), decode.IMAGE_SUFFIXES + video.EXTENSIONS) == sorted(videos)
  for path in videos:
    frames, _ = video.frames(path, 1)
    assert video.is_video(path) and len(list(frames)) == 10, path


def test_a_folder_unzipped_on_a_mac_is_listed_without_its_metadata_files(tmp_path, caplog):
  """predict and visualize listed macOS's `._<name>` files (AppleDouble metadata beside each photo of an archive made on
  a Mac) as photos, and warned of each as undecodable; prepare has left them out."""
  for name in ("a.jpg", "._a.jpg", "b.png", "._b.png", "._clip.mp4"):
    (tmp_path / name).write_bytes(b"")
  messages = _logged(caplog, lambda: inference.list_images(str(tmp_path), decode.IMAGE_SUFFIXES + video.EXTENSIONS))
  assert messages == [f"Left out 3 files under {tmp_path} whose extension is not read, or macOS metadata: "
                      "._* (macOS metadata) ×3."]
  assert inference.list_images(str(tmp_path)) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]


def test_the_files_a_folder_search_leaves_out_are_counted_by_extension_in_one_line(tmp_path, caplog):
  """.heic photos (or any file of another extension) were left out without a word."""
  for name in ("a.png", "b.HEIC", "c.heic", "notes.txt", "README"):
    (tmp_path / name).write_bytes(b"")
  messages = _logged(caplog, lambda: inference.list_images(str(tmp_path)))
  assert messages == [f"Left out 4 files under {tmp_path} whose extension is not read: .heic ×2, (none) ×1, "
                      ".txt ×1."]
  assert _logged(caplog, lambda: inference.list_images(str(tmp_path / "a.png"))) == []
  (tmp_path / "clip.MP4").write_bytes(b"")  # where photos alone are listed (visualize)
  messages = _logged(caplog, lambda: inference.list_images(str(tmp_path)))
  assert messages == [f"Left out 5 files under {tmp_path} whose extension is not read: .heic ×2, (none) ×1, .mp4 ×1, "
                      ".txt ×1; fer_jax.predict reads the videos."]


def test_an_unreadable_folder_is_warned_about_and_handed_to_the_caller(tmp_path, monkeypatch, caplog):
  """predict warned about it, but left it out of the output's skipped inputs and of the count."""
  (tmp_path / "locked").mkdir()
  Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
  locked, listed = str(tmp_path / "locked"), os.scandir

  def scandir(path):  # as for a user without root's bypass of permissions
    if os.fspath(path) == locked:
      raise PermissionError(errno.EACCES, "Permission denied", path)
    return listed(path)

  monkeypatch.setattr(os, "scandir", scandir)
  folders = []
  messages = _logged(caplog, lambda: inference.list_images(str(tmp_path), decode.IMAGE_SUFFIXES, folders))
  reason = f"{locked} cannot be listed (Permission denied): make it readable (chmod a+rx) or remove it."
  assert folders == [(locked, reason)] and messages == [f"Skipping unreadable folder: {reason}"]


def test_a_named_pipe_named_as_an_image_is_skipped_not_waited_on(tmp_path, caplog):
  """A FIFO called photo.jpg in an --input folder blocked predict and visualize for ever in Image.open."""
  Image.new("RGB", (48, 48)).save(tmp_path / "a.png")
  os.mkfifo(tmp_path / "pipe.jpg")
  os.symlink(tmp_path / "pipe.jpg", tmp_path / "link.png")
  unlisted = []
  messages = _logged(caplog, lambda: inference.list_images(str(tmp_path), decode.IMAGE_SUFFIXES, unlisted))
  reasons = [f"{tmp_path / name} is a named pipe, not a file: remove it or move it out of --input."
             for name in ("link.png", "pipe.jpg")]
  assert unlisted == [(str(tmp_path / "link.png"), reasons[0]), (str(tmp_path / "pipe.jpg"), reasons[1])]
  assert messages == [f"Skipping special file: {reason}" for reason in reasons]


def test_a_video_without_frames_is_named_as_one_not_as_a_video_without_faces(tmp_path, monkeypatch):
  """It was "no face found (in any frame read at --stride=2)"."""
  model, _ = _recording_model(monkeypatch, faces_found=False)
  video = _flat_video(str(tmp_path / "empty.avi"), frames=0)
  results = predict.predict_inputs(model, [video], str(tmp_path), None, 24, 0.9, stride=2)
  reason = f"{video} has no frames that can be read: re-export it (to MP4, say), or remove it."
  assert results.skipped == results.unreadable == [(video, reason)]


class _Capture:
  """OpenCV's capture of a video as a header (frame rate, frame count) and frames at given times (None: unreadable)."""

  def __init__(self, fps, count, times):
    self.fps, self.count, self.times, self.read_so_far, self.now = fps, count, list(times), 0, 0.0

  def get(self, prop):
    return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: self.count, cv2.CAP_PROP_POS_MSEC: self.now}[prop]

  def grab(self):
    if self.read_so_far >= len(self.times) or self.times[self.read_so_far] is None:
      self.read_so_far += 1
      return False
    self.now = 1000 * self.times[self.read_so_far]
    self.read_so_far += 1
    return True

  def retrieve(self):
    return True, np.zeros((4, 4, 3), np.uint8)

  def release(self):
    pass


@pytest.mark.parametrize("fps, count, times, expected_times, unread", [
    (3.33, 10, [0, .1, .2, .3, .4, 2.5, 2.6, 2.7, 2.8, 2.9], [0, .1, .2, .3, .4, 2.5, 2.6, 2.7, 2.8, 2.9], 0),
    (10, 30, [0, .1, .2, .3, .4, 2.5, 2.6, 2.7, 2.8, 2.9], [0, .1, .2, .3, .4, 2.5, 2.6, 2.7, 2.8, 2.9], 0),
    (25, 10, [0, .04, None, .12, .16], [0, .04, .12, .16], 6),  # one bad frame, then cut short of its 10 frames
])
def test_frame_times_are_the_frames_own_and_an_estimated_frame_count_is_not_taken_for_damage(
    monkeypatch, caplog, fps, count, times, expected_times, unread):
  """A phone's variable-frame-rate video had its times from index / mean frame rate (seconds off); an MKV's or MPEG-TS's
  estimated frame count was warned about as frames that "could not be read"."""
  monkeypatch.setattr(video, "_open", lambda path: (open(os.devnull, "rb"), _Capture(fps, count, times)))
  frames, _ = video.frames("clip.mkv", 1)
  assert [time for _, time, _ in frames] == pytest.approx(expected_times)
  warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
  assert warnings == ([f"clip.mkv: {unread} of its {count} frames could not be read (the file is damaged or truncated); "
                       "the others were read. Re-copy or re-encode it to read them all."] if unread else [])


def test_a_face_missed_beside_another_keeps_its_track_for_a_while():
  """A face not found (or not classified) in a frame where another face was lost its track: back a frame later, it was a
  new track and its smoothing restarted. A track missed for more than MAX_MISSED frames ends."""
  followed, names = tracks.Tracks(), ("anger", "fear")
  left, right = [0.0, 0.0, 50.0, 50.0], [200.0, 0.0, 250.0, 50.0]

  def face(frame, box, anger, skipped=""):
    return {"frame": frame, "box": box, "skipped": skipped, "probabilities": {"anger": anger, "fear": 1 - anger}}

  frames = [[face(0, left, 0.9), face(0, right, 0.1)], [face(1, right, 0.1)],
            [face(2, left, 0.0, "too small"), face(2, right, 0.1)], [face(3, left, 0.1), face(3, right, 0.1)]]
  for rows in frames:
    followed.follow("clip.mp4", rows, 0.5, names)
  assert [row["track"] for row in frames[3]] == [0, 1]
  past = 0.5 ** 3  # the past weighs 0.5 a frame: three frames since the face was last classified
  assert frames[3][0]["probabilities"]["anger"] == pytest.approx(past * 0.9 + (1 - past) * 0.1)
  for frame in range(4, 4 + tracks.Tracks.MAX_MISSED + 1):
    followed.follow("clip.mp4", [face(frame, right, 0.1)], 0.5, names)
  back = [face(frame + 1, left, 0.1), face(frame + 1, right, 0.1)]
  followed.follow("clip.mp4", back, 0.5, names)
  assert [row["track"] for row in back] == [2, 1]


def test_frames_without_a_classified_face_count_toward_a_track_s_end():
  """A frame in which no face was classified (none found, or all too small) was not counted: a face gone from a
  video for any number of frames came back on its old track, where MAX_MISSED frames end it."""
  followed, names = tracks.Tracks(), ("anger", "fear")

  def face(frame: int, skipped: str = "") -> list[dict]:
    return [{"frame": frame, "box": [0.0, 0.0, 50.0, 50.0], "skipped": skipped,
             "probabilities": {"anger": 1.0, "fear": 0.0}}]

  def gone_for(missed: int, first_frame: int) -> list[dict]:
    for frame in range(first_frame, first_frame + missed):
      followed.follow("clip.mp4", [] if frame % 2 else face(frame, "too small"), 0.5, names)
    back = face(first_frame + missed)
    followed.follow("clip.mp4", back, 0.5, names)
    return back

  followed.follow("clip.mp4", face(0), 0.5, names)
  kept = gone_for(tracks.Tracks.MAX_MISSED, 1)
  ended = gone_for(tracks.Tracks.MAX_MISSED + 1, kept[0]["frame"] + 1)
  assert (kept[0]["track"], ended[0]["track"]) == (0, 1)


def test_a_video_s_frames_without_a_face_reach_its_tracks(tmp_path, monkeypatch):
  """Frames in which no face was found were not followed: a face back after more than MAX_MISSED of them kept its
  track."""
  model, _ = _recording_model(monkeypatch)
  monkeypatch.setattr(model, "classify", lambda crops: [
      api.Prediction("anger", 1.0, {c: float(c == "anger") for c in model.class_names},
                     {c: 0.0 for c in model.class_names}) for _ in crops])
  last = tracks.Tracks.MAX_MISSED + 2  # one frame more missed than a track outlives
  searched = []

  def faces(image, *_):
    searched.append(image)
    if len(searched) - 1 not in (0, last):
      return [], [], []
    return [detector.Face((0.0, 0.0, 40.0, 40.0), ((10.0, 10.0),) * 5, 0.99)], [np.zeros((100, 100, 3), np.uint8)], [""]

  monkeypatch.setattr(model, "faces", faces)
  video = _flat_video(str(tmp_path / "clip.avi"), frames=last + 1)
  results = predict.predict_inputs(model, [video], str(tmp_path), None, 24, 0.9)
  assert [(row["frame"], row["track"]) for row in results.rows] == [(0, 0), (last, 1)]


def _smoothed_anger(stride: int, frames: int = 9) -> dict[int, float]:
  """A face's smoothed anger at each processed frame (every `stride`-th) of a video in which it turns from anger
  (frame 0) to fear (every frame after)."""
  followed, smoothed = tracks.Tracks(), {}
  for frame in range(0, frames, stride):
    anger = float(frame == 0)
    rows = [{"frame": frame, "box": [0.0, 0.0, 50.0, 50.0], "skipped": "",
             "probabilities": {"anger": anger, "fear": 1 - anger}}]
    followed.follow("clip.mp4", rows, 0.5, ("anger", "fear"))
    smoothed[frame] = rows[0]["probabilities"]["anger"]
  return smoothed


def test_smoothing_weighs_the_past_per_frame_of_the_video_whatever_the_stride():
  """The weight applied once per processed frame: at --stride=4 the face kept 0.25 of its anger at frame 8, where
  every frame processed left 0.004 of it; --smooth's span in the video grew with --stride."""
  every_frame = _smoothed_anger(1)
  assert every_frame[8] == pytest.approx(0.5 ** 8)
  for stride in (2, 4):
    smoothed = _smoothed_anger(stride)
    assert smoothed == pytest.approx({frame: every_frame[frame] for frame in smoothed})


def test_eight_bit_grey_held_in_32_bit_integers_is_read_as_it_is():
  """A grey image of mode "I" (a 32-bit TIFF, PIL's convert("I"), Image.fromarray of int32) whose samples lie in
  0–255 was taken for 16-bit grey and kept its top 8 bits: all black, no face found."""
  grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
  for image in (Image.fromarray(grey).convert("I"), Image.fromarray(grey.astype(np.int32))):
    np.testing.assert_array_equal(decode.rgb(image), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(decode.to_stored(image, (16, 16, 1))[..., 0], grey)


@pytest.mark.parametrize("box", [(-40, -23, 60, 87), (440, 4, 540, 114), (-30, 120, 70, 230)])
def test_a_label_is_drawn_whole_for_a_face_cut_by_the_photos_edge(tmp_path, box):
  """A label sat above its box's top-left corner: for a face cut by the photo's top edge (MTCNN's boxes pass the
  edges: y1 = -23 for a forehead cut off) it was drawn outside the photo, for one at the right edge cut short."""
  def label_pixels(row_box) -> int:
    image = np.full((300, 500, 3), 128, np.uint8)
    row = {"box": list(row_box), "landmarks": [], "skipped": "", "prediction": "happiness", "confidence": 0.93}
    draw.draw_faces(image, [row], str(tmp_path / "drawn.png"))
    return int(np.all(np.asarray(Image.open(tmp_path / "drawn.png")) < 40, axis=-1).sum())  # the label's black text

  assert label_pixels(box) == label_pixels((200, 100, 300, 210)) > 0


def test_photos_under_every_name_pil_gives_their_format_are_found_in_a_folder(tmp_path):
  """A folder's g.jfif and g.avif were left out as not images, though either passed alone was read."""
  avif = {"c.avif": "AVIF"} if features.check("avif") else {}  # Pillow ≥ 11.3 writes it
  names = {"a.jfif": "JPEG", "b.jpe": "JPEG", **avif}
  for name, format_name in names.items():
    Image.new("RGB", (48, 48), (90, 60, 30)).save(tmp_path / name, format=format_name)
  found = inference.list_images(str(tmp_path), decode.IMAGE_SUFFIXES)
  assert [os.path.basename(path) for path in found] == list(names)
  assert all(decode.read_file(path, (48, 48, 3)).shape == (48, 48, 3) for path in found)


def test_a_face_moving_across_the_picture_keeps_its_track_at_any_stride():
  """Faces matched on box overlap with the track's last box: a face 67 px wide moving 8 px a frame got a new track
  every processed frame at --stride=5 (40 px apart: IoU 0.24), so --smooth never smoothed. A face as far away as
  another person, or of another size, starts a track of its own."""
  names = ("anger", "fear")

  def face(frame, x, side=67.0):
    return {"frame": frame, "box": [x, 100.0, x + side, 100.0 + side], "skipped": "",
            "probabilities": {"anger": 0.5, "fear": 0.5}}

  for stride in (1, 5):
    followed, rows = tracks.Tracks(), []
    for frame in range(0, 30, stride):
      rows.append(face(frame, 8.0 * frame))
      followed.follow("clip.mp4", rows[-1:], 0.9, names)
    assert {row["track"] for row in rows} == {0}, stride
  followed = tracks.Tracks()
  first, far, larger = [face(0, 0.0)], [face(1, 200.0)], [face(2, 210.0, side=120.0)]
  for rows in (first, far, larger):
    followed.follow("clip.mp4", rows, 0.9, names)
  assert [rows[0]["track"] for rows in (first, far, larger)] == [0, 1, 2]


class _NumberedFaces:
  """A model whose photo (a uint8 array) holds its face count at [0, 0, 0] and its number at [0, 0, 1]: face i of
  photo p is classified with confidence and logit 10·p + i; `calls` counts the crops of each classify call."""
  class_names = ("anger", "fear")
  predictor = types.SimpleNamespace(batch_size=4)

  def __init__(self):
    self.calls = []

  def faces(self, image, *_):
    count = int(image[0, 0, 0])
    return ([detector.Face((10.0 * i, 0.0, 10.0 * i + 8, 8.0), ((1.0, 1.0),) * 5, 0.99) for i in range(count)],
            [np.full((2, 2, 3), 10 * int(image[0, 0, 1]) + i, np.uint8) for i in range(count)], [""] * count)

  def classify(self, crops):
    self.calls.append(len(crops))
    return [api.Prediction("anger", float(crop[0, 0, 0]), {"anger": 1.0, "fear": 0.0}, {"anger": float(crop[0, 0, 0])})
            for crop in crops]


def test_faces_are_classified_in_whole_batches_and_each_row_gets_its_own_face_s_prediction():
  """Everything queued was classified once a batch's worth was: 16 photos' 168 faces in device calls of 64, 16, 64,
  16 and 8 where 3 would do (and each new padded size compiled again)."""
  model = _NumberedFaces()
  results = predict.FacePredictions(model, 24, 0.9)
  for photo, count in enumerate((3, 3, 3, 3, 1)):
    results.add_frame(f"photo{photo}.jpg", np.full((4, 4, 3), (count, photo, 0), np.uint8), f"photo{photo}.jpg")
  results.flush()
  assert model.calls == [4, 4, 4, 1]
  assert [(row["image"], row["face"], row["confidence"]) for row in results.rows] == [
      (f"photo{photo}.jpg", face, 10.0 * photo + face) for photo, count in enumerate((3, 3, 3, 3, 1))
      for face in range(count)]


def test_an_error_while_a_frame_is_taken_leaves_each_face_its_own_prediction(monkeypatch):
  """A frame's predictions were dropped before the frame was taken: an error in between (following its tracks,
  drawing it) gave the next frame's predictions to its faces once the run's error handling flushed again."""
  results = predict.FacePredictions(_NumberedFaces(), 24, 0.9)
  follow, failures = results._tracks.follow, [RuntimeError("a drawing's disk")]  # pylint: disable=protected-access

  def failing_once(*args):
    if failures:
      raise failures.pop()
    return follow(*args)

  monkeypatch.setattr(results._tracks, "follow", failing_once)  # pylint: disable=protected-access
  add = lambda frame, count: results.add_frame(  # noqa: E731
      "clip.mp4", np.full((4, 4, 3), (count, frame, 0), np.uint8), f"f{frame}.png", frame, frame / 25)
  add(0, 3)
  with pytest.raises(RuntimeError):
    add(1, 2)  # a batch's worth: frame 0 is taken, and its tracks fail
  results.fail(["clip.mp4"], RuntimeError("a drawing's disk"))
  assert [(row["frame"], row["face"], row["logits"]["anger"]) for row in results.rows] == [
      (0, 0, 0.0), (0, 1, 1.0), (0, 2, 2.0), (1, 0, 10.0), (1, 1, 11.0)]


def _track_numbers(faces_of_frame, frames, stride: int) -> list[list[int]]:
  """Each processed frame's faces' tracks, where `faces_of_frame(frame)` gives their boxes."""
  followed, numbers = tracks.Tracks(), []
  for frame in range(0, frames, stride):
    rows = [{"frame": frame, "box": box, "skipped": "", "probabilities": {"anger": 0.5, "fear": 0.5}}
            for box in faces_of_frame(frame)]
    followed.follow("clip.mp4", rows, 0.9, ("anger", "fear"))
    numbers.append([row["track"] for row in rows])
  return numbers


def test_faces_side_by_side_keep_their_tracks_and_a_fast_or_growing_face_its_own():
  """Matched closest first to each track's last box: of two faces 1.2 box sides apart moving 0.7 sides a processed
  frame, the left one took the right one's track and the right one a new track, every frame; a face at 0.12 sides a
  frame got a new track every frame at --stride=15 (its move capped at 1.5 sides); one growing from 67 to 110 px in
  5 frames got a new one."""
  side = 67.0
  pair = lambda frame: [[x + 4.69 * frame, 100.0, x + 4.69 * frame + side, 100.0 + side] for x in (0.0, 1.2 * side)]
  assert _track_numbers(pair, 60, 10) == [[0, 1]] * 6
  crossing = lambda frame: [[8.0 * frame, 100.0, 8.0 * frame + side, 100.0 + side]]
  assert _track_numbers(crossing, 75, 15) == [[0]] * 5
  growing = lambda frame: [[100.0, 100.0, 100.0 + side + 8.6 * frame, 100.0 + side + 8.6 * frame]]
  assert _track_numbers(growing, 10, 5) == [[0]] * 2
