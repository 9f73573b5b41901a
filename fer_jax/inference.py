"""A trained model over images from files, shared by `fer_jax.api` and the predict, visualize and export
commands: the input files a command is given (`list_images`), their decoding and eval pipeline
(`FilePreprocessor`) and a jitted, data-parallel forward pass (`Predictor`).
"""

import collections
from collections.abc import Sequence
import os
import stat

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import errors
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import tta
from fer_jax.data import augment
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.data import video
from fer_jax.errors import UserError


def list_images(path: str, extensions: tuple[str, ...] = decode.IMAGE_SUFFIXES,
                unreadable: list[tuple[str, str]] | None = None) -> list[str]:
  """The file itself, or every file with one of `extensions` under a folder, sorted; a UserError if there is none.

  Folder symlinks are not followed (a link to a parent folder cannot loop). The files left out are counted by
  extension in one line; each folder that cannot be listed, and each named pipe, socket or device named as an image
  (reading a pipe waits for a writer forever), is warned about, skipped, and appended to `unreadable` (path, reason)
  if given."""
  if os.path.isfile(path):
    return [path]
  # visualize lists images alone: naming a video there would send the user to a file it refuses.
  files = "an image or video file" if set(extensions) - set(decode.IMAGE_SUFFIXES) else "an image file"
  if not os.path.exists(path):
    raise UserError(f"--input={path} does not exist: pass {files}, or a folder of them.")
  if not os.path.isdir(path):
    raise UserError(f"--input={path} is neither a file nor a folder: pass {files}, or a folder of them.")

  def skip_unreadable_folder(error: OSError) -> None:
    skip(error.filename, f"{error.filename} cannot be listed ({error.strerror}): make it readable (chmod a+rx) or "
                         "remove it.", "unreadable folder")

  def skip(file: str, reason: str, what: str) -> None:
    logging.warning("Skipping %s: %s", what, reason)
    if unreadable is not None:
      unreadable.append((file, reason))

  files = sorted(os.path.join(root, name) for root, _, names in os.walk(path, onerror=skip_unreadable_folder)
                 for name in names)
  named = [file for file in files if decode.is_image_name(os.path.basename(file), extensions)]
  _log_left_out(sorted(set(files) - set(named)), path)
  found = []
  for file in named:
    if kind := _special_kind(file):
      skip(file, f"{file} is a {kind}, not a file: remove it or move it out of --input.", "special file")
    else:
      found.append(file)
  if not found:
    raise UserError(f"No image file under --input={path} (searched recursively for {', '.join(extensions)}): "
                    f"pass a folder that holds images with one of these extensions, or one image file.")
  return found


def _special_kind(path: str) -> str:
  """"named pipe", "socket" or "device" where `path` (its link followed) is one; "" for a file, or a path that
  cannot be examined (decoding names why)."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return ""
  return ("named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
          else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "")


SHOWN_EXTENSIONS = 8  # the most frequent extensions of the files left out that the log line names


def _log_left_out(files: list[str], folder: str) -> None:
  """One line: how many `files` (under `folder`) were left out for their extension (or as macOS's `._<name>`
  metadata), and how many of each."""
  if not files:
    return
  is_metadata = [os.path.basename(file).startswith("._") for file in files]
  others = [file for file, metadata in zip(files, is_metadata) if not metadata]
  counts = collections.Counter(os.path.splitext(file)[1].lower() or "(none)" for file in others)
  if any(is_metadata):
    counts["._* (macOS metadata)"] = sum(is_metadata)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  shown = ", ".join(f"{extension} ×{count}" for extension, count in ranked[:SHOWN_EXTENSIONS])
  videos = "; fer_jax.predict reads the videos" if any(map(video.is_video, others)) else ""
  why = "whose extension is not read" + (", or macOS metadata" if any(is_metadata) else "")
  logging.info("Left out %s under %s %s: %s%s%s.", errors.counted(len(files), "file"), folder, why, shown,
               ", …" if len(ranked) > SHOWN_EXTENSIONS else "", videos)


# A photo is taken for a face crop when it is nearly square (sides within this ratio) and no
# larger than CROP_MAX_SIDE_FACTOR × the side the model decodes to (at least CROP_MIN_LIMIT px).
CROP_ASPECT = 1.25
CROP_MAX_SIDE_FACTOR, CROP_MIN_LIMIT = 2, 128


def face_crop_limit(stored_side: int) -> int:
  """The longest side of an image taken for a face crop, for a model decoding to `stored_side`."""
  return max(CROP_MAX_SIDE_FACTOR * stored_side, CROP_MIN_LIMIT)


def is_face_crop(width: int, height: int, stored_side: int) -> bool:
  """Whether an image of this size is taken for a face crop (not searched for faces): nearly square (sides within
  `CROP_ASPECT`) and at most `CROP_MAX_SIDE_FACTOR` times the stored side (`CROP_MIN_LIMIT` px at the least)."""
  limit = face_crop_limit(stored_side)
  return max(width, height) <= min(width, height) * CROP_ASPECT and max(width, height) <= limit


class FilePreprocessor:
  """Images from files: decoded on the host at `stored_shape`, the (height, width, channels) the model's
  training decoded its data set to, as its meta record gives it (`checkpointing.recorded_shape`), so that they
  reach the eval pipeline as the set's own images did, then the eval pipeline, inside the caller's jit. Where
  the record gives none (a conversion, an older record): `config.dataset.image_size`, else the model's input
  size, and the channels by the set's name (`decode.stored_channels`)."""

  def __init__(self, config, stored_shape: Sequence[int] = ()):
    side = config.dataset.image_size or config.input.size
    self.shape = tuple(stored_shape) or (side, side, decode.stored_channels(config.dataset.name))
    self.pipeline = pipeline.compile_pipeline(config, config.input.eval_pp, self.shape, "input.eval_pp")

  def read(self, path: str) -> np.ndarray:
    """uint8, upright, at the stored shape; `decode.UnreadableImageError` for a file that cannot be decoded."""
    return decode.read_file(path, self.shape)

  def __call__(self, images: jax.Array) -> jax.Array:
    positions = jax.numpy.arange(images.shape[0])
    return self.pipeline(images, augment.evaluation_keys(positions))

  def visible(self, images: jax.Array) -> jax.Array:
    """The images as the eval pipeline has made them before its float part (0-255), with the same draws."""
    positions = jax.numpy.arange(images.shape[0])
    return self.pipeline.visible_part(images, augment.evaluation_keys(positions))


