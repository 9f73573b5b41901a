"""A linear classifier on raw pixels, to show what a data set demands of a real model.

  python -m fer_jax.linear_baseline --config=configs/dan.py:synthetic

Fits one-vs-rest ridge regression (closed form, in the dual) on the config's eval
preprocessing of the training split and reports test accuracy.
"""

import json

from absl import flags
import jax
import numpy as np

from fer_jax import cli
from fer_jax import config_lib
from fer_jax.data import decode
from fer_jax.data import pipeline


def pixels(config, split_name: str, split_key: str) -> tuple[np.ndarray, np.ndarray]:
  """The eval pipeline's output for every example of the split (named by `config.<split_key>`),
  flattened, and the labels."""
  split = pipeline.load_split(config, split_name, split_key=split_key)
  shape = pipeline.stored_shape(config, split)
  records = split.indices
  images = pipeline.decode_all(decode.Decoder(split.source, shape), records, pipeline.num_workers(config))
  prepare = pipeline.compile_pipeline(config, config.input.eval_pp, shape, "input.eval_pp")
  keys = jax.random.split(jax.random.key(0), len(records))
  features = np.asarray(jax.jit(prepare)(images, keys)).reshape(len(records), -1)
  return features.astype(np.float64), split.labels[records]


def ridge_accuracy(train_x, train_y, test_x, test_y, num_classes: int, ridge: float) -> float:
  mean = train_x.mean(axis=0)
  train_x, test_x = train_x - mean, test_x - mean
  targets = np.eye(num_classes)[train_y] - 1.0 / num_classes
  dual = np.linalg.solve(train_x @ train_x.T + ridge * np.eye(len(train_x)), targets)
  predicted = np.argmax(test_x @ (train_x.T @ dual), axis=1)
  return float(np.mean(predicted == test_y))


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  config = flags.FLAGS.config
  train_x, train_y = pixels(config, config.dataset.train_split, "dataset.train_split")
  test_key = "dataset.test_split" if config.dataset.test_split else "dataset.eval_split"
  test_x, test_y = pixels(config, config.dataset.test_split or config.dataset.eval_split, test_key)
  accuracy = ridge_accuracy(train_x, train_y, test_x, test_y, config.model.num_classes, flags.FLAGS.ridge)
  print(json.dumps({"dataset": config.dataset.name, "input_size": config.input.size, "train": len(train_y),
                    "test": len(test_y), "ridge": flags.FLAGS.ridge, "linear_test_accuracy": round(accuracy, 4)}))


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_float("ridge", 10.0, "L2 penalty.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
