r"""Turns a hand-downloaded FER data set into a TFDS (ArrayRecord) data set, once.

  python -m fer_jax.data.prepare --dataset=rafdb --manual_dir=~/data/RAF-DB/basic \
      [--data_dir=~/tensorflow_datasets] [--skip_corrupt] [--overwrite]

--dataset names one of fer_jax's sets (`fer_jax.data.builders.MANUAL`, listed under --dataset by `--help`),
optionally with a builder config: ferplus/plurality, rafdb/aligned224, affectnet/classes7, sfew/original, ...
(without one, each data set's default config), or the module path of a builder of yours
(my_sets.class_folders; docs/extending.md). A second run finds the set complete, warns that
it read nothing from --manual_dir (`--overwrite` rebuilds the set) and does nothing else, except
give a set prepared before label indexes existed its index (`*.labels.npy`, read from the
records; nothing is rebuilt). TFDS writes every split into a temporary `incomplete.*` folder
beside the final one and renames it only when all splits and the metadata are written, so an
interrupted run never leaves a set that looks complete; the next run deletes such leftovers
before starting again (a second run preparing the same set waits for the first to end,
holding a lock beside its version folders: `.prepare.lock`). `--overwrite` builds the new copy
in such a folder too and swaps it in only once complete: a rebuild that fails or is interrupted
keeps the old copy. Ctrl-C ends the run with a one-line message and exit status 130. A full disk
names --data_dir (exit 2).
Bad input ends the run with a one-line message naming the file (and line) at fault and the
fix, and exit status 2 (`--verbose` adds the traceback): a missing --manual_dir or file (an
archive not extracted is named), labels out of range or missing (an AffectNet image without its
`_exp.npy`), a malformed row (a quote left open: the line it opened on), a label file or CSV not
in UTF-8, a split with no examples (a CSV holding only its header), an occlusion or pose list
entry naming an image its split lacks, an unreadable image, a --data_dir that cannot be written,
or a folder in the set's place that holds no prepared set.
`--skip_corrupt` skips unreadable images only (empty, damaged, truncated or not readable by
this user, FER2013 rows whose pixels are not 48×48 values in 0-255), logs and counts them; a
missing image file or a missing or malformed label still stops the run, since leaving such
images out would quietly change the set.
"""

import contextlib
import errno
import os

from absl import flags
from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import files
from fer_jax.data import builder_utils
from fer_jax.data import builders

NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def make_builder(dataset: str, data_dir: str | None = None, skip_corrupt: bool = False):
  """The builder for "NAME" or "NAME/CONFIG"; DataError listing the valid choices otherwise."""
  name, _, config = dataset.partition("/")
  builder_cls = builder_class(name)
  if config and config not in builder_cls.builder_configs:
    valid = ", ".join(f"{name}/{c}" for c in builder_cls.builder_configs) or f"{name} (it has no configs)"
    raise builder_utils.DataError(f"Unknown config {dataset!r}; choose one of {valid}.")
  return builder_cls(config=config or None, data_dir=data_dir and os.path.expanduser(data_dir),
                     skip_corrupt=skip_corrupt)


def builder_class(name: str):
  """fer_jax's builder `name`, or the one builder_utils.ManualBuilder a module of yours defines
  (NAME a module path, "my_sets.class_folders"; docs/extending.md)."""
  if name in builders.MANUAL:
    return builders.MANUAL[name]
  if "." not in name:
    raise builder_utils.DataError(
        f"Unknown data set {name!r}{builders.nearest(name)}; choose one of {', '.join(builders.MANUAL)} (with "
        "/VARIANT where a set has several, docs/data.md), or name the module of a builder of yours "
        "(my_sets.class_folders, docs/extending.md).")
  try:
    module = config_lib.module_of_yours(name, f"--dataset={name}", builder_utils.DataError)
  except ValueError as error:  # TFDS registers a builder class as it is defined, by its name in snake case
    if "already registered" not in str(error):
      raise
    raise builder_utils.DataError(f"--dataset={name}: a builder class of {name} takes a set's name TFDS already "
                                  f"holds ({str(error).rstrip('.')}), fer_jax's or another's: rename the class (a set "
                                  "is named by its class name in snake case).") from None
  defined = [value for value in vars(module).values() if isinstance(value, type)
             and issubclass(value, builder_utils.ManualBuilder) and value.__module__ == module.__name__]
  if len(defined) != 1:
    raise builder_utils.DataError(f"--dataset={name}: {module.__file__} defines {len(defined)} subclasses of "
                                  "fer_jax.data.builder_utils.ManualBuilder; it needs exactly one.")
  return defined[0]


