"""SFEW 2.0 (docs/methods/datasets.md §5.5): movie frames in 7 per-class folders, Train / Val.

Config `aligned` (the default, what SCAN-CCI reads) takes the organisers' aligned faces,
`original` the whole frames. Labels follow the class folders' alphabetical order, which is
SFEW's own. The test set's labels are hidden, so there is no test split; results are
reported on `validation`.
"""

import dataclasses

import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels

CLASS_FOLDERS = {name: index for index, name in enumerate(
    ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"))}
# Train/ and Val/ may hold the aligned faces beside the original frames' class folders.
ALIGNED_FOLDERS = ("train_aligned_faces", "val_aligned_faces", "val_aligned_faces_new")

LAYOUT = """\
  config aligned:
    MANUAL_DIR/[Train/]Train_Aligned_Faces/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png
    MANUAL_DIR/[Val/]Val_Aligned_Faces[_new]/<the same class folders>/*.png
  config original:
    MANUAL_DIR/Train/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png
    MANUAL_DIR/Val/<the same class folders>/*.png"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request SFEW 2.0 (the EmotiW 2015 static sub-challenge set) from its organisers, Dhall et al.
(academic use only), and unpack the Train and Val archives into the manual directory:
{LAYOUT}
"""


@dataclasses.dataclass
class SfewConfig(tfds.core.BuilderConfig):
  folders: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


class Sfew(builder_utils.ManualBuilder):
  """SFEW 2.0 in its own (alphabetical) class order; splits train / validation."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      SfewConfig(name="aligned", description="The organisers' aligned faces.",
                 folders={"train": ("Train_Aligned_Faces", "Train/Train_Aligned_Faces"),
                          "validation": ("Val_Aligned_Faces", "Val/Val_Aligned_Faces", "Val_Aligned_Faces_new",
                                         "Val/Val_Aligned_Faces_new")}),  # Val_Aligned_Faces_new.zip unpacked
      SfewConfig(name="original", description="The whole movie frames.",
                 folders={"train": ("Train",), "validation": ("Val",)}),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "aligned"
  EXPECTED_SIZES = {"original": {"train": 958, "validation": 436}}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.face_info(labels.CLASS_ORDERS["sfew"])

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    splits = {}
    for split, candidates in self.builder_config.folders.items():
      folder = builder_utils.find_path(root, candidates, f"the SFEW {split} folder", LAYOUT)
      self.split_sources[split] = folder
      splits[split] = builder_utils.class_folder_records(folder, CLASS_FOLDERS, root, LAYOUT, ALIGNED_FOLDERS)
    return {split: self._generate_examples(split, records) for split, records in splits.items()}
