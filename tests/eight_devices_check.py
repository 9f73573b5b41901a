"""Trains and evaluates every method's `:synthetic` config end to end on all devices of this process.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 and $FER_JAX_TEST_TFDS_DIR (the
session's synthetic/tiny folder, see tests/conftest.py); tests/test_train.py does both. The
configs keep their own evaluation batch sizes (DAN 250, LHC-Net 100, …), which do not divide over
8 devices; only the data set, input size, training batch and epochs shrink. Prints one JSON line:
{method: its eval report's example count and accuracy}.
"""

import json
import sys
import tempfile

from absl import flags
import jax

from fer_jax import train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import get_config, tiny_run  # noqa: E402

SPECS = {"dan": "configs/dan.py:synthetic", "apvit": "configs/apvit.py:synthetic",
         "scan_cci": "configs/scan_cci.py:synthetic", "lhcnet": "configs/lhcnet.py:synthetic"}


def main():
  flags.FLAGS.mark_as_parsed()
  reports = {"devices": jax.device_count()}
  for method, spec in SPECS.items():
    eval_batch_size = get_config(spec).eval_batch_size
    config = tiny_run(get_config(spec))
    config.eval_batch_size = eval_batch_size
    with tempfile.TemporaryDirectory() as workdir:
      report = train.train_and_evaluate(config, workdir)
    reports[method] = {"eval_batch_size": eval_batch_size, "num_examples": report["num_examples"],
                       "accuracy": report["accuracy"]}
  print(json.dumps(reports))


if __name__ == "__main__":
  main()
