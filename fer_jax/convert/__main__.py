r"""Converts released checkpoints or pretrained backbones into a fer_jax checkpoint.

  python -m fer_jax.convert --config=configs/dan.py:rafdb \
      --checkpoint=rafdb_epoch21_acc0.897_bacc0.8275.pth --workdir=converted/dan_rafdb
  python -m fer_jax.convert --config=configs/apvit.py:rafdb --workdir=converted/apvit_init \
      --checkpoint=backbone_ir50_ms1m_epoch120.pth --checkpoint=vit_small_p16_224-15ec54c9.pth

A conversion that SIGINT or SIGTERM stops removes what it wrote and exits with status 75; the
same command converts again.
"""

import os
import shlex
import shutil
import sys

from absl import flags
from absl import logging

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import convert
from fer_jax import stopping
from fer_jax import validation
from fer_jax.data import labels
from fer_jax.errors import UserError

# What an interrupted save leaves: Orbax writes step 0 under this name and renames it when complete.
PARTIAL_SAVE = "0.orbax-checkpoint-tmp"


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset> the checkpoint belongs to.")
  cli.define_multi_path("checkpoint", None, "The file to convert (for a TensorFlow checkpoint: its folder, "
                        "prefix or .index file); one per backbone to combine")
  cli.define_path("workdir", None, "Output folder for the converted Orbax checkpoint (new or empty).")
  flags.DEFINE_multi_string(
      "source", None, "Source format, one per --checkpoint; default: recognised from the file. One of: "
      + ", ".join(f"{s.name} ({s.method})" for s in convert.SOURCES) + ".")
  cli.mark_required(["config", "checkpoint", "workdir"])


def check_workdir(workdir: str) -> None:
  """Fails before the (possibly slow) conversion when the output folder cannot take its result; removes what
  an interrupted conversion left there."""
  entries = os.listdir(workdir) if os.path.isdir(workdir) else []
  if entries and all(entry.startswith(PARTIAL_SAVE) for entry in entries):
    remove_entries(workdir)
    logging.info("Removed the partial output of an interrupted conversion from %s.", workdir)
  elif entries:
    raise UserError(f"--workdir={workdir} is not empty: convert into a new folder.")
  cli.check_writable_place(f"--workdir={workdir}", workdir)


def remove_entries(folder: str) -> None:
  for entry in os.listdir(folder):
    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def save(workdir: str, variables: dict, config, initialisation_only: bool) -> str:
  """checkpointing.save_model into the empty or new `workdir`; a stop signal removes what it wrote."""
  created = not os.path.exists(workdir)
  try:
    return checkpointing.save_model(workdir, variables, config, initialisation_only=initialisation_only)
  except stopping.StoppedOutsideSteps:
    if created:
      shutil.rmtree(workdir, ignore_errors=True)
    else:
      remove_entries(workdir)
    raise


def next_command(workdir: str, initialisation_only: bool) -> str:
  """The command that uses the converted model, with this command's --config and overrides, shell-quoted."""
  config = config_lib.config_arguments(sys.argv)
  if initialisation_only:
    return "Train from it with: " + shlex.join(["python", "-m", "fer_jax.main", *config,
                                               f"--config.init_from={workdir}"]) + " --workdir=<run folder>"
  return "Evaluate with: " + shlex.join(["python", "-m", "fer_jax.main", "--mode=eval", *config,
                                        f"--checkpoint={workdir}"]) + " --workdir=<report folder>"


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  workdir = os.path.abspath(args.workdir)
  config = args.config
  # A copy: the converted model records config.model.dtype as given ("auto" stays "auto").
  validation.validate(config.copy_and_resolve_references(), training=False)
  check_workdir(workdir)
  with stopping.exit_status_on_stop(stopped=f"Nothing is left in {workdir}; the same command converts again."):
    variables, report = convert.convert(config, args.checkpoint, args.source or ())
    for line in report.lines():
      logging.info("%s", line)
    path = save(workdir, variables, config, report.initialisation_only)
  if report.initialisation_only:
    logging.info("Wrote %s: a starting point for training, not a model to evaluate or predict with (the rest of the "
                 "model is freshly initialised). %s", path, next_command(workdir, True))
  else:
    logging.info("Wrote %s, whose outputs are the classes of the config's class order %s: %s. %s", path,
                 config.dataset.class_order, ", ".join(labels.class_names(config.dataset.class_order)),
                 next_command(workdir, False))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
