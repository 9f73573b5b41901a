"""RAF-DB basic (docs/methods/datasets.md §5.3): 7 classes, train 12,271 / test 3,068.

Config `basic` reads the official 100×100 aligned faces; `aligned224` reads APViT's
224×224 MTCNN re-alignment (`Image/aligned_224/`, `EmoLabel/train.txt`/`test.txt`). Labels
1–7 are stored as 0–6 in RAF-DB's own order. `file_name` is the name in the label file
without `_aligned` (`train_00001.jpg`), the same in both configs.

When the occlusion and pose list files of Wang et al. (github.com/kaiwang960112/
Challenge-condition-FER-dataset) are present, their test subsets become the extra splits
`test_occlusion`, `test_pose30` and `test_pose45`, labelled from the official label file.
"""

import dataclasses

from absl import logging
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels

ROOTS = (".", "basic", "RAF-DB/basic")
SUBSET_LISTS = {
    "test_occlusion": ("rafdb_occlusion_list.txt",),
    "test_pose30": ("val_raf_db_list.txt", "val_raf_db_list_pose_30.txt"),
    "test_pose45": ("val_raf_db_list_45.txt", "val_raf_db_list_pose_45.txt"),
}
NUM_CLASSES = len(labels.CLASS_ORDERS["rafdb"])
# rafdb_occlusion_list.txt has 735 lines but names test_2464 twice.
EXPECTED = {"train": 12_271, "test": 3_068, "test_occlusion": 734, "test_pose30": 1_247, "test_pose45": 558}

LAYOUT = """\
  MANUAL_DIR/                       RAF-DB's basic/ folder (or a folder holding basic/)
    EmoLabel/list_patition_label.txt    lines "train_00001.jpg 5", "test_0001.jpg 4" (labels 1-7)
    Image/aligned/train_00001_aligned.jpg ...
  config aligned224 (APViT's RAF-DB.zip) instead needs:
    EmoLabel/train.txt, EmoLabel/test.txt   lines "train_00001.jpg 5"
    Image/aligned_224/train_00001.jpg ...
  optional test subsets (Wang et al.), in EmoLabel/ or MANUAL_DIR:
    rafdb_occlusion_list.txt, val_raf_db_list.txt (pose > 30), val_raf_db_list_45.txt (pose > 45)"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request RAF-DB at http://www.whdeng.cn/raf/model1.html (non-commercial research only; e-mail
the signed agreement). For config aligned224, download RAF-DB.zip from APViT's release
(github.com/youqingxiaozhua/APViT, README "Data preparation" gives the password rule).
Expected layout:
{LAYOUT}
"""


@dataclasses.dataclass
class RafdbConfig(tfds.core.BuilderConfig):
  image_folder: str = "Image/aligned"
  label_files: tuple[str, ...] = ("EmoLabel/list_patition_label.txt",)
  image_suffix: str = "_aligned"


def base_name(name: str) -> str:
  """`test_0003` from `test_0003_aligned`, `0/test_0003_aligned.jpg` or `test_0003.jpg`."""
  stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
  return stem.removesuffix("_aligned")


