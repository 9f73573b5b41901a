"""Shared parts of the builders that read a hand-downloaded FER data set.

Input problems raise `DataError` with a message that names the path, file and line at
fault and what the owners' download looks like. Unreadable images either raise or, when a
builder is made with `skip_corrupt=True`, are skipped, logged and counted in
`builder.skipped_images`; missing or malformed labels always raise. A split without a single
example raises too, naming the file or folder it was read from (`builder.split_sources`).
Split sizes that differ from the published ones only warn.

Every build also writes a label index beside the records (`label_index_path`): each split's
labels (and `annotation_index` where the set has one) in record order, so a training run
reads them in milliseconds instead of parsing every record (`label_columns`).
"""

import collections
import contextlib
import csv
import dataclasses
import io
import os
import sys
from typing import Callable, Container, Iterable, Iterator, Sequence

from absl import logging
from array_record.python import array_record_module
from etils import epath
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError
import tensorflow_datasets as tfds

from fer_jax import files
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.errors import UserError


class DataError(UserError, ValueError):
  """The manual download is missing, incomplete or malformed; the message says where."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One example before its image is read.

  `image` is the image file, or a function returning encoded image bytes (pixels held in
  a CSV, or a crop); either may fail, which counts as an unreadable image. `where` is the line
  that lists it ("PATH, line N"), where a label file does, for the errors that name the record.
  """
  file_name: str
  label: int
  image: epath.Path | Callable[[], bytes]
  extras: dict = dataclasses.field(default_factory=dict)
  where: str | None = None


def find_path(root: epath.Path, candidates: Sequence[str], what: str, layout: str) -> epath.Path:
  """The first of `root/candidate` that exists; otherwise an error listing them all and naming the archives on the
  way to them (`archives_note`)."""
  for candidate in candidates:
    path = root / candidate
    if path.exists():
      return path
  tried = "\n".join(f"  {root / candidate}" for candidate in candidates)
  raise DataError(f"Cannot find {what}. {archives_note(root, candidates)}Looked for:\n{tried}\n"
                  f"The manual directory should look like:\n{layout}")


def archives_note(root: epath.Path, candidates: Sequence[str]) -> str:
  """"<folder> holds <archives>: extract it there first." for each folder from `root` to where a candidate path
  would be that holds an archive: an owner's download not extracted yet."""
  return "".join(f"{folder} holds {', '.join(archives)}: extract it there first.\n"
                 for folder, archives in _archives_in(_folders_on_the_way(root, candidates)).items())


def _folders_on_the_way(root: epath.Path, candidates: Sequence[str]) -> list[epath.Path]:
  """`root` and every folder between it and a candidate (`root/Image` for "Image/aligned")."""
  folders = [root]
  for candidate in candidates:
    parts = epath.Path(candidate).parts[:-1]
    folders += [root.joinpath(*parts[:end]) for end in range(1, len(parts) + 1)]
  return list(dict.fromkeys(folders))


def _archives_in(folders: Iterable[epath.Path]) -> dict[epath.Path, list[str]]:
  """{folder: the names of its archives} of the `folders` that exist and hold any."""
  found = {}
  for folder in folders:
    archives = sorted(path.name for path in folder.iterdir() if is_archive(path)) if folder.is_dir() else []
    if archives:
      found[folder] = archives
  return found


# What the owners' downloads come as, which prepare reads only once extracted.
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def is_archive(path: epath.Path) -> bool:
  return path.name.lower().endswith(ARCHIVES) and path.is_file()


def parse_label(text: str, valid: Container[int], where: str, what: str = "label") -> int:
  """`text` as an int in `valid`; otherwise an error naming `where` (file and line) and `what` the number is."""
  try:
    value = int(text.strip())
  except ValueError:
    value = None
  if value is None or value not in valid:
    raise DataError(f"{where}: {what} {text.strip()!r} is not one of {sorted(valid)}. Correct the line "
                    "or restore the file from the owners' download.")
  return value


def check_columns(row: Sequence[str], names: Sequence[str], where: str) -> None:
  """Raises unless the CSV `row` has one column per name."""
  if len(row) != len(names):
    raise DataError(f"{where}: expected {len(names)} columns ({', '.join(names)}), got {len(row)}. Correct the "
                    "line or restore the file from the owners' download.")


