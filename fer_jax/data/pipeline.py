"""TFDS data sources → uint8 batches at the stored size → global `jax.Array`s on the mesh.

The host only decodes: each image becomes uint8 at one stored shape (`fer_jax.data.decode`; with
`config.dataset.train_jpeg_round_trip`, training images then take LHC-Net's official JPEG round
trip, `fer_jax.data.jpeg_round_trip`), either in worker processes for every batch, or once for
the whole split into a decoded cache kept in host memory or on the devices (`config.dataset.cache`).
The config's pipeline string (`fer_jax.data.augment`) then runs on the device inside the jitted step.

The order of training examples is a pure function of (seed, position in the run): epoch e
draws its sampler permutation from (seed, e), and the augmentation of the example at global
position p draws its key from (seed, p). A run resumed at step s therefore sees exactly the
batches an uninterrupted run would, without saving iterator state. Each process reads only
its own slice of every global batch.
"""

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import math
import os
import signal
import sys
import threading
import time

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import config_lib
from fer_jax import errors
from fer_jax import mesh as mesh_lib
from fer_jax.data import augment
from fer_jax.data import builder_utils
from fer_jax.data import builders  # registers fer_jax's builders with TFDS
from fer_jax.data import decode
from fer_jax.data import jpeg_round_trip
from fer_jax.data import labels as labels_lib
from fer_jax.data import prepare
from fer_jax.data.builder_utils import DataError

AUTO_PREPARED = ("synthetic",)
GENERATION_TIMEOUT_S = 3600  # how long the other processes wait for process 0 to generate a built-in set
_generation_barriers = itertools.count()  # every process opens its data sets in the same order


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a prepared data set, with labels already in the config's class order."""
  source: object              # records with the image still encoded (bytes)
  labels: np.ndarray          # per record, in the target order; -1 = class not used
  class_names: tuple[str, ...]
  image_shape: tuple          # the data set's image feature shape; None where sizes vary
  source_class_names: tuple[str, ...] = ()  # the data set's own classes
  source_counts: tuple[int, ...] = ()       # records of each of them in the split
  prepared: str = ""                        # the prepared set's name/config/version ("synthetic/tiny/1.1.0")
  prepared_in: str = ""                     # ... and its folder

  @property
  def indices(self) -> np.ndarray:
    return np.flatnonzero(self.labels >= 0)


def _builder(dataset_config, dataset_key: str = "dataset.name"):
  """The prepared set `dataset_config.name`; `dataset_key` is the config key that named it, for messages."""
  data_dir = os.path.expanduser(dataset_config.data_dir) if dataset_config.data_dir else None
  if not dataset_config.name:  # base_config() leaves it empty: each config names its set
    raise DataError(f"config.{dataset_key} is empty: name the data set, one of fer_jax's ({', '.join(builders.NAMES)}) "
                    "or one you prepared (docs/extending.md).")
  try:
    builder = tfds.builder(dataset_config.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"Unknown data set {dataset_config.name!r} (config.{dataset_key})"
                    f"{builders.nearest(dataset_config.name, builders.ALL)}: fer_jax's are "
                    f"{', '.join(builders.NAMES)}{_prepared_in(data_dir)}. Check the spelling, or prepare the set "
                    "first (docs/data.md, 'Preparing data').") from None
  except ValueError as error:  # TFDS's for a variant (BuilderConfig) the set does not have
    if "BuilderConfig" not in str(error):
      raise
    name, _, variant = dataset_config.name.partition("/")
    variants = list(tfds.builder_cls(name).builder_configs)
    raise DataError(f"Data set {name!r} has no variant {variant!r} (config.{dataset_key}={dataset_config.name!r})"
                    f"{config_lib.did_you_mean(variant, variants, f'{name}/')}: its variants are "
                    f"{', '.join(f'{name}/{v}' for v in variants)}.") from None
  if dataset_config.name.split("/")[0] in AUTO_PREPARED:
    builder = _generate_once(dataset_config.name, data_dir, builder)
  if not builder_utils.is_prepared(builder):
    raise DataError(
        f"Data set {dataset_config.name!r} is not prepared in {builder.data_dir} (config.{dataset_key}). Prepare it "
        f"once from your own download with:\n  python -m fer_jax.data.prepare --dataset={dataset_config.name} "
        f"--manual_dir=PATH_TO_DOWNLOAD{' --data_dir=' + data_dir if data_dir else ''}\n"
        "(docs/data.md, 'Preparing data', shows the layout each data set needs).")
  return builder


def _prepared_in(data_dir: str | None) -> str:
  """"; prepared in DIR: a, b" for the data sets (TFDS folders) of a given data_dir."""
  if not data_dir or not os.path.isdir(data_dir):
    return ""
  names = sorted(name for name in os.listdir(data_dir) if not name.startswith((".", "downloads"))
                 and os.path.isdir(os.path.join(data_dir, name)))
  return f"; prepared in {data_dir}: {', '.join(names)}" if names else f"; {data_dir} holds no prepared set"


