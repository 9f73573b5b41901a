"""Class probabilities for face images with a trained or converted checkpoint.

  python -m fer_jax.predict --config=configs/dan.py:rafdb --checkpoint=DIR \
      --input=IMAGE_OR_FOLDER --output=preds.csv [--tta=flip] [--batch_size=64]

Each image is decoded on the host at the stored size (`config.dataset.image_size`, else the model's
input size) and goes through the method's own test-time pipeline (`config.input.eval_pp`) on the
device, in batches (one compiled step; the last batch is padded). A folder is searched
recursively for image files. Per image the output holds the top class, its probability, the
probability of every class (named in the config's class order) and the logits; `.csv` or
`.json` by the output's extension. With `--tta` the probabilities are the weighted mean of the
softmax over that `fer_jax.tta` view set (the logits stay those of the image itself).
Unreadable images (not an image, corrupt, truncated, unreadable, a symbolic-link loop, or a header
claiming more than `fer_jax.data.decode.MAX_IMAGE_PIXELS`) are reported by name, skipped and
counted. A missing or empty --input, or an --output that could not be written, fails before the
model is loaded.
"""

import csv
import json
import os

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import tta
from fer_jax import validation
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(path: str) -> list[str]:
  """The image itself, or every image file under a folder, sorted; a UserError if there is none.

  Folder symlinks are not followed (a link to a parent folder cannot loop); unreadable folders
  are warned about and skipped."""
  if os.path.isfile(path):
    return [path]
  if not os.path.exists(path):
    raise UserError(f"--input={path} does not exist: pass an image file or a folder of images.")
  if not os.path.isdir(path):
    raise UserError(f"--input={path} is neither a file nor a folder: pass an image file or a folder of images.")
  found = sorted(os.path.join(root, name) for root, _, names in os.walk(path, onerror=_warn_unreadable_folder)
                 for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
  if not found:
    raise UserError(f"No image file under --input={path} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}): "
                    f"pass a folder that holds images with one of these extensions, or one image file.")
  return found


def _warn_unreadable_folder(error: OSError) -> None:
  logging.warning("Skipping unreadable folder %s: %s.", error.filename, error.strerror)


def check_output(path: str) -> None:
  """Fails fast, before any model or image is loaded, if the predictions could not be written to `path`."""
  if not path.lower().endswith((".csv", ".json")):
    raise UserError(f"--output={path} must end in .csv or .json.")
  if os.path.isdir(path):
    raise UserError(f"--output={path} is a folder: pass a file path ending in .csv or .json.")
  existing = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f"--output={path} cannot be created: {existing} is a file, not a folder; "
                    f"choose an output path inside a folder.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"--output={path} cannot be written: the folder {existing} is not writable; "
                    f"fix its permissions or choose another location.")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise UserError(f"--output={path} exists and is not writable: fix its permissions or choose another path.")