def open_text(path: epath.Path):
  """A label file or CSV opened for reading (also by `csv.reader`): UTF-8 with or without a byte-order
  mark, any line ending."""
  return open(path, encoding="utf-8-sig", newline="")


def read_lines(path: epath.Path) -> Iterator[tuple[int, str]]:
  """(1-based line number, stripped text) of the non-blank lines; DataError if the file is not UTF-8 text."""
  with open_text(path) as f:
    try:
      for number, line in enumerate(f, start=1):
        if line.strip():
          yield number, line.strip()
    except UnicodeDecodeError as e:
      raise not_utf8(path, e) from None


def csv_rows(path: epath.Path) -> Iterator[tuple[int, list[str]]]:
  """(line number, row) of the non-blank rows of a CSV whose every row is one line, as each owner's CSV is; a
  DataError naming the line where a row starts that runs on over the next lines (a quote left open) or that the
  csv module cannot read, or saying the file is not UTF-8 text."""
  with open_text(path) as f:
    reader = csv.reader(f)
    start = 1
    try:
      for row in reader:
        if reader.line_num > start:
          raise _unclosed_quote(path, start, f"runs on to line {reader.line_num}")
        if row:
          yield start, row
        start = reader.line_num + 1
    except csv.Error as e:
      raise _unclosed_quote(path, start, f"cannot be read ({e})") from None
    except UnicodeDecodeError as e:
      raise not_utf8(path, e) from None


def _unclosed_quote(path: epath.Path, line: int, trouble: str) -> DataError:
  return DataError(f"{path}, line {line}: the row starting here {trouble}, as when a quote (\") opened in it is never "
                   "closed. Close or remove the quote, or restore the file from the owners' download.")


def not_utf8(path: epath.Path, error: UnicodeDecodeError) -> DataError:
  return DataError(f"{path} is not UTF-8 text (it holds the byte {error.object[error.start]:#04x}: saved as UTF-16 by "
                   "Excel or a Windows tool?). Save it as UTF-8 (Excel: \"CSV UTF-8\") or restore it from the owners' "
                   "download.")


def check_class_names(names: Sequence[str], what: str) -> None:
  """Every class name of a set must be one of fer_jax's (`labels.CLASSES`), by which runs map a set's classes
  to config.dataset.class_order; `what` names the set (or its builder) in the error."""
  unknown = [name for name in names if name not in labels.CLASSES]
  if unknown:
    raise DataError(f"{what} has classes fer_jax does not know: {', '.join(unknown)}. A run maps a set's classes to "
                    f"its config.dataset.class_order by name: name them in the builder's ClassLabel as "
                    f"fer_jax.data.labels does ({', '.join(labels.CLASSES)}) and prepare the set again (--overwrite "
                    "replaces a prepared copy; docs/extending.md).")


class ImageSizeError(ValueError):
  """An image of another size than the one every image of its set has."""