def _generate_once(name: str, data_dir: str | None, builder):
  """Generates a built-in set: process 0 first while the others wait, so that a folder shared by
  all hosts is written once; a host that still lacks it afterwards (a local folder) generates its own.
  A failure is raised once every process has passed the barrier, where `errors_together` shares it (raised
  before, it left the others in the barrier for GENERATION_TIMEOUT_S). Without TFDS's progress bars, which name
  its temporary files (the builder logs what it builds)."""
  tfds.disable_progress_bar()
  failure = _generated_unless_prepared(builder) if jax.process_index() == 0 else None
  if jax.process_count() > 1:  # every process passes here, prepared or not, failed or not, so none waits alone
    if not builder.data_path.exists():
      logging.info("Waiting for process 0 to generate %s in %s.", name, builder.data_dir)
    # The coordination service's barrier (each name once), not a device collective, whose first
    # rendezvous gives up after 30 s on the CPU (gloo).
    ocp.multihost.sync_global_processes(f"generated {name} #{next(_generation_barriers)}", timeout=GENERATION_TIMEOUT_S,
                                        processes=set(range(jax.process_count())))
    builder = tfds.builder(name, data_dir=data_dir)
    failure = failure or _generated_unless_prepared(builder)
  if failure:
    raise failure
  return builder


def _generated_unless_prepared(builder) -> Exception | None:
  """Generates the set unless it is prepared; what failed, returned for `_generate_once` to raise."""
  try:
    if not builder_utils.is_prepared(builder):
      with prepare.preparing_alone(builder):  # another run generating it (a second job on the machine) is waited for
        prepare.remove_leftovers(builder)  # what an earlier first use, killed while it generated the set, left
        if not builder_utils.is_prepared(builder):
          builder.download_and_prepare(file_format="array_record")
  except Exception as error:  # pylint: disable=broad-except  # raised by the caller, after the barrier
    return error
  return None


def split_absence(config, split: str, dataset_key: str = "dataset.name") -> str:
  """"" where the prepared `config.dataset` (named by `dataset_key`) holds every part of `split`, else why not."""
  return _absence(_builder(config.dataset, dataset_key), config.dataset.name, split)


def _absence(builder, name: str, split: str) -> str:
  """"" where `builder`'s set (`name`) holds every part of `split` ("train+validation" reads both), else why not:
  the part missing, the closest split name where one is close (a misspelling), and the splits it has."""
  splits = list(builder.info.splits)
  missing = [part for part in (part.split("[")[0].strip() for part in split.split("+")) if part not in splits]
  if not missing:
    return ""
  closest = difflib.get_close_matches(missing[0], splits, n=1)
  return (f"{name} has no split {missing[0]!r}"
          f"{f' (did you mean {closest[0]!r}?)' if closest else ''}; its splits: {', '.join(splits)}")


def _check_selects_records(builder, split: str, named_by: str) -> None:
  """A DataError unless every slice of `split` lies within its split and together they select a record: an empty
  slice or one past the split's end failed in TFDS or array_record with a traceback."""
  splits = builder.info.splits
  sizes = ", ".join(f"{name} {info.num_examples:,}" for name, info in splits.items())
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
  except (ValueError, AssertionError) as error:
    raise DataError(f"{named_by}{str(error).rstrip('.')} (the splits hold {sizes} records): choose a slice within "
                    "its split, e.g. 'train[:90%]'.") from None
  if not sum(len(range(splits[part.splitname].num_examples)[part.from_:part.to]) for part in parts):
    raise DataError(f"{named_by}selects no record (the splits hold {sizes} records): choose a slice that selects "
                    "some, e.g. 'train[:90%]'.")


