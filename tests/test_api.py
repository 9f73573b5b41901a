"""fer_jax.load and the API behind `python -m fer_jax.predict`: a workdir, a checkpoint with or
without its config, and an export folder; face crops against direct model calls; faces in real
photos and in a video (stride, time, face tracks, smoothing, annotation), typed results."""

import csv
import gc
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from matplotlib import cbook
from PIL import Image
import skimage.data

import fer_jax
from fer_jax import api
from fer_jax import checkpointing
from fer_jax import export
from fer_jax import inference
from fer_jax import models
from fer_jax import predict
from fer_jax.data import decode
from fer_jax.errors import UserError
from fer_jax.face import align
from fer_jax.face import detector
from helpers import ROOT, assert_user_error, cpu_devices_env, get_config, random_variables

HOPPER = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
HOPPER_FACE = (178, 110, 351, 330)  # the mtcnn package's box (see test_face_detector.py)


@pytest.fixture(scope="module")
def config():
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  return config


@pytest.fixture(scope="module")
def variables(config):
  return random_variables(config)


@pytest.fixture(scope="module")
def workdir(config, variables, tmp_path_factory):
  """A training workdir's layout: workdir/checkpoints/0."""
  folder = tmp_path_factory.mktemp("workdir")
  checkpointing.save_model(str(folder / "checkpoints"), variables, config)
  return folder


@pytest.fixture(scope="module")
def model(workdir):
  return fer_jax.load(str(workdir), batch_size=1)  # one compiled step for every test


def reference_probabilities(config, variables, images) -> np.ndarray:
  """Softmax of the model called directly on the eval pipeline of uint8 images at the stored size."""
  preprocess = inference.FilePreprocessor(config)
  apply = jax.jit(lambda v, x: models.build_model(config).apply(v, preprocess(x), train=False)["logits"])
  return np.asarray(jax.nn.softmax(apply(variables, np.stack(images))))


def crops(config):
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]


@pytest.mark.integration  # compiles the model (and the detector)
def test_a_workdir_loads_without_a_config_and_predicts_crops_like_the_model(model, config, variables):
  assert model.class_names == ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
  images = crops(config)
  predictions = model.predict(images)
  assert all(isinstance(p, api.Prediction) for p in predictions)
  got = np.array([[p.probabilities[c] for c in model.class_names] for p in predictions])
  np.testing.assert_allclose(got, reference_probabilities(config, variables, images), atol=1e-5)
  assert [p.label for p in predictions] == [model.class_names[i] for i in got.argmax(axis=1)]


@pytest.mark.integration  # compiles the model (and the detector)
@pytest.mark.parametrize("batch_size", [None, 4], ids=["any_batch", "fixed_batch"])
def test_an_export_folder_loads_and_predicts_as_its_checkpoint(model, config, variables, batch_size, tmp_path):
  folder = tmp_path / "exported"
  export.export(config, jax.device_get(variables), str(folder), batch_size, platforms=("cpu",))
  exported = fer_jax.load(str(folder), batch_size=8)  # a fixed batch of 4 pads 2 crops to 4
  assert exported.class_names == model.class_names
  images = crops(config)
  got = np.array([[p.probabilities[c] for c in model.class_names] for p in exported.predict(images)])
  np.testing.assert_allclose(got, reference_probabilities(config, variables, images), atol=1e-5)


@pytest.mark.integration  # compiles the model
def test_an_export_predicts_with_its_config_s_test_time_augmentation_unless_told_otherwise(config, variables, workdir,
                                                                                         tmp_path):
  """As a checkpoint does: LHC-Net's configs evaluate with lhc62, and its export must not silently drop it."""
  flipped = config.copy_and_resolve_references()
  flipped.eval.tta = "flip"
  export.export(flipped, jax.device_get(variables), str(tmp_path / "exported"), None, platforms=("cpu",))
  assert json.loads((tmp_path / "exported" / "model.json").read_text())["tta"] == "flip"
  exported = fer_jax.load(str(tmp_path / "exported"), batch_size=2)
  assert exported.predictor.tta_name == "flip"
  assert fer_jax.load(str(tmp_path / "exported"), tta="none").predictor.tta_name == "none"
  images = crops(config)
  as_checkpoint = fer_jax.load(str(workdir), tta="flip", batch_size=2).predict(images)
  got = [[p.probabilities[c] for c in exported.class_names] for p in exported.predict(images)]
  want = [[p.probabilities[c] for c in exported.class_names] for p in as_checkpoint]
  plain = fer_jax.load(str(workdir), batch_size=2).predict(images)
  unflipped = [[p.probabilities[c] for c in exported.class_names] for p in plain]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert np.abs(np.array(got) - np.array(unflipped)).max() > 1e-5  # the flipped view changes them (by 3e-5 here)


