import json
import logging
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import files
from fer_jax import mesh as mesh_lib
from fer_jax import progress
from fer_jax import stopping
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.errors import UserError
from helpers import get_config, random_variables, tiny_run


def test_metrics_from_confusion_matrix():
  confusion = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
  results = evaluate.metrics(confusion, ("a", "b", "c"))
  assert results["accuracy"] == 9 / 12
  # mean over the classes that have examples: (0.8 + 0.5) / 2, not (0.8 + 0.5 + 0) / 3
  assert np.isclose(results["mean_class_accuracy"], 0.65)
  assert results["per_class_accuracy"] == {"a": 0.8, "b": 0.5, "c": None}
  assert results["num_examples"] == 12
  f1_a = 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
  f1_b = 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5)
  assert np.isclose(results["macro_f1"], (f1_a + f1_b) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_metrics_are_sklearns(seed):
  """Accuracy, mean class accuracy (balanced accuracy over the classes with examples) and macro F1 (sklearn averages
  over the labels of y_true ∪ y_pred: a class no example has but a prediction names counts, with F1 0)."""
  from sklearn import metrics
  rng = np.random.default_rng(seed)
  y_true = rng.integers(0, 5, 40)  # 6 classes: the last never true, some predictions name it
  y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, 6, 40))
  y_pred[0] = 5
  confusion = np.zeros((6, 6), int)
  np.add.at(confusion, (y_true, y_pred), 1)
  results = evaluate.metrics(confusion, "abcdef")
  assert np.isclose(results["accuracy"], metrics.accuracy_score(y_true, y_pred))
  assert np.isclose(results["mean_class_accuracy"], metrics.balanced_accuracy_score(y_true, y_pred))
  assert np.isclose(results["macro_f1"], metrics.f1_score(y_true, y_pred, average="macro"))


def test_metrics_of_no_examples_are_null():
  results = evaluate.metrics(np.zeros((3, 3), int), ("a", "b", "c"))
  assert (results["accuracy"], results["mean_class_accuracy"], results["macro_f1"]) == (None, None, None)


class Fixed(nn.Module):
  """Predicts the class stored in the first pixel."""

  @nn.compact
  def __call__(self, images, train):
    return {"logits": jax.nn.one_hot(images[:, 0, 0, 0].astype(jnp.int32), 3)}


def test_confusion_step_counts_masked_rows_zero_times():
  mesh = mesh_lib.make_mesh()
  step = evaluate.confusion_step(Fixed(), 3, mesh)
  images = jnp.zeros((8, 2, 2, 1)).at[:, 0, 0, 0].set(jnp.array([0, 1, 2, 2, 1, 0, 0, 0]))
  batch = {"image": images, "label": jnp.array([0, 1, 2, 1, 1, 0, 2, 2]),
           "mask": jnp.array([1, 1, 1, 1, 1, 1, 0, 0], jnp.float32)}
  update = step({}, batch)
  assert isinstance(update, evaluate.ConfusionMatrix)
  np.testing.assert_array_equal(update.compute(), [[2, 0, 0], [0, 2, 1], [0, 0, 1]])

  total = evaluate.confusion_matrix(step, {}, Batches([batch, batch]), "test")
  assert total.dtype == np.int64
  np.testing.assert_array_equal(total, [[4, 0, 0], [0, 4, 2], [0, 0, 2]])


class Scaled(nn.Module):
  """Class scores proportional to the image's first value: NaN scores for a NaN image."""

  @nn.compact
  def __call__(self, images, train):
    return {"logits": images[:, 0, 0, :1] * jnp.array([1.0, -1.0, 0.0])}


def test_an_evaluation_with_non_finite_class_scores_stops_instead_of_reporting():
  """argmax gives a row of NaN scores class 0: a model outputting NaN got a plausible accuracy, without a word."""
  step = evaluate.confusion_step(Scaled(), 3, mesh_lib.make_mesh())
  images = jnp.zeros((4, 2, 2, 1)).at[:, 0, 0, 0].set(jnp.array([0.0, jnp.nan, 2, jnp.nan]))
  batch = {"image": images, "label": jnp.array([0, 1, 2, 0]), "mask": jnp.array([1, 1, 1, 0], jnp.float32)}
  update = step({}, batch)
  assert int(update.non_finite) == 1  # the padded row's NaN is not counted
  with pytest.raises(stopping.NonFiniteError, match=r"^Evaluating test: 2 of 6 examples got non-finite class "
                                                    r"scores \(NaN or Inf\).* no report was written\."):
    evaluate.confusion_matrix(step, {}, Batches([batch, batch]), "Evaluating test")


