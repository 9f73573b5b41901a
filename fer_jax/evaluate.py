"""Evaluation: the named evaluators of a config, a jitted step that accumulates a confusion
matrix, metrics, and reports; the final report of a training run and `--mode=eval`.

Every example counts once: the last batch is padded and padded rows carry mask 0. The
confusion matrix (a `clu.metrics.Metric`) is summed inside the step over the global batch, so
the host only sums K×K matrices, on any number of devices and processes. All metrics derive
from it. With `config.eval.predictions` the final report adds each example's class probabilities, from a
second step whose output every process receives whole (`probabilities_step`), and counts its metrics from the class
scores behind them (`confusion_of_scores`), as the first step does.
"""

import collections
import contextlib
import csv
import dataclasses
import json
import os
import re
from typing import NamedTuple, Sequence

from absl import logging
from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import compare
from fer_jax import config_lib
from fer_jax import distributed
from fer_jax import errors
from fer_jax import figures
from fer_jax import files
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import progress
from fer_jax import provenance
from fer_jax import stopping
from fer_jax import tta
from fer_jax import validation
from fer_jax import watched_step
from fer_jax.data import augment
from fer_jax.data import pipeline
from fer_jax.errors import UserError


def prepared_set(dataset) -> tuple[str, str, str]:
  """(the set's name, its variant, its folder's real path): one for "rafdb", "rafdb/basic" (its default variant) and
  "rafdb/basic:1.0.0" (a version: fer_jax's sets have one each), and for a folder however spelled (data_dir ""
  being TFDS's own, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  name, parts = tfds.core.naming.parse_builder_name_kwargs(dataset.name)
  variant = parts.get("config")
  if variant is None:
    try:
      builder_cls = tfds.builder_cls(str(name))
    except tfds.core.registered.DatasetNotFoundError:  # a set of yours read by its name alone
      builder_cls = None
    variant = builder_cls and (builder_cls.DEFAULT_BUILDER_CONFIG_NAME or
                               (builder_cls.BUILDER_CONFIGS[0].name if builder_cls.BUILDER_CONFIGS else None))
  folder = dataset.data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
  return str(name), variant or "", os.path.realpath(os.path.expanduser(folder))


@dataclasses.dataclass(frozen=True)
class Spec:
  """One named evaluator, resolved: `config` is the run's config with the evaluator's data set,
  image size and pipeline (as `input.eval_pp`) in place."""
  name: str
  config: ml_collections.ConfigDict
  split: str
  tta: str
  every_epochs: int
  skip_if_missing: bool
  dataset_key: str  # the config key that named the data set, for messages
  decoded_as_stored: bool = False  # another data set than the run's, no image_size given (pipeline.stored_shape)

  @property
  def split_identity(self) -> tuple:
    """Evaluators with equal identities read the same decoded images."""
    dataset = self.config.dataset
    return (dataset.name, dataset.data_dir, dataset.image_size, self.split, self.decoded_as_stored)

  def reads_images_of(self, other: "Spec") -> bool:
    """Whether this evaluator may read an image `other` reads: a part of its split ("test[:50%]+validation") and one
    of other's overlap, an occlusion or pose subset (config_lib.SUBSETS, prepared as "<split>_<subset>") counting as
    the whole split it was taken from; slices whose overlap needs the split's size (absolute against percent, or
    negative absolute bounds) count as overlapping."""
    same_set = prepared_set(self.config.dataset) == prepared_set(other.config.dataset)
    return same_set and any(_overlap(mine, theirs) for mine in _split_parts(self.split)
                            for theirs in _split_parts(other.split))

  @property
  def inputs_identity(self) -> tuple:
    """Evaluators with equal identities see the same inputs (they share steps and results)."""
    return (*self.split_identity, self.config.input.eval_pp)

  @property
  def pp_key(self) -> str:
    return "input.eval_pp" if self.name in config_lib.BUILT_IN_EVALUATORS else f"evals.{self.name}.pp"

  @property
  def split_config_key(self) -> str:
    """The config key that named `split` (evaluator_fields), for messages."""
    if self.name == "test" and self.config.dataset.test_split:
      return "dataset.test_split"
    return "dataset.eval_split" if self.name in config_lib.BUILT_IN_EVALUATORS else f"evals.{self.name}.split"


def evaluator_fields(config) -> dict[str, dict]:
  """{name: fields} of the built-in evaluators and then `config.evals`, defaults filled in."""
  dataset = config.dataset
  fields = {"eval": config_lib.evaluator(split=dataset.eval_split, every_epochs=config.eval.every_epochs),
            "test": config_lib.evaluator(split=dataset.test_split or dataset.eval_split, tta=config.eval.tta)}
  fields.update({name: config_lib.evaluator(**entry) for name, entry in config.evals.items()})
  return fields


def evaluator_specs(config) -> dict[str, Spec]:
  """Every evaluator of `config` (fer_jax.validation has checked their fields)."""
  return {name: _spec(config, name, fields) for name, fields in evaluator_fields(config).items()}


def _spec(config, name: str, fields) -> Spec:
  resolved = config.copy_and_resolve_references()
  # "" = the run's data_dir for every data set: prepared sets share one folder (the launchers' --data-dir).
  resolved.dataset.update(name=fields.dataset or config.dataset.name,
                          data_dir=fields.data_dir or config.dataset.data_dir,
                          image_size=fields.image_size or config.dataset.image_size)
  resolved.input.eval_pp = config_lib.evaluator_pp(fields.pp, config.input.eval_pp)
  dataset_key = f"evals.{name}.dataset" if fields.dataset else "dataset.name"
  as_stored = fields.dataset not in ("", config.dataset.name) and not fields.image_size
  return Spec(name, resolved, fields.split, fields.tta, fields.every_epochs, fields.skip_if_missing, dataset_key,
              as_stored)


def class_mapping(split) -> dict:
  """How a split's classes met the model's, by name: each data-set class → the model class it
  is scored as (None: its records are left out); the count left out of each class the split has
  records of; model classes the split has no example of, because the data set lacks them or this
  split holds none (predicting one is always wrong)."""
  model = set(split.class_names)
  counts = dict(zip(split.source_class_names, split.source_counts))
  return {
      "dataset_to_model": {name: (name if name in model else None) for name in split.source_class_names},
      "excluded_examples": {name: count for name, count in counts.items() if name not in model and count},
      "model_classes_absent": [name for name in split.class_names if not counts.get(name)],
  }


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """K×K counts (rows: true class, columns: predicted) of the examples with mask 1, and how many of them had a
  non-finite class score (argmax would give NaN scores class 0, a plausible accuracy)."""

  counts: jax.Array
  non_finite: jax.Array

  @classmethod
  def from_model_output(cls, *, logits, labels, mask, **_) -> "ConfusionMatrix":
    num_classes = logits.shape[-1]
    predicted = jnp.argmax(logits, axis=-1)
    counted = mask > 0
    counts = jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add(counted.astype(jnp.int32))
    non_finite = jnp.sum(counted & ~jnp.all(jnp.isfinite(logits), axis=-1), dtype=jnp.int32)
    return cls(counts=counts, non_finite=non_finite)

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts, non_finite=self.non_finite + other.non_finite)

  def compute(self) -> jax.Array:
    return self.counts


def _scores(model, tta_name: str, preprocess):
  """(variables, batch) → the batch's class scores: the plain logits with `tta_name` "none", else the TTA class
  probabilities (`fer_jax.tta.predict`)."""
  def scores(variables, batch):
    images = batch["image"] if preprocess is None else preprocess(batch["image"], batch["record"])
    logits_fn = lambda x: model.apply(variables, x, train=False)["logits"]
    return logits_fn(images) if tta_name == "none" else tta.predict(tta_name, logits_fn, images)
  return scores


def confusion_step(model, num_classes: int, mesh, tta_name: str = "none", preprocess=None):
  """jit(variables, batch) → the batch's `ConfusionMatrix`.

  `tta_name` (fer_jax.tta.NAMES) averages the softmax outputs of weighted test-time views,
  all computed inside the one jitted step; "none" takes the argmax of the plain logits.
  With `preprocess` (uint8 images, records → model inputs, e.g. `EvalData.preprocess`) the
  batch holds uint8 images, preprocessed inside the step.
  """
  scores_of = _scores(model, tta_name, preprocess)

  def eval_step(variables, batch):
    scores = scores_of(variables, batch)
    if scores.shape[-1] != num_classes:
      raise ValueError(f"The model predicts {scores.shape[-1]} classes, not {num_classes}")
    return ConfusionMatrix.from_model_output(logits=scores, labels=batch["label"], mask=batch["mask"])

  replicated = NamedSharding(mesh, P())
  return jax.jit(eval_step, out_shardings=replicated, compiler_options=mesh_lib.compiler_options(mesh))


def probabilities_step(model, mesh, tta_name: str = "none", preprocess=None):
  """jit(variables, batch) → (class scores [B, K], class probabilities [B, K], positions [B], mask [B]), float32, of
  the whole global batch on every process: the scores `confusion_step` counts (the logits, or with `tta_name` the TTA's
  probabilities), and the softmax of the logits, or the TTA's probabilities."""
  scores_of = _scores(model, tta_name, preprocess)

  def step(variables, batch):
    scores = scores_of(variables, batch).astype(jnp.float32)
    probabilities = jax.nn.softmax(scores, axis=-1) if tta_name == "none" else scores
    return scores, probabilities, batch["position"], batch["mask"]

  return jax.jit(step, out_shardings=NamedSharding(mesh, P()), compiler_options=mesh_lib.compiler_options(mesh))