class Predictor:
  """Preprocessing and a jitted, data-parallel forward pass for one config and checkpoint."""

  def __init__(self, config, variables: dict, tta_name: str = "none", batch_size: int = 64):
    self.config = config
    self.class_names = labels.class_names(config.dataset.class_order)
    self.preprocess = pipeline.FilePreprocessor(config)
    self.mesh = mesh_lib.make_mesh()
    devices = self.mesh.devices.size
    self.batch_size = -(-batch_size // devices) * devices
    self.variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    model = models.build_model(config)

    def forward(variables, images):
      images = self.preprocess(images)
      logits_fn = lambda x: model.apply(variables, x, train=False)["logits"].astype(jnp.float32)
      logits = logits_fn(images)
      probabilities = (jax.nn.softmax(logits, axis=-1) if tta_name == "none"
                       else tta.predict(tta_name, logits_fn, images))
      return probabilities, logits

    tta.weights(tta_name)  # an unknown name fails here, naming the valid ones
    self._forward = jax.jit(forward, in_shardings=(NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))))

  def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], logits [N, K]) of uint8 images at `self.preprocess.shape`, float32."""
    probabilities, logits = [], []
    for start in range(0, len(images), self.batch_size):
      batch = np.stack(images[start:start + self.batch_size])
      padded = np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
      batch_probabilities, batch_logits = jax.device_get(self._forward(self.variables, padded))
      probabilities.append(batch_probabilities[:len(batch)])
      logits.append(batch_logits[:len(batch)])
    return np.concatenate(probabilities), np.concatenate(logits)


def read_images(preprocess: pipeline.FilePreprocessor, paths: list[str]):
  """(images, their paths, [(path, reason)] skipped): each unreadable file is warned about and skipped."""
  images, readable, skipped = [], [], []
  for path in paths:
    try:
      images.append(preprocess.read(path))
      readable.append(path)
    except decode.UnreadableImageError as error:
      logging.warning("Skipping unreadable image: %s", error)
      skipped.append((path, str(error)))
  return images, readable, skipped


def no_readable_image(where: str, skipped: list[tuple[str, str]]) -> UserError:
  """The error when every image was skipped: the one reason with its fix, else a pointer to the warnings."""
  detail = skipped[0][1] if len(skipped) == 1 else f"all {len(skipped)} were skipped; see the warning above for each"
  return UserError(f"No readable image {where}: {detail}")


def predict_files(predictor: Predictor, paths: list[str]) -> tuple[list[dict], list[tuple[str, str]]]:
  """Rows {image, prediction, confidence, probabilities, logits} and the (path, reason) skipped."""
  inputs, readable, skipped = read_images(predictor.preprocess, paths)
  if not inputs:
    return [], skipped
  probabilities, logits = predictor(inputs)
  rows = []
  for path, probs, row_logits in zip(readable, probabilities, logits):
    top = int(np.argmax(probs))
    rows.append({"image": path, "prediction": predictor.class_names[top], "confidence": float(probs[top]),
                 "probabilities": dict(zip(predictor.class_names, map(float, probs))),
                 "logits": dict(zip(predictor.class_names, map(float, row_logits)))})
  return rows, skipped


def write_predictions(rows: list[dict], skipped: list[tuple[str, str]], class_names, path: str) -> None:
  """CSV (one row per image: image, prediction, confidence, p_<class>…, logit_<class>…) or JSON."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".json"):
    with open(path, "w") as f:
      json.dump({"class_names": list(class_names), "predictions": rows,
                 "skipped": [{"image": image, "error": error} for image, error in skipped]}, f, indent=2)
    return
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "prediction", "confidence", *(f"p_{c}" for c in class_names),
                     *(f"logit_{c}" for c in class_names)])
    for row in rows:
      writer.writerow([row["image"], row["prediction"], f"{row['confidence']:.6f}",
                       *(f"{row['probabilities'][c]:.6f}" for c in class_names),
                       *(f"{row['logits'][c]:.6f}" for c in class_names)])


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset> of the checkpoint.")
  flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint folder or converted model.")
  flags.DEFINE_string("input", None, "An image, or a folder searched recursively for images.")
  flags.DEFINE_string("output", None, "Where to write the predictions: .csv or .json.")
  flags.DEFINE_enum("tta", None, list(tta.NAMES), "Test-time augmentation; default: config.eval.tta.")
  flags.DEFINE_integer("batch_size", 64, "Images per device step (rounded up to the device count).")
  flags.mark_flags_as_required(["config", "checkpoint", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  check_output(args.output)
  paths = list_images(args.input)
  config = args.config
  validation.validate(config, training=False)
  model = models.build_model(config)
  variables = models.load_trained_variables(config, model, args.checkpoint)
  predictor = Predictor(config, variables, args.tta or config.eval.tta, args.batch_size)
  rows, skipped = predict_files(predictor, paths)
  write_predictions(rows, skipped, predictor.class_names, args.output)
  logging.info("Wrote %d predictions to %s; skipped %d unreadable of %d images%s", len(rows), args.output,
               len(skipped), len(paths), (": " + ", ".join(p for p, _ in skipped)) if skipped else "")
  if not rows:
    raise no_readable_image(f"under --input={args.input}", skipped)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