def test_the_confusion_of_predicted_scores_is_scikit_learns_and_refuses_non_finite_rows():
  from sklearn import metrics as sklearn_metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  scores, labels = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 4, 50)
  np.testing.assert_array_equal(
      evaluate.confusion_of_scores(scores, labels, "Predicting test"),
      sklearn_metrics.confusion_matrix(labels, scores.argmax(axis=1), labels=range(4)))
  scores[[3, 7], 1] = [np.nan, -np.inf]
  with pytest.raises(stopping.NonFiniteError, match=r"^Predicting test, flip: 2 of 50 examples got non-finite class "
                                                    r"scores \(NaN or Inf\)"):
    evaluate.confusion_of_scores(scores, labels, "Predicting test, flip")


class NearTie(nn.Module):
  """Logits 0 but class 2's, 1e-9 (a maximum its float32 softmax rounds into a tie with class 0), and -inf for class
  1 where the image's first value is negative."""

  @nn.compact
  def __call__(self, images, train):
    logits = jnp.zeros((images.shape[0], 3)).at[:, 2].set(1e-9)
    return {"logits": logits.at[:, 1].set(jnp.where(images[:, 0, 0, 0] < 0, -jnp.inf, 0.0))}


def test_predictions_count_the_logits_as_the_evaluation_step_does():
  """The predictions' metrics and CSV took the argmax of the softmax: a near tie went to the first class, and a -inf
  logit (softmax 0) passed, where the evaluation step counts the logits (class 2; a non-finite score stops it)."""
  step = evaluate.probabilities_step(NearTie(), mesh_lib.make_mesh())
  batch = {"image": jnp.zeros((4, 2, 2, 1)), "label": jnp.array([2, 2, 0, 1]), "position": jnp.arange(4),
           "mask": jnp.array([1, 1, 1, 0], jnp.float32)}
  records, scores, probabilities = evaluate.probabilities(step, {}, _with_records(batch), "Predicting test")
  assert records.tolist() == [0, 1, 2] and probabilities[0, 0] == probabilities[0, 2]  # the softmax's tie
  np.testing.assert_array_equal(evaluate.confusion_of_scores(scores, np.array([2, 2, 0]), "Predicting test"),
                                [[0, 0, 1], [0, 0, 0], [0, 0, 2]])
  batch["image"] = batch["image"].at[1, 0, 0, 0].set(-1.0)
  _, scores, probabilities = evaluate.probabilities(step, {}, _with_records(batch), "Predicting test")
  assert np.isfinite(probabilities).all()
  with pytest.raises(stopping.NonFiniteError, match=r"^Predicting test: 1 of 3 examples got non-finite class scores"):
    evaluate.confusion_of_scores(scores, np.array([2, 2, 0]), "Predicting test")


def _with_records(batch) -> "Batches":
  """Stands for EvalData of one batch, its records numbered in order."""
  data = Batches([batch])
  data.records = np.arange(len(batch["label"]))
  return data


class Batches:
  """Stands for EvalData: `batches()` counts the batches handed out."""

  def __init__(self, batches):
    self._batches, self.num_batches, self.handed_out = batches, len(batches), 0

  def batches(self):
    for batch in self._batches:
      self.handed_out += 1
      yield batch


class Alarm(Exception):
  pass


def _raise_alarm(signum, frame):
  raise Alarm


def _slow_step():
  """A jitted evaluation step of 300 products of 512² a batch (0.2 s on two idle cores), compiled, with its
  batches: a signal arriving while JAX writes its compilation cache would be caught there and turned into a
  warning."""
  weights = jax.random.normal(jax.random.key(0), (512, 512)) / 512 ** 0.5

  @jax.jit
  def slow_step(variables, batch):
    del variables
    x = jax.lax.fori_loop(0, 300, lambda _, x: jnp.tanh(x @ weights), batch["x"])
    return evaluate.ConfusionMatrix(counts=jnp.zeros((3, 3), jnp.int32) + (x[0, 0] > 9).astype(jnp.int32),
                                    non_finite=jnp.int32(0))

  inputs = [{"x": jnp.full((512, 512), float(i))} for i in range(12)]
  first = slow_step({}, inputs[0])
  jax.block_until_ready(first.merge(first))
  return slow_step, inputs


