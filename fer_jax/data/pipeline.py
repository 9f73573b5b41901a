"""TFDS data sources → Grain → global `jax.Array` batches on the mesh.

The order of training examples is a pure function of (seed, position in the run): epoch e
draws its sampler permutation from (seed, e) and the augmentation of the example at global
position p draws from (seed, p). A run resumed at step s therefore sees exactly the batches
an uninterrupted run would, without saving iterator state. Each process reads only its own
slice of every global batch.
"""

import dataclasses
import functools
import math
import os

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax.data import labels as labels_lib
from fer_jax.data.builder_utils import DataError
from fer_jax.data import preprocess

AUTO_PREPARED = ("synthetic",)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a prepared data set, with labels already in the config's class order."""
  source: object
  labels: np.ndarray          # per record, in the target order; -1 = class not used
  class_names: tuple[str, ...]

  @property
  def indices(self) -> np.ndarray:
    return np.flatnonzero(self.labels >= 0)


def _builder(dataset_config):
  import fer_jax.data.builders  # noqa: F401  (registers our builders with TFDS)
  data_dir = os.path.expanduser(dataset_config.data_dir) if dataset_config.data_dir else None
  try:
    builder = tfds.builder(dataset_config.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"Unknown data set {dataset_config.name!r} (config.dataset.name). {e}") from e
  if not builder.is_prepared():
    base = dataset_config.name.split("/")[0]
    if base in AUTO_PREPARED:
      builder.download_and_prepare(file_format="array_record")
    else:
      raise DataError(
          f"Data set {dataset_config.name!r} is not prepared in {builder.data_dir}. Prepare it "
          f"once from your own download with:\n  python -m fer_jax.data.prepare --dataset={dataset_config.name} "
          f"--manual_dir=PATH_TO_DOWNLOAD{' --data_dir=' + data_dir if data_dir else ''}\n"
          "(README, 'Preparing data', shows the layout each data set needs).")
  return builder


def load_split(config, split: str, max_per_class: int = 0) -> Split:
  """Opens a prepared split and maps its labels to `config.dataset.class_order`.

  With `max_per_class`, only the first that many records of each class count, in annotation
  order (the builder's `annotation_index` where it has one, else record order).
  """
  builder = _builder(config.dataset)
  for part in split.split("+"):  # "train+validation" reads both, in that order
    name = part.split("[")[0].strip()
    if name not in builder.info.splits:
      raise DataError(f"Data set {config.dataset.name!r} has no split {name!r}; "
                      f"its splits are: {', '.join(builder.info.splits)} (join several with '+').")
  target = labels_lib.class_names(config.dataset.class_order)
  if len(target) != config.model.num_classes:
    raise DataError(f"config.dataset.class_order {config.dataset.class_order!r} has {len(target)} classes "
                    f"but config.model.num_classes is {config.model.num_classes}.")
  mapping = labels_lib.label_map(tuple(builder.info.features["label"].names), target)
  raw_labels, annotation_order = _read_labels_and_order(builder, split)
  split_labels = mapping[raw_labels]
  if max_per_class:
    split_labels = keep_first_per_class(split_labels, max_per_class, annotation_order)
  return Split(builder.as_data_source(split), split_labels, target)


def _read_labels_and_order(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Every record's label and its annotation_index (its position where the set has none)."""
  skip_images = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.Image)}
  source = builder.as_data_source(split, decoders=skip_images)
  split_labels, order = np.empty(len(source), np.int32), np.arange(len(source))
  for i in range(len(source)):
    record = source[i]
    split_labels[i] = record["label"]
    order[i] = record.get("annotation_index", i)
  return split_labels, order


def keep_first_per_class(split_labels: np.ndarray, limit: int, order: np.ndarray) -> np.ndarray:
  """Labels with every record past the first `limit` of its class (ranked by `order`) set to −1."""
  kept = split_labels.copy()
  ranked = np.argsort(order, kind="stable")
  for label in np.unique(split_labels[split_labels >= 0]):
    kept[ranked[split_labels[ranked] == label][limit:]] = -1
  return kept


def epoch_indices(split: Split, sampler: str, seed: int, epoch: int, repeat_threshold: float) -> np.ndarray:
  """Record indices of one epoch, in training order."""
  rng = np.random.default_rng([seed, epoch])
  indices = split.indices
  labels = split.labels[indices]
  counts = np.bincount(labels, minlength=len(split.class_names))
  if sampler == "uniform":
    return rng.permutation(indices)
  if sampler == "class_balanced":  # draws with replacement, weight 1 / class count
    weights = 1.0 / counts[labels]
    return rng.choice(indices, size=len(indices), replace=True, p=weights / weights.sum())
  if sampler == "repeat_factor":   # every image repeated ceil(max(1, sqrt(t / f_class))) times
    frequency = counts[labels] / len(indices)
    repeats = np.ceil(np.maximum(1.0, np.sqrt(repeat_threshold / frequency))).astype(int)
    return rng.permutation(np.repeat(indices, repeats))
  raise ValueError(f"Unknown config.dataset.sampler {sampler!r}; valid: uniform, class_balanced, repeat_factor.")


