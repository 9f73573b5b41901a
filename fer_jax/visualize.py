"""Pictures: attention maps of a trained model over face images (the program), and the report's
figures (confusion matrices, evaluated inputs, accuracy per evaluator and seed, per-class accuracy
over seeds).

  python -m fer_jax.visualize --config=configs/apvit.py:rafdb --checkpoint=WORKDIR \\
      --input=IMAGE_OR_FOLDER --out=DIR

Images are listed as `fer_jax.predict` lists them (a folder recursively); each goes through the
config's eval pipeline; the method's `save_attention_maps` (APViT: kept patches and tokens;
SCAN-CCI: attention masks) writes the PNGs, numbered in the order of the readable images (the
log maps each number to its image). Unreadable images are reported by name and skipped; a
missing or empty --input, a video, no readable image, or an --out that cannot be a writable
folder fails before the model is loaded.
"""

import functools
import os

from absl import flags
from absl import logging
import jax
import numpy as np

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import predict
from fer_jax import validation
from fer_jax.data import pipeline
from fer_jax.errors import UserError

def define_flags():
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("Model config, e.g. configs/apvit.py:rafdb.")
  flags.DEFINE_string("checkpoint", None, "A workdir, its checkpoints folder, or one step's folder.")
  flags.DEFINE_string("input", None, "An image file, or a folder searched recursively for images.")
  flags.DEFINE_string("out", None, "Folder for the PNGs.")
  flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1)
  flags.mark_flags_as_required(["config", "checkpoint", "input", "out"])


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
  for index, (label, run) in enumerate(accuracies.items()):
    offsets = positions + (index - (len(accuracies) - 1) / 2) * 0.12
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


def write_attention_maps(config, checkpoint: str, paths, out_dir: str, batch_size: int) -> list[str]:
  """The PNGs of the readable images among `paths`, numbered in their order; unreadable ones are skipped."""
  method = models.get_method(config.model.name)
  if method.save_attention_maps is None:
    raise UserError(f"Model {config.model.name!r} has no attention maps to save: "
                    f"pass an APViT or SCAN-CCI config and checkpoint.")
  preprocess = pipeline.FilePreprocessor(config)
  decoded, readable, skipped = predict.read_images(preprocess, paths)
  if not decoded:
    raise predict.no_readable_image("to visualize", skipped)
  for index, path in enumerate(readable):
    logging.info("%04d_*.png: %s", index, path)
  model = method.build(config.model)
  variables = models.load_trained_variables(config, model, checkpoint)

  @functools.partial(jax.jit, compiler_options=mesh_lib.default_device_compiler_options())
  def forward(variables, batch):
    images = preprocess(batch)
    return images, model.apply(variables, images, train=False)

  batches = [jax.device_get(forward(variables, np.stack(decoded[start:start + batch_size])))
             for start in range(0, len(decoded), batch_size)]
  images, outputs = jax.tree.map(lambda *parts: np.concatenate(parts), *batches)
  return method.save_attention_maps(images, outputs, out_dir)


def check_not_a_video(path: str) -> None:
  if os.path.isfile(path) and path.lower().endswith(predict.VIDEO_EXTENSIONS):
    raise UserError(f"--input={path} is a video; visualize reads photos: pass an image or a folder of them "
                    "(fer_jax.predict classifies a video's frames).")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  cli.check_writable_place(f"--out={args.out}", args.out)  # before any image or model is read
  check_not_a_video(args.input)
  paths = predict.list_images(args.input)
  validation.validate(args.config, training=False)
  written = write_attention_maps(args.config, args.checkpoint, paths, args.out, args.batch_size)
  print(f"wrote {len(written)} PNGs to {args.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
