"""The built-in synthetic FER set: procedurally rendered faces, no download needed."""

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from fer_jax.data import builder_utils
from fer_jax.data import synthetic_faces

SPLIT_SEEDS = {"train": 1, "test": 2}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  image_size: int = 96
  train_size: int = 8_000
  test_size: int = 2_000
  seed: int = 0


class Synthetic(builder_utils.LocalBuilder):
  """Face-like images of the 7 basic expressions with pose, lighting and occlusion nuisances."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Larger faces and features, milder pose and occlusion.", "1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="96×96, 8,000 train / 2,000 test."),
      SyntheticConfig(name="tiny", description="32×32, 280 train / 70 test (tests).",
                      image_size=32, train_size=280, test_size=70),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.face_info(synthetic_faces.CLASSES, image_shape=(size, size, 3), encoding_format="png",
                          description=synthetic_faces.__doc__)

  def _split_generators(self, dl_manager):
    config = self.builder_config
    return {"train": self._generate_examples("train", config.train_size),
            "test": self._generate_examples("test", config.test_size)}

  def _generate_examples(self, split: str, count: int):
    config = self.builder_config
    num_classes = len(synthetic_faces.CLASSES)
    for index in range(count):
      rng = np.random.default_rng([config.seed, SPLIT_SEEDS[split], index])
      label = index % num_classes
      buffer = io.BytesIO()
      Image.fromarray(synthetic_faces.render(label, rng, config.image_size)).save(buffer, format="PNG")
      yield index, {"image": buffer.getvalue(), "label": label}