def test_an_onnx_export_and_a_lone_crop_are_refused_with_what_to_do_instead(model, tmp_path):
  for name in (export.METADATA, export.ONNX):
    (tmp_path / name).write_text("{}")
  with pytest.raises(UserError, match=r"is an ONNX export: run it in ONNX Runtime .* without --format=onnx"):
    fer_jax.load(str(tmp_path))
  with pytest.raises(TypeError, match="takes a list of face crops"):  # a path's characters were read as paths
    model.predict(str(tmp_path / "face.png"))


def test_a_checkpoint_without_a_meta_record_is_loaded_only_with_its_config(workdir, tmp_path):
  shutil.copytree(workdir, tmp_path / "workdir")
  shutil.rmtree(tmp_path / "workdir" / "checkpoints" / "0" / "meta")
  with pytest.raises(UserError, match=rf"^The checkpoint at {tmp_path / 'workdir'} has no meta record to rebuild its "
                                      r"config from: pass its config \(fer_jax\.load\(path, config=\.\.\.\), or "
                                      r"--config\)\.$"):
    fer_jax.load(str(tmp_path / "workdir"))


def test_crops_and_photos_are_told_apart_by_shape_and_size(model):
  # The model decodes to 32 px: crops are nearly square and at most max(2 × 32, 128) px.
  assert model.is_face_crop(48, 48) and model.is_face_crop(100, 80) and model.is_face_crop(128, 128)
  assert not model.is_face_crop(129, 129) and not model.is_face_crop(512, 600) and not model.is_face_crop(120, 60)


@pytest.mark.integration  # compiles the model (and the detector)
def test_a_photos_face_is_found_aligned_and_classified(model):
  results = model.detect_and_predict(HOPPER)
  assert len(results) == 1 and isinstance(results[0], api.FaceResult)
  face = results[0]
  assert face.index == 0 and not face.skipped and face.score > 0.9
  assert detector.iou_matrix(np.array([face.box]), np.array([HOPPER_FACE], float))[0, 0] > 0.98
  image = np.asarray(Image.open(HOPPER).convert("RGB"))
  crop = align.aligned(image, detector.Face(face.box, face.landmarks, face.score), model.alignment,
                       model.predictor.preprocess.shape)
  assert face.prediction == model.predict([crop])[0]
  assert sum(face.prediction.probabilities.values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.integration  # compiles the detector at two sizes
def test_a_large_photo_is_searched_reduced_to_max_side_and_its_face_aligned_from_the_full_photo(model, monkeypatch):
  """A 24 MP photo took 5-10 s of detection on two cores (a 16-level pyramid): max_side searches
  a reduced copy, and gives the face in the photo's own pixels."""
  photo = Image.open(HOPPER).convert("RGB")
  large = np.asarray(photo.resize((photo.width * 4, photo.height * 4), Image.BILINEAR))
  searched = []
  detect = model.detector_for

  def recording(min_face_size):
    found = detect(min_face_size)
    return lambda image: searched.append(image.shape) or found(image)

  monkeypatch.setattr(model, "detector_for", recording)
  found, crops, reasons = model.faces(large, max_side=600)
  assert searched == [(600, 512, 3)] and reasons == [""]
  expected = np.array([HOPPER_FACE], float) * 4
  assert detector.iou_matrix(np.array([found[0].box]), expected)[0, 0] > 0.9  # 0.94: the photo enlarged, reduced
  np.testing.assert_array_equal(crops[0], align.aligned(large, found[0], model.alignment,
                                                         model.predictor.preprocess.shape))
  with pytest.raises(UserError, match=r"^max_side=8 must be 0 \(the whole picture\) or at least 12 pixels"):
    model.faces(large, max_side=8)


@pytest.mark.integration  # compiles the model (and the detector)
def test_a_face_below_the_minimum_score_is_returned_with_the_reason(model):
  astronaut = skimage.data.astronaut()
  results = model.detect_and_predict(astronaut, min_score=0.9995)  # MTCNN scores her face 0.9991
  assert len(results) == 1 and results[0].prediction is None
  assert "detection score below the minimum (0.999 < 0.9995)" == results[0].skipped
  assert [r.skipped for r in model.detect_and_predict(astronaut)] == [""]
  (too_small,) = model.detect_and_predict(astronaut, min_face_size=100)  # her face: ~85 px wide
  side = min(too_small.box[2] - too_small.box[0], too_small.box[3] - too_small.box[1])
  assert too_small.prediction is None
  assert too_small.skipped == f"face smaller than the minimum size ({side:.0f} < 100 px)"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """Six 25 fps frames of Grace Hopper's photo sliding right by 4 px a frame (MJPG in AVI)."""
  path = str(tmp_path_factory.mktemp("video") / "clip.avi")
  image = cv2.cvtColor(np.asarray(Image.open(HOPPER).convert("RGB").resize((256, 300))), cv2.COLOR_RGB2BGR)
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 300))
  for frame in range(6):
    canvas = np.full((300, 320, 3), 90, np.uint8)
    canvas[:, 4 * frame:4 * frame + 256] = image
    writer.write(canvas)
  writer.release()
  return path