def remove_leftovers(builder) -> None:
  """Deletes the temporary folders of earlier interrupted runs of this builder and version."""
  path = builder.data_path
  for leftover in path.parent.glob(f"incomplete.*_{path.name}"):
    logging.info("Deleting %s, left by an interrupted run.", leftover)
    leftover.rmtree()


def prepare(dataset: str, manual_dir: str, data_dir: str | None = None, skip_corrupt: bool = False,
            overwrite: bool = False):
  """Builds `dataset` from `manual_dir` unless a complete copy exists (rebuilds it with `overwrite`);
  returns the builder of the prepared set."""
  builder = make_builder(dataset, data_dir, skip_corrupt)
  manual = epath.Path(manual_dir).expanduser()
  if builder_utils.is_archive(manual):
    raise builder_utils.DataError(f"--manual_dir {manual} is an archive: extract it, and pass the folder it gives as "
                                  f"--manual_dir.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if manual.is_file():
    raise builder_utils.DataError(f"--manual_dir {manual} is a file: pass the download's folder, which holds it as the "
                                  f"layout below shows (for a file at its top, --manual_dir={manual.parent})."
                                  f"\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if not manual.is_dir():
    raise builder_utils.DataError(f"--manual_dir {manual} is not a folder.\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  try:
    with preparing_alone(builder):
      remove_leftovers(builder)
      prepared = builder_utils.is_prepared(builder)
      if prepared and not overwrite:
        logging.warning("%s is already prepared in %s, so nothing was read from %s. To rebuild it from there, run "
                        "the same command with --overwrite.", builder.info.full_name, builder.data_dir, manual)
        builder_utils.write_label_index(builder)  # a set prepared before the label index existed gets it
        return builder
      if prepared:
        return rebuild(dataset, builder, manual)
      build(builder, manual)
  except OSError as e:
    if e.errno in NOT_WRITABLE and e.filename and files.is_within(e.filename, builder.data_dir_root):
      raise builder_utils.DataError(f"--data_dir {builder.data_dir_root} is not writable ({e.strerror}: "
                                    f"{e.filename}). Make it writable, or pass another --data_dir.") from e
    if e.errno not in DISK_FULL:
      raise
    raise _disk_full_error(builder, e.strerror) from e
  except RuntimeError as e:  # ArrayRecord's writer reports a full disk so
    reason = next((os.strerror(code) for code in DISK_FULL if os.strerror(code) in str(e)), None)
    if reason is None:
      raise
    raise _disk_full_error(builder, reason) from e
  return builder


def _disk_full_error(builder, reason: str) -> builder_utils.DataError:
  return builder_utils.DataError(f"--data_dir {builder.data_dir_root} ran out of space ({reason}) while writing "
                                 f"{builder.info.full_name}: free space or pass another --data_dir, then run the same "
                                 "command again (a copy prepared before stays as it was).")


LOCK_FILE = ".prepare.lock"  # beside a set's version folders: held by the run preparing it


@contextlib.contextmanager
def preparing_alone(builder):
  """One run at a time prepares a set in a data dir (each job of a cluster may run `prepare && train` on a shared
  one): a run deleted another's folder under way as a killed run's leftover. A second run waits for the first,
  then finds the set prepared. flock locks are seen by runs on the same host or on NFS."""
  folder = builder.data_path.parent
  folder.mkdir(parents=True, exist_ok=True)
  try:
    lock = open(folder / LOCK_FILE, "a+")
  except OSError as error:
    if error.errno not in NOT_WRITABLE:
      raise
    yield  # a set prepared in a read-only place is only read; one to build fails at its first write, named
    return
  with lock:
    files.take_lock(lock, unlocked_warning="make sure no other run prepares this set.",
                    on_held=lambda: logging.warning("Waiting for another run preparing %s in %s to end (it holds %s).",
                                                    builder.info.full_name, builder.data_dir_root, folder / LOCK_FILE))
    yield


def build(builder, manual: epath.Path) -> None:
  builder.download_and_prepare(file_format="array_record",
                               download_config=tfds.download.DownloadConfig(manual_dir=manual))


def rebuild(dataset: str, builder, manual: epath.Path):
  """Builds a fresh copy of the prepared `builder`'s set beside it and swaps it in only once complete, so a
  failed or interrupted rebuild leaves the old copy as it was; returns the builder of the new copy.

  The fresh copy's folder is named as TFDS names its temporary ones, so the next run deletes it if this
  one is killed."""
  path = builder.data_path
  staging = path.parent / f"incomplete.overwrite{os.getpid()}_{path.name}"
  try:
    fresh = make_builder(dataset, os.fspath(staging), builder.skip_corrupt)
    build(fresh, manual)
    path.rename(staging / "replaced")
    fresh.data_path.rename(path)
    logging.info("The rebuilt copy (TFDS named its staging folder above) replaced the old one in %s.", path)
  finally:
    staging.rmtree(missing_ok=True)
  rebuilt = make_builder(dataset, builder.data_dir_root, builder.skip_corrupt)
  rebuilt.skipped_images = fresh.skipped_images
  return rebuilt


def summary(builder) -> str:
  """Each split's size and its images per class, in the set's own class order."""
  names = builder.info.features["label"].names
  lines = [f"{builder.info.full_name} in {builder.data_dir}:"]
  for split, info in builder.info.splits.items():
    counts = np.bincount(builder_utils.label_columns(builder, split)["label"], minlength=len(names))
    per_class = ", ".join(f"{name} {count}" for name, count in zip(names, counts))
    lines.append(f"  {split}: {info.num_examples} examples ({per_class})")
  lines += [f"  skipped {len(names)} unreadable images in {split}"
            for split, names in builder.skipped_images.items()]
  return "\n".join(lines)


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  flags.DEFINE_string("dataset", None, f"NAME or NAME/CONFIG, NAME one of {', '.join(builders.MANUAL)}, or the module "
                      "path of a builder of yours (my_sets.class_folders).")
  cli.define_path("manual_dir", None, "Folder holding the owners' download; docs/data.md gives each set's layout.")
  cli.define_path("data_dir", None, "Where TFDS data sets live (default: TFDS's, "
                  "~/tensorflow_datasets or $TFDS_DATA_DIR).")
  flags.DEFINE_bool("skip_corrupt", False, "Skip and count unreadable images instead of failing.")
  flags.DEFINE_bool("overwrite", False, "Build the set again, replacing a prepared copy only once the new one "
                    "is complete.")
  cli.mark_required(["dataset", "manual_dir"])


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  tfds.enable_progress_bar()
  try:
    builder = prepare(args.dataset, args.manual_dir, args.data_dir, args.skip_corrupt, args.overwrite)
  except builder_utils.DataError as e:
    raise builder_utils.DataError(f"Cannot prepare {args.dataset}: {e}") from None
  except KeyboardInterrupt as interrupt:
    raise cli.Interrupted(f"\nInterrupted: {args.dataset} was not built; a copy prepared before stays as it was. Run "
                          "the same command to start again.") from interrupt
  print(summary(builder))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