IN_FLIGHT = 3  # evaluation batches queued on the devices beyond the one the host waits for


def _outputs(step, variables, eval_data, label: str):
  """`step`'s output of each batch of `eval_data`, in order, on the host. The host keeps IN_FLIGHT batches queued and
  waits for the oldest in Python, so that SIGINT/SIGTERM stops a long evaluation within a batch (not after every batch
  it had queued; on several processes, every process before the same batch, `stopping.stop_if_agreed`, once the
  batches queued are computed), and logs the progress of a long one (`label`: what it evaluates)."""
  queued = collections.deque()
  batch_progress = progress.BatchProgress(label, eval_data.num_batches)
  for index, batch in enumerate(eval_data.batches()):
    try:
      stopping.stop_if_agreed()
    except stopping.StoppedOutsideSteps:
      _finish(queued)
      raise
    queued.append(step(variables, batch))
    if len(queued) > IN_FLIGHT:
      yield _waited_for(queued.popleft())
      batch_progress.update(index + 1 - len(queued))  # the batches computed
  while queued:  # the last batches, one at a time: a slow evaluation of few batches shows its progress too
    yield _waited_for(queued.popleft())
    batch_progress.update(eval_data.num_batches - len(queued))


def _finish(queued) -> None:
  """Waits for the batches `queued` on the devices, which every process computes alike: processes that left with
  their collectives running could hang in their exits, inside XLA's teardown (over 4 minutes, once)."""
  for output in queued:
    for leaf in jax.tree.leaves(output):
      stopping.wait_interruptibly(leaf)