@pytest.mark.integration  # compiles the model (and the detector)
def test_a_video_is_read_every_stride_frames_tracked_smoothed_and_drawn(model, video, tmp_path):
  root = os.path.dirname(video)
  plain = predict.predict_inputs(model, [video], root, None, 24, 0.9, stride=2)
  smoothed = predict.predict_inputs(model, [video], root, None, 24, 0.9, stride=2, smooth=0.5,
                                    annotate=str(tmp_path / "drawn"))
  assert [row["time"] for row in plain.rows] == pytest.approx([0, 2 / 25, 4 / 25])
  assert [row["frame"] for row in plain.rows] == [0, 2, 4]  # the drawings' names: a row joins its drawing
  assert [row["track"] for row in plain.rows] == [row["track"] for row in smoothed.rows] == [0, 0, 0]
  raw = np.array([[row["probabilities"][c] for c in model.class_names] for row in plain.rows])
  expected, past = [raw[0]], 0.5 ** 2  # --smooth weighs the past per frame of the video: 2 frames a step
  for now in raw[1:]:
    expected.append(past * expected[-1] + (1 - past) * now)
  got = np.array([[row["probabilities"][c] for c in model.class_names] for row in smoothed.rows])
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert sorted(os.listdir(tmp_path / "drawn" / "clip.avi")) == [
      "frame_000000.png", "frame_000002.png", "frame_000004.png"]

  output = tmp_path / "faces.csv"
  predict.write_predictions(smoothed.rows, smoothed.skipped, model.class_names, str(output), face_columns=True)
  with open(output) as f:
    table = list(csv.DictReader(f))
  assert [row["time"] for row in table] == ["0.000", "0.080", "0.160"]
  assert [row["frame"] for row in table] == ["0", "2", "4"]
  assert [float(row["x1"]) for row in table] == pytest.approx([row["box"][0] for row in smoothed.rows], abs=0.05)
  centre_x = [np.mean([float(row[f"{point}_x"]) for point in predict.LANDMARKS]) for row in table]
  assert centre_x[2] - centre_x[0] == pytest.approx(16, abs=3)  # the face moved 4 px a frame


@pytest.mark.integration  # compiles the model (and the detector)
def test_nodetect_reads_images_as_crops_and_still_finds_the_faces_of_a_video(model, video, tmp_path):
  """A video's frames are no face crops: it was skipped as "not an image" under --nodetect. A photo in
  which no face is found has no row; it is listed as skipped, with the reason."""
  flat = tmp_path / "flat.png"
  Image.new("RGB", (300, 300), (128, 128, 128)).save(flat)
  crop = tmp_path / "crop.png"
  Image.fromarray(crops(model.config)[0]).save(crop)
  results = predict.predict_inputs(model, [video, str(crop)], os.path.dirname(video), False, 24, 0.9, stride=3)
  assert results.skipped == [] and [row["image"] for row in results.rows] == [video, video, str(crop)]
  assert [row["face"] for row in results.rows[:2]] == [0, 0] and "face" not in results.rows[2]
  photos = predict.predict_inputs(model, [str(flat)], str(tmp_path), True, 24, 0.9)
  assert photos.rows == [] and photos.skipped == [(str(flat), predict.NO_FACE)]


# EXIF orientation → the turn that shows the stored pixels (rows, columns) upright, as the EXIF standard draws it.
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
           8: lambda a: np.rot90(a)}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_photos_are_read_upright_as_their_exif_orientation_says(orientation, tmp_path):
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = tmp_path / f"oriented_{orientation}.jpg"
  Image.open(HOPPER).convert("RGB").resize((64, 75)).save(path, exif=exif)
  stored = np.asarray(Image.open(path).convert("RGB"))  # PIL decodes a JPEG as stored, not turned
  with decode.opened(str(path)) as image:
    np.testing.assert_array_equal(decode.rgb(image), UPRIGHT[orientation](stored))


