"""FED-RO (Li et al., TIP 2019; docs/methods/datasets.md §5.6): about 400 faces with real occlusions.

A test-only set in 7 class folders (`neural` (sic), happy, sad, surprise, fear, disgust,
anger), labelled in AffectNet's code order without Contempt, as SCAN-CCI maps them.
"""

import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels

ROOTS = ("FED_RO_crop", "FED_RO/FED_RO_crop", ".")
CLASS_FOLDERS = {"neural": 0, "neutral": 0, "happy": 1, "sad": 2, "surprise": 3, "fear": 4, "disgust": 5,
                 "anger": 6}

LAYOUT = """\
  MANUAL_DIR/[FED_RO/][FED_RO_crop/]{neural,happy,sad,surprise,fear,disgust,anger}/*.jpg"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download FED-RO through the links in the README of github.com/mysee1989/PG-CNN and unpack it
into the manual directory:
{LAYOUT}
"""


class Fedro(builder_utils.ManualBuilder):
  """FED-RO, labels in AffectNet's 7-class order; split test."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  EXPECTED_SIZES = {None: {"test": 400}}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.face_info(labels.CLASS_ORDERS["affectnet7"], homepage="https://github.com/mysee1989/PG-CNN")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    folder = next((root / r for r in ROOTS if _has_class_folders(root / r)), None)
    if folder is None:
      tried = ", ".join(str(root / r) for r in ROOTS)
      raise builder_utils.DataError(f"Cannot find FED-RO's class folders in any of {tried}. "
                                    f"{builder_utils.archives_note(root, ROOTS)}The manual directory should look "
                                    f"like:\n{LAYOUT}")
    self.split_sources["test"] = folder
    return {"test": self._generate_examples("test", builder_utils.class_folder_records(
        folder, CLASS_FOLDERS, root, LAYOUT))}


def _has_class_folders(folder) -> bool:
  return folder.is_dir() and any(child.is_dir() and child.name.lower() in CLASS_FOLDERS
                                 for child in folder.iterdir())