def _waited_for(output):
  _finish([output])
  return jax.device_get(output)


def confusion_matrix(step, variables, eval_data, label: str) -> np.ndarray:
  """The split's confusion matrix, the sum of `step`'s (`confusion_step`) over its batches (`_outputs`); a
  `stopping.NonFiniteError` if any example's class scores were not finite."""
  counts, non_finite = 0, 0
  for update in _outputs(step, variables, eval_data, label):
    counts, non_finite = counts + np.asarray(update.compute(), np.int64), non_finite + int(update.non_finite)
  if non_finite:
    raise _non_finite_scores(label, non_finite, int(np.sum(counts)))
  return counts


def confusion_of_scores(scores: np.ndarray, labels: np.ndarray, label: str) -> np.ndarray:
  """The confusion matrix of class scores [N, K] (`probabilities_step`'s) against `labels` [N], counted by
  `ConfusionMatrix` as the evaluation step counts them; a `stopping.NonFiniteError` if any example's scores were not
  finite."""
  update = ConfusionMatrix.from_model_output(logits=scores, labels=labels, mask=np.ones(len(labels)))
  if non_finite := int(update.non_finite):
    raise _non_finite_scores(label, non_finite, len(labels))
  return np.asarray(update.compute(), np.int64)


def _non_finite_scores(label: str, non_finite: int, examples: int) -> stopping.NonFiniteError:
  return stopping.NonFiniteError(
      f"{label}: {non_finite} of {examples} examples got non-finite class scores (NaN or Inf), so "
      "their predictions and the metrics would mean nothing; no report was written.",
      "The weights or the model's inference-mode output are broken: check the checkpoint (`python -m "
      "fer_jax.summary --checkpoint=PATH` fingerprints it) and, for a model of yours, its eval-mode outputs.")