def load_split(config, split: str, max_per_class: int = 0, evaluation: bool = False,
               split_key: str = "", dataset_key: str = "dataset.name") -> Split:
  """Opens a prepared split and maps its labels to `config.dataset.class_order` by class name.

  Records of classes the order lacks get label −1 (left out); class names that are not fer_jax's
  are an error. Classes of the order the data set lacks are an error, unless `evaluation` (a model
  scored on another data set). With `max_per_class`, only the first that many records of each
  class count, in annotation order: the builder's `annotation_index` where it has one, else record
  order (a fixed shuffle TFDS made when it prepared the set, not the label file's order); a join's
  parts in turn. `split_key` and `dataset_key`: the config keys that named `split` (e.g.
  "dataset.train_split") and the data set, for the errors.
  """
  builder = _builder(config.dataset, dataset_key)
  named_by = f"config.{split_key}={split!r}: " if split_key else f"Split {split!r} of {config.dataset.name!r}: "
  absence = _absence(builder, f"Data set {config.dataset.name!r}", split)
  if absence:
    raise DataError(f"{named_by}{absence} (join several with '+').")
  _check_selects_records(builder, split, named_by)
  target = labels_lib.class_names(config.dataset.class_order)
  source_names = tuple(builder.info.features["label"].names)
  builder_utils.check_class_names(source_names, f"Data set {config.dataset.name!r} (config.{dataset_key})")
  try:
    mapping = labels_lib.label_map(source_names, target, allow_missing=evaluation)
  except ValueError as e:
    raise DataError(f"{config.dataset.name} cannot train a model of config.dataset.class_order="
                    f"{config.dataset.class_order!r}: {e} For a model of the set's classes, name their order in "
                    "the config file with fer_jax.data.labels.add_class_order and set config.dataset.class_order and "
                    "config.model.num_classes to it (docs/extending.md, 'A data set of yours').") from e
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  builder_utils.check_record_files(source)  # a set with a label index reads no record before its first batch
  raw_labels, annotation_order = _read_labels_and_order(builder, split)
  split_labels = mapping[raw_labels]
  if max_per_class:
    split_labels = keep_first_per_class(split_labels, max_per_class, annotation_order)
  image_feature = builder.info.features["image"]
  counts = np.bincount(raw_labels, minlength=len(source_names))
  return Split(source, split_labels, target, tuple(image_feature.shape), source_names,
               tuple(int(c) for c in counts), builder.info.full_name, os.fspath(builder.data_dir))


def split_identity(split: Split) -> dict:
  """What identifies a split's examples: the prepared set (name/config/version), its records and those used (of the
  class order, within max_per_class), and a SHA-256 of every record's label in record order (−1: not used), on which
  each epoch's order and examples depend. What a resumed run's training split must still be
  (`checkpointing.check_training_data`), and what every process of a run must read alike
  (`distributed.check_same_split`)."""
  labels = np.ascontiguousarray(split.labels, "<i4")
  return {"prepared": split.prepared, "records": len(labels), "used": int(np.count_nonzero(labels >= 0)),
          "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}


def _class_counts(split: Split) -> str:
  """"anger (3), contempt (2)": the split's records per class of its data set."""
  return ", ".join(f"{name} ({count})" for name, count in zip(split.source_class_names, split.source_counts) if count)


def _read_labels_and_order(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Every record's label and its place in annotation order, in the order of `split` ("train",
  "train+validation", "train[:10%]"), from the splits' label indexes: a join's parts in turn, each
  by its annotation_index (its record position where the set has none)."""
  parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
  tables = [builder_utils.label_columns(builder, part.splitname)[part.from_:part.to] for part in parts]
  table = np.concatenate(tables)
  if "annotation_index" not in table.dtype.names:
    return table["label"].astype(np.int32), np.arange(len(table))
  return table["label"].astype(np.int32), _parts_in_turn([part["annotation_index"] for part in tables])


def _parts_in_turn(orders: list[np.ndarray]) -> np.ndarray:
  """The parts' orders joined, each shifted past the one before it: every split's annotation_index starts
  at 0, so train+validation ranked its validation images among the first training images of their class."""
  shifted, start = [], 0
  for order in orders:
    shifted.append(order + start)
    start += int(order.max()) + 1 if len(order) else 0
  return np.concatenate(shifted)


def keep_first_per_class(split_labels: np.ndarray, limit: int, order: np.ndarray) -> np.ndarray:
  """Labels with every record past the first `limit` of its class (ranked by `order`) set to −1."""
  kept = split_labels.copy()
  ranked = np.argsort(order, kind="stable")
  for label in np.unique(split_labels[split_labels >= 0]):
    kept[ranked[split_labels[ranked] == label][limit:]] = -1
  return kept


def _class_balanced(rng, indices: np.ndarray, class_sizes: np.ndarray, repeat_threshold: float) -> np.ndarray:
  """Draws with replacement, weight 1 / class size."""
  weights = 1.0 / class_sizes
  return rng.choice(indices, size=len(indices), replace=True, p=weights / weights.sum())


def _repeat_factor(rng, indices: np.ndarray, class_sizes: np.ndarray, repeat_threshold: float) -> np.ndarray:
  """Every image repeated ceil(max(1, sqrt(t / f_class))) times."""
  frequency = class_sizes / len(indices)
  repeats = np.ceil(np.maximum(1.0, np.sqrt(repeat_threshold / frequency))).astype(int)
  return rng.permutation(np.repeat(indices, repeats))


# Each sampler's epoch (record indices in training order) from the random generator, the records' indices, the
# size of each record's class and config.dataset.repeat_factor_threshold.
SAMPLERS = {
    "uniform": lambda rng, indices, class_sizes, repeat_threshold: rng.permutation(indices),
    "class_balanced": _class_balanced,
    "repeat_factor": _repeat_factor,
}


def epoch_indices(split: Split, sampler: str, seed: int, epoch: int, repeat_threshold: float) -> np.ndarray:
  """Record indices of one epoch, in training order."""
  draw = errors.chosen(SAMPLERS, sampler, "dataset.sampler")
  indices = split.indices
  labels = split.labels[indices]
  counts = np.bincount(labels, minlength=len(split.class_names))
  return draw(np.random.default_rng([seed, epoch]), indices, counts[labels], repeat_threshold)


CACHE_MODES = ("auto", "none", "host", "device")


def stored_shape(config, split: Split, as_stored: bool = False) -> tuple[int, int, int]:
  """The (height, width, channels) every image is decoded to on the host.

  `config.dataset.image_size` when set; else the data set's fixed image size; else (sizes
  vary) the first image's, which the log names. `as_stored` (an evaluator on another data set than
  the run's): the data set's fixed image size before `config.dataset.image_size`, the run's set's: FERPlus'
  48² faces were decoded at RAF-DB's 100², then resized to the model's input.
  """
  height, width, channels = split.image_shape
  channels = channels or 3
  if as_stored and height and width:
    return (height, width, channels)
  if config.dataset.image_size:
    return (config.dataset.image_size, config.dataset.image_size, channels)
  if height and width:
    return (height, width, channels)
  height, width = decode.Decoder(split.source, (0, 0, channels)).size_of(split.indices[0])
  logging.info("%s: images are decoded at %d×%d, the first image's size (set config.dataset.image_size "
               "to choose another; images of other sizes are resized on the host).", config.dataset.name,
               height, width)
  return (height, width, channels)


def compile_pipeline(config, text: str, shape: tuple[int, int, int], key: str) -> augment.Pipeline:
  """`config.<key>` (e.g. "input.eval_pp") compiled for images of `shape`; its output must be the model's input."""
  try:
    pipeline = augment.parse(text, size=config.input.size)
    output = pipeline.output_shape(shape)
    # Traced once on an abstract batch, so that arguments only tracing rejects fail here, before any work,
    # then op by op: an op (of a user's) whose image leaves at another shape than it declares is named.
    jax.eval_shape(lambda images: pipeline(images, augment.evaluation_keys(jax.numpy.arange(1))),
                   jax.ShapeDtypeStruct((1, *shape), np.uint8))
    pipeline.check_shapes(shape)
  except (ValueError, TypeError) as e:
    raise DataError(f"config.{key}: {e}") from e
  expected = (config.input.size, config.input.size, config.input.channels)
  if output[2] != expected[2]:
    fix = (f"add gray_to_rgb() to config.{key}, or set --config.input.channels={output[2]}" if output[2] == 1
           else f"set --config.input.channels={output[2]}")
    raise DataError(f"config.{key} {text!r} turns the stored {shape} uint8 images into {output[2]}-channel images, "
                    f"but the model takes config.input.channels={expected[2]}: {fix}.")
  if output != expected or not pipeline.ends_uint8:
    raise DataError(f"config.{key} {text!r} turns the stored {shape} uint8 images into "
                    f"{'float ' if pipeline.ends_uint8 else 'uint8 '}{output}, but the model takes float {expected}: "
                    "end it at config.input.size with normalize() or to_float().")
  return pipeline


