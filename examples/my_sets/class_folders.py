"""Face crops sorted into one folder per class, a train and a test split: a data set of yours that
fer_jax prepares and trains on as its own (docs/extending.md).

  python -m fer_jax.data.prepare --dataset=my_sets.class_folders --manual_dir=DIR --data_dir=TFDS_DIR

prepares it as the TFDS set "class_folders", which a config then names in config.dataset.name.
"""

import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import labels

# The folder names, mapped to class names fer_jax knows (fer_jax.data.labels): runs map a set's
# classes to their config.dataset.class_order by these names.
CLASS_NAMES = labels.CLASS_ORDERS["fer2013"]
LAYOUT = "  MANUAL_DIR/{train,test}/{" + ",".join(CLASS_NAMES) + "}/*.{png,jpg}"


class ClassFolders(builder_utils.ManualBuilder):
  """MANUAL_DIR/<split>/<class>/<image>, classes in FER2013's order."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put the images into the manual directory as:\n{LAYOUT}\n"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.face_info(CLASS_NAMES)  # image, label and file_name; this module's docstring; version 1.0.0

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    folders = {name: index for index, name in enumerate(CLASS_NAMES)}
    generators = {}
    for split in ("train", "test"):
      self.split_sources[split] = builder_utils.find_path(root, [split], f"the {split} folder", LAYOUT)
      generators[split] = self._generate_examples(split, builder_utils.class_folder_records(
          self.split_sources[split], folders, root, LAYOUT))
    return generators
