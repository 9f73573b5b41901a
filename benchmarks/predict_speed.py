"""Speed of face detection and of `fer_jax.api` prediction, one JSON line per figure.

  python benchmarks/predict_speed.py --config=configs/dan.py:rafdb [--crops=128] [--repeats=5]

The model has freshly initialised weights (speed does not depend on them); nothing is downloaded.
Figures, each after compilation (timed separately):
  detect         MTCNN on one photo, median of --repeats calls, per photo of the sample set
                 (matplotlib's grace_hopper.jpg, scikit-image's astronaut and coffee, and a
                 900×420 group of three faces);
  predict_crops  Model.predict on --crops face crops already at the stored size (faces/s);
  predict_photos Model.detect_and_predict over the sample photos, --repeats rounds (faces/s);
  detect_large   Model.detect_and_predict on the group photo enlarged to --large_sizes (e.g. 4000x3000, a phone's
                 12 MP), its faces scaled with it, whole and with --max_side (the command line's --detect_max_side),
                 median of --repeats calls after a first.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from matplotlib import cbook
from PIL import Image
import skimage.data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_jax import api  # noqa: E402
from fer_jax import inference  # noqa: E402
from fer_jax import models  # noqa: E402


def sample_photos() -> dict:
  hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
  group = np.full((420, 900, 3), 200, np.uint8)
  placements = ((hopper, 10, 20, 0.6), (skimage.data.astronaut(), 330, 50, 0.7), (hopper, 680, 100, 0.4))
  for image, left, top, scale in placements:
    small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale))))
    group[top:top + small.shape[0], left:left + small.shape[1]] = small
  return {"grace_hopper": hopper, "astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee(), "group": group}


def timed(function, *args):
  start = time.perf_counter()
  result = function(*args)
  return result, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/dan.py:rafdb")
  parser.add_argument("--crops", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--large_sizes", nargs="*", default=["2000x1500", "4000x3000"])
  parser.add_argument("--max_side", type=int, default=1600)
  args = parser.parse_args()
  common = {"config": args.config, "backend": jax.default_backend(), "devices": jax.device_count(),
            "load_average_1min": round(os.getloadavg()[0], 1)}
  report = lambda **figures: print(json.dumps({**figures, **common}), flush=True)

  config = api.load_config(args.config)
  model_code = models.build_model(config)
  variables = models.init_variables(model_code, config, jax.random.key(0))
  model = api.Model(inference.Predictor(config, variables, "none", args.batch_size))
  photos = sample_photos()
  for name, photo in photos.items():
    faces, compile_seconds = timed(model.detector, photo)
    seconds = statistics.median(timed(model.detector, photo)[1] for _ in range(args.repeats))
    report(figure="detect", photo=name, size=f"{photo.shape[1]}x{photo.shape[0]}", faces=len(faces),
           first_call_s=round(compile_seconds, 3), s_per_photo=round(seconds, 3))

  rng = np.random.default_rng(0)
  crops = [rng.integers(0, 256, model.predictor.preprocess.shape, dtype=np.uint8) for _ in range(args.crops)]
  _, compile_seconds = timed(model.classify, crops[:model.predictor.batch_size])
  _, seconds = timed(model.classify, crops)
  report(figure="predict_crops", crops=args.crops, batch_size=model.predictor.batch_size,
         first_call_s=round(compile_seconds, 3), faces_per_s=round(args.crops / seconds, 1))

  for photo in photos.values():
    model.detect_and_predict(photo)
  start, faces = time.perf_counter(), 0
  for _ in range(args.repeats):
    faces += sum(r.prediction is not None for photo in photos.values() for r in model.detect_and_predict(photo))
  seconds = time.perf_counter() - start
  report(figure="predict_photos", photos=args.repeats * len(photos), faces=faces,
         faces_per_s=round(faces / seconds, 2), photos_per_s=round(args.repeats * len(photos) / seconds, 2))

  for size in args.large_sizes:
    width, height = map(int, size.split("x"))
    large = np.asarray(Image.fromarray(photos["group"]).resize((width, height), Image.BILINEAR))
    for max_side in (0, args.max_side):
      results, first_seconds = timed(model.detect_and_predict, large, api.MIN_FACE_SIZE, api.MIN_SCORE, max_side)
      seconds = statistics.median(timed(model.detect_and_predict, large, api.MIN_FACE_SIZE, api.MIN_SCORE,
                                        max_side)[1] for _ in range(args.repeats))
      report(figure="detect_large", size=size, max_side=max_side, faces=len(results),
             classified=sum(r.prediction is not None for r in results), first_call_s=round(first_seconds, 3),
             s_per_photo=round(seconds, 3))


if __name__ == "__main__":
  main()