def num_workers(config) -> int:
  """Decoding processes: config.data_workers, or one per CPU core available when it is −1."""
  return config.data_workers if config.data_workers >= 0 else len(os.sched_getaffinity(0))


def _device_budget(config) -> int:
  """What each device's copy of a cached split may take: config.dataset.cache_budget_mb, else a quarter of a device's
  memory; on CPU devices (no memory limit) 2 GiB, at most the host budget shared by the local devices, whose copies
  all sit in host memory (8 fake CPU devices kept 8 copies)."""
  if config.dataset.cache_budget_mb:
    return int(config.dataset.cache_budget_mb * 2**20)
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] * 0.25)
  return min(2 << 30, _host_budget() // jax.local_device_count())


def _host_budget() -> int:
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * 0.5)


def choose_cache(config, count: int, shape: tuple[int, int, int], what: str, on_device: bool = True) -> str:
  """Resolves config.dataset.cache for `count` images of `shape`; "auto" says what it chose.

  Without `on_device` (the eval splits, read once per evaluation), "device" means host memory.
  """
  mode = config.dataset.cache
  if mode not in CACHE_MODES:
    raise DataError(f"Unknown config.dataset.cache {mode!r}; valid: {', '.join(CACHE_MODES)}.")
  if not on_device and mode == "device":
    mode = "host"
  size = count * math.prod(shape)
  device_budget, host_budget = _device_budget(config), _host_budget()
  megabytes = lambda n: f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"
  if mode == "device" and size > device_budget:
    raise DataError(f"The decoded {what} ({count:,} × {shape} uint8 = {megabytes(size)}) exceeds the device cache "
                    f"budget of {megabytes(device_budget)}: use --config.dataset.cache=host (or none), or raise "
                    "--config.dataset.cache_budget_mb.")
  if mode == "host" and size > host_budget:
    raise DataError(f"The decoded {what} ({count:,} × {shape} uint8 = {megabytes(size)}) needs more than half "
                    f"of the free host memory ({megabytes(2 * host_budget)} free): use --config.dataset.cache=none.")
  if mode == "auto":
    mode = "device" if on_device and size <= device_budget else "host" if size <= host_budget else "none"
    budgets = (f"device budget {megabytes(device_budget)}, " if on_device else "evaluated splits stay on the host; ")
    logging.info("Decoded cache for the %s: %s (%s; %shalf the free host memory %s).", what, mode, megabytes(size),
                 budgets, megabytes(host_budget))
  return mode


