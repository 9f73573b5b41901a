"""FERPlus (docs/methods/datasets.md §5.2): FER2013 faces relabelled by 10 annotators, 8 classes.

Votes come from the folders' `label.csv` files when present (what the FERPlus trainer and
SCAN-CCI read; both layouts, with and without the face-box column), otherwise from
`fer2013new.csv`; the two disagree on about 4% of the images, so a download where only some
folders hold a `label.csv` is refused rather than mixing them. Images come from the
PNGs written by FERPlus's `generate_training_data.py`, or are regenerated the same way from
`fer2013.csv` when a folder holds no PNGs.

Configs turn the 10 vote counts (8 emotions, unknown, not-a-face) into a label:
  majority      FERPlus's "majority" rule: single votes are discarded, then the top class
                must hold more than half of the remaining votes;
  plurality     the class with the most raw votes (first in column order on ties);
  distribution  FERPlus's "crossentropy"/"probability" target, kept as `vote_distribution`,
                with its argmax as `label`.
Images whose label would be unknown or not-a-face are dropped. Every config keeps the raw
counts as `votes`.

When the occlusion and pose list files of Wang et al. (github.com/kaiwang960112/
Challenge-condition-FER-dataset) are present, their subsets of the test split become the
extra splits `test_occlusion`, `test_pose30` and `test_pose45`, labelled by the config.
"""

import functools
import itertools
import re
from typing import Iterable, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels
from fer_jax.data.builders import fer2013

FOLDERS = {"train": ("FER2013Train", "Training"), "validation": ("FER2013Valid", "PublicTest"),
           "test": ("FER2013Test", "PrivateTest")}
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
NUM_EMOTIONS = 8  # the columns before unknown and NF, in the ferplus class order
SUBSET_LISTS = {  # Wang et al.'s names first, then SCAN-CCI's
    "test_occlusion": ("jianfei_occlusion_list.txt", "occlusion_list.txt"),
    "test_pose30": ("pose_30_ferplus_list.txt", "pose_30_list.txt"),
    "test_pose45": ("pose_45_ferplus_list.txt", "pose_45_list.txt"),
}
SUBSET_ENTRY = re.compile(r"(\d+)[_/](fer\d+)\.(?:png|jpg)")

LAYOUT = """\
  MANUAL_DIR/fer2013new.csv              from github.com/microsoft/FERPlus
  MANUAL_DIR/[data/]FER2013Train/        label.csv and fer0000000.png ... from
  MANUAL_DIR/[data/]FER2013Valid/          generate_training_data.py
  MANUAL_DIR/[data/]FER2013Test/
  MANUAL_DIR/fer2013.csv                 Kaggle's FER2013 CSV; needed only when a folder
                                         holds no PNGs (the images are regenerated from it)
  optional test subsets (Wang et al.), in MANUAL_DIR or [data/]FER2013Test/:
    jianfei_occlusion_list.txt, pose_30_ferplus_list.txt, pose_45_ferplus_list.txt"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Clone github.com/microsoft/FERPlus (labels, MIT licence) and download fer2013.csv from the
Kaggle FER2013 competition. Either run FERPlus's
  python src/generate_training_data.py -d data -fer fer2013.csv -ferplus fer2013new.csv
and point the manual directory at the clone, or put fer2013.csv in the clone's root and let
the builder regenerate the images. Expected layout:
{LAYOUT}
"""

# Split sizes from the official label files and Wang et al.'s lists: {(config, votes file): {split: size}}.
WHOLE_LISTS = {"test_occlusion": 605, "test_pose30": 1_170, "test_pose45": 633}
EXPECTED_SIZES = {
    ("majority", "label.csv"): {"train": 25_045, "validation": 3_191, "test": 3_137, **WHOLE_LISTS},
    ("majority", "fer2013new.csv"): {"train": 25_057, "validation": 3_199, "test": 3_153,
                                     "test_occlusion": 600, "test_pose30": 1_167, "test_pose45": 630},
    ("plurality", "label.csv"): {"train": 28_385, "validation": 3_555, "test": 3_545, **WHOLE_LISTS},
    ("plurality", "fer2013new.csv"): {"train": 28_386, "validation": 3_553, "test": 3_546, **WHOLE_LISTS},
    ("distribution", "label.csv"): {"train": 27_947, "validation": 3_508, "test": 3_507, **WHOLE_LISTS},
    ("distribution", "fer2013new.csv"): {"train": 27_953, "validation": 3_505, "test": 3_505,
                                         "test_occlusion": 603, "test_pose30": 1_170, "test_pose45": 633},
}


