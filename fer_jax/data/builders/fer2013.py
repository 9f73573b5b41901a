"""FER2013 from the Kaggle CSV (docs/methods/datasets.md §5.1): 48×48 gray faces, 7 classes."""

import functools
import io
from typing import Iterator

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels

SPLITS = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv", "fer2013/fer2013.csv")
COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIZE = 48
STORED_IMAGE = {"image_shape": (IMAGE_SIZE, IMAGE_SIZE, 1), "encoding_format": "png"}  # FERPlus stores its faces so too
HOMEPAGE = ("https://www.kaggle.com/c/"
            "challenges-in-representation-learning-facial-expression-recognition-challenge")

LAYOUT = """\
  MANUAL_DIR/fer2013.csv            columns emotion,pixels,Usage; 35,887 rows
or MANUAL_DIR/icml_face_data.csv    the same data, columns "emotion, Usage, pixels"
or MANUAL_DIR/fer2013/fer2013.csv   as unpacked from Kaggle's fer2013.tar.gz"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request FER2013 from the Kaggle competition "Challenges in Representation Learning: Facial
Expression Recognition Challenge" (a Kaggle account and acceptance of the competition rules
are needed) and put its CSV in the manual directory:
{LAYOUT}
"""


def find_csv(root):
  return builder_utils.find_path(root, CSV_NAMES, "the FER2013 CSV", LAYOUT)


def read_rows(path) -> Iterator[tuple[int, str, str, str]]:
  """(line number, emotion, pixels, Usage) of every row, Usage checked; column order and spacing may vary."""
  rows = builder_utils.csv_rows(path)
  header_line, header = next(rows, (1, []))
  header = [name.strip() for name in header]
  missing = [name for name in COLUMNS if name not in header]
  if missing:
    shown = [name if len(name) <= 30 else f"{name[:30]}…" for name in header]  # a row of pixels in its place
    raise builder_utils.DataError(f"{path}, line {header_line}: header {shown} lacks the columns {missing}; "
                                  f"expected {', '.join(COLUMNS)} in any order, as the first line.")
  emotion, pixels, usage = (header.index(name) for name in COLUMNS)
  for line, row in rows:
    where = f"{path}, line {line}"
    builder_utils.check_columns(row, header, where)
    yield line, row[emotion], row[pixels], check_usage(row[usage].strip(), where)


def pixels_to_png(pixels: str) -> bytes:
  """The PNG of a row's 2304 space-separated gray values; ValueError if they are not that."""
  values = np.array(pixels.split(), dtype=np.int64)
  if values.size != IMAGE_SIZE * IMAGE_SIZE:
    raise ValueError(f"expected {IMAGE_SIZE * IMAGE_SIZE} values in 0-255, got {values.size}")
  if values.min() < 0 or values.max() > 255:
    raise ValueError(f"expected {IMAGE_SIZE * IMAGE_SIZE} values in 0-255, got values in [{values.min()}, "
                     f"{values.max()}]")
  buffer = io.BytesIO()
  Image.fromarray(values.reshape(IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def check_usage(usage: str, where: str) -> str:
  if usage not in SPLITS.values():
    raise builder_utils.DataError(f"{where}: Usage {usage!r} is not one of {', '.join(SPLITS.values())}, the only "
                                  "values (spelt so) of the official file. Correct the line or restore the file from "
                                  "the owners' download.")
  return usage


class Fer2013(builder_utils.ManualBuilder):
  """FER2013 in its own class order; splits train / public_test / private_test."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  CHANNELS = 1
  EXPECTED_SIZES = {None: {"train": 28_709, "public_test": 3_589, "private_test": 3_589}}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.face_info(labels.CLASS_ORDERS["fer2013"], homepage=HOMEPAGE, **STORED_IMAGE)

  def _split_generators(self, dl_manager):
    path = find_csv(self.manual_root(dl_manager))
    self.split_sources = dict.fromkeys(SPLITS, path)
    return {split: self._generate_examples(split, _records(path, usage)) for split, usage in SPLITS.items()}


def _records(path, usage: str):
  classes = range(len(labels.CLASS_ORDERS["fer2013"]))
  for line, emotion, pixels, row_usage in read_rows(path):
    if row_usage == usage:
      yield builder_utils.Record(file_name=f"{path.name}:{line}",
                                 label=builder_utils.parse_label(emotion, classes, f"{path}, line {line}"),
                                 image=functools.partial(pixels_to_png, pixels))
