"""Train or evaluate a method: `python -m fer_jax.main --config=configs/dan.py:rafdb --workdir=DIR`.

Exit status: 0 done; 2 a user error (one `error:` line: the file or key and the fix); 75 stopped
by SIGTERM/SIGINT after saving its step (run the same command to resume); 1 non-finite loss or
gradient (the message names the step and the last good checkpoint).
"""

import sys

from absl import flags
from absl import logging
import jax

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import train
from fer_jax.errors import UserError

def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, reports.")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval only.")
  flags.DEFINE_string("checkpoint", None, "--mode=eval: workdir, checkpoint or converted model.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if args.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  if args.mode == "train":
    try:
      train.train_and_evaluate(args.config, args.workdir)
    except train.Preempted:
      sys.exit(train.PREEMPTED_EXIT_STATUS)
    except train.NonFiniteError as e:
      logging.error("%s", e)
      sys.exit(1)
  else:
    if not args.checkpoint:
      raise UserError("--mode=eval needs --checkpoint=PATH (a workdir, checkpoint or converted model).")
    train.evaluate_checkpoint(args.config, args.checkpoint, args.workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