def majority_label(votes: np.ndarray) -> int | None:
  """FERPlus "majority": drop single votes; the top class needs > 50% of what is left."""
  kept = np.where(votes > 1, votes, 0)
  top = int(np.argmax(kept))
  if kept[top] > 0.5 * kept.sum() and top < NUM_EMOTIONS:
    return top
  return None


def plurality_label(votes: np.ndarray) -> int | None:
  """The class with the most raw votes, the first in column order on ties."""
  top = int(np.argmax(votes))
  return top if top < NUM_EMOTIONS else None


def vote_distribution(votes: np.ndarray) -> np.ndarray | None:
  """FERPlus "crossentropy" target over the 8 emotions, or None when it marks the image unknown.

  After dropping single votes, the most voted classes are taken in rounds (all classes tied
  at a round's top together) until they hold 75% of the votes or 3 classes are taken. A
  round that reaches unknown/not-a-face stops the rounds; such a class is kept only if it
  was the very first taken. The result is unknown when the taken classes hold at most half
  of the votes, more than 3 were taken, or the top one is unknown/not-a-face.
  """
  remaining = [int(v) if v > 1 else 0 for v in votes]
  total = sum(remaining)
  taken = [0] * len(remaining)
  covered = count = 0
  stopped = False
  while covered < 0.75 * total and count < 3 and not stopped:
    peak = max(remaining)
    for index, value in enumerate(remaining):
      if value != peak:
        continue
      taken[index], remaining[index] = peak, 0
      covered += peak
      count += 1
      if index >= NUM_EMOTIONS:
        stopped = True
        if sum(taken) > peak:
          taken[index] = 0
          count -= 1
        break
  if sum(taken) <= 0.5 * total or count > 3 or int(np.argmax(taken)) >= NUM_EMOTIONS:
    return None
  emotions = np.array(taken[:NUM_EMOTIONS], np.float32)
  return emotions / emotions.sum()


def _majority(votes):
  label = majority_label(votes)
  return None if label is None else {"label": label}


def _plurality(votes):
  label = plurality_label(votes)
  return None if label is None else {"label": label}


def _distribution(votes):
  distribution = vote_distribution(votes)
  if distribution is None:
    return None
  return {"label": int(np.argmax(distribution)), "vote_distribution": distribution}


RULES = {"majority": _majority, "plurality": _plurality, "distribution": _distribution}


def parse_votes(values: list[str], where: str) -> np.ndarray:
  return np.array([builder_utils.parse_label(v, range(11), where, "vote count") for v in values], np.int32)


def read_label_csv(path) -> Iterator[tuple[int, str, np.ndarray]]:
  """(line, image name, votes) of a folder's label.csv, with or without the face-box column."""
  for line, row in builder_utils.csv_rows(path):
    where = f"{path}, line {line}"
    has_box = len(row) > 1 and row[1].strip().startswith("(")
    columns = ("image name", *(("face box",) if has_box else ()), *VOTE_COLUMNS)
    builder_utils.check_columns(row, columns, where)
    if not row[0].strip():
      raise builder_utils.DataError(f"{where}: the image name (first column) is empty. Correct the line or "
                                    "restore the file from the owners' download.")
    yield line, row[0].strip(), parse_votes(row[len(columns) - len(VOTE_COLUMNS):], where)


def read_fer2013new(path) -> Iterator[tuple[int, str, str, np.ndarray]]:
  """(line, Usage (checked), image name or "" for non-faces, votes) of every row of fer2013new.csv."""
  rows = builder_utils.csv_rows(path)
  header_line, header = next(rows, (1, []))
  header = [name.strip() for name in header]
  if header[:2] != ["Usage", "Image name"] or tuple(header[2:]) != VOTE_COLUMNS:
    raise builder_utils.DataError(f"{path}, line {header_line}: unexpected header {header}; expected Usage, "
                                  f"Image name, {', '.join(VOTE_COLUMNS)}.")
  for line, row in rows:
    where = f"{path}, line {line}"
    builder_utils.check_columns(row, header, where)
    yield line, fer2013.check_usage(row[0].strip(), where), row[1].strip(), parse_votes(row[2:], where)