def _prefetched(dataset: grain.MapDataset, workers: int, prefetch: int) -> grain.IterDataset:
  """Iterates `dataset` ahead of the consumer: in `workers` processes, or in two threads when 0."""
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2 if not workers else 1,
                                                       prefetch_buffer_size=prefetch))
  if workers:
    if QUIET_RESOURCE_TRACKER not in sys.warnoptions:  # read when the tracker starts, with the first worker
      sys.warnoptions.append(QUIET_RESOURCE_TRACKER)
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                                    worker_init_fn=functools.partial(_as_the_command_s_worker, command=os.getpid()))
  return iterable


# Grain's workers leave a few batches' shared memory to the multiprocessing resource tracker, which frees it at exit
# and warns of "leaked shared_memory objects" (google/grain issue 398) at the end of every run: the tracker process
# takes this warning filter from the command's (`sys.warnoptions`).
QUIET_RESOURCE_TRACKER = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def _as_the_command_s_worker(worker_index: int, worker_count: int, command: int) -> None:
  """A decoding worker leaves Ctrl-C (SIGINT, which a terminal sends to every process of the command) to the
  command, which saves and stops them: each printed its own KeyboardInterrupt traceback. It ends when the command
  (`command`, its process id, given by the command: one killed while the worker started is no longer its parent)
  has ended: a command killed outright (SIGKILL, the kernel's out-of-memory killer) left its workers running, each
  holding its memory."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_once_orphaned, args=(command,), name="exit_once_orphaned", daemon=True).start()


ORPHAN_CHECK_S = 1.0


def _exit_once_orphaned(command: int) -> None:
  while os.getppid() == command:
    time.sleep(ORPHAN_CHECK_S)
  os._exit(0)  # pylint: disable=protected-access  # nothing of the dead command's is left to finish


def decode_all(decoder: decode.Decoder, records: np.ndarray, workers: int) -> np.ndarray:
  """The images of `records`, in that order, as one uint8 array (N, H, W, C)."""
  images = np.empty((len(records), *decoder.shape), np.uint8)
  chunk = 256
  chunks = grain.MapDataset.source(records).map(decoder).batch(chunk)
  for index, block in enumerate(_checked(_prefetched(chunks, workers, prefetch=4), _source_of(decoder))):
    images[index * chunk:index * chunk + len(block)] = block
  return images


def _checked(batches, source):
  """`batches`, with the reader's error about a record file of the TFDS data source they are read from (missing, cut
  short or damaged) raised as a DataError that names the file and the fix."""
  with builder_utils.record_files_checked(source):
    for batch in batches:  # not `yield from`, which would close a stream stopped early: its owner's to close
      yield batch


def _source_of(decoder) -> object:
  """The TFDS data source a decoder reads (the JPEG round trip's decoder wraps one)."""
  return decoder.source if isinstance(decoder, decode.Decoder) else _source_of(decoder.decoder)


class ImageCache:
  """The decoded images of a set of records, in host memory or replicated on every device."""

  def __init__(self, decoder: decode.Decoder, records: np.ndarray, where: str, mesh, workers: int):
    self.where = where
    self.shape = decoder.shape
    self.row = np.full(int(records.max()) + 1, -1, np.int64)
    self.row[records] = np.arange(len(records))
    images = decode_all(decoder, records, workers)
    if where == "device":
      self.images = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), images)
      self._gather = jax.jit(lambda images, rows: images[rows], out_shardings=NamedSharding(mesh, P("data")))
    else:
      self.images = images

  def __call__(self, record: int) -> np.ndarray:
    """One image from a host cache (the eval splits' stand-in for the decoder)."""
    return self.images[self.row[record]]

  def local_batch(self, records: np.ndarray) -> dict:
    """Host cache: the images themselves; device cache: the rows to gather on the device."""
    rows = self.row[records]
    return {"image": self.images[rows]} if self.where == "host" else {"row": rows.astype(np.int32)}

  def finish(self, batch: dict) -> dict:
    """A global batch with its images in place (gathered from the device cache if there)."""
    if "row" in batch:
      batch["image"] = self._gather(self.images, batch.pop("row"))
    return batch