def _check_image(image: np.ndarray, config, pipeline: str) -> np.ndarray:
  expected = (config.input.size, config.input.size, config.input.channels)
  if image.shape != expected or image.dtype != np.float32:
    raise DataError(f"The preprocessing {pipeline!r} produced {image.dtype} {image.shape}, but the model "
                    f"expects float32 {expected}: fix config.input (size, channels, *_pp).")
  return image


class TrainData:
  """The training stream of a run: sizes, the schedule's epoch length, and batches from a step."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.split = load_split(config, config.dataset.train_split, config.dataset.max_per_class)
    self.global_batch = config.batch_size
    if self.global_batch % jax.process_count() or self.global_batch % mesh.devices.size:
      raise ValueError(f"config.batch_size {self.global_batch} must divide evenly over "
                       f"{mesh.devices.size} devices and {jax.process_count()} processes.")
    self.local_batch = self.global_batch // jax.process_count()
    self.epoch_length = len(self._epoch(0))
    self.steps_per_epoch = self.epoch_length // self.global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"The training split has {self.epoch_length} examples per epoch, fewer than "
                      f"config.batch_size {self.global_batch}.")
    self.num_steps = self.steps_per_epoch * config.num_epochs
    self.preprocess = preprocess.parse(config.input.train_pp, size=config.input.size)

  @functools.lru_cache(maxsize=2)
  def _epoch(self, epoch: int) -> np.ndarray:
    c = self.config
    return epoch_indices(self.split, c.dataset.sampler, c.seed, epoch, c.dataset.repeat_factor_threshold)

  def _example(self, local_position: int) -> dict:
    step, offset = divmod(local_position, self.local_batch)
    position = step * self.global_batch + jax.process_index() * self.local_batch + offset
    epoch, within = divmod(position, self.steps_per_epoch * self.global_batch)
    record = self._epoch(epoch)[within]
    image = self.split.source[record]["image"]
    image = self.preprocess(image, np.random.default_rng([self.config.seed, position]))
    return {"image": _check_image(image, self.config, self.config.input.train_pp),
            "label": self.split.labels[record]}

  def batches(self, start_step: int):
    """Global batches {"image", "label"} for steps start_step … num_steps − 1."""
    dataset = (grain.MapDataset.range(start_step * self.local_batch, self.num_steps * self.local_batch)
               .map(self._example)
               .batch(self.local_batch, drop_remainder=True)
               .to_iter_dataset(grain.ReadOptions(num_threads=self.config.data_threads,
                                                  prefetch_buffer_size=4 * self.local_batch)))
    for batch in dataset:
      yield to_global(batch, self.mesh)


class EvalData:
  """A whole split in order, padded to full global batches; padding has mask 0."""

  def __init__(self, config, mesh, split_name: str):
    self.config = config
    self.mesh = mesh
    self.split = load_split(config, split_name)
    self.records = self.split.indices
    self.global_batch = config.eval_batch_size
    self.local_batch = self.global_batch // jax.process_count()
    self.num_batches = max(1, math.ceil(len(self.records) / self.global_batch))
    self.preprocess = preprocess.parse(config.input.eval_pp, size=config.input.size)

  def __len__(self) -> int:
    return len(self.records)

  def _example(self, local_position: int) -> dict:
    step, offset = divmod(local_position, self.local_batch)
    position = step * self.global_batch + jax.process_index() * self.local_batch + offset
    c = self.config
    if position >= len(self.records):
      shape = (c.input.size, c.input.size, c.input.channels)
      return {"image": np.zeros(shape, np.float32), "label": np.int32(0), "mask": np.float32(0)}
    record = self.records[position]
    image = self.preprocess(self.split.source[record]["image"], np.random.default_rng([c.seed, position]))
    return {"image": _check_image(image, c, c.input.eval_pp), "label": self.split.labels[record],
            "mask": np.float32(1)}

  def batches(self):
    dataset = (grain.MapDataset.range(self.num_batches * self.local_batch)
               .map(self._example)
               .batch(self.local_batch)
               .to_iter_dataset(grain.ReadOptions(num_threads=self.config.data_threads,
                                                  prefetch_buffer_size=2 * self.local_batch)))
    for batch in dataset:
      yield to_global(batch, self.mesh)


def to_global(local_batch: dict, mesh) -> dict:
  """Assembles each process's slice into one array sharded over the mesh's data axis."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
