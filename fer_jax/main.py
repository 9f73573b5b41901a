"""Train or evaluate a method: `python -m fer_jax.main --config=configs/dan.py:rafdb --workdir=DIR`.

Exit status: 0 done; 75 stopped by SIGTERM/SIGINT after saving its step (run the same command
to resume); 1 non-finite loss or gradient (the message names the step and the last good checkpoint).
"""

import sys

from absl import flags
from absl import logging
import jax

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import train
from fer_jax.errors import UserError

_CONFIG = config_lib.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval only.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "--mode=eval: workdir, checkpoint or converted model.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  if _MODE.value == "train":
    try:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Preempted:
      sys.exit(train.PREEMPTED_EXIT_STATUS)
    except train.NonFiniteError as e:
      logging.error("%s", e)
      sys.exit(1)
  else:
    if not _CHECKPOINT.value:
      raise UserError("--mode=eval needs --checkpoint=PATH (a workdir, checkpoint or converted model).")
    train.evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
