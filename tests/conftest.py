"""Test-wide set-up: absl flags parsed (Grain and TFDS read them), 8 fake CPU devices."""

import os

# Must precede the first jax import so the 8-device test can build its mesh.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