def encode_image(data: bytes, channels: int, size: tuple[int, int] | None = None) -> bytes:
  """Decodes fully (so damage shows up now) and returns bytes TFDS decodes to `channels`; an
  ImageSizeError where `size` (height, width: the set's, where all its images have one) is given and differs.

  JPEG and PNG files whose pixels are already 8-bit gray or (for colour sets) RGB are kept
  byte for byte; anything else (CMYK, palette, alpha, 16-bit, BMP, ...) is converted and
  stored as PNG (16-bit grey scaled to 8 bits, `decode.to_mode`).
  """
  if not data:
    raise ValueError("the file is empty")
  try:
    image = Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise ValueError("not an image file PIL can identify") from None
  with image:
    if size and (image.height, image.width) != tuple(size):
      raise ImageSizeError(f"{image.width}×{image.height} pixels, where every image of the set is {size[1]}×{size[0]}")
    image.load()
    kept_modes = ("L",) if channels == 1 else ("L", "RGB")
    if image.format in ("JPEG", "PNG") and image.mode in kept_modes:
      return data
    buffer = io.BytesIO()
    decode.to_mode(image, "L" if channels == 1 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def is_prepared(builder) -> bool:
  """Whether the set is prepared, without TFDS's warning that a set not prepared yet has no dataset_info.json; a
  DataError when its folder exists but holds no complete set (it would be taken as prepared and left empty)."""
  if not builder.data_path.exists():
    return False
  if not builder.is_prepared():
    raise DataError(f"{builder.data_path} exists but holds no prepared set (no dataset_info.json): "
                    "move it away or delete it, then run the same command again.")
  return True


class _LocalInfo(tfds.core.DatasetInfo):
  def initialize_from_bucket(self) -> None:
    """Nothing: fer_jax's sets are never in TFDS's bucket, and TFDS's lookup leaves an empty
    temporary folder behind each time a builder is made before its set is prepared."""


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder of a set that exists only on this machine's disks, described by `face_info`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def dataset_info_from_configs(self, **kwargs) -> tfds.core.DatasetInfo:
    return _LocalInfo(builder=self, **kwargs)  # no README or CITATIONS.bib files to merge in

  def _log_download_bytes(self) -> None:
    """Logged, where TFDS prints "Downloading and preparing dataset Unknown size …" to stdout: nothing is
    downloaded, and the sizes are unknown until built."""
    logging.info("Building %s in %s…", self.info.full_name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Built %s in %s.", self.info.full_name, self.data_dir)

  def face_info(self, class_names: Sequence[str], *, image_shape: tuple = (None, None, 3),
                encoding_format: str | None = None, extra_features: dict | None = None,
                homepage: str | None = None, description: str | None = None) -> tfds.core.DatasetInfo:
    """The info of a set of (`image`, `label`) pairs, its supervised keys, with `extra_features` after them;
    `description` defaults to the builder module's docstring."""
    features = {"image": tfds.features.Image(shape=image_shape, encoding_format=encoding_format),
                "label": tfds.features.ClassLabel(names=class_names), **(extra_features or {})}
    if description is None:
      description = sys.modules[type(self).__module__].__doc__
    return self.dataset_info_from_configs(description=description, features=tfds.features.FeaturesDict(features),
                                          supervised_keys=("image", "label"), homepage=homepage)


class ManualBuilder(LocalBuilder):
  """A builder over a folder the user downloaded by hand.

  Subclasses describe their set with `face_info`, list `Record`s per split, record in
  `split_sources` the file or folder each split is read from, and set `CHANNELS` and
  `EXPECTED_SIZES` ({config name or None: {split: published size}}).
  """

  CHANNELS = 3
  EXPECTED_SIZES: dict[str | None, dict[str, int]] = {}

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._original_state["skip_corrupt"] = skip_corrupt
    self.skip_corrupt = skip_corrupt
    self.skipped_images: dict[str, list[str]] = {}
    self.unexpected_sizes: dict[str, tuple[int, int]] = {}  # {split: (examples, published size)} that differ
    self.split_sources: dict[str, os.PathLike | str] = {}
    self.names_by_split: dict[str, set[str]] = {}

  def _download_and_prepare(self, dl_manager, download_config=None):
    check_class_names(self.info.features["label"].names, f"{type(self).__module__}.{type(self).__name__}")
    super()._download_and_prepare(dl_manager, download_config)
    write_label_index(self)  # into TFDS's temporary folder: it appears with the set or not at all
    self._warn_of_unexpected_sizes()

  def _warn_of_unexpected_sizes(self) -> None:
    """Once, after every split is written: not one warning amid each split's progress bars."""
    if self.unexpected_sizes:
      sizes = ", ".join(f"{split} {count:,} (published {expected:,})"
                        for split, (count, expected) in self.unexpected_sizes.items())
      logging.warning("%s has splits of other sizes than published: %s. Check that the download is complete and is "
                      "the release docs/data.md names.", self.info.full_name, sizes)

  def face_info(self, class_names: Sequence[str], *, extra_features: dict | None = None,
                **kwargs) -> tfds.core.DatasetInfo:
    """`LocalBuilder.face_info` with each record's `file_name` (its key) before the set's own features."""
    return super().face_info(class_names, extra_features={"file_name": tfds.features.Text(), **(extra_features or {})},
                             **kwargs)

  def manual_root(self, dl_manager) -> epath.Path:
    try:
      return dl_manager.manual_dir
    except AssertionError as e:
      raise DataError(f"The manual directory for {self.name} is missing or empty ({e}).\n"
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}") from e

  def _generate_examples(self, split: str, records: Iterable[Record]):
    count, seen = 0, {}
    for record in records:
      record = dataclasses.replace(record, file_name=stored_name(record.file_name))
      if record.file_name in seen:  # TFDS's own duplicate-key check needs TensorFlow: a traceback here
        if record.where:
          raise DataError(f"The image {record.file_name} is listed twice for the {split!r} split: "
                          f"{seen[record.file_name]} and {record.where}. Keep one of the rows.")
        raise DataError(f"{self.split_sources.get(split, 'The manual directory')} lists the image "
                        f"{record.file_name} twice for the {split!r} split: keep one of its rows.")
      seen[record.file_name] = record.where
      image = self._read_image(split, record)
      if image is None:
        continue
      count += 1
      yield record.file_name, {"image": image, "label": record.label, "file_name": record.file_name,
                               **record.extras}
    self.names_by_split[split] = set(seen)
    self._warn_of_training_images_in(split)
    skipped = self.skipped_images.get(split, [])
    if skipped:
      logging.warning("%s split %r: skipped %d unreadable images.", self.name, split, len(skipped))
    if count == 0:
      raise self._empty_split_error(split)
    expected = self._expected_size(split)
    if expected is not None and count != expected:
      self.unexpected_sizes[split] = (count, expected)

  def _warn_of_training_images_in(self, split: str) -> None:
    """A warning for images of the training split that another split lists too (its scores would count them)."""
    train = self.names_by_split.get("train", set())
    for other in ([split] if split != "train" else list(self.names_by_split)):
      shared = sorted(train & self.names_by_split[other]) if other != "train" else []
      if shared:
        logging.warning("%s: %d images of the 'train' split are in the %r split too (e.g. %s): a model trained on "
                        "them would be scored on them. Remove them from one of %s and %s, then prepare again "
                        "with --overwrite.", self.name, len(shared), other, shared[0],
                        self.split_sources.get("train", "the training list"),
                        self.split_sources.get(other, f"the {other} list"))

  def _empty_split_error(self, split: str) -> DataError:
    """Raised instead of TFDS's "No examples were yielded", which names no file."""
    source = self.split_sources.get(split, "The manual directory")
    skipped = self.skipped_images.get(split, [])
    if skipped:
      return DataError(f"Every image {source} lists for the {split!r} split is unreadable ({len(skipped)} "
                       f"skipped, e.g. {skipped[0]}). Replace them from the owners' download.")
    return DataError(f"{source} gives no examples for the {split!r} split: it holds no rows or images for it, "
                     "or only ones this config drops. Restore it, complete, from the owners' download.\n"
                     f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _image_size(self) -> tuple[int, int] | None:
    """(height, width) of every image of the set where its features fix them."""
    height, width = self.info.features["image"].shape[:2]
    return (height, width) if height and width else None

  def _expected_size(self, split: str) -> int | None:
    config = self.builder_config.name if self.builder_config else None
    return self.EXPECTED_SIZES.get(config, {}).get(split)

  def _read_image(self, split: str, record: Record) -> bytes | None:
    source = record.file_name if callable(record.image) else record.image
    try:
      data = record.image() if callable(record.image) else record.image.read_bytes()
      return encode_image(data, self.CHANNELS, self._image_size())
    except DataError:
      raise  # a label found faulty on reading the image (an AffectNet face box outside it): never skipped
    except ImageSizeError as e:
      raise DataError(f"Image {source} is {e}: restore it from the owners' download.") from None
    except FileNotFoundError as e:
      listed_in = record.where or self.split_sources.get(split, "the label file")
      raise missing_image_error(os.fspath(e.filename or source), listed_in) from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      if not self.skip_corrupt:
        fix = "Make it readable" if isinstance(e, PermissionError) else "Replace it from the owners' download"
        raise DataError(f"Cannot read image {source} ({e}). {fix}, or pass --skip_corrupt to skip "
                        "unreadable images and count them.") from e
      logging.warning("Skipping unreadable image %s: %s", source, e)
      self.skipped_images.setdefault(split, []).append(record.file_name)
      return None


def stored_name(name: str) -> str:
  """`name` with the bytes of a file name that are not UTF-8 (Latin-1 from a Windows archive; Python holds them as
  surrogates, which TFDS cannot store) written as \\xNN escapes."""
  return os.fsencode(name).decode("utf-8", "backslashreplace")


def missing_image_error(path: str, listed_in) -> DataError:
  """For an image `path` not found: a broken link, a file whose name differs in case only, or one to restore."""
  image = f"Image {path}, listed in {listed_in},"
  if os.path.islink(path):
    return DataError(f"{image} is a broken link to {os.readlink(path)}: restore the file it points to, or replace the "
                     "link with the image.")
  folder, name = os.path.split(path)
  namesakes = sorted(other for other in os.listdir(folder) if other.lower() == name.lower()) \
      if os.path.isdir(folder) else []
  if namesakes:
    return DataError(f"{image} does not exist; {namesakes[0]} is there: rename it {name}.")
  return DataError(f"{image} does not exist. Restore it from the owners' download (--skip_corrupt skips unreadable "
                   "images, not missing ones).")


def class_folder_records(folder: epath.Path, class_of_folder: dict[str, int], root: epath.Path, layout: str,
                         other_folders: Container[str] = ()) -> list[Record]:
  """Records of `folder/<class>/<image>`; class folders match case-insensitively. Images anywhere else under
  `folder` are left out with a warning, except in `other_folders` (lower-case names of folders in `folder` that
  the download holds beside the class folders)."""
  class_of_folder = {name.lower(): label for name, label in class_of_folder.items()}  # "Happy" as the folder's name
  labels = {child: class_of_folder[child.name.lower()] for child in sorted(folder.iterdir())
            if child.is_dir() and child.name.lower() in class_of_folder}
  missing = sorted(name for name, label in class_of_folder.items() if label not in labels.values())
  if missing:
    found = ", ".join(child.name for child in labels) or "none"
    raise DataError(f"{folder} lacks the class folders {missing} (found: {found}). The manual directory "
                    f"should look like:\n{layout}")
  _warn_of_images_outside(folder, labels, class_of_folder, other_folders)
  return [Record(file_name=os.fspath(path.relative_to(root)), label=label, image=path)
          for child, label in labels.items() for path in sorted(child.iterdir()) if decode.is_image_name(path.name)]


PLACES_NAMED = 5  # folders of left-out images a warning names


def _warn_of_images_outside(folder: epath.Path, class_folders: Container[epath.Path],
                            class_of_folder: dict[str, int], other_folders: Container[str]) -> None:
  """One warning for the images under `folder` that no class folder holds directly (loose, in a misnamed folder
  or deeper in a class folder): a set prepared without them is not the set the folder holds."""
  left_out = []
  for directory, subfolders, names in folder.walk():  # in sorted order, for the same example each time
    subfolders[:] = sorted(name for name in subfolders if directory != folder or name.lower() not in other_folders)
    if directory not in class_folders:
      left_out += [directory / name for name in sorted(names) if decode.is_image_name(name)]
  if not left_out:
    return
  counts = sorted(collections.Counter(os.fspath(path.parent.relative_to(folder)) for path in left_out).items())
  places = ", ".join(f"{count} in {place}/" for place, count in counts[:PLACES_NAMED])
  places += f" and in {len(counts) - PLACES_NAMED} more folders" if len(counts) > PLACES_NAMED else ""
  logging.warning("Leaving out %d images under %s that are not directly in one of its class folders (%s): %s "
                  "(e.g. %s). Move each into its class's folder (names match case-insensitively) and prepare again "
                  "with --overwrite.", len(left_out), folder, ", ".join(class_of_folder), places,
                  left_out[0].relative_to(folder))


SUBSET_SOURCE = "github.com/kaiwang960112/Challenge-condition-FER-dataset"


def find_subset_lists(folders: Sequence[epath.Path], names: dict[str, Sequence[str]]) -> dict[str, epath.Path]:
  """{split: the first `folder/name` that exists} for Wang et al.'s occlusion and pose list files; warns,
  naming the file, of each list missing beside lists found (its subset's split and evaluator will be absent)."""
  found = {}
  for split, candidates in names.items():
    paths = [folder / name for name in candidates for folder in folders if (folder / name).exists()]
    if paths:
      found[split] = paths[0]
  missing = [split for split in names if split not in found] if found else []
  for split in missing:
    logging.warning("%s is in none of %s, beside %s: the set will have no %r split, and its evaluator "
                    "(config_lib.subset_evaluators) will be skipped. Put the file there from %s and prepare the set "
                    "again with --overwrite.", " or ".join(names[split]), ", ".join(map(str, folders)),
                    ", ".join(path.name for path in found.values()), split, SUBSET_SOURCE)
  return found


def listed_keys(path: epath.Path, parse_entry: Callable[[str], tuple[str, str | None]], labels: dict[str, int],
                known: Container[str], valid_labels: Container[int], what: str) -> list[str]:
  """The keys of `labels` (a split's images and their labels) that a Wang et al. list names, each once.

  `parse_entry` turns a line into (key, the list's own label or None), raising ValueError for a
  line it cannot read. A key outside `known` (every image of the split, including those the
  config drops) raises, naming the line; a known key missing from `labels` is left out and
  counted. The list's labels are only cross-checked: the split's own are kept.
  """
  keys, seen, disagreements, dropped, repeated = [], set(), 0, 0, 0
  for line, text in read_lines(path):
    where = f"{path}, line {line}"
    try:
      key, list_label = parse_entry(text)
    except ValueError as e:
      raise DataError(f"{where}: {text!r} is not an entry of a subset list ({e}). Restore the file from "
                      f"{SUBSET_SOURCE}.") from None
    if key not in known:
      raise DataError(f"{where}: {text!r} names an image that {what} does not have. Use the list made for this "
                      f"data set, unchanged, from {SUBSET_SOURCE}, or delete the line.")
    if key in seen:
      repeated += 1
      continue
    seen.add(key)
    if key not in labels:
      dropped += 1
      continue
    keys.append(key)
    if list_label is not None:
      disagreements += parse_label(list_label, valid_labels, where) != labels[key]
  if repeated:
    logging.info("%s: %d repeated entries are kept once.", path, repeated)
  if dropped:
    logging.info("%s: %d listed images are left out: this config drops their labels.", path, dropped)
  if disagreements:
    logging.warning("%s: %d of %d labels differ from the data set's own; the data set's labels are used.",
                    path, disagreements, len(keys))
  return keys


LABEL_INDEX_CHUNK = 128  # records per batch read; larger batches of large images read slower


def label_index_path(builder, split: str) -> epath.Path:
  return builder.data_path / f"{builder.name}-{split}.labels.npy"


def read_label_columns(builder, split: str) -> np.ndarray:
  """The split's `label` (and `annotation_index`, where the set has it) column, read from every record.

  Images are not decoded; records are read in batches (for FER2013-sized records 8× faster than
  one by one).
  """
  columns = ["label"] + (["annotation_index"] if "annotation_index" in builder.info.features else [])
  skip_images = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.Image)}
  source = builder.as_data_source(split, decoders=skip_images)
  table = np.empty(len(source), [(column, np.int64) for column in columns])
  check_record_files(source)  # a file cut at a block boundary reads as empty records, not as an error
  with record_files_checked(source):
    for start in range(0, len(source), LABEL_INDEX_CHUNK):
      records = source.__getitems__(range(start, min(start + LABEL_INDEX_CHUNK, len(source))))
      for column in columns:
        table[column][start:start + len(records)] = [record[column] for record in records]
  return table


def record_file_problems(source) -> list[str]:
  """"PATH is missing", "PATH cannot be read (why)" or "PATH holds N of its M records" for each record file of a TFDS
  data source that its reader cannot open or that holds another number of records than the set's info says: a data
  folder copied incompletely (to a cluster node, say)."""
  instructions = source.dataset_info.splits[source.split].file_instructions
  return [problem for path, expected in dict((i.filename, i.examples_in_shard) for i in instructions).items()
          if (problem := _record_file_problem(epath.Path(path), expected))]


def _record_file_problem(path: epath.Path, expected: int) -> str:
  if not path.exists():
    return f"{path} is missing"
  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  found = reader.num_records()
  try:
    reader.close()
  except RuntimeError as error:  # a reader that failed to open says why as it closes (or nothing: a file cut short)
    return f"{path} cannot be read ({str(error) or 'cut short or damaged'})"
  return "" if found == expected else f"{path} holds {found} of its {expected} records"


@contextlib.contextmanager
def record_files_checked(source):
  """Turns the reader's error about a record file of a TFDS data source (missing, cut short or damaged) into a
  DataError that names the file and the fix; any other error passes as it is."""
  try:
    yield
  except (RuntimeError, OSError) as error:
    problems = record_file_problems(source)
    if not problems and "Riegeli" not in str(error):  # array_record's files are Riegeli files: others are bugs
      raise
    raise damaged_records_error(source, problems or [f"a record file cannot be read: {error}"]) from error


def check_record_files(source) -> None:
  """A DataError unless every record file of a TFDS data source opens and holds its records."""
  problems = record_file_problems(source)
  if problems:
    raise damaged_records_error(source, problems)


def damaged_records_error(source, problems: list[str]) -> DataError:
  info = source.dataset_info
  return DataError(f"The prepared data set {info.full_name} in {info.data_dir} is damaged or incomplete: "
                   f"{'; '.join(problems)}. {_prepare_again(info)}")


def _prepare_again(info) -> str:
  """How to make a damaged prepared set whole again: the command that prepares it again, or deleting a built-in set
  (generated again on first use); copying a complete copy again fits every set."""
  try:
    builder_cls = tfds.builder_cls(info.name)
  except tfds.core.registered.DatasetNotFoundError:  # a set of yours read by its name alone, its builder not imported
    builder_cls = None
  folder = epath.Path(info.data_dir)
  if builder_cls is None or not issubclass(builder_cls, LocalBuilder):
    return "Prepare it again, or copy it again from a complete copy."
  if not issubclass(builder_cls, ManualBuilder):
    return f"Delete {folder}: fer_jax generates its built-in sets again on first use (or copy it again whole)."
  dataset = info.name if builder_cls.__module__.startswith("fer_jax.") else builder_cls.__module__
  config = f"/{info.config_name}" if info.config_name else ""
  return (f"Prepare it again from your download with:\n  python -m fer_jax.data.prepare --dataset={dataset}{config} "
          f"--manual_dir=PATH_TO_DOWNLOAD --data_dir={folder.parents[1 + bool(config)]} --overwrite\n"
          "or copy it again from a complete copy.")


def write_label_index(builder) -> None:
  """Writes the label index of every split that lacks one (each file whole or not at all)."""
  for split in builder.info.splits:
    path = label_index_path(builder, split)
    if not path.exists():
      with files.written_whole(os.fspath(path), "wb") as f:
        np.save(f, read_label_columns(builder, split), allow_pickle=False)


def label_columns(builder, split: str) -> np.ndarray:
  """The split's label index, or its columns read from the records where it has none (a set
  prepared before the index existed, or one not built by `ManualBuilder`)."""
  path = label_index_path(builder, split)
  if not path.exists():
    if isinstance(builder, ManualBuilder):  # the built-in sets are small and keep no index
      logging.info("%s has no label index %s; reading the labels from every record instead (for a set prepared "
                   "by `python -m fer_jax.data.prepare` before indexes existed, running it again adds the index "
                   "without rebuilding the set).", builder.info.full_name, path)
    return read_label_columns(builder, split)
  with path.open("rb") as f:
    table = np.load(f, allow_pickle=False)
  expected = builder.info.splits[split].num_examples
  if len(table) != expected:
    raise DataError(f"The label index {path} has {len(table)} rows but split {split!r} has {expected} records. "
                    "Delete it and run `python -m fer_jax.data.prepare` for this set again to rewrite it.")
  return table
