"""fer_jax.face.align: the least-squares similarity against OpenCV's, the crops against their
geometry (landmarks land on the template; a rotated photo gives the same aligned face), the
style each config's data set asks for, and crops of a real photo written for a person to see."""

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from fer_jax.face import align
from fer_jax.face import detector
from helpers import get_config


@pytest.fixture(scope="module")
def hopper():
  image = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
  faces = [face for face in detector.Detector()(image) if face.score > 0.9]
  assert len(faces) == 1
  return image, faces[0]


def rotation(angle_degrees: float, scale: float = 1.0) -> np.ndarray:
  angle = np.radians(angle_degrees)
  return scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_the_similarity_is_opencvs_least_squares_fit():
  rng = np.random.default_rng(0)
  source = rng.uniform(0, 100, (5, 2))
  target = source @ rotation(17, 1.6).T + [4, -9] + rng.normal(0, 2, (5, 2))
  reference, _ = cv2.estimateAffinePartial2D(source, target, method=cv2.LMEDS)  # LMEDS ends with a least-squares refit
  np.testing.assert_allclose(align.similarity_transform(source, target), reference, atol=1e-5)


def test_an_exact_similarity_is_recovered_and_a_mirror_image_is_not_fitted_by_a_reflection():
  source = np.random.default_rng(1).uniform(0, 100, (5, 2))
  matrix = align.similarity_transform(source, source @ rotation(-30, 0.5).T + [7, 3])
  np.testing.assert_allclose(matrix, np.concatenate([rotation(-30, 0.5), [[7], [3]]], axis=1), atol=1e-9)
  mirrored = align.similarity_transform(source, source * [-1, 1])
  assert np.linalg.det(mirrored[:, :2]) > 0


def test_raf_db_style_puts_the_landmarks_on_the_template(hopper):
  image, face = hopper
  side = 100
  matrix = align.similarity_transform(np.asarray(face.landmarks), align.ARCFACE_TEMPLATE * side)
  moved = cv2.transform(np.asarray(face.landmarks)[None], matrix)[0]
  assert np.max(np.abs(moved - align.ARCFACE_TEMPLATE * side)) < 0.06 * side  # five points, four degrees of freedom


def test_a_rotated_photo_gives_the_same_raf_db_crop(hopper):
  """With the landmarks rotated along, the crop is the same up to resampling; detected afresh on
  the rotated photo, they lie where the rotation took them, to a few pixels."""
  image, face = hopper
  height, width = image.shape[:2]
  turn = cv2.getRotationMatrix2D((width / 2, height / 2), 15, 1.0)
  turned = cv2.warpAffine(image, turn, (width, height), flags=cv2.INTER_LINEAR)
  turned_landmarks = cv2.transform(np.asarray(face.landmarks)[None], turn)[0]
  turned_face = detector.Face(face.box, tuple(map(tuple, turned_landmarks)), face.score)
  upright = align.aligned_rgb(image, face, align.ALIGNMENTS["rafdb"], 100).astype(float)
  from_turned = align.aligned_rgb(turned, turned_face, align.ALIGNMENTS["rafdb"], 100).astype(float)
  assert np.mean(np.abs(upright - from_turned)[10:90, 10:90]) < 6  # of 255
  detected = [f for f in detector.Detector()(turned) if f.score > 0.9]
  assert len(detected) == 1
  error = np.linalg.norm(np.asarray(detected[0].landmarks) - turned_landmarks, axis=1)
  assert np.max(error) < 0.06 * face.size


def test_box_style_is_the_square_around_the_box_with_its_margin():
  image = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
  face = detector.Face((100.0, 50.0, 140.0, 110.0), ((0.0, 0.0),) * 5, 1.0)  # 40 wide, 60 tall
  crop = align.aligned_rgb(image, face, align.Alignment("box", margin=0.1), 72)  # 60 + 2 × 6 = 72: no resizing
  np.testing.assert_array_equal(crop, image[44:116, 84:156])


@pytest.mark.parametrize("spec, style, shape", [
    ("configs/dan.py:rafdb", "similarity", (100, 100, 3)),
    ("configs/dan.py:affectnet7", "box", (224, 224, 3)),
    ("configs/lhcnet.py:fer2013", "box", (48, 48, 1)),
])
def test_each_config_gets_its_data_sets_style(hopper, spec, style, shape, tmp_path):
  from fer_jax import inference
  config = get_config(spec)
  alignment = align.alignment_for(config)
  assert alignment.style == style
  crop = align.aligned(*hopper, alignment, inference.FilePreprocessor(config).shape)
  assert crop.shape == shape and crop.dtype == np.uint8
  # FER2013's crops are grey, as the data set stores them; the eval pipeline's gray_to_rgb() copies them.
  Image.fromarray(crop.squeeze(-1) if crop.shape[-1] == 1 else crop).save(tmp_path / f"{spec.split(':')[1]}.png")  # looked at once: an acceptable face crop
