"""Host-side decoding: encoded images → uint8 arrays of one stored shape.

This is all the per-image work the host does. Everything random, and the resize to the
model's input size, runs on the device (`fer_jax.data.augment`), so batches cross to the
device as uint8 at the stored size.
"""

import dataclasses
import io

import numpy as np
from PIL import Image


def to_stored(image: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
  """RGB (3 channels) or grayscale (1), resized with PIL bilinear (antialiased) if its size differs."""
  height, width, channels = shape
  mode = "RGB" if channels == 3 else "L"
  if image.mode != mode:
    image = image.convert(mode)
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def read_file(path: str, shape: tuple[int, int, int]) -> np.ndarray:
  """An image file at the stored shape; PIL's OSError or SyntaxError if it is not a readable image."""
  with Image.open(path) as image:
    return to_stored(image, shape)


@dataclasses.dataclass(frozen=True)
class Decoder:
  """Record index → uint8 image (H, W, C); picklable, so that worker processes can run it."""
  source: object                       # TFDS data source whose "image" is the encoded bytes
  shape: tuple[int, int, int]

  def __call__(self, record: int) -> np.ndarray:
    with Image.open(io.BytesIO(self.source[int(record)]["image"])) as image:
      return to_stored(image, self.shape)

  def size_of(self, record: int) -> tuple[int, int]:
    """(height, width) of a record's image as stored in the data set."""
    with Image.open(io.BytesIO(self.source[int(record)]["image"])) as image:
      return image.height, image.width
