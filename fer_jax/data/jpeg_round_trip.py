"""LHC-Net's official training images, made on the host (`config.dataset.train_jpeg_round_trip`).

The official ETL.py resizes each 48×48 grey training face to 224² with `tf.image.resize` (bilinear,
no antialiasing) in float32, copies it to three channels, floors it to uint8 and saves it with PIL
as an RGB JPEG (quality 100, subsampling 0 = 4:4:4, no other option); Keras' directory iterator
reads the file back as RGB at its own size (no resize). Its validation and test images skip all
this (docs/methods/lhcnet.md §1.2). The round trip is a pure function of the image, done here
when a training image is decoded (once per run with a decoded cache).

The resize repeats TF's CPU kernel in float32 operation for operation, since the floor turns the
last bit into a whole grey level: the device's resize (a matrix product) and a float64 one differ
from it in about 0.2 % of the floored pixels. A grey face encoded as RGB decodes with its three
channels equal, so a one-channel image stays one channel (`gray_to_rgb()` copies it on the device).
"""

import dataclasses
import io

import numpy as np
from PIL import Image

JPEG_SETTINGS = {"format": "JPEG", "quality": 100, "subsampling": 0}  # ETL.py's Image.save


def _axis_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower, upper, lerp) per output pixel: half-pixel centres, source position and fraction in float32."""
  scale = np.float32(in_size) / np.float32(out_size)
  source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  whole = np.floor(source)
  lower = np.maximum(whole, 0).astype(np.int64)
  upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
  return lower, upper, (source - whole).astype(np.float32)


def tf_bilinear_resize(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) → (size, size, C) float32, as TF's CPU ResizeBilinear (half-pixel centres) computes it:
  each output is top + (bottom − top)·y_lerp of the two rows' top_left + (top_right − top_left)·x_lerp."""
  rows_low, rows_high, y_lerp = _axis_taps(size, image.shape[0])
  cols_low, cols_high, x_lerp = _axis_taps(size, image.shape[1])
  pixels = image.astype(np.float32)
  x_lerp = x_lerp[None, :, None]

  def along_x(rows):
    left, right = pixels[rows][:, cols_low], pixels[rows][:, cols_high]
    return left + (right - left) * x_lerp

  top, bottom = along_x(rows_low), along_x(rows_high)
  return top + (bottom - top) * y_lerp[:, None, None]


def round_trip(image: np.ndarray, size: int) -> np.ndarray:
  """A uint8 (H, W, 1 or 3) image as the official training set holds it: uint8 (size, size, channels)."""
  floored = np.floor(tf_bilinear_resize(image, size)).astype(np.uint8)
  rgb = np.broadcast_to(floored, (size, size, 3))
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, **JPEG_SETTINGS)
  with Image.open(buffer) as decoded:
    pixels = np.asarray(decoded.convert("RGB"))
  return pixels[..., :image.shape[-1]]


@dataclasses.dataclass(frozen=True)
class RoundTripDecoder:
  """A `decode.Decoder` whose images then take the round trip to `size`²; picklable, for the worker processes."""
  decoder: object
  size: int

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.size, self.size, self.decoder.shape[-1])

  def __call__(self, record: int) -> np.ndarray:
    return round_trip(self.decoder(record), self.size)
