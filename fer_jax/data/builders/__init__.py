"""TFDS builders of fer_jax; importing this package registers them with TFDS."""

from fer_jax.data.builders import synthetic  # noqa: F401
