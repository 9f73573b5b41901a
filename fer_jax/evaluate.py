"""Evaluation: a jitted step that accumulates a confusion matrix, metrics, and reports.

Every example counts once: the last batch is padded and padded rows carry mask 0. The
confusion matrix (a `clu.metrics.Metric`) is summed inside the step over the global batch, so
the host only merges K×K matrices, on any number of devices and processes. All metrics derive
from it.
"""

import json
import os

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import tta


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """K×K counts (rows: true class, columns: predicted) of the examples with mask 1."""

  counts: jax.Array

  @classmethod
  def from_model_output(cls, *, logits, labels, mask, **_) -> "ConfusionMatrix":
    num_classes = logits.shape[-1]
    predicted = jnp.argmax(logits, axis=-1)
    counts = jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add((mask > 0).astype(jnp.int32))
    return cls(counts=counts)

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts)

  def compute(self) -> jax.Array:
    return self.counts


def confusion_step(model, num_classes: int, mesh, tta_name: str = "none", preprocess=None):
  """jit(variables, batch) → the batch's `ConfusionMatrix`.

  `tta_name` (fer_jax.tta.NAMES) averages the softmax outputs of weighted test-time views,
  all computed inside the one jitted step; "none" takes the argmax of the plain logits.
  With `preprocess` (uint8 images, positions → model inputs, e.g. `EvalData.preprocess`) the
  batch holds uint8 images, preprocessed inside the step.
  """
  def predict(variables, images):
    logits_fn = lambda x: model.apply(variables, x, train=False)["logits"]
    return logits_fn(images) if tta_name == "none" else tta.predict(tta_name, logits_fn, images)

  def step(variables, batch):
    images = batch["image"] if preprocess is None else preprocess(batch["image"], batch["position"])
    scores = predict(variables, images)
    if scores.shape[-1] != num_classes:
      raise ValueError(f"The model predicts {scores.shape[-1]} classes, not {num_classes}")
    return ConfusionMatrix.from_model_output(logits=scores, labels=batch["label"], mask=batch["mask"])

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, out_shardings=replicated)


def confusion_matrix(step, variables, eval_data) -> np.ndarray:
  total = None
  for batch in eval_data.batches():
    update = step(variables, batch)
    total = update if total is None else total.merge(update)
  return np.asarray(jax.device_get(total.compute()), np.int64)


def metrics(confusion: np.ndarray, class_names) -> dict:
  """Accuracy, mean-class (balanced) accuracy over classes present, per-class accuracy, macro F1."""
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  correct = np.diag(confusion)
  present = support > 0
  recall = np.where(present, correct / np.maximum(support, 1), np.nan)
  precision = np.where(predicted > 0, correct / np.maximum(predicted, 1), 0.0)
  f1 = np.where(present, 2 * precision * np.nan_to_num(recall) / np.maximum(precision + np.nan_to_num(recall), 1e-12), np.nan)
  return {
      "accuracy": float(correct.sum() / max(support.sum(), 1)),
      "mean_class_accuracy": float(np.nanmean(recall)) if present.any() else 0.0,
      "macro_f1": float(np.nanmean(f1)) if present.any() else 0.0,
      "per_class_accuracy": {name: (None if np.isnan(r) else float(r)) for name, r in zip(class_names, recall)},
      "class_names": list(class_names),
      "confusion_matrix": confusion.tolist(),
      "num_examples": int(support.sum()),
  }


def write_report(results: dict, workdir: str) -> None:
  """DIR/eval_results.json and DIR/confusion_matrix.png (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot_confusion(np.array(results["confusion_matrix"]), results["class_names"],
                 os.path.join(workdir, "confusion_matrix.png"),
                 f"accuracy {results['accuracy']:.2%}, mean-class {results['mean_class_accuracy']:.2%}")


def plot_confusion(confusion: np.ndarray, class_names, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  size = 1.0 + 0.8 * len(class_names)
  figure, axes = plt.subplots(figsize=(size + 1.5, size))
  image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(image, ax=axes, fraction=0.046)
  ticks = range(len(class_names))
  axes.set_xticks(ticks, class_names, rotation=45, ha="right")
  axes.set_yticks(ticks, class_names)
  axes.set_xlabel("predicted")
  axes.set_ylabel("true")
  axes.set_title(title, fontsize=9)
  for i in ticks:
    for j in ticks:
      axes.text(j, i, f"{rates[i, j]:.2f}\n({confusion[i, j]})", ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black")
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
