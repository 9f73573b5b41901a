"""LHC-Net's official Keras code, run for the comparisons of tests/reference/official_lhcnet_compare.py.

Runs in a TensorFlow environment (never the project's; TensorFlow is no dependency), with
Keras 2 (`pip install tf-keras`, `TF_USE_LEGACY_KERAS=1`), because the official code saves
object-based TF checkpoints, which Keras 3 no longer writes:

  TF_USE_LEGACY_KERAS=1 python tests/reference/official_lhcnet_keras.py predict \
      --official=LHC_Net_checkout --images=DIR --out=DIR
  TF_USE_LEGACY_KERAS=1 python tests/reference/official_lhcnet_keras.py train_step \
      --official=LHC_Net_checkout --out=DIR
  TF_USE_LEGACY_KERAS=1 python tests/reference/official_lhcnet_keras.py time_step \
      --official=LHC_Net_checkout [--batch=64] [--steps=8] [--warmup=2] [--output=FILE]

--official is a checkout of github.com/Bodhis4ttva/LHC_Net; its Lib/Utils.py, Lib/LHC_Net.py and
Lib/LHC_Net_Controller.py are executed as its scripts execute them (`exec`), nothing is copied.
Two modules they import are not installable beside TensorFlow 2.21 and are replaced:
tensorflow_addons 0.12.1 by its `image.translate` and `image.rotate`, rebuilt on the op they call
on TensorFlow ≥ 2.4 (tf.raw_ops.ImageProjectiveTransformV3) with the same transform vectors;
classification_models and matplotlib (imported by Lib/Utils.py, used only by the step-A scripts
and for plots) by empty modules. In float64 (`train_step`), the two float32 literals of the
official code (the constant E of the attention scale, the controller's variable) follow Keras'
floatx instead; AutoGraph reads that text too (registered in linecache).

`predict` writes: LHC_Net/ and LHC_NetC/ (checkpoints in the released layout: random weights with
calibrated BatchNorm statistics, saved after one SGD / Adam step so that they also hold optimizer
state as the released ones do) and official.npz: the images as the official test ETL makes them,
the logits (the last Dense without its softmax) of both networks, the probabilities and the
official TTA_Inference probabilities of LHC-Net.
`train_step` writes, in float64, per stage (B: LHC_Train.py's SGD; C: Controller_Train.py's
Adam, LHC-NetC frozen but for the gains), the checkpoints before and after each of two
`train_on_batch` steps (B/step0…2, C/step0…2) and results.npz: the batch, the two losses and, for
C, Adam's step count and moments. Dropout is off (its masks cannot be shared between
frameworks). The optimizers are TF 2.4's (OptimizerV2, kept as tf.keras.optimizers.legacy).
`time_step` times LHC_Train.py's training step (float32, at its batch of 64 unless --batch) and
prints a JSON line as benchmarks/official_step.py does for the PyTorch methods.
"""

import argparse
import glob
import json
import linecache
import os
import sys
import time
import types

import numpy as np
from PIL import Image
import tensorflow as tf

SETTINGS = {"num_heads": [8, 8, 7, 7, 1], "att_embed_dim": [196, 196, 56, 14, 25], "kernel_size": [3] * 5,
            "pool_size": [3] * 5, "norm_c": [1] * 5}
CONTROLLER_INIT = [0, 0, 0, -1, -0.5]   # Controller_Train.py
SIZE = 224


def _tfa_transform(images, transform, interpolation, fill_mode):
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=tf.cast(tf.reshape(transform, (1, 8)), tf.float32),
      output_shape=tf.shape(images)[1:3], interpolation=interpolation.upper(), fill_mode=fill_mode.upper(),
      fill_value=tf.constant(0.0, tf.float32))


def _tfa_translate(images, translations, interpolation="nearest", fill_mode="constant"):
  dx, dy = (float(t) for t in translations)
  return _tfa_transform(images, [1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0], interpolation, fill_mode)


def _tfa_rotate(images, angles, interpolation="nearest", fill_mode="constant"):
  """tfa.image.angles_to_projective_transforms in float32 (the image sides cast as tfa casts them)."""
  height, width = (tf.cast(tf.shape(images)[i], tf.float32) for i in (1, 2))
  angle = tf.constant(angles, tf.float32)
  cos, sin = tf.math.cos(angle), tf.math.sin(angle)
  x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
  y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
  return _tfa_transform(images, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]), interpolation,
                        fill_mode)


def _install_stand_ins():
  tfa = types.ModuleType("tensorflow_addons")
  tfa.image = types.SimpleNamespace(translate=_tfa_translate, rotate=_tfa_rotate)
  models = types.ModuleType("classification_models")
  models.tfkeras = types.ModuleType("classification_models.tfkeras")
  models.tfkeras.Classifiers = None
  pyplot = types.ModuleType("matplotlib.pyplot")
  sys.modules.update({"tensorflow_addons": tfa, "classification_models": models,
                      "classification_models.tfkeras": models.tfkeras, "matplotlib": types.ModuleType("matplotlib"),
                      "matplotlib.pyplot": pyplot})


