"""fer_jax.predict: the method's eval preprocessing, batched inference, TTA, outputs, bad images."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from fer_jax import api
from fer_jax import checkpointing
from fer_jax import inference
from fer_jax import models
from fer_jax import predict
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
  predict.write_predictions(rows, skipped, predictor.class_names, str(out))
  with open(out) as f:
    table = list(csv.DictReader(f))
  assert [os.path.basename(r["image"]) for r in table] == ["a.png", "b.jpg", "c.png"]
  assert list(table[0]) == ["image", "prediction", "confidence", *(f"p_{c}" for c in predictor.class_names),
                            *(f"logit_{c}" for c in predictor.class_names)]
  assert float(table[1]["confidence"]) == pytest.approx(expected[1].max(), abs=1e-5)


@pytest.mark.integration
def test_command_line_writes_json_and_reports_unreadable_images(config, checkpoint, faces, reference_logits, tmp_path):
  _, path = checkpoint
  out = tmp_path / "preds.json"
  result = subprocess.run(
      [sys.executable, "-m", "fer_jax.predict", "--config=configs/dan.py:synthetic", "--config.input.size=32",
       f"--checkpoint={os.path.dirname(path)}", f"--input={faces}", f"--output={out}", "--tta=none"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Skipping unreadable image" in result.stderr and "broken.jpg" in result.stderr
  assert "Wrote 3 predictions" in result.stderr and "skipped 1 unreadable of 4 inputs" in result.stderr
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
  assert result.returncode == 2 and "error: No readable image under --input=" in result.stderr


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
  stored = [model.predictor.preprocess.read(str(tmp_path / "colour.png")), model._stored(colour),
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
  assert [row["image"] for row in results.rows] == [crop] and results.photos_without_faces == [photo]
