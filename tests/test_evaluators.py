"""Named evaluators (config.evals): validation, defaults, cross-data-set class mapping on the
builders' fixture layouts, each eval step compiled once over several evaluations, the report."""

import copy
import csv
import io
import json
import logging
import os
import re
import types

import flax.linen as nn
import jax
import numpy as np
from PIL import Image
import pytest
from reference import datasets as fx
import tensorflow_datasets as tfds

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import train
from fer_jax import tta
from fer_jax import validation
from fer_jax.data import augment
from fer_jax.data import builder_utils
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.data import prepare
from fer_jax.errors import ConfigError
from helpers import get_config, random_variables, tiny_run

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def fixture_sets(tmp_path_factory):
  """FERPlus (8 classes, contempt in its train split), SFEW (7) and RAF-DB (7) fixture layouts,
  prepared into one TFDS folder; returns it and what was written."""
  root = tmp_path_factory.mktemp("fixture_sets")
  written = {"ferplus": fx.write_ferplus(root / "ferplus"), "sfew": fx.write_sfew(root / "sfew"),
             "rafdb": fx.write_rafdb(root / "rafdb")}
  for name, manual in (("ferplus/plurality", "ferplus"), ("sfew/aligned", "sfew"), ("rafdb", "rafdb")):
    prepare.make_builder(name, str(root / "tfds")).download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=str(root / manual)))
  return str(root / "tfds"), written


class Constant(nn.Module):
  """Logits = bias (a parameter): predicts whichever class the bias favours, for every image."""
  num_classes: int

  @nn.compact
  def __call__(self, images, train=False):
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    return {"logits": jax.numpy.broadcast_to(bias, (images.shape[0], self.num_classes)) + 0 * images.mean()}


def _config(data_dir, dataset, split, class_order, **evals):
  config = config_lib.base_config()
  config.model.update(name="dan", num_classes=len(labels.CLASS_ORDERS[class_order]))
  config.dataset.update(name=dataset, data_dir=data_dir, class_order=class_order, eval_split=split, image_size=8)
  config.input.update(size=8, eval_pp="gray_to_rgb()|resize({size})|to_float()")
  config.eval_batch_size = 4
  config.data_workers = 0
  config.evals = {name: config_lib.evaluator(data_dir=data_dir, **fields) for name, fields in evals.items()}
  return config


def _predicting(name: str, class_order: str) -> dict:
  order = labels.CLASS_ORDERS[class_order]
  return {"params": {"bias": 10.0 * (np.arange(len(order)) == order.index(name)).astype(np.float32)}}


def test_seven_class_model_on_ferplus_leaves_contempt_out(fixture_sets):
  data_dir, _ = fixture_sets
  config = _config(data_dir, "sfew/aligned", "validation", "sfew",
                   ferplus=dict(dataset="ferplus/plurality", split="train", pp="gray_to_rgb()|resize({size})|to_float()"))
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  results = evaluator(_predicting(labels.NEUTRAL, "sfew"), "ferplus")
  # Decoded as stored, 48², not at the run's dataset.image_size (8): the eval pipeline resizes once, as the set's own.
  assert evaluator.data("ferplus").shape == (48, 48, 1) and evaluator.data("eval").shape == (8, 8, 3)
  assert results["decoded_size"] == [48, 48]  # the report says so: one figure's inputs differ by the decoded size
  # The fixture's plurality labels in its train split, by FERPlus class name.
  ferplus_names = labels.CLASS_ORDERS["ferplus"]
  train_labels = [ferplus_names[label] for name, label in fx.FERPLUS_LABELS["plurality"].items()
                  if fx.FERPLUS_ROWS[[r[1] for r in fx.FERPLUS_ROWS].index(name)][0] == "Training"]
  kept = [name for name in train_labels if name != labels.CONTEMPT]
  assert results["num_examples"] == len(kept) == 4
  assert results["accuracy"] == kept.count(labels.NEUTRAL) / len(kept)
  mapping = results["class_mapping"]
  assert mapping["excluded_examples"] == {labels.CONTEMPT: train_labels.count(labels.CONTEMPT)}
  assert mapping["dataset_to_model"][labels.CONTEMPT] is None and mapping["dataset_to_model"]["fear"] == "fear"
  # The model's classes this split has no image of (FERPlus has them all; its train split here has four faces).
  assert mapping["model_classes_absent"] == [name for name in labels.CLASS_ORDERS["sfew"] if name not in kept]