def probabilities(step, variables, eval_data, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(records [N], class scores [N, K], class probabilities [N, K]) of every example of `eval_data`'s split, by
  record (the split's index of each), from `step` (`probabilities_step`); the padding left out."""
  records, scores, rows = [], [], []
  for batch_scores, batch_probabilities, positions, mask in _outputs(step, variables, eval_data, label):
    kept = mask > 0
    records.append(eval_data.records[positions[kept]])
    scores.append(batch_scores[kept])
    rows.append(batch_probabilities[kept])
  records, scores, rows = np.concatenate(records), np.concatenate(scores), np.concatenate(rows)
  order = np.argsort(records, kind="stable")
  return records[order], scores[order], rows[order]


def metrics(confusion: np.ndarray, class_names) -> dict:
  """Accuracy, mean-class (balanced) accuracy over the classes present, per-class accuracy, and macro F1
  as scikit-learn's f1_score(average="macro") defines it: the mean F1 over the classes that are true or
  predicted at least once. Null (None) for no examples."""
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  correct = np.diag(confusion)
  present = support > 0
  recall = np.where(present, correct / np.maximum(support, 1), np.nan)
  seen = present | (predicted > 0)
  f1 = 2 * correct[seen] / (support[seen] + predicted[seen])  # 2·precision·recall / (precision + recall)
  examples = int(support.sum())
  return {
      "accuracy": float(correct.sum() / examples) if examples else None,
      "mean_class_accuracy": float(np.nanmean(recall)) if examples else None,
      "macro_f1": float(f1.mean()) if examples else None,
      "per_class_accuracy": {name: (None if np.isnan(r) else float(r)) for name, r in zip(class_names, recall)},
      "class_names": list(class_names),
      "confusion_matrix": confusion.tolist(),
      "num_examples": examples,
  }


TTA_KEYS = ("accuracy", "mean_class_accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix")
REPORTED = "test"  # the evaluator whose results are also the top level of eval_results.json


def write_report(report: dict, workdir: str, examples: dict | None = None, predictions: dict | None = None) -> None:
  """DIR/eval_results.json (the "test" evaluator's results at the top level, as before, and every
  evaluator under "evaluators"), eval_results.md, a confusion matrix PNG per evaluator
  (confusion_matrix.png for "test", confusion_matrix_<name>.png for the others), examples_<name>.png
  of `examples` ({name: uint8 images, `EvalData.examples`}), predictions_<name>.csv of `predictions` ({name:
  `predictions_table`}) and eval_summary.png (process 0 only). The figures of evaluators that the report DIR held
  before listed and this one does not are removed, and the predictions this one does not write."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  evaluators = report["evaluators"]
  _remove_files_of_the_previous_report(workdir, evaluators, predictions or {})
  files.write_whole(os.path.join(workdir, files.REPORT), json.dumps(report, indent=2))
  weights = "" if report.get("step") is None else f" (step {report['step']})"  # the figure names its weights
  for name, results in evaluators.items():
    figures.plot_confusion(np.array(results["confusion_matrix"]), results["class_names"],
                           os.path.join(workdir, confusion_file(name)),
                           f"{name}{weights}: accuracy {results['accuracy']:.2%}, mean-class "
                           f"{results['mean_class_accuracy']:.2%}")
  for name, images in (examples or {}).items():
    figures.plot_examples(images, os.path.join(workdir, examples_file(name)), f"{name}: {evaluators[name]['pp']}")
  for name, table in (predictions or {}).items():
    with files.written_whole(os.path.join(workdir, predictions_file(name)), newline="", encoding="utf-8") as f:
      csv.writer(f).writerows(table)
  figures.plot_accuracies({"": {name: r["accuracy"] for name, r in evaluators.items()}},
                          os.path.join(workdir, "eval_summary.png"))
  files.write_whole(os.path.join(workdir, "eval_results.md"), markdown(report, examples or {}, predictions))
  logging.info("Wrote the report to %s (eval_results.json, eval_results.md and the figures).", os.path.abspath(workdir))


def _remove_files_of_the_previous_report(workdir: str, evaluators: dict, predictions: dict) -> None:
  """A report written again into its folder leaves no figure of the evaluators it does not list, and no predictions
  of the earlier weights beside its own (those it does not write)."""
  record = files.json_object(os.path.join(workdir, files.REPORT)) or {}
  previous = record.get("evaluators")
  if not isinstance(previous, dict):
    return
  stale = [file_name for name in set(previous) - set(evaluators) for file_name in (confusion_file(name),
                                                                                   examples_file(name))]
  config = record.get("config")
  if isinstance(config, dict) and config.get("eval.predictions"):  # the earlier report wrote them
    stale += [predictions_file(name) for name in set(previous) - set(predictions)]
  for file_name in stale:
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, file_name))


def predictions_file(name: str) -> str:
  return f"predictions_{name}.csv"


def confusion_file(name: str) -> str:
  return "confusion_matrix.png" if name == REPORTED else f"confusion_matrix_{name}.png"


def examples_file(name: str) -> str:
  return f"examples_{name}.png"


def markdown(report: dict, examples: dict, predictions: dict | None = None) -> str:
  """eval_results.md: the weights, one row per evaluator, per-class accuracies, class mappings, evaluators
  skipped, pictures and `predictions` files."""
  evaluators = report["evaluators"]
  lines = []
  if report.get("checkpoint"):
    step = "" if report.get("step") is None else f" (step {report['step']})"  # None: a folder not named by a step
    lines += [f"Weights: {report['checkpoint']}{step}.", ""]
  if report.get("selection"):
    lines += [f"Selected: {selection_note(report['selection'])}", ""]
  if kept := report.get("best_epoch_kept"):
    lines += [f"Not these weights: {selection_note({**kept, 'reported_on_the_same_split': []})} It is kept in "
              f"{kept['checkpoint']} "
              f"({kept['metric']} {kept['value']:.4f}; `--mode=eval --checkpoint=` reports it, "
              "`--config.restore_best=True` makes it the run's report).", ""]
  lines += ["| evaluator | data set | split | examples | accuracy % | mean-class % | macro F1 % | TTA | TTA accuracy % |",
            "|---|---|---|---:|---:|---:|---:|---|---:|"]
  percent = compare.percent
  for name, r in evaluators.items():
    tta_entry = r.get("tta", {})
    lines.append(f"| {name} | {r['dataset']} | {r['split']} | {r['num_examples']} | {percent(r['accuracy'])} | "
                 f"{percent(r['mean_class_accuracy'])} | {percent(r['macro_f1'])} | {tta_entry.get('name', 'none')} | "
                 f"{percent(tta_entry.get('accuracy'))} |")
  class_names = next(iter(evaluators.values()))["class_names"]
  lines += ["", "Per-class accuracy (%; – where the split has no example of the class):", "",
            "| evaluator | " + " | ".join(class_names) + " |", "|---|" + "---:|" * len(class_names)]
  for name, r in evaluators.items():
    for label, results in [(name, r)] + ([(f"{name}, {r['tta']['name']} TTA", r["tta"])] if "tta" in r else []):
      lines.append(f"| {label} | " + " | ".join(percent(results["per_class_accuracy"][c]) for c in class_names) + " |")
  lines += ["", "Preprocessing (on the device, of the images the host decoded):", ""] + [
      f"* {name}: `{r['pp']}` of {r['decoded_size'][0]}×{r['decoded_size'][1]}" for name, r in evaluators.items()]
  for name, r in evaluators.items():
    mapping = r["class_mapping"]
    if mapping["excluded_examples"] or mapping["model_classes_absent"]:
      excluded = ", ".join(f"{c} ({errors.counted(n, 'example')})"
                           for c, n in mapping["excluded_examples"].items()) or "none"
      absent = ", ".join(mapping["model_classes_absent"]) or "none"
      lines += ["", f"{name}: classes mapped by name from {r['dataset']}. Left out (the model lacks them): {excluded}. "
                f"Model classes without an example in {r['split']} (predicting them counts as wrong): {absent}."]
  skipped = report.get("skipped_evaluators", {})
  if skipped:
    lines += ["", "Skipped (skip_if_missing): " + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
              + "."]
  lines += ["", "Pictures: " + ", ".join(f"[{name}]({confusion_file(name)})" for name in evaluators)
            + " (confusion matrices); " + ", ".join(f"[{name}]({examples_file(name)})" for name in examples)
            + " (first inputs before normalize()/to_float(), occluders included); "
            "[accuracy per evaluator](eval_summary.png)."]
  if predictions:
    lines += ["", "Predictions per example: " + ", ".join(f"[{name}]({predictions_file(name)})" for name in predictions)
              + "."]
  return "\n".join(lines + [""])


class Evaluators:
  """The config's named evaluators (evaluator_specs): eval data and a jitted step
  per (preprocessing, stored shape, TTA), built once and reused at every evaluation, so evaluating
  adds no compilation after the first."""

  def __init__(self, model, config, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    self.specs = evaluator_specs(config)
    self.skipped = {}  # {name: why}, for the report
    self._splits, self._data, self._steps = {}, {}, {}

  def open_all(self) -> None:
    """Opens every evaluator's split now, so that a bad one fails before any training; drops
    (with a warning, and in `skipped`) those with `skip_if_missing` whose split the prepared set lacks."""
    for name, spec in list(self.specs.items()):
      with distributed.errors_together():
        absence = spec.skip_if_missing and pipeline.split_absence(spec.config, spec.split, spec.dataset_key)
      absence = distributed.skipped_alike(absence or "", f"Evaluator {name} (skip_if_missing)")
      if absence:
        self.skipped[name] = absence
        logging.warning("Evaluator %s skipped: %s (skip_if_missing).", name, self.skipped[name])
        del self.specs[name]
      else:
        self.data(name)

  @property
  def periodic(self) -> list[str]:
    return [name for name, spec in self.specs.items() if spec.every_epochs]

  @property
  def reported(self) -> list[str]:
    """The final report's evaluators: all but "eval" where it reads the same inputs as "test"."""
    same = self.specs["eval"].inputs_identity == self.specs["test"].inputs_identity
    return [name for name in self.specs if not (name == "eval" and same)]

  def data(self, name: str) -> pipeline.EvalData:
    spec = self.specs[name]
    inputs, split = spec.inputs_identity, spec.split_identity
    if inputs not in self._data:
      if split in self._splits:
        self._data[inputs] = self._splits[split].with_pipeline(spec.config, spec.pp_key)
      else:
        with distributed.errors_together():
          self._data[inputs] = pipeline.EvalData(spec.config, self.mesh, spec.split, spec.pp_key,
                                                 spec.split_config_key, spec.dataset_key, spec.decoded_as_stored)
        opened = self._data[inputs].split
        distributed.check_same_split(f"evaluator {name}'s split", pipeline.split_identity(opened), opened.prepared_in)
        self._splits[split] = self._data[inputs]
    return self._data[inputs]

  def _step(self, kind: str, name: str, tta_name: str) -> watched_step.WatchedStep:
    """The evaluator's jitted step of `kind` ("eval": `confusion_step`, "probabilities": `probabilities_step`).
    Evaluators whose batches are stored alike and preprocessed alike share one compiled step."""
    eval_data = self.data(name)
    step_key = (kind, eval_data.pipeline.text, eval_data.shape, eval_data.global_batch, tta_name)
    if step_key not in self._steps:
      jitted = (confusion_step(self.model, self.config.model.num_classes, self.mesh, tta_name, eval_data.preprocess)
                if kind == "eval" else probabilities_step(self.model, self.mesh, tta_name, eval_data.preprocess))
      self._steps[step_key] = watched_step.WatchedStep(f"{kind} step ({_label(name, tta_name)})", jitted)
    return self._steps[step_key]

  def __call__(self, variables, name: str, tta_name: str = "none") -> dict:
    confusion = confusion_matrix(self._step("eval", name, tta_name), variables, self.data(name),
                                 f"Evaluating {_label(name, tta_name)}")
    return self._results(name, confusion)

  def predict(self, variables, name: str, tta_name: str = "none") -> "Predictions":
    """The evaluator's split predicted in one pass (`probabilities`), with the results `__call__` gives counted from
    the very scores `__call__` counts (the logits, not their softmax, which rounds near ties to ties)."""
    label, eval_data = f"Predicting {_label(name, tta_name)}", self.data(name)
    records, scores, table = probabilities(self._step("probabilities", name, tta_name), variables, eval_data, label)
    confusion = confusion_of_scores(scores, eval_data.split.labels[records], label)
    return Predictions(self._results(name, confusion), records, table, np.argmax(scores, axis=-1))

  def _results(self, name: str, confusion: np.ndarray) -> dict:
    spec, eval_data = self.specs[name], self.data(name)
    results = metrics(confusion, eval_data.split.class_names)
    return {**results, "evaluator": name, "split": spec.split, "dataset": spec.config.dataset.name,
            "model": self.config.model.name, "pp": augment.with_size(spec.config.input.eval_pp, spec.config.input.size),
            "decoded_size": list(eval_data.shape[:2]), "class_mapping": class_mapping(eval_data.split)}

  def steps(self) -> list[watched_step.WatchedStep]:
    """The steps built so far (each compiles once: one per preprocessing, stored shape and TTA)."""
    return list(self._steps.values())


class Predictions(NamedTuple):
  """`Evaluators.predict`'s output: results as `Evaluators.__call__` gives them, and by record (the split's index of
  each example) [N], the class probabilities [N, K] and the predicted classes [N] the results count."""
  results: dict
  records: np.ndarray
  probabilities: np.ndarray
  predicted: np.ndarray


# A part of a split spec: its split (a subset's named apart), then an optional slice's two bounds.
SLICE = re.compile(r"^\s*([\w-]+?)(?:_(" + "|".join(config_lib.SUBSETS) + r"))?\s*"
                   r"(?:\[\s*([-\d]*%?)\s*:\s*([-\d]*%?)\s*\])?\s*$")


def _split_parts(split: str) -> list[tuple[str, str, str]]:
  """(split taken from, start, stop) of each part of a split spec ("test[:50%]" -> ("test", "", "50%")); a subset's
  part is its whole split's, and a spec this does not parse is one part of its own name, whole."""
  parts = []
  for part in split.split("+"):
    match = SLICE.match(part)
    if not match:
      parts.append((part.strip(), "", ""))
    elif match[2]:
      parts.append((match[1], "", ""))
    else:
      parts.append((match[1], match[3] or "", match[4] or ""))
  return parts


def _overlap(first: tuple[str, str, str], second: tuple[str, str, str]) -> bool:
  if first[0] != second[0]:
    return False
  bounds = [first[1:], second[1:]]
  units = {bound.endswith("%") for pair in bounds for bound in pair if bound}
  if len(units) > 1 or (units == {False} and any(bound.startswith("-") for pair in bounds for bound in pair)):
    return True  # their overlap depends on the split's size
  end = 100 if units == {True} else float("inf")
  spans = [[float(bound.rstrip("%")) if bound else default for bound, default in zip(pair, (0, end))]
           for pair in bounds]
  spans = [[value + end if value < 0 else value for value in span] for span in spans]  # "-10%" is "90%"
  return max(spans[0][0], spans[1][0]) < min(spans[0][1], spans[1][1])


def _label(name: str, tta_name: str) -> str:
  return name if tta_name == "none" else f"{name}, {tta_name}"


EXAMPLES_PER_EVALUATOR = 8


def selection_record(evaluators: Evaluators, metric: str, evaluator: str, epoch: int, value: float,
                     trained_epochs: int) -> dict:
  """What chose the reported weights (the best epoch by `metric` on `evaluator`), and the reported evaluators that
  read images the choice was made on besides `evaluator` itself (its split's, or a subset's of it): their figures
  are the best of several epochs on them."""
  chosen_on = evaluators.specs[evaluator]
  same = [name for name in evaluators.reported
          if name != evaluator and evaluators.specs[name].reads_images_of(chosen_on)]
  return {"metric": metric, "evaluator": evaluator, "dataset": chosen_on.config.dataset.name,
          "split": chosen_on.split, "epoch": epoch, "value": value, "trained_epochs": trained_epochs,
          "reported_on_the_same_split": same}


def selection_note(selection: dict, chosen: str = "") -> str:
  """How the reported weights were chosen (`chosen`: which epoch, by default "The best epoch (E of N)"), saying
  when a reported figure is the selection's own."""
  chosen = chosen or f"The best epoch ({selection['epoch']} of {selection['trained_epochs']})"
  note = (f"{chosen} by {selection['metric']} on the evaluator {selection['evaluator']} ({selection['dataset']} "
          f"{selection['split']}).")
  if same := selection["reported_on_the_same_split"]:
    note += (f" {', '.join(same)} {'reads' if len(same) == 1 else 'read'} images the epoch was chosen on: "
             "the best of the epochs evaluated there, an optimistic figure (the official scripts report it so); "
             "select on a split held out of training and testing for an unbiased one (docs/training.md, 'Model "
             "selection').")
  return note


def final_report(evaluators: Evaluators, variables, workdir: str, step: int | None, checkpoint: str,
                 reusable: dict | None = None, trained_steps: int | None = None, selection: dict | None = None,
                 trained_config: dict | None = None, best_kept: dict | None = None,
                 changed_on_resume: Sequence[dict] = ()) -> dict:
  """Runs every reported evaluator (single pass and, where it has one, with its TTA), writes the
  report files and returns the "test" evaluator's results with all of them under "evaluators", the
  evaluators skipped for a missing split under "skipped_evaluators", the run's config, flat, under
  "config", the checkpoint folder of the weights under "checkpoint" and the steps the run trained under
  "trained_steps" (None: `--mode=eval`). `step`: the step whose weights are evaluated (the best epoch's with
  restore_best; under `--mode=eval` the number `checkpoint` is named by, 0 for a converted model, None where it is
  not one). `reusable`: {inputs_identity: results} already computed with these variables. `selection`: what chose
  these weights (`selection_record`), under "selection", where they are a selected epoch's; `best_kept`, where they
  are not (a run that selects without restore_best): the best epoch's record and its "checkpoint", under
  "best_epoch_kept". `trained_config`
  (`--mode=eval`): the config the checkpoint records it was trained with, flat, under "trained_config" (None where
  it records none, and for a training run, whose "config" it is). `changed_on_resume`: the settings the run's resumes
  changed (`checkpointing.changes_on_resume`), under "changed_on_resume". Also the model's parameter count,
  "num_params" (`models.parameter_count`), and the code, software and devices that made the report, "provenance"
  (`fer_jax.provenance.record`)."""
  reusable, by_name, predicted = dict(reusable or {}), {}, {}
  for name in evaluators.reported:
    spec = evaluators.specs[name]
    if evaluators.config.eval.predictions:  # the metrics of the probabilities the predictions list, in one pass
      plain = evaluators.predict(variables, name)
      predicted[name] = [plain] + ([evaluators.predict(variables, name, spec.tta)] if spec.tta != "none" else [])
      results, with_tta = plain.results, predicted[name][-1].results
    else:
      results = reusable.get(spec.inputs_identity) or evaluators(variables, name)
      with_tta = evaluators(variables, name, spec.tta) if spec.tta != "none" else None
    reusable[spec.inputs_identity] = results
    results = {**results, "evaluator": name, "step": step}
    if spec.tta != "none":
      results["tta"] = {"name": spec.tta, **{k: with_tta[k] for k in TTA_KEYS}}
    by_name[name] = results
    logging.info("%s (%s %s): accuracy %.4f, mean-class accuracy %.4f over %d examples%s", name, results["dataset"],
                 spec.split, results["accuracy"], results["mean_class_accuracy"], results["num_examples"],
                 f"; with {spec.tta} TTA: accuracy {results['tta']['accuracy']:.4f}" if "tta" in results else "")
  report = {**by_name[REPORTED], "evaluators": by_name, "skipped_evaluators": evaluators.skipped,
            "config": config_lib.flat(evaluators.config), "checkpoint": checkpoint, "trained_steps": trained_steps,
            "selection": selection, "best_epoch_kept": best_kept, "trained_config": trained_config,
            "changed_on_resume": list(changed_on_resume),
            "num_params": models.parameter_count(models.get_method(evaluators.config.model.name), variables["params"]),
            "provenance": provenance.record()}
  examples = {name: evaluators.data(name).examples(EXAMPLES_PER_EVALUATOR) for name in by_name}
  predictions = {name: predictions_table(evaluators.data(name).split, *passes) for name, passes in predicted.items()}
  with distributed.errors_together():  # process 0 writes it: its failure (a full disk) ends every process alike
    write_report(report, workdir, examples, predictions)
  return report


def predictions_table(split, plain: Predictions, with_tta: Predictions | None = None) -> list[list]:
  """An evaluator's predictions_<name>.csv from its `Evaluators.predict` outputs (plain, and with its TTA where it
  has one): a header, then a row per example of its split in the split's order: `record` (its index in the split as
  its spec reads it: `test[10:30]`'s first example is 0), `file_name` (where the set records one), `label`,
  `prediction`, `confidence`, `p_<class>`… (the model's classes) and, with a TTA, `tta_prediction`, `tta_confidence`,
  `tta_p_<class>`…. Every process computes the probabilities (collectives); process 0 alone, which writes the
  report, makes the table (the others: [])."""
  if jax.process_index() != 0:
    return []
  records = plain.records
  columns = {"record": records}
  if "file_name" in split.source.dataset_info.features:
    columns["file_name"] = [_text(split.source[int(record)]["file_name"]) for record in records]
  columns["label"] = [split.class_names[label] for label in split.labels[records]]
  for prefix, predictions in [("", plain)] + ([("tta_", with_tta)] if with_tta is not None else []):
    table, top = predictions.probabilities, predictions.predicted
    columns[f"{prefix}prediction"] = [split.class_names[index] for index in top]
    columns[f"{prefix}confidence"] = [f"{value:.6f}" for value in table[np.arange(len(top)), top]]
    for index, class_name in enumerate(split.class_names):
      columns[f"{prefix}p_{class_name}"] = [f"{value:.6f}" for value in table[:, index]]
  return [list(columns), *zip(*columns.values())]


def _text(value) -> str:
  return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def check_not_a_training_run(workdir: str) -> None:
  """An evaluation's report would overwrite a training run's own (eval_results.json, its figures)."""
  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINTS)
  if os.path.isdir(checkpoints):
    raise UserError(f"--workdir={workdir} holds a training run ({checkpoints}): this "
                    "evaluation's report would overwrite the run's eval_results.json and figures. Pass another "
                    "--workdir for the evaluation (--checkpoint may still name this run).")


def warn_of_a_replaced_report(workdir: str, checkpoint: str) -> None:
  """An evaluation's report replaces the one its folder holds: said, naming the weights that one evaluated."""
  previous = files.json_object(os.path.join(workdir, files.REPORT))
  if previous is None:
    return
  logging.warning("%s holds the report of an evaluation of %s: this one of %s replaces it (pass another --workdir to "
                  "keep both).", os.path.abspath(workdir), previous.get("checkpoint") or "unnamed weights", checkpoint)


def evaluate_checkpoint(config, checkpoint: str, workdir: str) -> dict:
  """`--mode=eval`: runs every evaluator of `config` on a saved or converted checkpoint and writes the report."""
  with distributed.errors_together():  # --workdir and --checkpoint may be on some hosts' disks only
    check_not_a_training_run(workdir)
    if jax.process_index() == 0:  # which writes the report: a workdir it cannot write fails before the evaluation
      cli.check_writable_place(f"--workdir={workdir}", workdir)
    validation.validate(config, training=False)
    # Resolved once: a workdir still training may save a newer step, and the report names the weights evaluated.
    step_directory = checkpointing.step_folder(checkpoint)
  mesh = mesh_lib.make_mesh()
  model = models.build_model(config)
  with distributed.errors_together():  # a copy of the checkpoint on one host may be damaged
    variables = models.load_trained_variables(config, model, step_directory)  # before the data: a wrong one fails fast
  distributed.check_same_weights(f"--checkpoint={checkpoint}", lambda: checkpointing.fingerprint(variables))
  evaluators = Evaluators(model, config, mesh)
  evaluators.open_all()
  variables = mesh_lib.replicated(variables, mesh)
  warn_of_a_replaced_report(workdir, step_directory)  # once the data and weights opened: a failure replaces nothing
  name = os.path.basename(step_directory)
  meta = checkpointing.read_meta(step_directory)
  _log_config_differences(meta.get("config"), config, step_directory)
  return final_report(evaluators, variables, workdir, int(name) if name.isdigit() else None, step_directory,
                      trained_config=meta.get("config"),
                      changed_on_resume=meta.get(checkpointing.CHANGED_ON_RESUME, []))


def _log_config_differences(trained_config: dict | None, config, step_directory: str, shown: int = 8) -> None:
  """Which keys of `config` (an evaluation's) differ from the config the checkpoint records (its training's, or its
  conversion's), but for those that change no result (`config_lib.NOT_OF_THE_RESULTS`) and where a run started from:
  the report records both, and the training's settings (its learning rate, seed, epochs) are not the evaluation's."""
  ignored = (*config_lib.NOT_OF_THE_RESULTS, *config_lib.INIT_FROM_KEYS)
  differing = config_lib.differences(trained_config or {}, config, ignored)
  if differing:
    listed = errors.first([f"{key}={now!r} (recorded {then!r})" for key, now, then in differing], shown, "; ")
    logging.info("%s records a config that differs from this one in %s: eval_results.json keeps it under "
                 "trained_config.", step_directory, listed)