def _votes_by_name(path, rows: Iterable[tuple[int, str, np.ndarray]],
                   keep_first: bool = False) -> dict[str, np.ndarray]:
  """{image name: votes} of a split's (line, name, votes) rows: a name listed again with the same votes is kept
  once; with other votes it is refused, naming both lines, or (`keep_first`: fer2013new.csv, which names
  fer0033120.png on two rows with other votes) the first row's votes are kept, as FERPlus's label.csv keeps them."""
  votes, first_line = {}, {}
  for line, name, row_votes in rows:
    if name in votes and not np.array_equal(votes[name], row_votes):
      if keep_first:
        logging.warning("%s, line %d: %s has other votes than on line %d; the votes of line %d are kept, as "
                        "FERPlus's label.csv keeps them.", path, line, name, first_line[name], first_line[name])
        continue
      raise builder_utils.DataError(f"{path}, line {line}: {name} has other votes than on line {first_line[name]}. "
                                    "Keep one of the rows, or restore the file from the owners' download.")
    votes.setdefault(name, row_votes)
    first_line.setdefault(name, line)
  return votes


class Ferplus(builder_utils.ManualBuilder):
  """FERPlus in its own class order (8 classes); splits train / validation / test (+ occlusion and pose
  test subsets)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  CHANNELS = 1
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="majority", description="FERPlus majority vote (the default)."),
      tfds.core.BuilderConfig(name="plurality", description="The most voted class."),
      tfds.core.BuilderConfig(name="distribution", description="FERPlus crossentropy vote distribution."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "majority"

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"votes": tfds.features.Tensor(shape=(len(VOTE_COLUMNS),), dtype=np.int32)}
    if self.builder_config.name == "distribution":
      features["vote_distribution"] = tfds.features.Tensor(shape=(NUM_EMOTIONS,), dtype=np.float32)
    return self.face_info(labels.CLASS_ORDERS["ferplus"], extra_features=features,
                          homepage="https://github.com/microsoft/FERPlus", **fer2013.STORED_IMAGE)

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    votes = self._read_votes(root)
    records = {split: self._records(root, split, votes[split]) for split in FOLDERS}
    lists = builder_utils.find_subset_lists((root, root / "FER2013Test", root / "data" / "FER2013Test"), SUBSET_LISTS)
    if lists:
      test = {record.file_name.split("/")[1]: record for record in self._records(root, "test", votes["test"])}
      labels = {name: record.label for name, record in test.items()}
      for split, path in lists.items():
        keys = builder_utils.listed_keys(path, parse_subset_entry, labels, votes["test"], range(NUM_EMOTIONS),
                                         f"FERPlus's test split ({self.split_sources['test']})")
        records[split] = [test[key] for key in keys]
        self.split_sources[split] = path
    return {split: self._generate_examples(split, split_records) for split, split_records in records.items()}

  def _expected_size(self, split: str) -> int | None:
    return EXPECTED_SIZES.get((self.builder_config.name, self._votes_file), {}).get(split)

  def _read_votes(self, root) -> dict[str, dict[str, np.ndarray]]:
    """{split: {image name: votes}}, from every folder's label.csv, else all from fer2013new.csv: never
    a mix, as the two disagree on about 4% of the images."""
    label_csvs = {split: path for split in FOLDERS if (path := _label_csv(root, split)) is not None}
    if label_csvs and len(label_csvs) < len(FOLDERS):
      missing = ", ".join(f"{FOLDERS[split][0]}/label.csv" for split in FOLDERS if split not in label_csvs)
      raise builder_utils.DataError(
          f"{root} has {next(iter(label_csvs.values()))} but lacks {missing}: the splits would take their votes "
          "from different files, which disagree on about 4% of the images. Restore every label.csv from "
          "github.com/microsoft/FERPlus (generate_training_data.py), or move them all away to take every split's "
          "votes from fer2013new.csv.")
    if label_csvs:
      self._votes_file, self.split_sources = "label.csv", dict(label_csvs)
      return {split: _votes_by_name(path, read_label_csv(path)) for split, path in label_csvs.items()}
    new_csv = builder_utils.find_path(root, ("fer2013new.csv",), "FERPlus's fer2013new.csv", LAYOUT)
    self._votes_file, self.split_sources = "fer2013new.csv", dict.fromkeys(FOLDERS, new_csv)
    split_of_usage = {usage: split for split, (_, usage) in FOLDERS.items()}
    rows = {split: [] for split in FOLDERS}
    for line, usage, name, row_votes in read_fer2013new(new_csv):
      if name:
        rows[split_of_usage[usage]].append((line, name, row_votes))
    return {split: _votes_by_name(new_csv, split_rows, keep_first=True) for split, split_rows in rows.items()}

  def _records(self, root, split: str, votes: dict):
    folder_name, usage = FOLDERS[split]
    folder = _folder(root, split)
    if folder is not None and any(path.suffix.lower() == ".png" for path in folder.iterdir()):  # .PNG named below
      images = ((name, folder / name) for name in votes)
    else:
      images = _regenerated_images(root, usage, votes)
    rule = RULES[self.builder_config.name]
    for name, image in images:
      extras = rule(votes[name])
      if extras is not None:
        label = extras.pop("label")
        yield builder_utils.Record(file_name=f"{folder_name}/{name}", label=label, image=image,
                                   extras={"votes": votes[name], **extras})


def _folder(root, split: str):
  """The split's folder (FER2013Train, ...) in `root` or `root/data`; None when neither has it."""
  name = FOLDERS[split][0]
  return next((base / name for base in (root, root / "data") if (base / name).exists()), None)