def test_a_signal_stops_an_evaluation_within_its_queued_batches():
  """A signal handler runs while the host waits for the devices, with only IN_FLIGHT batches queued. Before,
  all 12 batches were queued at once (XLA:CPU queues a few dozen) and the host then waited inside XLA, where
  no handler runs, until all were done; a command stopped there also waited for them all before it exited."""
  slow_step, inputs = _slow_step()
  batches = Batches(inputs)
  previous = signal.signal(signal.SIGALRM, _raise_alarm)
  try:
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    with pytest.raises(Alarm):
      evaluate.confusion_matrix(slow_step, {}, batches, "slow")
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  assert batches.handed_out < 12


def test_a_stop_every_process_agreed_on_waits_for_the_batches_queued(monkeypatch):
  """Processes that stopped together before an evaluation's batch left with the batches they had queued still
  running on the devices, and their collectives hung both processes' exits, inside XLA's teardown, for minutes
  (tests/test_multiprocess.py's evaluation stop timed out once in 4 runs beside another)."""
  slow_step, inputs = _slow_step()
  agreements = iter([None] * evaluate.IN_FLIGHT)

  def stop_if_agreed():
    if next(agreements, "stop") == "stop":
      raise stopping.StoppedOutsideSteps("SIGTERM on process 1")

  monkeypatch.setattr(stopping, "stop_if_agreed", stop_if_agreed)
  queued = []
  with pytest.raises(stopping.StoppedOutsideSteps):
    evaluate.confusion_matrix(lambda *args: queued.append(slow_step(*args)) or queued[-1], {}, Batches(inputs), "slow")
  assert len(queued) == evaluate.IN_FLIGHT
  assert all(leaf.is_ready() for leaf in jax.tree.leaves(queued))


def test_a_long_evaluation_logs_its_progress(monkeypatch, caplog):
  """The last IN_FLIGHT batches were waited for without a word: a slow evaluation of 4 batches (LHC-Net's lhc62 TTA
  on a CPU) was silent for minutes."""
  monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
  step = evaluate.confusion_step(Fixed(), 3, mesh_lib.make_mesh())
  batch = {"image": jnp.zeros((4, 2, 2, 1)), "label": jnp.zeros(4, jnp.int32), "mask": jnp.ones(4)}
  with caplog.at_level(logging.INFO):
    evaluate.confusion_matrix(step, {}, Batches([batch] * 6), "Evaluating test, flip")
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Evaluating test, flip: ")]
  assert [line.split(", ETA ")[0] for line in logged] == [f"Evaluating test, flip: {k}/6 batches" for k in range(1, 7)]
  assert all(re.fullmatch(r".*, ETA \dm\d\ds", line) for line in logged)


def _one_evaluators_results():
  """An evaluator's results (7 of 8 right) and its example inputs, as write_report takes them."""
  results = {**evaluate.metrics(np.array([[3, 1], [0, 4]]), ("x", "y")), "dataset": "d", "split": "s", "pp": "p",
             "decoded_size": [8, 8], "class_mapping": {"excluded_examples": {}, "model_classes_absent": []}}
  return results, np.zeros((2, 8, 8, 3), np.uint8)


def test_report_files(tmp_path):
  results, images = _one_evaluators_results()
  evaluate.write_report({**results, "evaluators": {"test": results, "other": results}}, str(tmp_path),
                        {"test": images, "other": images})
  for name in ("confusion_matrix.png", "confusion_matrix_other.png", "examples_other.png", "eval_summary.png"):
    assert (tmp_path / name).stat().st_size > 1000, name
  import json
  assert json.loads((tmp_path / "eval_results.json").read_text())["confusion_matrix"] == [[3, 1], [0, 4]]
  table = (tmp_path / "eval_results.md").read_text()
  assert "| other | d | s | 8 | 87.50 | 87.50 |" in table  # 7 of 8 right; recalls 3/4 and 4/4
  assert "* other: `p` of 8×8" in table


def test_the_markdown_report_gives_the_per_class_accuracy_with_tta_too():
  """eval_results.md listed the TTA's accuracy alone; its per-class accuracy was in eval_results.json only."""
  results, _ = _one_evaluators_results()
  with_tta = {**results, "tta": {"name": "flip", **evaluate.metrics(np.array([[2, 2], [0, 4]]), ("x", "y"))}}
  table = evaluate.markdown({"evaluators": {"test": with_tta, "other": results}}, {})
  assert "| test | 75.00 | 100.00 |\n| test, flip TTA | 50.00 | 100.00 |\n| other | 75.00 | 100.00 |" in table