def test_eight_class_model_on_sfew_counts_contempt_predictions_wrong(fixture_sets):
  data_dir, written = fixture_sets
  config = _config(data_dir, "ferplus/plurality", "validation", "ferplus",
                   sfew=dict(dataset="sfew/aligned", split="validation"))
  evaluator = evaluate.Evaluators(Constant(8), config, mesh_lib.make_mesh())
  results = evaluator(_predicting(labels.CONTEMPT, "ferplus"), "sfew")
  contempt = labels.CLASS_ORDERS["ferplus"].index(labels.CONTEMPT)
  confusion = np.array(results["confusion_matrix"])
  assert results["num_examples"] == len(written["sfew"]["aligned"]["validation"]) == 7
  assert confusion[:, contempt].sum() == 7 and results["accuracy"] == 0.0
  assert results["per_class_accuracy"][labels.CONTEMPT] is None
  assert results["class_mapping"]["model_classes_absent"] == [labels.CONTEMPT]
  assert results["class_mapping"]["excluded_examples"] == {}
  assert results["pp"] == "gray_to_rgb()|resize(8)|to_float()"  # as it ran, not "resize({size})"


def _prepare_outside_fer_jax(data_dir: str, name: str, class_names: list[str], labels_of_images: list[int]) -> None:
  """A set built outside ManualBuilder (whose prepare checks class names), read back from its files as runs read it."""
  with tfds.core.registered.skip_registration():
    class OwnSet(builder_utils.LocalBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=class_names)}))

      def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

      def _generate_examples(self):
        for index, label in enumerate(labels_of_images):
          png = io.BytesIO()
          Image.new("RGB", (8, 8), (index, index, index)).save(png, format="PNG")
          yield index, {"image": png.getvalue(), "label": label}
    OwnSet.name = name
    OwnSet(data_dir=data_dir).download_and_prepare(file_format="array_record")


@pytest.mark.parametrize("class_names", [["happy", "sad", "angry", "neutral"], ["happy", "sad", "angry"]])
def test_an_evaluator_on_a_set_whose_class_names_are_not_fer_jaxs_is_refused(fixture_sets, tmp_path, class_names):
  """An evaluator dropped the images of the unknown classes: "accuracy 0.3333 over 3 examples", or with no class
  known a crash in the image cache."""
  _prepare_outside_fer_jax(str(tmp_path), "emotions", class_names, [index % len(class_names) for index in range(12)])
  data_dir, _ = fixture_sets
  config = _config(data_dir, "sfew/aligned", "validation", "sfew", mine=dict(dataset="emotions", split="test"))
  config.evals.mine.data_dir = str(tmp_path)
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  with pytest.raises(pipeline.DataError, match=re.escape("Data set 'emotions' (config.evals.mine.dataset) has classes "
                                                         "fer_jax does not know: happy, sad, angry. ")):
    evaluator.open_all()


def test_an_evaluator_whose_split_keeps_no_image_for_the_model_is_refused(tmp_path):
  _prepare_outside_fer_jax(str(tmp_path), "contempt_only", list(labels.CLASS_ORDERS["ferplus"]), [7, 7, 7])
  config = _config(str(tmp_path), "contempt_only", "test", "fer2013")
  for cache in ("host", "none"):  # reported "accuracy 0.0000 over 0 examples", or crashed in the image cache
    config.dataset.cache = cache
    evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
    with pytest.raises(pipeline.DataError, match=re.escape(
        "config.dataset.eval_split='test': none of the images of 'contempt_only' test is of a class of the model "
        "(config.dataset.class_order='fer2013'); it holds contempt (3).")):
      evaluator.open_all()


@pytest.mark.parametrize("fields, message", [
    (dict(dataset="fer_plus", split="test"),
     "Unknown data set 'fer_plus' (config.evals.other.dataset) (did you mean ferplus?): fer_jax's are"),
    (dict(dataset="rafdb", split="test", skip_if_missing=True),
     "Data set 'rafdb' is not prepared in {}/rafdb/basic/1.0.0 (config.evals.other.dataset)."),
])
def test_an_evaluators_data_set_unknown_or_unprepared_names_the_evaluators_key(fixture_sets, tmp_path, fields, message):
  data_dir, _ = fixture_sets
  config = _config(data_dir, "sfew/aligned", "validation", "sfew", other=fields)
  config.evals.other.data_dir = str(tmp_path)
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  with pytest.raises(pipeline.DataError, match=re.escape(message.format(tmp_path))):
    evaluator.open_all()


