"""How closely each method's ONNX export agrees with JAX (README, "ONNX export"): one JSON line per config.

  python benchmarks/onnx_agreement.py [--configs=configs/dan.py:rafdb ...] [--output=FILE]

Each paper config's model with random weights (`random_variables`), exported by `fer_jax.export`'s code path
(`export.export(..., export_format="onnx")`) with matplotlib's sample photos as --verify_images (grace_hopper in
colour and in grey, Minduka_Present_Blue_Pack, logo2): the worst |ONNX Runtime logit − JAX logit| / max |JAX logit|
over the photos (model.json's `onnx_runtime_vs_jax`) and model.onnx's size.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile

import jax
from matplotlib import cbook
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_jax import api  # noqa: E402
from fer_jax import export  # noqa: E402
from fer_jax import models  # noqa: E402

CONFIGS = ("configs/dan.py:rafdb", "configs/apvit.py:rafdb", "configs/scan_cci.py:rafdb",
           "configs/lhcnet.py:fer2013,stage=C")
SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def sample_photos(folder: str) -> list[str]:
  paths = [cbook.get_sample_data(name, asfileobj=False) for name in SAMPLES]
  grey = os.path.join(folder, "grace_hopper_grey.png")
  Image.open(paths[0]).convert("L").save(grey)
  return paths[:1] + [grey] + paths[1:]


def random_variables(config) -> dict:
  """Values of the model's shapes drawn from N(0, 0.1²) (BatchNorm variances from U(0.5, 1.5)), seed 0: an
  initialised APViT's head is zero, and so would be the differences."""
  abstract = models.abstract_variables(models.build_model(config), config)
  rng = np.random.default_rng(0)
  leaves, tree = jax.tree.flatten_with_path(abstract)
  return jax.tree.unflatten(tree, [rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32) if path[-1].key == "var"
                                   else rng.normal(0, 0.1, leaf.shape).astype(np.float32) for path, leaf in leaves])


def agreement(spec: str, photos: list[str], folder: str) -> dict:
  config = api.load_config(spec)
  config.model.dtype = "float32"
  variables = random_variables(config)
  out = os.path.join(folder, spec.replace("/", "_").replace(":", "_").replace(",", "_"))
  info = export.export(config, variables, out, export_format="onnx", verify_images=photos)
  return {"config": spec, "images": info["onnx_runtime_vs_jax"]["images"],
          "worst_relative_logit_error": info["onnx_runtime_vs_jax"]["worst_relative_logit_error"],
          "onnx_mib": round(os.path.getsize(os.path.join(out, export.ONNX)) / 2**20, 1),
          "jax_version": jax.__version__, "date": datetime.date.today().isoformat()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=CONFIGS)
  parser.add_argument("--output", help="a file to append the lines to")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as folder:
    photos = sample_photos(folder)
    for spec in args.configs:
      line = json.dumps(agreement(spec, photos, folder))
      print(line, flush=True)
      if args.output:
        with open(args.output, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main()