@pytest.mark.integration  # a subprocess on two CPU devices
def test_a_fixed_batch_export_predicts_on_two_devices_as_on_one(config, variables, tmp_path):
  """A program of one batch size (3, not a multiple of the 2 devices) runs on one device, in steps of
  at most 3 crops, padded to 3 (5 crops: 3, then 2)."""
  folder = tmp_path / "exported"
  export.export(config, jax.device_get(variables), str(folder), 3, platforms=("cpu",))
  images = np.random.default_rng(5).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  np.save(tmp_path / "crops.npy", images)
  script = ("import json, sys, jax, numpy as np, fer_jax; model = fer_jax.load(sys.argv[1], batch_size=8); "
            "print(json.dumps([jax.device_count(), model.predictor.batch_size, "
            "[[p.probabilities[c] for c in model.class_names] for p in model.predict(list(np.load(sys.argv[2])))]]))")
  result = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "crops.npy")], cwd=ROOT,
                          env=cpu_devices_env(2), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  devices, batch_size, got = json.loads(result.stdout.strip().splitlines()[-1])
  assert devices == 2 and batch_size == 3
  one_device = fer_jax.load(str(folder), batch_size=8)
  want = [[p.probabilities[c] for c in one_device.class_names] for p in one_device.predict(list(images))]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_and_an_export_record_their_data_set_for_loading_without_a_config(variables, tmp_path):
  """The data set picks the crop style, the stored size and grey decoding (FER2013's crops are
  boxes, 48×48 grey): fer_jax.load without a config reads it from the meta record or model.json."""
  grey = get_config("configs/dan.py:synthetic")
  grey.input.size = 32
  grey.dataset.update(name="fer2013", image_size=48)
  grey.input.eval_pp = "gray_to_rgb()|" + grey.input.eval_pp
  checkpointing.save_model(str(tmp_path / "checkpoints"), variables, grey)
  loaded = fer_jax.load(str(tmp_path), batch_size=1)
  assert (loaded.config.dataset.name, loaded.alignment.style) == ("fer2013", "box")
  assert loaded.predictor.preprocess.shape == (48, 48, 1)  # grey
  assert export.metadata(grey, None, {})["dataset"] == {"name": "fer2013", "image_size": 48}


@pytest.fixture(scope="module")
def exported(config, variables, tmp_path_factory):
  """An export of the DAN model, read only."""
  folder = tmp_path_factory.mktemp("exported") / "dan"
  export.export(config, jax.device_get(variables), str(folder), None, platforms=("cpu",))
  return folder


def _changed(config, **fields):
  changed = config.copy_and_resolve_references()
  for key, value in fields.items():
    section, name = key.split("__")
    changed[section][name] = value
  return changed


@pytest.mark.parametrize("fields, message", [
    ({}, r"holds a dan model with 7 classes .*, but the config builds scan_cci with 7: pass the config it was "
         r"trained or converted with \(configs/dan\.py:<dataset>\)\.$"),
    ({"dataset__class_order": "rafdb"}, r"predicts the classes \(anger, .*\) of class order 'fer2013' but the config's "
                                        r"class order gives \(surprise, .*\): pass the config it was trained or "
                                        r"converted with, or set config\.dataset\.class_order = 'fer2013'\.$"),
    ({"input__size": 64},
     r"was trained on inputs of size 32 but the config gives size 64: set config\.input\.size = 32 as it was"),
], ids=["method", "class_order", "input_size"])
def test_an_export_of_another_model_than_the_config_s_is_refused(exported, config, fields, message):
  """`predict --config=configs/scan_cci.py:… --checkpoint=<a DAN export>` ran DAN. The fix is what a Python caller
  changes in its config (it was told "pass --config.input.size=32")."""
  given = _changed(get_config("configs/scan_cci.py:synthetic") if not fields else config, **fields)
  given.input.size = fields.get("input__size", 32)
  with pytest.raises(checkpointing.CheckpointError, match=rf"^The export {exported} {message}"):
    fer_jax.load(str(exported), config=given)


