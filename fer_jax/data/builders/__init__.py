"""TFDS builders of fer_jax; importing this package registers them with TFDS."""
