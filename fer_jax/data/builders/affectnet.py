"""AffectNet, manually annotated part (docs/methods/datasets.md §5.4): 8 or 7 classes, train / validation.

Reads either release, whichever the manual directory holds (the original one when both):
  original  `training.csv` (with header) and `validation.csv` (without) beside
            `Manually_Annotated_Images/`; the `*_facecrop` configs crop each image to the
            CSV's face box (stored as JPEG quality 95, 4:4:4), the others keep it whole (a
            whole photo: SCAN-CCI's official loader reads the authors' own aligned faces instead,
            never released, to which the face-box crop is the closest);
  later     the "4 GB" release DAN uses: `train_set|val_set/images/{id}.jpg` with
            `annotations/{id}_exp.npy`, `_val.npy`, `_aro.npy` (faces already cropped); an
            image without its `_exp.npy` stops the build, even with --skip_corrupt.
Codes 8–10 (None, Uncertain, Non-face) are dropped, and 7 (Contempt) in the 7-class configs.
Labels stay in AffectNet's code order. Extras: `valence`, `arousal` (NaN when the release
lacks them) and `annotation_index`, the image's position in the annotation file (original)
or in id order (later), so "the first N per class in file order" can be reproduced.

When the occlusion and pose list files of Wang et al. (github.com/kaiwang960112/
Challenge-condition-FER-dataset) are present beside the original release, their subsets of
the validation split become the extra splits `validation_occlusion`, `validation_pose30` and
`validation_pose45`, labelled from validation.csv. The lists name images by the original
release's file names, which the later release does not keep.
"""

import dataclasses
import functools
import io
import math
import os
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import decode
from fer_jax.data import labels

CSV_FOLDERS = (".", "Manually_Annotated_file_lists")
# The last: Manually_Annotated_compressed.zip unpacked.
IMAGE_FOLDERS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
                 "Manually_Annotated_compressed/Manually_Annotated_Images")
ORIGINAL_SPLITS = {"train": "training.csv", "validation": "validation.csv"}
LATER_SPLITS = {"train": "train_set", "validation": "val_set"}
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
           "valence", "arousal")
CODES = range(11)  # 0-7 the expressions, 8 None, 9 Uncertain, 10 Non-face
CROP_QUALITY = 95
MISSING_SHOWN = 5  # missing annotation files named in the error
SUBSET_LISTS = {"validation_occlusion": ("occlusion_affectnet_list.txt",),
                "validation_pose30": ("pose_30_affectnet_list.txt",),
                "validation_pose45": ("pose_45_affectnet_list.txt",)}
# "val/0/<name>/" (occlusion), "0/<name>.jpg" (pose > 30), "7/<name>/8.jpg" (pose > 45)
SUBSET_ENTRY = re.compile(r"(?:val/)?(\d+)/([^/.]+)(?:\.\w+|/(?:\w+\.\w+)?)?")

LAYOUT = """\
  original release:
    MANUAL_DIR/[Manually_Annotated_file_lists/]training.csv     header: subDirectory_filePath,
    MANUAL_DIR/[Manually_Annotated_file_lists/]validation.csv     face_x, face_y, face_width,
                                                                 face_height, facial_landmarks,
                                                                 expression, valence, arousal
    MANUAL_DIR/[Manually_Annotated_compressed/]Manually_Annotated_Images/<subDirectory_filePath>
    optional validation subsets (Wang et al.), beside the CSVs or in MANUAL_DIR:
      occlusion_affectnet_list.txt, pose_30_affectnet_list.txt, pose_45_affectnet_list.txt
  or the later "4 GB" release:
    MANUAL_DIR/train_set/images/0.jpg ...
    MANUAL_DIR/train_set/annotations/0_exp.npy, 0_val.npy, 0_aro.npy ...
    MANUAL_DIR/val_set/images/..., MANUAL_DIR/val_set/annotations/..."""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request AffectNet at http://mohammadmahoor.com/affectnet/ (academic licence agreement).