def load_official(root: str) -> dict:
  """Namespaces of the official Lib/ files: 'utils', 'lhc' (LHC-Net), 'controller' (LHC-NetC)."""
  _install_stand_ins()
  namespaces = {}
  for name, path in (("utils", "Lib/Utils.py"), ("lhc", "Lib/LHC_Net.py"), ("controller", "Lib/LHC_Net_Controller.py")):
    with open(os.path.join(root, path)) as f:
      source = f.read()
    if tf.keras.backend.floatx() != "float32":
      source = source.replace("tf.float32", "tf.keras.backend.floatx()").replace(
          "dtype='float32'", "dtype=tf.keras.backend.floatx()")
    filename = f"<official {path}, {tf.keras.backend.floatx()}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # what AutoGraph reads
    namespaces[name] = {"__name__": f"official_{name}"}
    exec(compile(source, filename, "exec"), namespaces[name])
  return namespaces


def batch_norms(model):
  return [layer for layer in model.submodules if isinstance(layer, tf.keras.layers.BatchNormalization)]


def randomise(model, seed: int, calibration, head_scale: float = 1.0):
  """Random BatchNorm affines and LHC module biases; running statistics of a calibration batch
  (each BatchNorm then standardises its input, as a trained network's does); the last layer
  `head_scale` times Keras' initialisation."""
  rng = np.random.default_rng(seed)
  model.fc3.kernel.assign(model.fc3.kernel * head_scale)
  for norm in batch_norms(model):
    if norm.scale:
      norm.gamma.assign(rng.uniform(0.1, 0.4, norm.gamma.shape))
    norm.beta.assign(rng.normal(0, 0.1, norm.beta.shape))
  for module in (layer for layer in model.submodules if type(layer).__name__ == "LHC_Module"):
    for variable in module.variables:
      if variable.shape.rank == 1:   # the biases (Keras starts them at zero)
        variable.assign(rng.normal(0, 0.1, variable.shape))
  for norm in batch_norms(model):
    norm.momentum = 0.0
  model(calibration, training=True)
  for norm in batch_norms(model):
    norm.momentum = 0.99


def build(official, controller: bool):
  if controller:
    model = official["controller"]["LHC_ResNet34"](input_shape=(SIZE, SIZE, 3), num_classes=7, att_params=SETTINGS,
                                                   controller_init=CONTROLLER_INIT)
  else:
    model = official["lhc"]["LHC_ResNet34"](input_shape=(SIZE, SIZE, 3), num_classes=7, att_params=SETTINGS)
  model(np.ones((2, SIZE, SIZE, 3), tf.keras.backend.floatx()))
  return model


def controller_model(official, lhc_model, gains):
  """Controller_Train.py's LHC-NetC: LHC-Net's weights, everything frozen but the five gains."""
  model = build(official, controller=True)
  model.import_weights_from_lhc(lhc_model)
  for index, gain in enumerate(gains, start=1):
    getattr(model, f"controller{index}").w.assign(gain)
  model.freeze_lhc()
  return model


def logits_of(model, images):
  """The official model's output before its last softmax."""
  softmax, model.fc3.activation = model.fc3.activation, tf.keras.activations.linear
  logits = model(images, training=False).numpy()
  model.fc3.activation = softmax
  return logits


# TensorFlow 2.4's optimizers (OptimizerV2), which TF 2.11+ keeps as `legacy`.
def sgd():
  return tf.keras.optimizers.legacy.SGD(learning_rate=0.01)   # LHC_Train.py


def adam():
  return tf.keras.optimizers.legacy.Adam(learning_rate=0.0001, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                                  amsgrad=False, name="Adam")   # Controller_Train.py


def one_hot(labels):
  return np.eye(7, dtype=tf.keras.backend.floatx())[labels]


def write_csv(images, path):
  """The authors' data_*.csv layout (';', a header row, label, a skipped column, 2304 pixels)."""
  with open(path, "w") as f:
    f.write("label;usage;" + ";".join(f"p{i}" for i in range(48 * 48)) + "\n")
    for image in images:
      f.write("0;x;" + ";".join(str(int(v)) for v in image.reshape(-1)) + "\n")


def predict(args):
  official = load_official(args.official)
  paths = sorted(glob.glob(os.path.join(args.images, "*.png")))
  grey = np.stack([np.asarray(Image.open(p)) for p in paths])
  write_csv(grey, os.path.join(args.out, "data_test.csv"))
  images, _ = official["utils"]["etl_data"](os.path.join(args.out, "data_test.csv"))
  rng = np.random.default_rng(0)
  calibration = images[rng.integers(0, len(images), 8)] + rng.normal(0, 8, (8, SIZE, SIZE, 3)).astype(np.float32)
  labels = one_hot(rng.integers(0, 7, len(images)))

  model = build(official, controller=False)
  randomise(model, 0, calibration)
  model.compile(optimizer=sgd(), loss="categorical_crossentropy", metrics=["categorical_accuracy"])
  model.train_on_batch(images, labels)
  model.save_weights(os.path.join(args.out, "LHC_Net", "LHC_Net"))
  gated = controller_model(official, model, [0.3, -0.2, 0.1, -1.0, -0.5])
  gated.compile(optimizer=adam(), loss="categorical_crossentropy", metrics=["categorical_accuracy"])
  gated.train_on_batch(images, labels)
  gated.save_weights(os.path.join(args.out, "LHC_NetC", "LHC_Net_Controller"))

  tta = official["utils"]["TTA_Inference"](model, images)
  np.savez(os.path.join(args.out, "official.npz"), names=[os.path.basename(p) for p in paths], images=images,
           probabilities=model.predict(images), tta=tta, logits=logits_of(model, images),
           controller_logits=logits_of(gated, images))