@dataclasses.dataclass(frozen=True)
class Positions:
  """Which global example positions each process reads at each step: step s reads from position s·global_batch on.
  With `last_batch` (training on the examples an epoch has left after its whole batches), the last of every
  `steps_per_epoch` steps reads `last_batch` positions, each process an equal share of them; the process's other
  slots of that step are padding (`of_local_index` None)."""
  global_batch: int
  local_batch: int
  process_index: int
  steps_per_epoch: int = 0
  last_batch: int = 0

  def local_size(self, step: int) -> int:
    """How many examples this process reads at `step` (0-based)."""
    if self.last_batch and step % self.steps_per_epoch == self.steps_per_epoch - 1:
      return self.last_batch * self.local_batch // self.global_batch
    return self.local_batch

  def of_step(self, step: int) -> np.ndarray:
    size = self.local_size(step)
    start = step * self.global_batch + self.process_index * size
    return np.arange(start, start + size)

  def of_local_index(self, index: int) -> int | None:
    """The position of the process's slot `index` (`local_batch` slots a step), None for a slot a short step leaves."""
    step, offset = divmod(index, self.local_batch)
    size = self.local_size(step)
    return step * self.global_batch + self.process_index * size + offset if offset < size else None


class Order:
  """The record at every global position of a run: epoch e is the sampler's draw for (seed, e)."""

  def __init__(self, split: Split, config, epoch_span: int):
    self.split, self.epoch_span = split, epoch_span
    self.sampler, self.seed = config.dataset.sampler, config.seed
    self.threshold = config.dataset.repeat_factor_threshold
    self._epochs = {}

  def epoch(self, epoch: int) -> np.ndarray:
    if epoch not in self._epochs:
      self._epochs = {epoch: epoch_indices(self.split, self.sampler, self.seed, epoch, self.threshold),
                      **{e: v for e, v in self._epochs.items() if e == epoch - 1}}
    return self._epochs[epoch]

  def records(self, positions: np.ndarray) -> np.ndarray:
    epochs, within = np.divmod(positions, self.epoch_span)
    return np.array([self.epoch(e)[w] for e, w in zip(epochs, within)], np.int64)


@dataclasses.dataclass(frozen=True)
class _StreamedExample:
  """Local index → one decoded training example (runs in the decoding worker processes)."""
  order: Order
  positions: Positions
  decoder: decode.Decoder

  def __call__(self, index: int) -> dict:
    position = self.positions.of_local_index(index)
    if position is None:  # a short last batch's padding, which `_without_padding` removes
      return {"image": np.zeros(self.decoder.shape, np.uint8), "label": np.int32(-1), "position": np.int32(-1)}
    record = self.order.records(np.array([position]))[0]
    return {"image": self.decoder(record), "label": self.order.split.labels[record],
            "position": np.int32(position)}


def _without_padding(batch: dict) -> dict:
  """A streamed local batch without the padding slots a short last batch ends with (position −1)."""
  count = int(np.count_nonzero(batch["position"] >= 0))
  return batch if count == len(batch["position"]) else {key: value[:count] for key, value in batch.items()}


@dataclasses.dataclass(frozen=True)
class _CachedBatch:
  """Step → the process's slice of that step's batch, from the decoded cache."""
  order: Order
  positions: Positions
  cache: ImageCache

  def __call__(self, step: int) -> dict:
    positions = self.positions.of_step(step)
    records = self.order.records(positions)
    return {**self.cache.local_batch(records), "label": self.order.split.labels[records],
            "position": positions.astype(np.int32)}


def _fewer_examples_fix(config, examples: int) -> str:
  """What makes a training epoch of `examples` hold one batch: a smaller batch (dividing over the devices), a short one
  (config.dataset.drop_last off), or more of the data that config.dataset.max_per_class or a slice of the training
  split left out."""
  devices = jax.device_count()
  fixes = [f"--config.batch_size={examples // devices * devices}"] if examples >= devices else []
  if config.dataset.drop_last and examples >= devices:
    fixes.append("--config.dataset.drop_last=False")
  if config.dataset.max_per_class:
    fixes.append(f"a config.dataset.max_per_class above {config.dataset.max_per_class} (0 = all)")
  if "[" in config.dataset.train_split:
    fixes.append(f"more of config.dataset.train_split={config.dataset.train_split!r}")
  return " or ".join(fixes) or "a training split with more examples"


def training_decoder(config, decoder: decode.Decoder):
  """The training split's decoder; with config.dataset.train_jpeg_round_trip, each image then resized to
  config.input.size, floored and written to and read from JPEG, as LHC-Net's official training set was made."""
  if config.dataset.train_jpeg_round_trip:
    return jpeg_round_trip.RoundTripDecoder(decoder, config.input.size)
  return decoder


