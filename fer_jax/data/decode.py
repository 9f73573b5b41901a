"""Host-side decoding: encoded images → uint8 arrays of one stored shape.

This is all the per-image work the host does (but for the JPEG round trip of LHC-Net's training
images, `fer_jax.data.jpeg_round_trip`). Everything random, and the resize to the
model's input size, runs on the device (`fer_jax.data.augment`), so batches cross to the
device as uint8 at the stored size.

`opened`, and `read_file` through it (images the user names: predict, visualize,
`fer_jax.load`), refuse an image whose header claims more than `MAX_IMAGE_PIXELS` before decoding it,
turn every way a file can fail to decode into an `UnreadableImageError` that names the file and the
fix, and give the image upright (its EXIF orientation applied, as photo viewers show it). A data set's
images (`Decoder`) are decoded as their pixels lie in the file, as `fer_jax.data.prepare` stores them.
"""

import contextlib
import dataclasses
import errno
import io
import os
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from fer_jax.errors import UserError

# The image files fer_jax reads from a folder (prepare's class folders, predict, visualize): formats PIL decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jpe", ".jfif",
                  ".avif")


def is_image_name(name: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
  """A file name with one of `suffixes`, but not macOS's `._<name>` metadata (which unzipping an archive made on a Mac
  leaves beside each file)."""
  return name.lower().endswith(suffixes) and not name.startswith("._")


# 8000×8000 (about 190 MB as RGB): far above any face photo, far below running out of memory.
# Below PIL's own warning threshold, so PIL never warns about an image this accepts.
MAX_IMAGE_PIXELS = 64_000_000

# What PIL's plugins raise for malformed files (truncated, corrupt, or not the format named).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

_OPEN_FIXES = {
    errno.EACCES: "make it readable (chmod a+r) or remove it",
    errno.EPERM: "make it readable (chmod a+r) or remove it",
    errno.ELOOP: "fix the symbolic-link loop or remove it",
    errno.ENOENT: "fix the path or the link it follows, or remove it",
}


class UnreadableImageError(UserError, OSError):
  """An image file that cannot, or must not, be decoded; the message names the file and the fix."""


def stored_channels(dataset_name: str) -> int:
  """The channels a data set stores its images with, by its name ("ferplus/majority" → "ferplus"): its builder's
  `CHANNELS` for fer_jax's sets (1 for the grey ones), else 3. For a model whose meta record gives none (a
  conversion, an older record); a trained model's record gives the shape its set's images were decoded to
  (`fer_jax.checkpointing.recorded_shape`), a set of yours included."""
  # Imported here: the builders import this module, and TFDS, which the callers (predict, the API) have loaded
  # already but that this module's other users (decoding a file) need not.
  from fer_jax.data import builders  # pylint: disable=import-outside-toplevel
  builder = builders.MANUAL.get(dataset_name.split("/")[0])
  return builder.CHANNELS if builder else 3


# PIL's modes of 16-bit grey samples; older PIL versions open 16-bit PNGs as "I" (32-bit integers).
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
  """`image` as 8-bit "RGB" or "L". 16-bit grey keeps its top 8 bits, where PIL's own convert clips every
  sample above 255 (an all-white image), but 32-bit integer grey ("I") whose samples all lie in 0–255 is 8-bit grey
  as it is (its top 8 bits were black); float grey ("F") within [0, 1] is scaled by 255 (`_unit_floats_to_grey`)."""
  if image.mode == "I" and _within(np.asarray(image), 0, 255):
    image = Image.fromarray(np.asarray(image).astype(np.uint8))  # 8-bit grey in 32-bit integers: a TIFF, convert("I")
  elif image.mode in SIXTEEN_BIT_GREY_MODES:
    samples = np.clip(np.asarray(image), 0, 2**16 - 1).astype(np.uint16)
    image = Image.fromarray((samples >> 8).astype(np.uint8))
  elif image.mode == "F":
    image = _unit_floats_to_grey(image)
  elif image.mode == "La":  # premultiplied alpha (a caller's PIL image; no file opens so): PIL converts it to LA only
    image = image.convert("LA")
  return image if image.mode == mode else image.convert(mode)


def _within(samples: np.ndarray, low: float, high: float) -> bool:
  return bool(samples.size) and low <= samples.min() and samples.max() <= high


def _unit_floats_to_grey(image: Image.Image) -> Image.Image:
  """A float image ("F", a float TIFF) whose samples all lie in [0, 1] (as torchvision's tensors hold them) as 8-bit
  grey, scaled by 255, where PIL's own convert rounds them to 0 or 1 (an all-black image); any other is left to
  PIL's convert, which clips it to 0–255."""
  samples = np.asarray(image)
  if _within(samples, 0, 1):
    return Image.fromarray(np.round(samples * 255).astype(np.uint8))
  return image


def to_stored(image: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
  """RGB (3 channels) or grayscale (1), resized with PIL bilinear (antialiased) if its size differs."""
  height, width, channels = shape
  image = to_mode(image, "RGB" if channels == 3 else "L")
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def read_file(path: str, shape: tuple[int, int, int]) -> np.ndarray:
  """An image file, upright, at the stored shape; `UnreadableImageError` if it is too large, unreadable or not an
  image."""
  with opened(path) as image:
    return to_stored(image, shape)


def rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(to_mode(image, "RGB"))


@contextlib.contextmanager
def opened(source, name: str = ""):
  """The image file (a path, or an open binary file that `name` names), decoded once and upright (EXIF orientation
  applied); `UnreadableImageError` (raised on entering or from the body) if it is too large, unreadable or not an
  image."""
  name = name or source
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(source) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
          raise _too_large(name, f"{image.width}×{image.height}")
        ImageOps.exif_transpose(image, in_place=True)
        yield image
  except UnreadableImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
    claimed = re.search(r"\((\d+) pixels\)", str(error))  # PIL's words: "Image size (900000000 pixels) exceeds …"
    pixels = f"{int(claimed.group(1)):,}" if claimed else f"more than {Image.MAX_IMAGE_PIXELS:,}"
    raise _too_large(name, pixels) from error
  except _DECODE_ERRORS as error:
    raise unreadable_error(name, error) from error


@contextlib.contextmanager
def upright(image: Image.Image, name: str):
  """A PIL image its caller opened, turned by its EXIF orientation as a file's would be; what its pixels fail to
  decode (a truncated file PIL opened lazily), here or in the body, raises `UnreadableImageError` naming `name`."""
  try:
    yield ImageOps.exif_transpose(image)
  except _DECODE_ERRORS as error:
    raise unreadable_error(name, error) from error


def _too_large(path: str, claimed_pixels: str) -> UnreadableImageError:
  return UnreadableImageError(
      f"{path} is refused before decoding: its header claims {claimed_pixels} pixels and the limit is "
      f"{MAX_IMAGE_PIXELS:,} (fer_jax.data.decode.MAX_IMAGE_PIXELS); downscale it or remove it.")


def empty_file_error(path: str) -> UnreadableImageError:
  return UnreadableImageError(f"{path} is empty (0 bytes): re-copy it, or remove it.")


def _is_empty(path: str) -> bool:
  try:
    return os.path.getsize(path) == 0
  except OSError:
    return False


def unreadable_error(path: str, error: Exception) -> UnreadableImageError:
  if isinstance(error, UnidentifiedImageError):
    if _is_empty(path):
      return empty_file_error(path)
    return UnreadableImageError(f"{path} is not an image PIL can identify (corrupt, or not an image at all): "
                                f"replace it with a PNG or JPEG, or remove it.")
  if isinstance(error, OSError) and error.errno is not None:
    fix = _OPEN_FIXES.get(error.errno, "fix the file or remove it")
    return UnreadableImageError(f"{path} cannot be opened ({error.strerror}): {fix}.")
  return UnreadableImageError(f"{path} is truncated or corrupt ({error}): replace it with an intact copy or remove it.")


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