def test_the_selection_names_the_reported_evaluators_that_read_the_split_it_chose_on():
  """DAN's RAF-DB config selects its best epoch on the test split and reports it there, as the official script
  does: the report says so. Selected on a held-out part of the training split, nothing reported is its own."""
  config = get_config("configs/dan.py:rafdb")
  config.evals.occluded_mouth = config_lib.evaluator(pp="occlude('mouth')|" + config.input.eval_pp)
  config.evals.ferplus = config_lib.evaluator(dataset="ferplus")
  config.evals.update(config_lib.subset_evaluators())  # subsets of the test split: they were not named
  selection = evaluate.selection_record(evaluate.Evaluators(None, config, None), "accuracy", "eval", 37, 0.9, 40)
  assert selection["reported_on_the_same_split"] == ["test", "occluded_mouth", "occlusion", "pose30", "pose45"]
  assert evaluate.selection_note(selection).startswith(
      "The best epoch (37 of 40) by accuracy on the evaluator eval (rafdb test). test, occluded_mouth, occlusion, "
      "pose30, pose45 read images the epoch was chosen on: the best of the epochs evaluated there, an optimistic "
      "figure")
  default_folder = os.environ.get("TFDS_DATA_DIR") or evaluate.tfds.core.constants.DATA_DIR  # data_dir ""'s
  for spelt in ({"dataset": "rafdb/basic"}, {"dataset": "rafdb:1.0.0"}, {"data_dir": default_folder + "/"}):
    config.evals.again = config_lib.evaluator(split="test", **spelt)
    selection = evaluate.selection_record(evaluate.Evaluators(None, config, None), "accuracy", "eval", 37, 0.9, 40)
    assert "again" in selection["reported_on_the_same_split"], spelt
  del config.evals["again"]
  config.dataset.update(eval_split="train[90%:]", test_split="test")
  selection = evaluate.selection_record(evaluate.Evaluators(None, config, None), "accuracy", "eval", 37, 0.9, 40)
  assert selection["reported_on_the_same_split"] == []
  # Slices: a reported split overlapping the chosen one's part was not named (its string differed).
  for eval_split, test_split, named in (("test[:50%]", "test", True), ("test[:50%]", "test[50%:]", False),
                                        ("test[:50%]", "test[-60%:]", True), ("test[10:40]", "test[40:]", False),
                                        ("test[:50%]", "test[100:]", True),
                                        ("test+test_occlusion", "test[10:40]", True),
                                        ("train[:10]+test[20:30]", "test[25:26]", True)):
    config.dataset.update(eval_split=eval_split, test_split=test_split)
    chosen = evaluate.selection_record(evaluate.Evaluators(None, config, None), "accuracy", "eval", 37, 0.9, 40)
    assert ("test" in chosen["reported_on_the_same_split"]) == named, (eval_split, test_split)
  assert evaluate.selection_note(selection) == ("The best epoch (37 of 40) by accuracy on the evaluator eval "
                                                "(rafdb train[90%:]).")


def test_a_report_of_a_selected_epoch_says_how_it_was_chosen(tmp_path):
  results, images = _one_evaluators_results()
  selection = {"metric": "accuracy", "evaluator": "eval", "dataset": "d", "split": "s", "epoch": 3, "value": 0.875,
               "trained_epochs": 5, "reported_on_the_same_split": ["test"]}
  evaluate.write_report({**results, "evaluators": {"test": results}, "selection": selection}, str(tmp_path),
                        {"test": images})
  table = (tmp_path / "eval_results.md").read_text()
  assert ("Selected: The best epoch (3 of 5) by accuracy on the evaluator eval (d s). test reads images the epoch "
          "was chosen on") in table


