"""Converts released checkpoints or pretrained backbones into a fer_jax checkpoint.

  python -m fer_jax.convert --config=configs/dan.py:rafdb \
      --checkpoint=rafdb_epoch21_acc0.897_bacc0.8275.pth --workdir=converted/dan_rafdb
  python -m fer_jax.convert --config=configs/apvit.py:rafdb --workdir=converted/apvit_init \
      --checkpoint=backbone_ir50_ms1m_epoch120.pth --checkpoint=vit_small_p16_224-15ec54c9.pth
"""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import convert
from fer_jax.errors import UserError

def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset> the checkpoint belongs to.")
  flags.DEFINE_multi_string("checkpoint", None, "Source file (repeat to combine backbones).")
  flags.DEFINE_string("workdir", None, "Output folder for the converted Orbax checkpoint.")
  flags.DEFINE_multi_string(
      "source", None, "Source format, one per --checkpoint; default: recognised from the file. One of: "
      + ", ".join(f"{s.name} ({s.method})" for s in convert.SOURCES) + ".")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])


def check_workdir(workdir: str) -> None:
  """Fails before the (possibly slow) conversion when the output folder cannot take its result."""
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise UserError(f"--workdir={workdir} is not empty: convert into a new folder.")
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = "is a file" if existing == workdir else f"cannot be created: {existing} is a file"
    raise UserError(f"--workdir={workdir} {where}, not a folder. Choose another --workdir.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir} cannot be written: the folder {existing} is not writable. "
                    "Fix its permissions or choose another --workdir.")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  workdir = os.path.abspath(args.workdir)
  check_workdir(workdir)
  config = args.config
  variables, report = convert.convert(config, args.checkpoint, args.source or ())
  for line in report.lines():
    logging.info("%s", line)
  path = checkpointing.save_model(workdir, variables, config)
  logging.info("Wrote %s. Evaluate with: python -m fer_jax.main --mode=eval --config=%s --checkpoint=%s "
               "--workdir=<report folder>", path, config_flags.get_config_filename(flags.FLAGS["config"]), workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
