"""The report's figures: confusion matrices, evaluated inputs, accuracy per evaluator and seed, a run's
accuracies per epoch, per-class accuracy over seeds (PNGs, drawn with matplotlib, loaded when the first is drawn)."""

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_confusion(confusion: np.ndarray, class_names, path: str, title: str) -> None:
  plt = _pyplot()
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


def plot_examples(images: np.ndarray, path: str, title: str) -> None:
  """uint8 images (N, H, W, C) side by side, enlarged so that small inputs stay visible."""
  plt = _pyplot()
  figure, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.0), squeeze=False)
  for axis, image in zip(axes[0], images):
    axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                interpolation="nearest")
    axis.axis("off")
  figure.suptitle(title, fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def plot_accuracies(accuracies: dict, path: str) -> None:
  """{seed label: {evaluator: accuracy}} → accuracy per evaluator, one marker per seed, bars at the mean."""
  plt = _pyplot()
  names = list(dict.fromkeys(name for run in accuracies.values() for name in run))
  figure, axes = plt.subplots(figsize=(1.5 + 1.1 * len(names), 3.2))
  positions = np.arange(len(names))
  means = [np.mean([run[n] for run in accuracies.values() if n in run]) for n in names]
  axes.bar(positions, np.multiply(means, 100), color="#c6dbef")
  spacing = min(0.12, 0.7 / max(len(accuracies), 1))  # every run's markers within its evaluator's bar
  for index, (label, run) in enumerate(accuracies.items()):
    offsets = positions + (index - (len(accuracies) - 1) / 2) * spacing
    axes.plot([o for o, n in zip(offsets, names) if n in run], [100 * run[n] for n in names if n in run], "o",
              label=label or None)
  for x, mean in zip(positions, means):
    axes.text(x, 100 * mean, f"{100 * mean:.1f}", ha="center", va="bottom", fontsize=8)
  axes.set_xticks(positions, names, rotation=30, ha="right")
  axes.set_ylabel("accuracy %")
  axes.set_ylim(0, 105)
  if any(accuracies):
    axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_history(history: list[dict], path: str) -> None:
  """eval_history.jsonl's lines → accuracy (solid) and mean-class accuracy (dashed) per epoch, a colour per
  evaluator."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(6.0, 3.6))
  for index, name in enumerate(dict.fromkeys(line["evaluator"] for line in history)):
    lines = [line for line in history if line["evaluator"] == name]
    epochs = [line["epoch"] for line in lines]
    for metric, style in (("accuracy", "-"), ("mean_class_accuracy", "--")):
      axes.plot(epochs, [100 * line[metric] for line in lines], style, marker="o", markersize=3, color=f"C{index}",
                label=f"{name} {metric.replace('_', ' ')}")
  axes.set_xlabel("epoch")
  axes.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  axes.set_ylabel("%")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_per_class(means: dict, stds: dict, path: str, title: str) -> None:
  """{evaluator: {class: mean}} and the standard deviations → grouped bars with error bars (%)."""
  plt = _pyplot()
  names = list(means)
  classes = list(next(iter(means.values())))
  width = 0.8 / len(names)
  figure, axes = plt.subplots(figsize=(2 + 0.9 * len(classes), 3.4))
  for index, name in enumerate(names):
    values = [100 * (means[name][c] if means[name][c] is not None else np.nan) for c in classes]
    errors = [100 * (stds[name][c] if stds[name][c] is not None else np.nan) for c in classes]
    axes.bar(np.arange(len(classes)) + (index - (len(names) - 1) / 2) * width, values, width, yerr=errors,
             capsize=2, label=name)
  axes.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
  axes.set_ylabel("accuracy % (mean ± std over seeds)")
  axes.set_ylim(0, 105)
  axes.set_title(title, fontsize=9)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
