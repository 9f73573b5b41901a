"""Attention maps of a trained model over face images.

  python -m fer_jax.visualize --config=configs/apvit.py:rafdb --checkpoint=WORKDIR \\
      --input=IMAGE_OR_FOLDER --out=DIR

Images are listed as `fer_jax.predict` lists them (a folder recursively); each goes through the
config's eval pipeline; the method's `save_attention_maps` (APViT: kept patches and tokens;
SCAN-CCI: attention masks; DAN: one Grad-CAM++ map per head, as the official run_grad_cam.py
draws them) writes the PNGs, numbered in the order of the readable images (the log maps each
number to its image). A method's `attention_outputs` (DAN's: the maps, which take gradients)
replaces the eval forward pass in the one compiled program. The maps are of face crops: an image
that is not one by `fer_jax.predict`'s rule (nearly square, sides within 25 %, and at most twice the
stored side, at least 128 px) is warned about and drawn whole, squashed to the model's input: no
face is detected.
Unreadable images are reported by name, skipped and counted in the last line; a missing or empty
--input, a video, no readable image, an export folder as --checkpoint, an --out that cannot be a
writable folder or that holds an earlier run's maps (numbered for other images) fails before the model is loaded.
The faces are drawn as the eval pipeline made them before `to_float()`/`normalize()`, in their own colours. Every
batch runs through one compiled program (the last one padded).
"""

import functools
import os
import re

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import export
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import validation
from fer_jax.data import decode
from fer_jax.data import video
from fer_jax.errors import UserError

def define_flags():
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("Model config, e.g. configs/apvit.py:rafdb.")
  cli.define_path("checkpoint", None, "A workdir, its checkpoints folder, or one step's folder.")
  cli.define_path("input", None, "An image file, or a folder searched recursively for images.")
  cli.define_path("out", None, "Folder for the PNGs.")
  flags.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1)
  cli.mark_required(["config", "checkpoint", "input", "out"])


def write_attention_maps(config, checkpoint: str, paths, out_dir: str, batch_size: int,
                         unlisted: list[tuple[str, str]] = ()) -> list[str]:
  """The PNGs of the readable images among `paths`, numbered in their order; unreadable ones are skipped, and
  counted in the line that says what was written, with `unlisted` ((path, reason) of the folders and special files
  `inference.list_images` skipped)."""
  method = models.get_method(config.model.name)
  if method.save_attention_maps is None:
    raise UserError(f"Model {config.model.name!r} has no attention maps to save: "
                    "pass an APViT, SCAN-CCI or DAN config and checkpoint, or give your method a "
                    "`save_attention_maps` (docs/extending.md).")
  attention_outputs = method.attention_outputs or (lambda model, variables, images:
                                                   model.apply(variables, images, train=False))
  preprocess = inference.FilePreprocessor(config, export.read_stored_shape(checkpoint))
  decoded, readable, skipped = inference.read_images(preprocess, paths)
  skipped = [*unlisted, *skipped]
  if not decoded:
    raise inference.no_readable_image("to visualize", skipped)
  for index, path in enumerate(readable):
    logging.info("%04d_*.png: %s", index, path)
  warn_of_images_not_face_crops(readable, preprocess.shape[0])
  model = method.build(config.model)
  variables = models.load_trained_variables(config, model, checkpoint)

  @functools.partial(jax.jit, compiler_options=mesh_lib.default_device_compiler_options())
  def forward(variables, batch):
    images = preprocess(batch)
    # Drawn as the pipeline made them before to_float()/normalize() (0-255, true colours), where that is of the
    # model's input size; the normalised input stretched back to 0-255 shifts each channel by its mean and std.
    visible = preprocess.visible(batch)
    shown = jnp.uint8(jnp.clip(jnp.round(visible), 0, 255)) if visible.shape[1:3] == images.shape[1:3] else images
    return shown, attention_outputs(model, variables, images)

  # Batches of at most the image count (a few images are not padded to a full batch), the last one padded to it.
  images, outputs = inference.forward_in_batches(forward, variables, decoded, min(batch_size, len(decoded)))
  os.makedirs(out_dir, exist_ok=True)  # a method of yours writes its files there as they are
  written = method.save_attention_maps(images, outputs, out_dir)
  logging.info("Wrote %s to %s%s.", errors.counted(len(written), "PNG"), os.path.abspath(out_dir),
               inference.skipped_summary(len(skipped), len(paths) + len(unlisted), len(skipped), "image"))
  return written


def warn_of_images_not_face_crops(paths, stored_side: int) -> None:
  """One warning for the images among `paths` not shaped like face crops, naming the first."""
  not_crops = []
  for path in paths:
    with decode.opened(path) as image:
      width, height = image.size
    if not inference.is_face_crop(width, height, stored_side):
      not_crops.append(f"{path}, {width}×{height}")
  if not_crops:
    logging.warning("%d of %d images (the first: %s) are not face crops (nearly square, at most %d px): their maps "
                    "are of the whole image squashed to the model's input, no face is found in it; crop the faces "
                    "first.", len(not_crops), len(paths), not_crops[0], inference.face_crop_limit(stored_side))


MAP_FILE = re.compile(r"^\d{4,}_.*\.png$")  # <index>_<what>.png, as fer_jax's methods name their maps


def check_out_holds_no_maps(out: str) -> None:
  """Maps an earlier run left in --out would stay beside this run's, numbered for other images (the log alone
  says which): refused, as `export` refuses an --out that is not empty."""
  earlier = sorted(name for name in os.listdir(out) if MAP_FILE.match(name)) if os.path.isdir(out) else []
  if earlier:
    raise UserError(f"--out={out} holds the maps of an earlier run ({errors.counted(len(earlier), 'file')}: "
                    f"{errors.first(earlier, 2)}), numbered for its images: pass a new --out, or delete them.")


def check_not_a_video(path: str) -> None:
  if os.path.isfile(path) and video.is_video(path):
    raise UserError(f"--input={path} is a video; visualize reads photos: pass an image or a folder of them "
                    "(fer_jax.predict classifies a video's frames).")


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  cli.check_writable_place(f"--out={args.out}", args.out)  # before any image or model is read
  check_out_holds_no_maps(args.out)
  check_not_a_video(args.input)
  export.check_not_an_export(args.checkpoint)  # attention maps need the model's code
  unlisted = []
  paths = inference.list_images(args.input, unreadable=unlisted)
  validation.validate(args.config, training=False)
  mesh_lib.keep_compilations()
  write_attention_maps(args.config, args.checkpoint, paths, args.out, args.batch_size, unlisted)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
