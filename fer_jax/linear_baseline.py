"""A linear classifier on raw pixels, to show what a data set demands of a real model.

  python -m fer_jax.linear_baseline --config=configs/dan.py:synthetic

Fits one-vs-rest ridge regression (closed form, with an unpenalised intercept) on the config's eval preprocessing of the
training split, as training takes it (the first config.dataset.max_per_class images of each
class where set), and reports the test split's accuracy and mean class accuracy (over the
classes it has, as fer_jax.evaluate scores a model).

Everything is held in memory in float64: the features of both splits (n training and m test
images of d values each) and a k×k system, k the smaller of n (solved in the dual) and d (in
the primal). A baseline needing more than --max_gb (about 8·(2·(n + m)·d + k²) bytes) is
refused before any image is decoded: AffectNet's 287k training images at 224² would need
about 880 GB; take the first N of each class with --config.dataset.max_per_class=N.
"""

import json

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import validation
from fer_jax.data import augment
from fer_jax.data import decode
from fer_jax.data import pipeline
from fer_jax.errors import UserError


def _eval_pipeline(config, split: pipeline.Split):
  shape = pipeline.stored_shape(config, split)
  return shape, pipeline.compile_pipeline(config, config.input.eval_pp, shape, "input.eval_pp")


def pixels(config, split: pipeline.Split) -> tuple[np.ndarray, np.ndarray]:
  """The eval pipeline's output for every example of the split, flattened, and the labels."""
  shape, prepare = _eval_pipeline(config, split)
  records = split.indices
  images = pipeline.decode_all(decode.Decoder(split.source, shape), records, pipeline.num_workers(config))
  keys = augment.evaluation_keys(jnp.asarray(records, jnp.int32))  # an evaluator's draws for each record
  features = np.asarray(jax.jit(prepare)(images, keys)).reshape(len(records), -1)
  return features.astype(np.float64), split.labels[records]


def check_memory(train: int, test: int, features: int, max_gb: float) -> None:
  """Refuses a baseline of `train` and `test` images of `features` values each needing more than `max_gb`: the
  float64 features (centred copies included) and the smaller system."""
  needed = 8 * (2 * (train + test) * features + min(train, features) ** 2) / 1e9
  if needed > max_gb:
    raise UserError(f"The linear baseline on {train} training and {test} test images of {features} values each needs "
                    f"about {needed:.3g} GB of memory, more than --max_gb={max_gb:g}: take the first N images of each "
                    "class with --config.dataset.max_per_class=N, or a smaller --config.input.size.")


def ridge_predictions(train_x, train_y, test_x, num_classes: int, ridge: float) -> np.ndarray:
  """The test examples' classes under one-vs-rest ridge regression with an unpenalised intercept (as
  scikit-learn's RidgeClassifier fits it): on centred features and targets, the intercept is the targets' mean,
  each class's share of the training split. Solved in the dual (n×n) or, with more examples than features, in
  the primal (d×d); both give the same weights."""
  mean = train_x.mean(axis=0)
  train_x, test_x = train_x - mean, test_x - mean
  targets = np.eye(num_classes)[train_y]
  intercept = targets.mean(axis=0)
  targets = targets - intercept
  examples, features = train_x.shape
  if examples > features:
    weights = _solve(train_x.T @ train_x + ridge * np.eye(features), train_x.T @ targets, ridge)
  else:
    weights = train_x.T @ _solve(train_x @ train_x.T + ridge * np.eye(examples), targets, ridge)
  return np.argmax(test_x @ weights + intercept, axis=1)


def _solve(system: np.ndarray, right: np.ndarray, ridge: float) -> np.ndarray:
  # Without a penalty the system is singular wherever features repeat (gray_to_rgb's copies) or are constant, and
  # centring always makes the dual one so: least squares takes the minimum-norm weights, the limit as ridge → 0.
  if ridge == 0:
    return np.linalg.lstsq(system, right, rcond=None)[0]
  return np.linalg.solve(system, right)


def scores(labels: np.ndarray, predicted: np.ndarray, class_names) -> dict[str, float]:
  """Accuracy and mean class accuracy (over the classes `labels` has), as fer_jax.evaluate scores a model."""
  num_classes = len(class_names)
  confusion = np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, -1)
  results = evaluate.metrics(confusion, class_names)
  return {name: results[name] for name in ("accuracy", "mean_class_accuracy")}


def baseline(config, ridge: float, max_gb: float) -> dict:
  """The baseline's report: the data, the sizes, and the test scores."""
  if not max_gb > 0:  # else refused only once the data is read (a set built first), for needing more than it
    raise UserError(f"--max_gb={max_gb:g}: pass the memory the baseline may take, a positive number of GB.")
  validation.validate(config, training=False)
  train = pipeline.load_split(config, config.dataset.train_split, config.dataset.max_per_class,
                              split_key="dataset.train_split")
  test_key = "dataset.test_split" if config.dataset.test_split else "dataset.eval_split"
  test = pipeline.load_split(config, config.dataset.test_split or config.dataset.eval_split, split_key=test_key)
  shape, prepare = _eval_pipeline(config, train)
  check_memory(len(train.indices), len(test.indices), int(np.prod(prepare.output_shape(shape))), max_gb)
  (train_x, train_y), (test_x, test_y) = pixels(config, train), pixels(config, test)
  predicted = ridge_predictions(train_x, train_y, test_x, len(train.class_names), ridge)
  test_scores = scores(test_y, predicted, train.class_names)
  return {"dataset": config.dataset.name, "input_size": config.input.size, "train": len(train_y), "test": len(test_y),
          "ridge": ridge, "linear_test_accuracy": round(test_scores["accuracy"], 4),
          "linear_test_mean_class_accuracy": round(test_scores["mean_class_accuracy"], 4)}


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  mesh_lib.keep_compilations()
  print(json.dumps(baseline(flags.FLAGS.config, flags.FLAGS.ridge, flags.FLAGS.max_gb)))


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_float("ridge", 10.0, "L2 penalty; 0 fits plain least squares (the minimum-norm weights).",
                    lower_bound=0.0)
  flags.DEFINE_float("max_gb", 16.0, "Refuse a baseline needing more memory than this (GB).")
  cli.mark_required(["config"])


if __name__ == "__main__":
  define_flags()
  cli.run(main)
