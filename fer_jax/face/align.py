"""Face crops made the way each data set's images were made, from a detected box and landmarks.

  similarity  RAF-DB: the rotation, uniform scale and shift that best map the five landmarks onto
              a canonical five-point template (least squares, Umeyama 1991), then a warp to the
              data set's side. The template is the widely used 112×112 one of ArcFace (Deng et al.
              2019) scaled to that side: RAF-DB's own template is not published.
  box         AffectNet, FER2013, FERPlus, SFEW and others: the square around the detected box,
              grown by a margin on every side, cropped and resized.
Every crop is then brought to the data set's stored image (`fer_jax.data.decode.to_stored`; FER2013's
and FERPlus' are 48×48 grey, which the eval pipeline's `gray_to_rgb()` copies to LHC-Net's 3 channels;
the channels are those the model's meta record gives, `fer_jax.inference.FilePreprocessor`). The
margins are our judgement from crops of real photos (the data sets do not publish theirs): edit
ALIGNMENTS to match how your training crops were made.
"""

import dataclasses

import cv2
import numpy as np
from PIL import Image

from fer_jax.data import decode
from fer_jax.face import detector

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], np.float64) / 112.0  # as fractions of the side


@dataclasses.dataclass(frozen=True)
class Alignment:
  style: str  # "similarity" or "box"
  margin: float = 0.0  # box: added on every side, as a fraction of the box side


# By the first part of config.dataset.name ("rafdb/aligned224" → "rafdb"); others: BOX.
BOX = Alignment("box", margin=0.1)
ALIGNMENTS = {"rafdb": Alignment("similarity"), "fer2013": Alignment("box", margin=0.15),
              "ferplus": Alignment("box", margin=0.15)}


def alignment_for(config) -> Alignment:
  return ALIGNMENTS.get(config.dataset.name.split("/")[0], BOX)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """The 2×3 matrix [sR | t] minimising Σ‖sR·source_i + t − target_i‖² (R a rotation, no reflection)."""
  source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
  source_centred, target_centred = source - source_mean, target - target_mean
  covariance = target_centred.T @ source_centred / len(source)
  u, singular, vt = np.linalg.svd(covariance)
  sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
  rotation = u @ sign @ vt
  scale = np.trace(np.diag(singular) @ sign) / source_centred.var(axis=0).sum()
  translation = target_mean - scale * rotation @ source_mean
  return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def aligned_rgb(image: np.ndarray, face: detector.Face, alignment: Alignment, side: int) -> np.ndarray:
  """The face of an RGB uint8 photo as an RGB uint8 side×side crop."""
  if alignment.style == "similarity":
    matrix = similarity_transform(np.asarray(face.landmarks, np.float64), ARCFACE_TEMPLATE * side)
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
  box = detector.squared(np.asarray([face.box], np.float64))[0]
  grow = alignment.margin * (box[2] - box[0])
  return detector.crop(image, box + np.array([-grow, -grow, grow, grow]), side)


def aligned(image: np.ndarray, face: detector.Face, alignment: Alignment, shape: tuple[int, int, int]) -> np.ndarray:
  """The face as the model's stored image: uint8 at `shape` (height = width, 1 (grey) or 3 channels)."""
  return decode.to_stored(Image.fromarray(aligned_rgb(image, face, alignment, shape[0])), shape)
