import json
import os

import jax
import numpy as np
import pytest
from sklearn import linear_model as sklearn_linear

from fer_jax import linear_baseline
from fer_jax import mesh as mesh_lib
from fer_jax.data import pipeline
from fer_jax.errors import UserError
from helpers import assert_user_error, get_config, run_command


def _accuracy(x, y):
  return np.mean(linear_baseline.ridge_predictions(x[:150], y[:150], x[150:], 2, 1.0) == y[150:])


def test_ridge_separates_linear_classes_and_fails_on_xor():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  assert _accuracy(x, (x[:, 0] > 0).astype(int)) > 0.9
  assert _accuracy(x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)) < 0.75


@pytest.mark.parametrize("counts, features", [((45, 10, 5), 6), ((8, 2, 1), 40)])  # solved in the primal, dual
def test_ridge_predicts_as_scikit_learns_ridge_classifier_on_imbalanced_classes(counts, features):
  rng = np.random.default_rng(1)
  y = np.repeat([0, 1, 2], counts)  # only the intercept keeps the rare classes rare
  x, test_x = rng.normal(size=(len(y), features)), rng.normal(size=(200, features))
  expected = sklearn_linear.RidgeClassifier(alpha=2.0).fit(x, y).predict(test_x)
  np.testing.assert_array_equal(linear_baseline.ridge_predictions(x, y, test_x, 3, 2.0), expected)


def test_scores_are_accuracy_and_the_mean_accuracy_over_the_classes_present():
  labels = np.array([0, 0, 0, 0, 1, 2, 2, 2])  # no example of class 3
  predicted = np.array([0, 0, 0, 1, 1, 0, 2, 3])
  scores = linear_baseline.scores(labels, predicted, ("a", "b", "c", "d"))
  assert scores["accuracy"] == np.mean(predicted == labels)
  assert np.isclose(scores["mean_class_accuracy"], np.mean([np.mean(predicted[labels == c] == c) for c in (0, 1, 2)]))


def test_a_baseline_beyond_the_memory_allowed_is_refused_naming_max_per_class():
  linear_baseline.check_memory(8000, 2000, 72 * 72 * 3, max_gb=16)  # the synthetic set: 3 GB
  with pytest.raises(UserError, match=r"287651 training and 3999 test images of 150528 values each needs about 884 "
                                      r"GB of memory, more than --max_gb=16: .*--config.dataset.max_per_class=N"):
    linear_baseline.check_memory(287651, 3999, 224 * 224 * 3, max_gb=16)  # AffectNet at 224²


@pytest.mark.parametrize("max_gb", [0, -1])
def test_a_max_gb_that_allows_nothing_is_refused_before_the_data_is_opened(max_gb, tmp_path):
  """--max_gb=-1 was taken, the set read (the synthetic one built first), then refused for needing more than -1 GB."""
  config = get_config("configs/dan.py:synthetic")
  config.dataset.data_dir = str(tmp_path)  # nothing prepared there
  with pytest.raises(UserError, match=rf"^--max_gb={max_gb}: pass the memory the baseline may take, a positive"):
    linear_baseline.baseline(config, ridge=1.0, max_gb=max_gb)
  assert not os.listdir(tmp_path)


@pytest.mark.integration
def test_the_baseline_trains_on_the_first_max_per_class_images_of_each_class(tiny_data_dir):
  result = run_command("fer_jax.linear_baseline", "--config=configs/dan.py:synthetic",
                       "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
                       "--config.input.size=32", "--config.data_workers=0", "--config.dataset.max_per_class=2")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.splitlines()[-1])
  assert report["train"] == 14 and report["test"] == 70  # 2 of each of the 7 classes
  assert 0 <= report["linear_test_mean_class_accuracy"] <= 1


@pytest.mark.integration
def test_a_split_the_set_lacks_is_named_by_its_config_key(tiny_data_dir):
  result = run_command("fer_jax.linear_baseline", "--config=configs/dan.py:synthetic",
                       "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
                       "--config.input.size=32", "--config.data_workers=0", "--config.dataset.test_split=tset")
  assert_user_error(result, "config.dataset.test_split='tset': Data set 'synthetic/tiny' has no split 'tset'")


@pytest.mark.integration
def test_the_baseline_sees_each_image_as_the_evaluation_does(tiny_data_dir):
  """An eval pipeline with random draws (boxes occluded where each example's key says) shows the baseline the
  images an evaluator scores the model on, keyed by position in the split."""
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(name="synthetic/tiny", data_dir=tiny_data_dir)
  config.update(data_workers=0, eval_batch_size=32)
  config.input.update(size=32, eval_pp="resize({size})|occlude('boxes', area=0.3, count=2, fill=0)|normalize('imagenet')")
  split = pipeline.load_split(config, "test")
  features, labels = linear_baseline.pixels(config, split)
  evaluation = pipeline.EvalData(config, mesh_lib.make_mesh(), "test")
  seen = []
  for batch in evaluation.local_batches():
    seen.append(np.asarray(jax.jit(evaluation.preprocess)(batch["image"], batch["position"])))
  seen = np.concatenate(seen)[:len(labels)].reshape(len(labels), -1)
  np.testing.assert_allclose(features, seen, rtol=1e-6)


def test_a_config_that_cannot_run_is_refused_as_every_command_refuses_it():
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 0
  with pytest.raises(UserError, match=r"The config cannot run:\n.*config\.input\.size"):
    linear_baseline.baseline(config, ridge=1.0, max_gb=1.0)


@pytest.mark.parametrize("examples", [300, 20])  # solved in the primal, dual
def test_without_a_penalty_copied_channels_predict_as_the_one_they_copy(examples):
  """--ridge=0 (allowed) on gray_to_rgb's three equal channels ended in LinAlgError 'Singular matrix'."""
  rng = np.random.default_rng(2)
  gray, test_gray = rng.normal(size=(examples, 10)), rng.normal(size=(200, 10))
  y = rng.integers(0, 3, examples)
  copied = linear_baseline.ridge_predictions(np.repeat(gray, 3, axis=1), y, np.repeat(test_gray, 3, axis=1), 3, 0.0)
  np.testing.assert_array_equal(copied, linear_baseline.ridge_predictions(gray, y, test_gray, 3, 0.0))
