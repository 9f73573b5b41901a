"""Test-wide set-up: absl flags parsed (Grain and TFDS read them), JAX on the CPU.

The suite runs on one CPU device; tests/multidevice_check.py runs in a subprocess with 8
fake devices (XLA_FLAGS must be set before JAX starts).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