def test_an_evaluation_replacing_another_ones_report_says_so(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    evaluate.warn_of_a_replaced_report(str(tmp_path), "runs/b/checkpoints/8")  # no report there: nothing said
    assert not caplog.records
    (tmp_path / "eval_results.json").write_text('{"checkpoint": "runs/a/checkpoints/16"}')
    evaluate.warn_of_a_replaced_report(str(tmp_path), "runs/b/checkpoints/8")
  assert (f"{tmp_path} holds the report of an evaluation of runs/a/checkpoints/16: this one of runs/b/checkpoints/8 "
          "replaces it") in caplog.text


def test_an_evaluation_that_fails_before_evaluating_does_not_say_it_replaces_the_report(tmp_path, caplog,
                                                                                         tiny_data_dir):
  """--mode=eval into a folder holding a report warned "this one … replaces it", then stopped on a split the set
  lacks, leaving the earlier report in place."""
  report = tmp_path / "report" / "eval_results.json"
  report.parent.mkdir()
  report.write_text('{"checkpoint": "runs/a/checkpoints/16"}')
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  model = os.path.dirname(checkpointing.save_model(str(tmp_path / "model"), random_variables(config), config))
  config.dataset.test_split = "tset"  # the weights read, the data fails
  with caplog.at_level(logging.WARNING), pytest.raises(UserError, match="config.dataset.test_split='tset'"):
    evaluate.evaluate_checkpoint(config, model, str(report.parent))
  assert "replaces it" not in caplog.text
  assert report.read_text() == '{"checkpoint": "runs/a/checkpoints/16"}'


def test_the_report_of_weights_in_a_folder_not_named_by_a_step_gives_no_step():
  results, _ = _one_evaluators_results()
  heading = lambda step: evaluate.markdown({"checkpoint": "models/mine", "step": step, "evaluators": {"test": results}},
                                           {}).splitlines()[0]
  assert heading(None) == "Weights: models/mine."
  assert heading(8) == "Weights: models/mine (step 8)."


def test_a_report_written_again_with_fewer_evaluators_leaves_no_figure_of_the_others(tmp_path):
  results, images = _one_evaluators_results()
  evaluate.write_report({**results, "evaluators": {"test": results, "sfew": results}}, str(tmp_path),
                        {"test": images, "sfew": images})
  (tmp_path / "confusion_matrix_mine.png").write_bytes(b"a file of the user's, no report listed it")
  evaluate.write_report({**results, "evaluators": {"test": results}}, str(tmp_path), {"test": images})
  assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "confusion_matrix_mine.png", "eval_results.json",
                                          "eval_results.md", "eval_summary.png", "examples_test.png"]


def test_an_evaluator_on_another_data_set_reads_the_runs_data_dir_unless_given_its_own():
  config = get_config("configs/apvit.py:rafdb")
  config.dataset.data_dir = "/shared/tfds"
  config.evals.ferplus = config_lib.evaluator(dataset="ferplus")
  config.evals.sfew = config_lib.evaluator(dataset="sfew/aligned", data_dir="/elsewhere", split="validation")
  specs = evaluate.evaluator_specs(config)
  where = {name: (spec.config.dataset.name, spec.config.dataset.data_dir) for name, spec in specs.items()}
  assert where["ferplus"] == ("ferplus", "/shared/tfds")  # docs/evaluation.md: data_dir "default: the run's own"
  assert where["sfew"] == ("sfew/aligned", "/elsewhere")
  assert where["test"] == where["occlusion"] == ("rafdb/aligned224", "/shared/tfds")


def _ferplus_split_for_a_seven_class_model(contempt_images: int) -> pipeline.Split:
  ferplus = labels.CLASS_ORDERS["ferplus"]
  counts = tuple(contempt_images if name == labels.CONTEMPT else 2 for name in ferplus)
  return pipeline.Split(source=None, labels=np.zeros(0, np.int32), class_names=labels.CLASS_ORDERS["fer2013"],
                        image_shape=None, source_class_names=ferplus, source_counts=counts)


def test_only_classes_with_images_left_out_are_reported_as_left_out():
  results = {**evaluate.metrics(np.eye(7, dtype=int), labels.CLASS_ORDERS["fer2013"]), "dataset": "ferplus",
             "split": "test", "pp": "p", "decoded_size": [48, 48]}
  tables = {}
  for contempt in (0, 1, 3):
    mapping = evaluate.class_mapping(_ferplus_split_for_a_seven_class_model(contempt))
    assert mapping["dataset_to_model"][labels.CONTEMPT] is None
    assert mapping["excluded_examples"] == ({labels.CONTEMPT: contempt} if contempt else {})
    tables[contempt] = evaluate.markdown({"evaluators": {"ferplus": {**results, "class_mapping": mapping}}}, {})
  assert "Left out" not in tables[0]
  assert "Left out (the model lacks them): contempt (1 example)." in tables[1]
  assert "Left out (the model lacks them): contempt (3 examples)." in tables[3]


