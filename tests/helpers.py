"""Shared test utilities: a tiny prepared synthetic set and tiny run configs."""

import os

from fer_jax.data.builders import synthetic  # noqa: F401  (registers the builder)
import tensorflow_datasets as tfds

TINY_DATA_DIR = os.path.join(os.environ.get("PYTEST_TMPDIR_ROOT", "/tmp"), "fer_jax_test_tfds")


def tiny_data_dir() -> str:
  """synthetic/tiny (280 train / 70 test, 32×32), prepared once per machine."""
  builder = tfds.builder("synthetic/tiny", data_dir=TINY_DATA_DIR)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")
  return TINY_DATA_DIR


def tiny_run(config, size: int = 32, batch_size: int = 32, epochs: int = 1):
  """Shrinks a `:synthetic` config to seconds of CPU work on synthetic/tiny."""
  config.dataset.update(name="synthetic/tiny", data_dir=tiny_data_dir())
  config.input.size = size
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.num_epochs = epochs
  config.log_every_steps = 4
  config.data_workers = 0
  return config


def get_config(spec: str):
  """Loads "configs/<file>.py:<arg>" (relative to the repository root) as the CLI would."""
  import importlib.util
  path, _, arg = spec.partition(":")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  module_spec = importlib.util.spec_from_file_location("config_module", os.path.join(root, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def run_pipeline(text: str, size: int, image, seed: int = 0):
  """One uint8 image (H, W, C) through a device pipeline string, as the jitted steps run it."""
  import jax
  import numpy as np
  from fer_jax.data import augment
  compiled = augment.parse(text, size=size)
  keys = augment.example_keys(seed, jax.numpy.arange(1))
  return np.asarray(jax.jit(compiled)(np.asarray(image)[None], keys)[0])
