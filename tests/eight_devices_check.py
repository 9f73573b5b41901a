"""Trains and evaluates one method's `:synthetic` config end to end on all devices of this process.

    python tests/eight_devices_check.py configs/dan.py:synthetic WORKDIR ['{"eval.tta": "flip"}']

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 and $FER_JAX_TEST_TFDS_DIR (the
session's synthetic/tiny folder, see tests/conftest.py): helpers.train_on_eight_devices does
both. The config keeps its own evaluation batch size (DAN 250, LHC-Net 100, …), which need not
divide over 8 devices; only the data set (10 training images a class: one epoch of 2 steps), input
size, training batch and epochs shrink, then the optional JSON overrides (flattened keys) apply.
Prints one JSON line: the device count, the evaluation batch size and the eval report.
"""

import json
import sys

from absl import flags
import jax

from fer_jax import train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import get_config, tiny_run  # noqa: E402


def main(spec: str, workdir: str, overrides: str = "{}"):
  flags.FLAGS.mark_as_parsed()
  eval_batch_size = get_config(spec).eval_batch_size
  config = tiny_run(get_config(spec), per_class=10)
  config.eval_batch_size = eval_batch_size
  config.update_from_flattened_dict(json.loads(overrides))
  report = train.train_and_evaluate(config, workdir)
  print(json.dumps({"devices": jax.device_count(), "eval_batch_size": config.eval_batch_size, "report": report}))


if __name__ == "__main__":
  main(*sys.argv[1:])