def test_a_checkpoint_of_another_input_size_names_the_python_change_and_predict_the_flag(workdir, exported, config,
                                                                                        tmp_path):
  """fer_jax.load's caller was told "pass --config.input.size=32"; predict, a command over the same API, keeps it."""
  with pytest.raises(checkpointing.CheckpointError, match=r"gives size 64: set config\.input\.size = 32 as it was"):
    fer_jax.load(str(workdir), config=_changed(config, input__size=64))
  Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
  result = subprocess.run([sys.executable, "-m", "fer_jax.predict", "--config=configs/dan.py:synthetic",
                           "--config.input.size=64", f"--checkpoint={exported}", f"--input={tmp_path / 'face.png'}",
                           f"--output={tmp_path / 'preds.csv'}"], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=600)
  assert_user_error(result, "gives size 64: pass --config.input.size=32 as it was trained or converted with.")


def test_a_config_file_is_taken_as_a_path_object_too(workdir):
  """config=pathlib.Path(...) failed with an AttributeError; here the file's config is read and checked against the
  checkpoint's record (its input size 72, the checkpoint's 32)."""
  with pytest.raises(checkpointing.CheckpointError, match=r"gives size 72: set config\.input\.size = 32 as it was"):
    fer_jax.load(str(workdir), config=pathlib.Path("configs/dan.py:synthetic"))


@pytest.mark.parametrize("name", ["rafdb_epoch21_acc0.897_bacc0.8275.pth", "model_best.pth.tar"])
def test_a_file_of_the_official_code_is_named_with_the_command_that_converts_it(name, tmp_path):
  """It was "No checkpoint found", as for predict --checkpoint=FILE."""
  (tmp_path / name).write_bytes(b"PK")
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"^{tmp_path / name} is a checkpoint of the official code \(or a pretrained backbone\), "
                           rf"not converted: run `python -m fer_jax\.convert --config=configs/<method>\.py:<dataset> "
                           rf"--checkpoint={tmp_path / name} --workdir=OUT` with the config of the model it holds, "
                           r"then pass OUT instead\.$"):
    fer_jax.load(str(tmp_path / name), config="configs/dan.py:synthetic")


def test_the_config_gives_an_export_its_test_time_augmentation_and_what_old_records_lack(exported, config, tmp_path):
  assert fer_jax.load(str(exported), config=_changed(config, eval__tta="flip")).predictor.tta_name == "flip"
  assert fer_jax.load(str(exported), config=_changed(config, eval__tta="flip"), tta="none").predictor.tta_name == "none"
  old = tmp_path / "old"  # written before 2026-12-03: no "dataset" in model.json
  shutil.copytree(exported, old)
  info = json.loads((old / export.METADATA).read_text())
  del info["dataset"]
  (old / export.METADATA).write_text(json.dumps(info))
  rafdb = _changed(config, dataset__name="rafdb", dataset__image_size=48)
  loaded = fer_jax.load(str(old), config=rafdb)
  assert (loaded.config.dataset.name, loaded.alignment.style, loaded.predictor.preprocess.shape) == (
      "rafdb", "similarity", (48, 48, 3))
  assert fer_jax.load(str(exported), config=rafdb).config.dataset.name == config.dataset.name  # recorded: kept


def test_a_checkpoint_loads_without_a_config_with_the_test_time_augmentation_it_recorded(config, variables, tmp_path):
  """As an export does (LHC-Net's configs evaluate with lhc62); checkpoints from before it was recorded: none."""
  checkpointing.save_model(str(tmp_path), variables, _changed(config, eval__tta="lhc62"))
  assert fer_jax.load(str(tmp_path)).predictor.tta_name == "lhc62"
  assert fer_jax.load(str(tmp_path), config=config).predictor.tta_name == "none"  # the config's
  meta_file = tmp_path / "0" / checkpointing.META_FILE
  meta = json.loads(meta_file.read_text())
  del meta["tta"]
  meta_file.write_text(json.dumps(meta))
  assert fer_jax.load(str(tmp_path)).predictor.tta_name == "none"


def test_a_loaded_model_s_config_names_the_test_time_augmentation_it_runs(workdir, exported, config):
  """fer_jax.load(..., tta="flip") ran flip while its config said eval.tta "none"."""
  for path in (workdir, exported):
    model = fer_jax.load(str(path), tta="flip")
    assert model.predictor.tta_name == model.config.eval.tta == "flip"
  given = config.copy_and_resolve_references()
  for path in (workdir, exported):
    assert fer_jax.load(str(path), config=given, tta="flip").config.eval.tta == "flip"
  assert given.eval.tta == "none"  # the caller's config is not changed