class Rafdb(builder_utils.ManualBuilder):
  """RAF-DB basic in its own class order; splits train / test (+ occlusion and pose test subsets)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      RafdbConfig(name="basic", description="Official 100×100 aligned faces (DAN, SCAN-CCI)."),
      RafdbConfig(name="aligned224", description="APViT's 224×224 MTCNN re-alignment.",
                  image_folder="Image/aligned_224", label_files=("EmoLabel/train.txt", "EmoLabel/test.txt"),
                  image_suffix=""),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "basic"
  EXPECTED_SIZES = {"basic": EXPECTED, "aligned224": EXPECTED}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.face_info(labels.CLASS_ORDERS["rafdb"], homepage="http://www.whdeng.cn/raf/model1.html")

  def _split_generators(self, dl_manager):
    manual = self.manual_root(dl_manager)
    config = self.builder_config
    root = builder_utils.find_path(manual, tuple(f"{r}/{config.label_files[0]}" for r in ROOTS),
                                   f"the RAF-DB label file {config.label_files[0]}", LAYOUT).parents[1]
    images = builder_utils.find_path(root, (config.image_folder,), "the RAF-DB image folder", LAYOUT)
    splits = self._read_splits(root)
    for split, entries in splits.items():
      if not entries:  # the subset lists would name images the split lacks, blaming a correct list
        raise self._empty_split_error(split)
    test_labels = {base: label for base, (_, label, _) in splits["test"].items()}
    for split, path in builder_utils.find_subset_lists((root / "EmoLabel", manual), SUBSET_LISTS).items():
      keys = builder_utils.listed_keys(path, parse_subset_entry, test_labels, test_labels, range(NUM_CLASSES),
                                       "the RAF-DB test split")
      splits[split] = {key: splits["test"][key] for key in keys}
      self.split_sources[split] = path
    return {split: self._generate_examples(split, self._records(images, entries))
            for split, entries in splits.items()}

  def _read_splits(self, root) -> dict[str, dict[str, tuple[str, int, str]]]:
    """{split: {base name: (name, label 0-6, the label file line that gives it)}} from the config's label files."""
    splits = {"train": {}, "test": {}}
    paths = [builder_utils.find_path(root, (label_file,), f"the RAF-DB label file {label_file}", LAYOUT)
             for label_file in self.builder_config.label_files]
    self.split_sources.update(dict.fromkeys(splits, " and ".join(map(str, paths))))
    first_lines, repeats = {}, []
    for path in paths:
      for line, text in builder_utils.read_lines(path):
        where = f"{path}, line {line}"
        name, label = _name_and_label(text, where)
        split, base = name.split("_", 1)[0], base_name(name)
        if split not in splits:
          raise builder_utils.DataError(f"{where}: {name!r} starts with neither train_ nor test_, as every image of "
                                        "the official label files does (\"train_00001.jpg 5\", \"test_0001.jpg 4\"). "
                                        "Correct the line or restore the file from the owners' download.")
        label = builder_utils.parse_label(label, range(1, NUM_CLASSES + 1), where) - 1
        if base in splits[split] and splits[split][base][1] != label:
          raise builder_utils.DataError(f"{where}: {name!r} is labelled {label + 1}, but {first_lines[base]} gives it "
                                        f"{splits[split][base][1] + 1}. Keep one of the lines, or restore the file "
                                        "from the owners' download.")
        if base in splits[split]:
          repeats.append(f"{where} repeats {first_lines[base]}")
        first_lines.setdefault(base, where)
        splits[split][base] = (f"{base}.jpg", label, first_lines[base])
    if repeats:
      logging.warning("RAF-DB: %d label lines repeat an earlier line's image and label (%s); each image is kept once, "
                      "where a loader reading every line (the official ones) would train on it twice.", len(repeats),
                      repeats[0])
    return splits

  def _records(self, images, entries):
    suffix = self.builder_config.image_suffix
    for base, (name, label, where) in entries.items():
      yield builder_utils.Record(file_name=name, label=label, image=images / f"{base}{suffix}.jpg", where=where)


def _name_and_label(text: str, where: str) -> tuple[str, str]:
  """The two fields of a label file's line, separated by any whitespace."""
  fields = text.split()
  if len(fields) != 2:
    raise builder_utils.DataError(f"{where}: {text!r} is not a line \"<image name> <label 1-7>\" (as "
                                  "\"train_00001.jpg 5\"). Correct the line or restore the file from the owners' download.")
  return fields[0], fields[1]


def parse_subset_entry(text: str) -> tuple[str, str | None]:
  """(base name, the list's 0-based label) of "test_0003_aligned 3 4" or "0/test_0004_aligned.jpg"."""
  tokens = text.split()
  if "/" in tokens[0]:
    list_label, name = tokens[0].split("/", 1)
    return base_name(name), list_label
  return base_name(tokens[0]), tokens[1] if len(tokens) > 1 else None