def test_a_model_class_the_split_has_no_image_of_is_noted_though_the_set_has_the_class():
  """docs/evaluation.md: when the split has no contempt images, contempt predictions count as wrong, and the report
  says so."""
  ferplus = labels.CLASS_ORDERS["ferplus"]
  split = pipeline.Split(source=None, labels=np.zeros(0, np.int32), class_names=ferplus, image_shape=None,
                         source_class_names=ferplus, source_counts=tuple(0 if c == labels.CONTEMPT else 2 for c in ferplus))
  mapping = evaluate.class_mapping(split)
  assert mapping["model_classes_absent"] == [labels.CONTEMPT] and mapping["excluded_examples"] == {}
  results = {**evaluate.metrics(np.diag([2] * 7 + [0]), ferplus), "dataset": "ferplus", "split": "test", "pp": "p",
             "decoded_size": [48, 48], "class_mapping": mapping}
  assert ("Model classes without an example in test (predicting them counts as wrong): contempt."
          in evaluate.markdown({"evaluators": {"test": results}}, {}))


def test_a_report_that_cannot_be_written_leaves_the_previous_one_and_names_its_file(tmp_path, monkeypatch):
  """A full disk left eval_results.json empty (written in place) and said "No space left on device", naming no file."""
  path = tmp_path / "eval_results.json"
  path.write_text('{"accuracy": 0.5}')
  def full_disk(file, mode="r", **kwargs):  # opens (and so truncates) the file written, whose writes then fail
    if "w" not in mode:
      return open(file, mode, **kwargs)
    open(file, mode, **kwargs).close()
    return open("/dev/full", mode, **kwargs)

  monkeypatch.setattr(files, "open", full_disk, raising=False)
  with pytest.raises(OSError) as error:
    evaluate.write_report({"accuracy": 0.25, "evaluators": {}}, str(tmp_path))
  assert path.read_text() == '{"accuracy": 0.5}' and os.listdir(tmp_path) == ["eval_results.json"]
  assert cli.describe(error.value) == (f"No space left on device: {path} (the disk is full: free space or choose "
                                       "another location).")
  monkeypatch.undo()
  files.write_whole(str(path), '{"accuracy": 0.25}')
  assert json.loads(path.read_text())["accuracy"] == 0.25 and os.listdir(tmp_path) == ["eval_results.json"]


def test_an_evaluators_pipeline_follows_the_runs_eval_pp_it_names():
  """DAN's synthetic occlusion evaluators copied input.eval_pp when the config was made: overridden on the command
  line, the test split ran the new preprocessing and the occluded ones the old, with no warning."""
  config = get_config("configs/dan.py:synthetic,occlusion=yes")
  config.input.eval_pp = "resize({size})|normalize('half')"
  specs = evaluate.evaluator_specs(config)
  assert specs["occluded_mouth"].config.input.eval_pp == (
      "occlude('mouth', geometry='synthetic')|resize({size})|normalize('half')")
  assert specs["test"].config.input.eval_pp == config.input.eval_pp


def test_a_report_written_again_keeps_a_predictions_file_it_did_not_write(tmp_path):
  """predictions_test.csv is removed only where the earlier report wrote it (its config's eval.predictions)."""
  results, images = _one_evaluators_results()
  report = {**results, "evaluators": {"test": results}, "config": {"eval.predictions": False}}
  evaluate.write_report(report, str(tmp_path), {"test": images})
  (tmp_path / "predictions_test.csv").write_text("the user's own\n")
  evaluate.write_report(report, str(tmp_path), {"test": images})
  assert (tmp_path / "predictions_test.csv").read_text() == "the user's own\n"


def test_an_evaluation_into_a_workdir_that_cannot_be_written_stops_before_any_work(tmp_path):
  """A file given as --workdir failed only once every evaluator had run, as its report was written."""
  (tmp_path / "report").write_text("not a folder")
  with pytest.raises(UserError, match=rf"^--workdir={tmp_path / 'report'} cannot be created: {tmp_path / 'report'} is "
                                      r"a file, not a folder; choose another path\.$"):
    evaluate.evaluate_checkpoint(get_config("configs/dan.py:synthetic"), str(tmp_path / "weights"),
                                 str(tmp_path / "report"))