def _truncate(path: pathlib.Path) -> None:
  os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage, message", [
    (lambda folder: _truncate(folder / export.STABLEHLO), r"{folder}/model\.stablehlo \(.*\): it is damaged"),
    (lambda folder: (folder / export.METADATA).write_text("{"), r"{folder}/model\.json \(Expecting .*\): it is"),
    (lambda folder: (folder / export.METADATA).write_text("{}"), r"{folder}/model\.json \(no method, .*\): it is"),
    (lambda folder: [_truncate(path) for path in (folder / export.VARIABLES).glob("**/d/*")],
     r"{folder}/variables \(OUT_OF_RANGE: .*\): it is damaged"),
], ids=["program", "record", "record_fields", "variables"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's failed read, collected late
def test_a_damaged_export_is_named_with_the_fix(exported, damage, message, tmp_path):
  folder = tmp_path / "damaged"
  shutil.copytree(exported, folder)
  damage(folder)
  fix = r".* export the model again \(`python -m fer_jax\.export`\)\.$"
  with pytest.raises(checkpointing.CheckpointError, match="^Cannot read " + message.format(folder=folder) + fix):
    fer_jax.load(str(folder))
  gc.collect()  # here, not during the next test


@pytest.mark.parametrize("batch_size", [-3, 0, 2.0, "2", True, None])
def test_a_model_json_batch_size_other_than_symbolic_or_a_whole_number_from_1_is_named(exported, batch_size,
                                                                                        tmp_path):
  """Each was taken at load (a string or a float as "any batch", true as 1) and failed at the first predict with
  jax.export's shape mismatch, or a TypeError from jnp.pad for a negative one."""
  folder = tmp_path / "edited"
  shutil.copytree(exported, folder)
  info = json.loads((folder / export.METADATA).read_text())
  (folder / export.METADATA).write_text(json.dumps({**info, "batch_size": batch_size}))
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(
      f"Cannot read {folder}/model.json (batch_size={json.dumps(batch_size)} is neither \"symbolic\" nor a whole "
      "number from 1): it is damaged or incomplete; export the model again (`python -m fer_jax.export`).")):
    fer_jax.load(str(folder))


def test_a_model_json_batch_size_the_program_does_not_take_is_named(exported, tmp_path):
  folder = tmp_path / "edited"
  shutil.copytree(exported, folder)
  info = json.loads((folder / export.METADATA).read_text())
  (folder / export.METADATA).write_text(json.dumps({**info, "batch_size": 4}))
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(
      f"{folder}/model.json says batch_size=4 but its model.stablehlo takes batch_size=\"symbolic\": they do not "
      "match")):
    fer_jax.load(str(folder))


def test_an_export_for_other_platforms_is_refused_with_the_platforms_to_export_for(config, variables, tmp_path):
  export.export(config, jax.device_get(variables), str(tmp_path), None, platforms=("tpu",))
  with pytest.raises(UserError, match=rf"^{tmp_path}/model\.stablehlo was exported for tpu only, not for this "
                                      r"machine's cpu: export the model again with --platforms=tpu,cpu\.$"):
    fer_jax.load(str(tmp_path))


def test_an_export_reports_the_dtype_it_computes_in(exported):
  """"auto" resolved where it was exported (float32 on this CPU) is what the program computes in."""
  assert json.loads((exported / export.METADATA).read_text())["compute_dtype"] == "float32"
  assert fer_jax.load(str(exported)).config.model.dtype == "float32"


def test_an_export_whose_variables_are_not_its_programs_is_refused_at_load(exported, variables, tmp_path):
  """variables/ of another export (a classifier of 8 classes) loaded, and the first prediction failed inside JAX with
  a traceback ("Shape mismatch for args[0]['params']['fc']['bias']")."""
  folder = tmp_path / "mixed"
  shutil.copytree(exported, folder, ignore=shutil.ignore_patterns(export.VARIABLES))
  other = jax.device_get(variables)
  other["params"]["fc"] = {"kernel": np.zeros((512, 8), np.float32), "bias": np.zeros(8, np.float32)}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(str(folder / export.VARIABLES), other)
  checkpointer.wait_until_finished()
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(
      f"{folder}/variables does not hold the variables model.stablehlo takes (['params']['fc']['bias']: float32[8], "
      "the program takes float32[7]; ['params']['fc']['kernel']: float32[512, 8], the program takes float32[512, 7]): "
      "the export folder mixes two exports. Export the model again (`python -m fer_jax.export`).")):
    fer_jax.load(str(folder))