class TrainData:
  """The training stream of a run: sizes, the device pipeline, and uint8 batches from a step."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.split = load_split(config, config.dataset.train_split, config.dataset.max_per_class,
                            split_key="dataset.train_split")
    self.identity = split_identity(self.split)
    self.global_batch = config.batch_size  # divides over devices and processes (fer_jax.validation)
    self.local_batch = self.global_batch // jax.process_count()
    self.epoch_length = len(epoch_indices(self.split, config.dataset.sampler, config.seed, 0,
                                          config.dataset.repeat_factor_threshold))
    whole, self.last_batch = self._batches_of_an_epoch(config, mesh.devices.size)
    self.steps_per_epoch = whole + bool(self.last_batch)
    if self.steps_per_epoch == 0:
      raise DataError(f"The training split has {self.epoch_length} examples per epoch, fewer than "
                      f"config.batch_size {self.global_batch}: use {_fewer_examples_fix(config, self.epoch_length)}.")
    self.num_steps = self.steps_per_epoch * config.num_epochs
    self.shape = stored_shape(config, self.split)  # what the images are decoded to, as the meta record says
    self.decoder = training_decoder(config, decode.Decoder(self.split.source, self.shape))
    self.batch_shape = self.decoder.shape  # the JPEG round trip's size where config.dataset asks for it
    self.pipeline = compile_pipeline(config, config.input.train_pp, self.batch_shape, "input.train_pp")
    self.order = Order(self.split, config, self.steps_per_epoch * self.global_batch)
    self.positions = Positions(self.global_batch, self.local_batch, jax.process_index(), self.steps_per_epoch,
                               self.last_batch)
    self.workers = num_workers(config)
    self.cache_mode = choose_cache(config, len(self.split.indices), self.batch_shape, "training split")
    self._cache = None

  def _batches_of_an_epoch(self, config, devices: int) -> tuple[int, int]:
    """(whole batches an epoch, the size of its last, short batch or 0). The examples left after the whole batches
    train as a last batch, as the official loaders do (PyTorch's drop_last=False, Keras' flow_from_directory), unless
    config.dataset.drop_last; but for those a batch cannot split evenly over the devices (fewer than `devices`)."""
    whole, left = divmod(self.epoch_length, self.global_batch)
    if config.dataset.drop_last or not left:
      return whole, 0
    last = left - left % devices
    if last < left:
      logging.warning("Each epoch trains %d of the %d examples left after its %d whole batches of %d as a last batch; "
                      "the other %d are left out: a batch splits evenly over the %s (the official loaders train them "
                      "all).", last, left, whole, self.global_batch, left - last, errors.counted(devices, "device"))
    if last == 1:
      logging.warning("Each epoch's last batch holds 1 example: a BatchNorm over features alone (DAN's on its logits) "
                      "normalises it to its bias, where PyTorch refuses such a batch in training (\"Expected more than "
                      "1 value per channel\"). --config.dataset.drop_last=True drops it; another batch size moves it.")
    return whole, last

  def augment(self, images: jax.Array, positions: jax.Array) -> jax.Array:
    """The train pipeline on a uint8 batch, each example keyed by its position (inside jit)."""
    return self.pipeline(images, augment.example_keys(self.config.seed, positions))

  def cache(self) -> ImageCache | None:
    if self.cache_mode != "none" and self._cache is None:
      self._cache = ImageCache(self.decoder, self.split.indices, self.cache_mode, self.mesh, self.workers)
    return self._cache

  def local_batches(self, start_step: int) -> grain.IterDataset:
    """This process's slices of the batches for steps start_step … num_steps − 1 (uint8, host)."""
    cache = self.cache()
    if cache is not None:
      steps = grain.MapDataset.range(start_step, self.num_steps).map(_CachedBatch(self.order, self.positions, cache))
      return _prefetched(steps, workers=0, prefetch=4)
    examples = (grain.MapDataset.range(start_step * self.local_batch, self.num_steps * self.local_batch)
                .map(_StreamedExample(self.order, self.positions, self.decoder))
                .batch(self.local_batch, drop_remainder=True)
                .map(_without_padding))
    return _prefetched(examples, self.workers, prefetch=4)

  def batches(self, start_step: int):
    """Global batches {"image" (uint8, `batch_shape`), "label", "position"} for steps start_step … (each epoch's
    last one `last_batch` examples, where that is not 0)."""
    cache = self.cache()
    for batch in _checked(self.local_batches(start_step), self.split.source):
      batch = to_global(batch, self.mesh)
      yield cache.finish(batch) if cache else batch


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Position → one example of the split in order; positions past its end are padding (mask 0)."""
  records: np.ndarray
  labels: np.ndarray
  positions: Positions
  decoder: decode.Decoder | ImageCache

  def __call__(self, index: int) -> dict:
    position = self.positions.of_local_index(index)
    if position >= len(self.records):
      return {"image": np.zeros(self.decoder.shape, np.uint8), "label": np.int32(0), "mask": np.float32(0),
              "position": np.int32(position), "record": np.int32(0)}
    record = self.records[position]
    return {"image": self.decoder(record), "label": self.labels[record], "mask": np.float32(1),
            "position": np.int32(position), "record": np.int32(record)}


class EvalData:
  """A whole split in order, padded to full global batches of uint8 images; padding has mask 0.

  Labels are mapped by class name to `config.dataset.class_order` (the model's classes): records
  of classes the model lacks are left out, and a split none of whose records is left is an error;
  `pp_key`, `split_key` and `dataset_key` name the keys the eval pipeline (`config.input.eval_pp`),
  the split and the data set came from, for error messages."""

  def __init__(self, config, mesh, split_name: str, pp_key: str = "input.eval_pp",
               split_key: str = "dataset.eval_split", dataset_key: str = "dataset.name", as_stored: bool = False):
    self.config = config
    self.mesh = mesh
    self.split = load_split(config, split_name, evaluation=True, split_key=split_key, dataset_key=dataset_key)
    self.records = self.split.indices
    if not len(self.records):
      raise DataError(f"config.{split_key}={split_name!r}: none of the images of {config.dataset.name!r} "
                      f"{split_name} is of a class of the model (config.dataset.class_order="
                      f"{config.dataset.class_order!r}); it holds {_class_counts(self.split)}. Name a split with "
                      "images of the model's classes.")
    # Padding is masked, so any batch works: at most the split (a small one is not padded to a large batch),
    # rounded up to fill every device.
    devices, count = mesh.devices.size, len(self.records)
    wanted = min(config.eval_batch_size, count)
    self.global_batch = mesh_lib.round_up_to_devices(wanted, mesh)
    if self.global_batch != config.eval_batch_size:
      changes = ([f"capped at the split's {count} images"] if wanted < config.eval_batch_size else []) + (
          [f"rounded up to a multiple of the {devices} devices"] if self.global_batch != wanted else [])
      logging.info("Evaluating %s in batches of %d: config.eval_batch_size %d %s.", split_name, self.global_batch,
                   config.eval_batch_size, " and ".join(changes))
    self.local_batch = self.global_batch // jax.process_count()
    self.num_batches = max(1, math.ceil(len(self.records) / self.global_batch))
    self.shape = stored_shape(config, self.split, as_stored)
    self.pipeline = compile_pipeline(config, config.input.eval_pp, self.shape, pp_key)
    self.workers = num_workers(config)
    self.decoder = decode.Decoder(self.split.source, self.shape)
    if choose_cache(config, len(self.records), self.shape, f"{split_name} split", on_device=False) != "none":
      self.decoder = ImageCache(self.decoder, self.records, "host", mesh, self.workers)
      self.workers = 0

  def with_pipeline(self, config, pp_key: str) -> "EvalData":
    """The same decoded split through another eval pipeline, `config.input.eval_pp`."""
    other = copy.copy(self)
    other.config = config
    other.pipeline = compile_pipeline(config, config.input.eval_pp, self.shape, pp_key)
    return other

  def preprocess(self, images: jax.Array, records: jax.Array) -> jax.Array:
    """The eval pipeline on a uint8 batch (inside jit), its random draws keyed by each image's record alone (its index
    in the split read: neither config.seed nor the classes a model leaves out move it)."""
    return self.pipeline(images, augment.evaluation_keys(records))

  def examples(self, count: int) -> np.ndarray:
    """The split's first `count` examples (positions 0 … count − 1) as the eval pipeline shows them before its float
    part (uint8), with the same random draws as in evaluation: what a person should look at. Decoded here, on every
    process alike, whatever the batch size and the process count."""
    records = self.records[:count]  # not the padding
    with builder_utils.record_files_checked(self.split.source):
      images = np.stack([self.decoder(record) for record in records])
    keys = augment.evaluation_keys(records.astype(np.int32))
    return np.asarray(jax.jit(self.pipeline.visible_part)(images, keys)).astype(np.uint8)

  def local_batches(self) -> grain.IterDataset:
    """This process's slices of the batches (uint8, host)."""
    return _prefetched(self._example_batches(), self.workers, prefetch=2)

  def _example_batches(self) -> grain.MapDataset:
    positions = Positions(self.global_batch, self.local_batch, jax.process_index())
    return (grain.MapDataset.range(self.num_batches * self.local_batch)
            .map(_EvalExample(self.records, self.split.labels, positions, self.decoder))
            .batch(self.local_batch))

  def batches(self):
    for batch in _checked(self.local_batches(), self.split.source):
      yield to_global(batch, self.mesh)


def to_global(local_batch: dict, mesh) -> dict:
  """Assembles each process's slice into one array sharded over the mesh's data axis."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
