"""Attention maps of a trained model over face images, as PNGs.

  python -m fer_jax.visualize --config=configs/apvit.py:rafdb --checkpoint=WORKDIR \\
      --input=IMAGE_OR_FOLDER --out=DIR

Each image goes through the config's eval pipeline; the method's `save_attention_maps`
(APViT: kept patches and tokens; SCAN-CCI: attention masks) writes the PNGs, numbered in
the order the images are listed.
"""

import os

from absl import flags
import jax
import numpy as np

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import train
from fer_jax.data import pipeline
from fer_jax.data.builder_utils import IMAGE_SUFFIXES
from fer_jax.errors import UserError
from fer_jax.models import get_method

def define_flags():
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("Model config, e.g. configs/apvit.py:rafdb.")
  flags.DEFINE_string("checkpoint", None, "A workdir, its checkpoints folder, or one step's folder.")
  flags.DEFINE_string("input", None, "An image file or a folder of images.")
  flags.DEFINE_string("out", None, "Folder for the PNGs.")
  flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
  flags.mark_flags_as_required(["config", "checkpoint", "input", "out"])


def image_paths(path: str) -> list[str]:
  if os.path.isdir(path):
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if name.lower().endswith(IMAGE_SUFFIXES))
  return [path]


def load_images(paths, config) -> np.ndarray:
  """Decoded (RGB or gray as the config's channels) and run through `config.input.eval_pp`."""
  preprocess = pipeline.FilePreprocessor(config)
  return np.asarray(jax.jit(preprocess)(np.stack([preprocess.read(path) for path in paths])))


def write_attention_maps(config, checkpoint: str, paths, out_dir: str, batch_size: int) -> list[str]:
  method = get_method(config.model.name)
  if not hasattr(method, "save_attention_maps"):
    raise ValueError(f"Model {config.model.name!r} has no attention maps to save.")
  model = method.build(config.model)
  variables = train.load_trained_variables(config, model, checkpoint)
  forward = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
  images, outputs = [], []
  for start in range(0, len(paths), batch_size):
    images.append(load_images(paths[start:start + batch_size], config))
    outputs.append(jax.device_get(forward(variables, images[-1])))
  outputs = jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
  return method.save_attention_maps(np.concatenate(images), outputs, out_dir)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  paths = image_paths(args.input)
  if not paths:
    raise UserError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {args.input}.")
  written = write_attention_maps(args.config, args.checkpoint, paths, args.out, args.batch_size)
  for index, path in enumerate(paths):
    print(f"{index:04d}  {path}")
  print(f"wrote {len(written)} PNGs to {args.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