Unpack the manually annotated images and file lists (original release) or train_set/val_set
(later release) into the manual directory:
{LAYOUT}
"""


@dataclasses.dataclass
class AffectnetConfig(tfds.core.BuilderConfig):
  num_classes: int = 8
  face_crop: bool = False


def _expected(num_classes: int) -> dict[str, int]:
  """The published sizes; the subsets' are the distinct images of Wang et al.'s lists (with their
  own labels 0-6 only for 7 classes)."""
  subsets = {"validation_occlusion": 683, "validation_pose30": 1_944, "validation_pose45": 983}
  if num_classes == 7:
    subsets = {"validation_occlusion": 592, "validation_pose30": 1_745, "validation_pose45": 888}
  return {"train": 287_651 if num_classes == 8 else 283_901, "validation": 500 * num_classes, **subsets}


def crop_face(path, box: tuple[int, int, int, int], where: str) -> bytes:
  """JPEG of `path` cropped to (x, y, width, height), clipped to the image; DataError naming `where`
  (the CSV row) when the box lies wholly outside it."""
  x, y, width, height = box
  with Image.open(path) as image:
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, image.width), min(y + height, image.height)
    if right <= left or bottom <= top:
      raise builder_utils.DataError(
          f"{where}: the face box (face_x, face_y, face_width, face_height) {box} lies outside the "
          f"{image.width}×{image.height} image {path}. Correct the row or restore the file from the owners' download.")
    face = image.crop((left, top, right, bottom))
    if face.mode not in ("L", "RGB"):
      face = decode.to_mode(face, "RGB")
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG", quality=CROP_QUALITY, subsampling=0)
    return buffer.getvalue()


class Affectnet(builder_utils.ManualBuilder):
  """AffectNet in its own code order; splits train / validation (the usual test set), + occlusion and
  pose validation subsets."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      AffectnetConfig(name="classes8", description="8 classes, images as released."),
      AffectnetConfig(name="classes7", description="7 classes (no Contempt), images as released.",
                      num_classes=7),
      AffectnetConfig(name="classes8_facecrop", face_crop=True,
                      description="8 classes, cropped to the face box (original release)."),
      AffectnetConfig(name="classes7_facecrop", num_classes=7, face_crop=True,
                      description="7 classes, cropped to the face box (original release)."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "classes8"
  EXPECTED_SIZES = {config.name: _expected(config.num_classes) for config in BUILDER_CONFIGS}

  def _info(self) -> tfds.core.DatasetInfo:
    order = "affectnet8" if self.builder_config.num_classes == 8 else "affectnet7"
    return self.face_info(labels.CLASS_ORDERS[order], homepage="http://mohammadmahoor.com/affectnet/",
                          extra_features={"valence": tfds.features.Scalar(dtype=np.float32),
                                          "arousal": tfds.features.Scalar(dtype=np.float32),
                                          "annotation_index": tfds.features.Scalar(dtype=np.int64)})

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    csv_folder = next((root / f for f in CSV_FOLDERS if (root / f / ORIGINAL_SPLITS["train"]).exists()), None)
    if csv_folder is not None:
      images = builder_utils.find_path(root, IMAGE_FOLDERS, "AffectNet's Manually_Annotated_Images", LAYOUT)
      self.split_sources = {split: builder_utils.find_path(csv_folder, (name,), f"AffectNet's {name}", LAYOUT)
                            for split, name in ORIGINAL_SPLITS.items()}
      records = {split: self._original_records(path, images) for split, path in self.split_sources.items()}
      lists = builder_utils.find_subset_lists((csv_folder, root), SUBSET_LISTS)
      records.update(self._subsets(lists, self.split_sources["validation"], images))
    elif self.builder_config.face_crop:
      config = self.builder_config
      raise builder_utils.DataError(
          f"Config {config.name} crops by the face boxes of the original release's CSVs, which "
          f"{root} lacks. The later release is already cropped: use config "
          f"classes{config.num_classes}.\n{LAYOUT}")
    else:
      wanted = f"AffectNet's {ORIGINAL_SPLITS['train']} or"
      self.split_sources = {split: builder_utils.find_path(root, (folder,), f"{wanted} {folder}/", LAYOUT)
                            for split, folder in LATER_SPLITS.items()}
      records = {split: self._later_records(folder) for split, folder in self.split_sources.items()}
      lists = builder_utils.find_subset_lists((root,), SUBSET_LISTS)
      if lists:
        raise builder_utils.DataError(
            f"{next(iter(lists.values()))} selects images of the original release by their file names, which "
            f"the later release in {root} does not keep. Prepare from the original release, or move the list "
            "files out of the manual directory.")
    return {split: self._generate_examples(split, split_records) for split, split_records in records.items()}

  def _keep(self, code: int) -> bool:
    return code < self.builder_config.num_classes

  def _original_records(self, path, images):
    for index, (where, row) in enumerate(_annotation_rows(path)):
      code = builder_utils.parse_label(row[6], CODES, where)
      extras = {"valence": _number(row[7], where), "arousal": _number(row[8], where), "annotation_index": index}
      if self._keep(code):
        image = images / row[0].strip()
        if self.builder_config.face_crop:
          box = tuple(int(_number(v, where)) for v in row[1:5])
          image = functools.partial(crop_face, image, box, where)
        yield builder_utils.Record(file_name=row[0].strip(), label=code, image=image, extras=extras, where=where)

  def _subsets(self, lists: dict, validation_csv, images) -> dict[str, list[builder_utils.Record]]:
    """{split: records} of the validation subsets that Wang et al.'s lists name."""
    if not lists:
      return {}
    validation = {image_stem(record.file_name): record for record in self._original_records(validation_csv, images)}
    labels = {stem: record.label for stem, record in validation.items()}
    known = {image_stem(row[0]) for _, row in _annotation_rows(validation_csv)}
    subsets = {}
    for split, path in lists.items():
      keys = builder_utils.listed_keys(path, parse_subset_entry, labels, known, range(8),
                                       f"the validation split ({validation_csv})")
      subsets[split] = [validation[key] for key in keys]
      self.split_sources[split] = path
    return subsets

  def _later_records(self, folder):
    annotations = builder_utils.find_path(folder, ("annotations",), f"{folder.name}/annotations", LAYOUT)
    images = builder_utils.find_path(folder, ("images",), f"{folder.name}/images", LAYOUT)
    annotated = {p.name.removesuffix("_exp.npy") for p in annotations.glob("*_exp.npy")}
    _check_annotated(images, annotated, annotations)
    for index, image_id in enumerate(sorted(annotated, key=_id_order)):
      code = builder_utils.parse_label(_npy_text(annotations / f"{image_id}_exp.npy"), CODES,
                                       f"{annotations / image_id}_exp.npy")
      if self._keep(code):
        extras = {name: _optional_npy_number(annotations / f"{image_id}_{suffix}.npy")
                  for name, suffix in (("valence", "val"), ("arousal", "aro"))}
        yield builder_utils.Record(file_name=f"{folder.name}/images/{image_id}.jpg", label=code,
                                   image=images / f"{image_id}.jpg",
                                   extras={**extras, "annotation_index": index})


def _annotation_rows(path):
  """(where, row) of every image row of an original-release CSV (the header and blank lines skipped)."""
  for line, row in builder_utils.csv_rows(path):
    if row[0].strip().lower() != COLUMNS[0].lower():  # the header, however spelt
      where = f"{path}, line {line}"
      builder_utils.check_columns(row, COLUMNS, where)
      yield where, row


def image_stem(file_name: str) -> str:
  """`<name>` of "<folder>/<name>.jpg": how Wang et al.'s lists name an image."""
  return file_name.strip().rsplit("/", 1)[-1].rsplit(".", 1)[0]


def parse_subset_entry(text: str) -> tuple[str, str]:
  """(image stem, the list's code) of "val/0/<name>/", "0/<name>.jpg" or "7/<name>/8.jpg"."""
  match = SUBSET_ENTRY.fullmatch(text)
  if match is None:
    raise ValueError('expected "val/0/<name>/", "0/<name>.jpg" or "7/<name>/8.jpg"')
  return match[2], match[1]


def _id_order(image_id: str):
  """Numeric ids in numeric order, then any others by name."""
  return not image_id.isdigit(), int(image_id) if image_id.isdigit() else 0, image_id


def _check_annotated(images, annotated: set[str], annotations) -> None:
  """Raises if an image in `images` (`.jpg` or any image suffix) has no `<id>_exp.npy`, rather than leaving it out
  unseen.

  Not skipped with --skip_corrupt either: that skips unreadable images, not missing labels.
  """
  missing = sorted({p.stem for p in images.iterdir() if decode.is_image_name(p.name)} - annotated, key=_id_order)
  if missing:
    listed = ", ".join(f"{image_id}_exp.npy" for image_id in missing[:MISSING_SHOWN])
    more = ", ..." if len(missing) > MISSING_SHOWN else ""
    raise builder_utils.DataError(
        f"{len(missing)} images in {images} have no expression annotation in {annotations} (missing: "
        f"{listed}{more}). Restore the annotations folder from the owners' download; --skip_corrupt "
        "skips unreadable images only, not images without a label.")


def _number(text: str, where: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise builder_utils.DataError(f"{where}: {text!r} is not a number.")
  return value


def _npy_text(path) -> str:
  """The scalar an annotation .npy holds (the release stores strings; bytes and numbers work too), as text."""
  try:
    value = np.load(path, allow_pickle=False).item()
  except (OSError, ValueError, EOFError) as e:  # EOFError: an empty or truncated file
    raise builder_utils.DataError(f"Cannot read the annotation {path} ({e}). Restore it from the "
                                  "owners' download.") from e
  if isinstance(value, bytes):  # np.array(b"3") saved: numpy's S dtype, as DAN's int(np.load(...)) reads it
    return value.decode("ascii", "replace")
  return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _optional_npy_number(path) -> float:
  return _number(_npy_text(path), os.fspath(path)) if path.exists() else math.nan