def adam_slots(model):
  """LHC-NetC's Adam state: the step count and, per gain, the moments m and v."""
  slots = {"iterations": model.optimizer.iterations.numpy()}
  for index in range(1, 6):
    gain = getattr(model, f"controller{index}").w
    slots.update({f"controller{index}/{name}": model.optimizer.get_slot(gain, name).numpy() for name in ("m", "v")})
  return slots


def train_step(args):
  tf.keras.backend.set_floatx("float64")
  official = load_official(args.official)
  rng = np.random.default_rng(1)
  batch = rng.uniform(0, 255, (4, SIZE, SIZE, 3))
  labels = np.array([0, 3, 5, 6])
  model = build(official, controller=False)
  randomise(model, 1, batch + rng.normal(0, 8, batch.shape), head_scale=30.0)   # a loss of a few nats
  stages = {"B": (model, "LHC_Net", sgd()),
            "C": (controller_model(official, model, CONTROLLER_INIT), "LHC_Net_Controller", adam())}
  for stage, (network, name, optimizer) in stages.items():
    for layer in (network.dp1, network.dp2):
      layer.rate = 0.0   # dropout masks cannot be shared between frameworks
    network.save_weights(os.path.join(args.out, stage, "step0", name))
    network.compile(optimizer=optimizer, loss="categorical_crossentropy")
    results = {"image": batch, "label": labels}
    for step in (1, 2):
      results[f"loss{step}"] = network.train_on_batch(batch, one_hot(labels))
      network.save_weights(os.path.join(args.out, stage, f"step{step}", name))
      if stage == "C":
        results.update({f"step{step}/{k}": v for k, v in adam_slots(network).items()})
    np.savez(os.path.join(args.out, stage, "results.npz"), **results)


def time_step(args):
  """LHC_Train.py's step (stage B) timed as benchmarks/official_step.py times the PyTorch ones: LHC-Net
  in float32 (dropout on), SGD at 0.01, cross-entropy and its accuracy metric, `train_on_batch` on
  one random batch again and again; one JSON line of that script's fields."""
  os.environ["TF_DETERMINISTIC_OPS"] = "1"   # LHC_Train.py's settings
  tf.random.set_seed(0)
  official = load_official(args.official)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (args.batch, SIZE, SIZE, 3)).astype(np.float32)
  labels = one_hot(rng.integers(0, 7, args.batch))
  load = os.getloadavg()[0]
  model = build(official, controller=False)
  model.compile(optimizer=sgd(), loss="categorical_crossentropy", metrics=["categorical_accuracy"])

  def seconds(steps):
    start = time.perf_counter()
    for _ in range(steps):
      model.train_on_batch(images, labels)   # returns the loss as a number: each step ends on the host
    return time.perf_counter() - start

  warmup, step = seconds(args.warmup), seconds(args.steps) / args.steps
  gpus = tf.config.list_physical_devices("GPU")
  line = json.dumps({"code": "official", "method": "lhcnet", "variant": args.variant, "batch_size": args.batch,
                     "input_size": SIZE, "dtype": "float32", "steps": args.steps, "warmup_steps": args.warmup,
                     "train_img_per_s": round(args.batch / step, 2), "train_step_ms": round(1e3 * step, 1),
                     "warmup_s": round(warmup, 2), "framework": f"tensorflow {tf.__version__}",
                     "device": "gpu" if gpus else "cpu",
                     "device_kind": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")
                     if gpus else "cpu", "threads": os.cpu_count(), "load_average_1m": load})
  print(line)
  if args.output:
    with open(args.output, "a") as f:
      f.write(line + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=["predict", "train_step", "time_step"])
  parser.add_argument("--official", required=True)
  parser.add_argument("--images")
  parser.add_argument("--out", default="", help="predict and train_step: the folder they write")
  parser.add_argument("--batch", type=int, default=64, help="time_step: LHC_Train.py's batch")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--output", default="", help="time_step: a file its JSON line is appended to")
  parser.add_argument("--variant", default="fp32", choices=["fp32"], help="time_step: as released, the only one")
  args = parser.parse_args()
  if args.command != "time_step":
    if not args.out:
      parser.error(f"{args.command} needs --out")
    os.makedirs(args.out, exist_ok=True)
  {"predict": predict, "train_step": train_step, "time_step": time_step}[args.command](args)


if __name__ == "__main__":
  main()
