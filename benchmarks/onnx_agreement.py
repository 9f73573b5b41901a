"""How closely each method's ONNX export agrees with JAX (docs/predict.md, "ONNX export"): one JSON line per config.

  python benchmarks/onnx_agreement.py [--configs=configs/dan.py:rafdb ...] [--output=FILE]

Each paper config's model with random weights (tests/helpers.py's `random_variables`, seed 0: an initialised
APViT's head is zero, and so would be the differences), exported by `fer_jax.export`'s code path
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
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from fer_jax import api  # noqa: E402
from fer_jax import export  # noqa: E402
from helpers import random_variables  # noqa: E402  (the tests' random weights: N(0, 0.1²), variances U(0.5, 1.5))

CONFIGS = ("configs/dan.py:rafdb", "configs/apvit.py:rafdb", "configs/scan_cci.py:rafdb",
           "configs/lhcnet.py:fer2013,stage=C")
SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def sample_photos(folder: str) -> list[str]:
  paths = [cbook.get_sample_data(name, asfileobj=False) for name in SAMPLES]
  grey = os.path.join(folder, "grace_hopper_grey.png")
  Image.open(paths[0]).convert("L").save(grey)
  return paths[:1] + [grey] + paths[1:]


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