def _label_csv(root, split: str):
  """The label.csv in the split's folder; None when the folder or the file is missing."""
  folder = _folder(root, split)
  return folder / "label.csv" if folder is not None and (folder / "label.csv").exists() else None


def parse_subset_entry(text: str) -> tuple[str, str]:
  """(image name, the list's label) of "1_fer0034656.png 8 0" (occlusion) or "0/fer0032226.jpg" (pose)."""
  match = SUBSET_ENTRY.fullmatch(text.split()[0])
  if match is None:
    raise ValueError('expected "1_fer0034656.png 8 0" or "0/fer0032226.jpg"')
  return f"{match[2]}.png", match[1]


def _regenerated_images(root, usage: str, votes: dict):
  """(name, PNG maker) for `votes`' images, pairing fer2013.csv and fer2013new.csv rows as FERPlus does."""
  fer_csv = builder_utils.find_path(root, fer2013.CSV_NAMES, "the FER2013 CSV to regenerate the FERPlus "
                                    "images from (no PNGs found)", LAYOUT)
  new_csv = builder_utils.find_path(root, ("fer2013new.csv",), "FERPlus's fer2013new.csv", LAYOUT)
  # fer2013new.csv names 4 images on two rows each: generate_training_data.py writes both, the later row's
  # pixels replacing the earlier's, so the image is the name's last row.
  last_line = {name: line for line, row_usage, name, _ in read_fer2013new(new_csv) if row_usage == usage and name}
  found = set()
  for fer_row, new_row in itertools.zip_longest(fer2013.read_rows(fer_csv), read_fer2013new(new_csv)):
    if fer_row is None or new_row is None:
      longer, extra, shorter = (fer_csv, fer_row[0], new_csv) if new_row is None else (new_csv, new_row[0], fer_csv)
      raise builder_utils.DataError(
          f"{longer} has more image rows than {shorter} (line {extra} on): the files are not row-aligned, so "
          "images would be paired with other rows' votes. Restore both from the owners' downloads.")
    (line, _, pixels, fer_usage), (new_line, new_usage, name, _) = fer_row, new_row
    if fer_usage != new_usage:
      raise builder_utils.DataError(
          f"{fer_csv}, line {line} (Usage {fer_usage}) and {new_csv}, line {new_line} "
          f"(Usage {new_usage}) disagree: the files are not row-aligned.")
    if fer_usage == usage and name in votes and new_line == last_line[name]:
      found.add(name)
      yield name, functools.partial(fer2013.pixels_to_png, pixels)
  missing = sorted(set(votes) - found)
  if missing:
    raise builder_utils.DataError(f"{len(missing)} labelled images (e.g. {missing[:3]}) have no row in "
                                  f"{fer_csv} and {new_csv}.")