def read_images(preprocess: FilePreprocessor, paths: list[str]):
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


def no_readable_image(where: str, skipped: list[tuple[str, str]], what: str = "image") -> UserError:
  """The error when every image (or `what`: predict's "input", images and videos) was skipped: the one reason with
  its fix, else a pointer to the warnings."""
  detail = skipped[0][1] if len(skipped) == 1 else f"all {len(skipped)} were skipped; see the warning above for each"
  return UserError(f"No readable {what} {where}: {detail}")


def skipped_summary(skipped: int, inputs: int, unreadable: int, what: str) -> str:
  """"; skipped 2 of 5 inputs (1 unreadable; see the warnings above)", for a summary line; "" if none was skipped."""
  if not skipped:
    return ""
  unreadable_count = f"{unreadable} unreadable; " if unreadable else ""
  warnings = "the warning" if skipped == 1 else "the warnings"
  return f"; skipped {skipped} of {errors.counted(inputs, what)} ({unreadable_count}see {warnings} above)"


def forward_in_batches(forward, variables, images: list[np.ndarray], batch_size: int, padded_size=None):
  """`forward(variables, batch)` of every image, on the host, in batches of `batch_size`: each padded with zeros to
  `padded_size(its image count)` (default `batch_size`: one program runs them all), and its padding dropped."""
  outputs = []
  for start in range(0, len(images), batch_size):
    batch = np.stack(images[start:start + batch_size])
    size = padded_size(len(batch)) if padded_size else batch_size
    padding = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)
    output = jax.device_get(forward(variables, np.concatenate([batch, padding])))
    outputs.append(jax.tree.map(lambda part: part[:len(batch)], output))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


class Predictor:
  """Preprocessing and a jitted, data-parallel forward pass for one config and checkpoint."""

  def __init__(self, config, variables: dict, tta_name: str = "none", batch_size: int = 64, logits_fn=None,
               mesh=None, stored_shape: Sequence[int] = ()):
    """`logits_fn(variables, images)`: the model's logits; default the config's model (an export passes its program).
    `mesh`: the devices the batches are split over; default every device. `stored_shape`: as `FilePreprocessor`'s."""
    self.config = config
    self.tta_name = tta_name
    self.class_names = labels.class_names(config.dataset.class_order)
    self.preprocess = FilePreprocessor(config, stored_shape)
    self.mesh = mesh_lib.make_mesh() if mesh is None else mesh
    self.batch_size = mesh_lib.round_up_to_devices(batch_size, self.mesh)
    self.variables = mesh_lib.replicated(variables, self.mesh)
    if logits_fn is None:
      model = models.build_model(config)
      logits_fn = lambda v, x: model.apply(v, x, train=False)["logits"]

    def forward(variables, images):
      images = self.preprocess(images)
      model_logits = lambda x: logits_fn(variables, x).astype(jnp.float32)
      logits = model_logits(images)
      probabilities = (jax.nn.softmax(logits, axis=-1) if tta_name == "none"
                       else tta.predict(tta_name, model_logits, images))
      return probabilities, logits

    tta.weights(tta_name)  # an unknown name fails here, naming the valid ones
    self._forward = jax.jit(forward, in_shardings=(NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))),
                            compiler_options=mesh_lib.compiler_options(self.mesh))

  def padded_size(self, count: int) -> int:
    """The batch a step of `count` images runs at: the device count times a power of two, at most
    `batch_size` (a photo's few faces do not pay for a full batch; few sizes are compiled)."""
    devices = self.mesh.devices.size
    return min(self.batch_size, devices * (1 << (-(-count // devices) - 1).bit_length()))

  def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], logits [N, K]) of uint8 images at `self.preprocess.shape`, float32."""
    return forward_in_batches(self._forward, self.variables, images, self.batch_size, self.padded_size)