def test_the_report_lists_the_evaluators_skipped_and_why(fixture_sets, tmp_path):
  data_dir, _ = fixture_sets
  config = _config(data_dir, "rafdb", "test", "rafdb", pose45=dict(dataset="rafdb", split="test_pose45",
                                                                    skip_if_missing=True))
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  evaluator.open_all()
  evaluate.final_report(evaluator, _predicting(labels.NEUTRAL, "rafdb"), str(tmp_path), 0, "model/0")
  recorded = json.loads((tmp_path / "eval_results.json").read_text())
  assert list(recorded["evaluators"]) == ["test"]
  reason = "rafdb has no split 'test_pose45'; its splits: train, test"
  assert recorded["skipped_evaluators"] == {"pose45": reason}
  assert f"Skipped (skip_if_missing): pose45: {reason}." in (tmp_path / "eval_results.md").read_text()


class MeanColour(nn.Module):
  """Logits: the image's mean red, green and blue over 25.5 for the first three classes, 0 for the others."""
  num_classes: int

  @nn.compact
  def __call__(self, images, train=False):
    means = images.mean(axis=(1, 2)) / 25.5
    return {"logits": jax.numpy.pad(means, ((0, 0), (0, self.num_classes - 3)))}


def test_predictions_name_every_example_with_its_probabilities(fixture_sets, tmp_path):
  """eval.predictions: a row per example of SFEW's 7 validation faces (two batches of 4, the padding left out), each
  named by its file and holding the softmax of its own colour's logits, computed here from the colour the fixture
  wrote; with flip TTA (a uniform face flips to itself) the same again. A report written again without them leaves
  none behind."""
  data_dir, written = fixture_sets
  config = _config(data_dir, "sfew/aligned", "validation", "sfew")
  config.eval.update(tta="flip", predictions=True)
  evaluator = evaluate.Evaluators(MeanColour(7), config, mesh_lib.make_mesh())
  evaluator.open_all()
  report = evaluate.final_report(evaluator, {"params": {}}, str(tmp_path), 0, "model/0")
  # One pass each, plain and with TTA: the metrics are the predictions' (they were a second pass each, one of them
  # through another compiled step), and what the confusion-matrix step counts.
  assert [step.name for step in evaluator.steps()] == ["probabilities step (test)", "probabilities step (test, flip)"]
  assert report["confusion_matrix"] == evaluator({"params": {}}, "test")["confusion_matrix"]
  assert report["tta"]["confusion_matrix"] == evaluator({"params": {}}, "test", "flip")["confusion_matrix"]
  with open(tmp_path / "predictions_test.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  class_names = labels.CLASS_ORDERS["sfew"]
  assert [row["record"] for row in rows] == [str(i) for i in range(7)]
  truth = written["sfew"]["aligned"]["validation"]
  assert sorted(row["file_name"] for row in rows) == sorted(truth)
  for row in rows:
    logits = np.array([*written["sfew"]["colour"][row["file_name"]], 0, 0, 0, 0]) / 25.5
    expected = np.exp(logits) / np.exp(logits).sum()
    assert row["label"] == class_names[truth[row["file_name"]]]
    for prefix in ("", "tta_"):
      probabilities = [float(row[f"{prefix}p_{name}"]) for name in class_names]
      np.testing.assert_allclose(probabilities, expected, atol=2e-6)
      assert row[f"{prefix}prediction"] == class_names[int(np.argmax(expected))]
      assert float(row[f"{prefix}confidence"]) == pytest.approx(expected.max(), abs=2e-6)
  assert "[test](predictions_test.csv)" in (tmp_path / "eval_results.md").read_text()

  config.eval.predictions = False
  evaluate.final_report(evaluate.Evaluators(MeanColour(7), config, mesh_lib.make_mesh()), {"params": {}},
                        str(tmp_path), 0, "model/0")
  assert not (tmp_path / "predictions_test.csv").exists()


def test_an_evaluator_skipped_for_a_misspelt_split_is_told_the_closest_name(fixture_sets, caplog):
  data_dir, _ = fixture_sets
  config = _config(data_dir, "rafdb", "test", "rafdb", mine=dict(dataset="rafdb", split="tset", skip_if_missing=True))
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  with caplog.at_level(logging.WARNING):
    evaluator.open_all()
  assert evaluator.skipped == {"mine": "rafdb has no split 'tset' (did you mean 'test'?); its splits: train, test"}
  assert "Evaluator mine skipped: rafdb has no split 'tset' (did you mean 'test'?)" in caplog.text


@pytest.mark.integration
def test_each_eval_step_compiles_once_over_several_evaluations(fixture_sets, caplog):
  data_dir, _ = fixture_sets
  config = _config(data_dir, "ferplus/plurality", "validation", "ferplus",
                   sfew=dict(dataset="sfew/aligned", split="validation", tta="flip"),
                   boxes=dict(dataset="sfew/aligned", split="validation", pp="occlude('boxes')|to_float()"))
  mesh = mesh_lib.make_mesh()
  evaluator = evaluate.Evaluators(Constant(8), config, mesh)
  evaluator.open_all()

  def epoch(index):
    variables = jax.device_put({"params": {"bias": np.arange(8, dtype=np.float32) * index}},
                               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for name in ("eval", "sfew", "boxes"):
      evaluator(variables, name)
    evaluator(variables, "sfew", "flip")

  with caplog.at_level(logging.WARNING):
    for index in (1, 2, 3):
      epoch(index)
  assert not [r for r in caplog.records if "compiled again" in r.getMessage()]
  # One jitted step per (preprocessing, stored shape, TTA), each compiled once, for one batch shape
  # (FERPlus's grey images are stored with one channel); the two SFEW evaluators share the
  # decoded split.
  assert {step.name: step.compiles for step in evaluator.steps()} == {
      "eval step (eval)": 1, "eval step (sfew)": 1, "eval step (boxes)": 1, "eval step (sfew, flip)": 1}
  assert evaluator.data("sfew").decoder is evaluator.data("boxes").decoder


def test_due_evaluators_follow_every_epochs_and_the_last_step():
  spec = lambda every: types.SimpleNamespace(every_epochs=every)  # noqa: E731
  run = types.SimpleNamespace(steps_per_epoch=10, num_steps=50,
                              evaluators=types.SimpleNamespace(periodic=["eval", "occluded"],
                                                               specs={"eval": spec(1), "occluded": spec(2)}))
  due = {}
  for step in (5, 10, 20, 30, 50):
    run.step = step
    due[step] = train.TrainingRun.due_evaluators(run)
  assert due == {5: [], 10: ["eval"], 20: ["eval", "occluded"], 30: ["eval"], 50: ["eval", "occluded"]}


def test_specs_take_the_runs_values_where_left_empty():
  config = get_config("configs/dan.py:synthetic,occlusion=yes")
  config.dataset.update(data_dir="/data", test_split="extra", image_size=48)
  config.evals.other = config_lib.evaluator(dataset="ferplus", split="test", image_size=64)
  specs = evaluate.evaluator_specs(config)
  assert list(specs) == ["eval", "test", "occluded_eyes", "occluded_mask", "occluded_mouth", "other"]
  assert (specs["eval"].split, specs["eval"].every_epochs, specs["test"].split) == ("test", 1, "extra")
  mouth = specs["occluded_mouth"].config
  assert (mouth.dataset.name, mouth.dataset.data_dir, mouth.dataset.image_size) == ("synthetic", "/data", 48)
  assert mouth.input.eval_pp == "occlude('mouth', geometry='synthetic')|" + config.input.eval_pp
  other = specs["other"].config
  assert (other.dataset.name, other.dataset.data_dir, other.dataset.image_size) == ("ferplus", "/data", 64)
  assert other.input.eval_pp == config.input.eval_pp and specs["other"].pp_key == "evals.other.pp"


def test_validation_names_each_bad_evaluator_key():
  config = get_config("configs/dan.py:synthetic")
  config.evals = {"test": config_lib.evaluator(), "bad name": config_lib.evaluator(),
                  "typo": {"splt": "test"}, "values": config_lib.evaluator(tta="ten_crop", every_epochs=-1, split=""),
                  "types": config_lib.evaluator(every_epochs="2"), "pp": config_lib.evaluator(pp="occlude('nose')")}
  config.update(select_metric="accuracy", select_on="values")
  with pytest.raises(ConfigError) as error:
    validation.validate(config, training=False)
  message = str(error.value)
  assert "config.evals.test: evaluator names are letters, digits, '_' and '-', and not eval or test" in message
  assert "config.evals.bad name: evaluator names" in message
  assert "config.evals.typo has unknown keys ['splt']; valid: dataset, data_dir, split" in message
  assert "config.evals.values.tta='ten_crop' is not one of: 'none', 'flip', 'lhc62'" in message
  assert "config.evals.values.every_epochs=-1 must be 0 or more" in message
  assert "config.evals.values.split is empty" in message
  assert "config.evals.types: every_epochs='2' of the wrong type" in message
  assert "config.evals.pp.pp: occlude: unknown region 'nose'" in message
  assert "config.select_on='values' must name an evaluator that runs during training (every_epochs ≥ 1): eval" in message


def _boxes_evaluator(seed: int) -> pipeline.EvalData:
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.seed = seed
  config.evals = {"boxes": config_lib.evaluator(pp="occlude('boxes', area=0.3, count=3, fill=0)|resize(32)|"
                                                   "normalize('imagenet')")}
  spec = evaluate.evaluator_specs(config)["boxes"]
  return pipeline.EvalData(spec.config, mesh_lib.make_mesh(), spec.split, spec.pp_key)


def test_random_occluders_are_the_same_whatever_seed_trained_the_model():
  """fer_jax.seeds trains seed N with --config.seed=N: each must be tested on the same occluded split."""
  inputs, examples = [], []
  for seed in (0, 1):
    data = _boxes_evaluator(seed)
    batch = next(iter(data.batches()))
    inputs.append(np.asarray(jax.jit(data.preprocess)(batch["image"], batch["record"])))
    examples.append(data.examples(8))
    shown = jax.jit(data.pipeline.visible_part)(batch["image"], augment.evaluation_keys(batch["record"]))
    np.testing.assert_array_equal(examples[-1], np.asarray(shown)[:8].astype(np.uint8))  # what evaluation sees
  np.testing.assert_array_equal(inputs[0], inputs[1])
  np.testing.assert_array_equal(examples[0], examples[1])
  painted = [np.argwhere(np.all(image == 0, axis=-1)) for image in examples[0]]
  assert all(len(boxes) for boxes in painted)  # the examples show the occluders, placed per example
  assert len({tuple(boxes[0]) for boxes in painted}) > 1


def test_random_occluders_are_drawn_per_image_whatever_classes_the_model_leaves_out():
  """Boxes were drawn from an image's position among the examples kept: a model without one of the split's classes
  (an 8-class set evaluated by a 7-class model: contempt left out) covered the same image otherwise."""
  whole = _boxes_evaluator(0)
  config = copy.deepcopy(whole.config)
  left_out = whole.split.class_names[whole.split.labels[whole.records[0]]]  # the first image's class
  labels.add_class_order("without_one", [name for name in whole.split.class_names if name != left_out])
  config.dataset.class_order, config.model.num_classes = "without_one", len(whole.split.class_names) - 1
  fewer = pipeline.EvalData(config, mesh_lib.make_mesh(), "test", "evals.boxes.pp")
  positions = np.searchsorted(whole.records, fewer.records[:8])  # each one's position in the whole split
  assert positions[0] > 0  # the images moved up
  np.testing.assert_array_equal(fewer.examples(8), whole.examples(positions[-1] + 1)[positions])


@pytest.mark.parametrize("key, value", [("evals.held_out.split", "validation"), ("dataset.test_split", "validation"),
                                        ("dataset.eval_split", "train+valid")])
def test_a_split_the_set_lacks_names_the_key_that_asked_for_it(key, value):
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.evals = {"held_out": config_lib.evaluator()}
  *parents, last = key.split(".")
  section = config
  for part in parents:
    section = section[part]
  section[last] = value
  evaluator = evaluate.Evaluators(Constant(7), config, mesh_lib.make_mesh())
  with pytest.raises(pipeline.DataError, match=re.escape(f"config.{key}={value!r}: Data set 'synthetic/tiny' has no split")):
    evaluator.open_all()


@pytest.mark.integration
def test_dan_trained_on_rafdb_reported_on_ferplus_and_sfew(fixture_sets, tmp_path):
  """--mode=eval's path: a DAN RAF-DB checkpoint with FERPlus and SFEW evaluators."""
  data_dir, written = fixture_sets
  config = get_config("configs/dan.py:rafdb")
  config.dataset.update(data_dir=data_dir, image_size=32)
  config.input.size = 32
  config.eval_batch_size = 8
  config.data_workers = 0
  config.evals = {"ferplus": config_lib.evaluator(dataset="ferplus/plurality", data_dir=data_dir, split="train",
                                                  pp="gray_to_rgb()|" + config.input.eval_pp),
                  "sfew": config_lib.evaluator(dataset="sfew/aligned", data_dir=data_dir, split="validation")}
  checkpoint = checkpointing.save_model(str(tmp_path / "dan"), random_variables(config), config)
  report = evaluate.evaluate_checkpoint(config, checkpoint, str(tmp_path / "report"))
  evaluators = report["evaluators"]
  assert list(evaluators) == ["test", "ferplus", "sfew"]
  assert evaluators["test"]["num_examples"] == len(fx.RAFDB_TEST) and report["num_examples"] == len(fx.RAFDB_TEST)
  assert evaluators["ferplus"]["num_examples"] == 4  # the train split's five faces but its contempt one
  assert evaluators["ferplus"]["class_mapping"]["excluded_examples"] == {labels.CONTEMPT: 1}
  assert evaluators["sfew"]["num_examples"] == len(written["sfew"]["aligned"]["validation"])
  for results in evaluators.values():
    assert results["class_names"] == list(labels.CLASS_ORDERS["rafdb"])
  files = set(os.listdir(tmp_path / "report"))
  assert {"eval_results.json", "eval_results.md", "eval_summary.png", "confusion_matrix.png",
          "confusion_matrix_ferplus.png", "examples_sfew.png"} <= files
  table = (tmp_path / "report" / "eval_results.md").read_text()
  assert "Left out (the model lacks them): contempt (1 example)." in table
  recorded = json.loads((tmp_path / "report" / "eval_results.json").read_text())
  assert recorded["evaluators"]["sfew"]["split"] == "validation"
  assert recorded["config"]["evals.sfew.dataset"] == "sfew/aligned" and recorded["config"]["eval_batch_size"] == 8


@pytest.mark.integration
def test_mode_eval_reports_the_checkpoint_it_read_and_only_this_evaluations_figures(fixture_sets, tmp_path, caplog):
  """A workdir whose report evaluated best/77 is read at best/77: the report says so (its step was null). Evaluated
  again into the same folder without the sfew evaluator, the report leaves no sfew figure beside it."""
  data_dir, _ = fixture_sets
  config = get_config("configs/dan.py:rafdb")
  config.dataset.update(data_dir=data_dir, image_size=32)
  config.input.size = 32
  config.update(eval_batch_size=8, data_workers=0)
  config.evals = {"sfew": config_lib.evaluator(dataset="sfew/aligned", data_dir=data_dir, split="validation")}
  best = checkpointing.manager(str(tmp_path / "run" / "best"))
  config.model.dtype = "float32"  # as a training records it, resolved
  trained = copy.deepcopy(config)
  trained.optimizer.lr, trained.seed = 0.5, 7
  checkpointing.save(best, 77, random_variables(config), trained)
  best.wait_until_finished()
  (tmp_path / "run" / "eval_results.json").write_text(json.dumps({"step": 77, "trained_steps": 80}))
  with caplog.at_level(logging.INFO):
    report = evaluate.evaluate_checkpoint(config, str(tmp_path / "run"), str(tmp_path / "report"))
  assert (report["step"], report["checkpoint"], report["trained_steps"]) == (77, str(tmp_path / "run" / "best" / "77"), None)
  # The config the weights were trained with, beside this evaluation's: the report held the latter alone, unsaid.
  assert report["trained_config"] == config_lib.flat(trained) and report["config"] == config_lib.flat(config)
  assert (f"{tmp_path / 'run' / 'best' / '77'} records a config that differs from this one in "
          "optimizer.lr=0.1 (recorded 0.5); seed=0 (recorded 7): eval_results.json keeps it under trained_config") \
      in caplog.text
  table = (tmp_path / "report" / "eval_results.md").read_text()
  assert table.startswith(f"Weights: {tmp_path / 'run' / 'best' / '77'} (step 77).")
  assert {"confusion_matrix_sfew.png", "examples_sfew.png"} <= set(os.listdir(tmp_path / "report"))
  config.evals = {}
  evaluate.evaluate_checkpoint(config, str(tmp_path / "run"), str(tmp_path / "report"))
  assert sorted(os.listdir(tmp_path / "report")) == ["confusion_matrix.png", "eval_results.json", "eval_results.md",
                                                     "eval_summary.png", "examples_test.png"]


@pytest.mark.integration
def test_mode_eval_reports_the_step_it_read_while_a_training_saves_newer_ones(fixture_sets, tmp_path, monkeypatch):
  """--checkpoint=WORKDIR was resolved to a step folder anew for the report after the weights were read: a step a
  training saved meanwhile was named as the weights evaluated, with its config."""
  data_dir, _ = fixture_sets
  config = get_config("configs/dan.py:rafdb")
  config.dataset.update(data_dir=data_dir, image_size=32)
  config.input.size = 32
  config.update(eval_batch_size=8, data_workers=0)
  config.model.dtype = "float32"
  checkpoints = checkpointing.manager(str(tmp_path / "run" / "checkpoints"))
  changed = [{"step": 3, "key": "optimizer.lr", "saved": 0.1, "now": 0.01}]
  checkpointing.save(checkpoints, 5, random_variables(config), config, changed_on_resume=changed)
  checkpoints.wait_until_finished()
  read = checkpointing._read_model_variables

  def read_while_a_step_is_saved(step_directory):
    variables = read(step_directory)
    checkpointing.save(checkpoints, 9, random_variables(config, seed=1), config)
    checkpoints.wait_until_finished()
    return variables
  monkeypatch.setattr(checkpointing, "_read_model_variables", read_while_a_step_is_saved)
  report = evaluate.evaluate_checkpoint(config, str(tmp_path / "run"), str(tmp_path / "report"))
  assert (report["step"], report["checkpoint"]) == (5, str(tmp_path / "run" / "checkpoints" / "5"))
  assert report["changed_on_resume"] == changed  # the step's own record: the report said [] under --mode=eval


class Linear(nn.Module):
  """Logits of a fixed random linear map of the pixels: each test-time view gives other logits."""

  @nn.compact
  def __call__(self, images, train=False):
    return {"logits": nn.Dense(7, kernel_init=nn.initializers.normal(0.01))(images.reshape(len(images), -1))}


@pytest.mark.integration
def test_lhc62_predictions_of_padded_batches_are_each_images_own_views(tmp_path):
  """The 62-view TTA through the evaluation (70 images in batches of 16, the last padded): each row is
  `tta.predict` of that image alone, and the TTA's confusion matrix counts those rows."""
  config = tiny_run(get_config("configs/dan.py:synthetic"), batch_size=16)
  config.eval.update(tta="lhc62", predictions=True)
  model = Linear()
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  evaluator = evaluate.Evaluators(model, config, mesh_lib.make_mesh())
  evaluator.open_all()
  report = evaluate.final_report(evaluator, variables, str(tmp_path), 0, "model/0")
  with open(tmp_path / "predictions_test.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  data = evaluator.data("test")
  assert [int(row["record"]) for row in rows] == list(range(70))
  logits = lambda images: model.apply(variables, images)["logits"]
  class_names = labels.CLASS_ORDERS[config.dataset.class_order]
  predicted = []
  for position, row in enumerate(rows):
    image = data.decoder(data.records[position])[None]
    views = tta.predict("lhc62", logits, data.preprocess(image, data.records[position:position + 1]))[0]
    np.testing.assert_allclose([float(row[f"tta_p_{name}"]) for name in class_names], views, atol=2e-6)
    predicted.append(int(np.argmax(views)))
  assert report["tta"]["name"] == "lhc62"
  confusion = np.zeros((7, 7), int)
  np.add.at(confusion, (data.split.labels[data.records], predicted), 1)
  np.testing.assert_array_equal(report["tta"]["confusion_matrix"], confusion)
  assert any(row["tta_prediction"] != row["prediction"] for row in rows)  # the views changed some classes
