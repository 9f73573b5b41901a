"""fer_jax's LHC-Net against the official Keras code, end to end (not part of the test suite).

  python tests/reference/official_lhcnet_compare.py predict --official=LHC_Net_checkout \
      --tf_python=/path/to/tf-venv/bin/python --work=/tmp/lhc_compare
  JAX_ENABLE_X64=1 python tests/reference/official_lhcnet_compare.py train_step --official=… --tf_python=… --work=…

Run from the repository root with the project's Python; --tf_python is a Python with TensorFlow
and tf-keras that runs tests/reference/official_lhcnet_keras.py (see its docstring).

predict: 48×48 grey PNG files; the official model (random weights, calibrated BatchNorm, LHC-Net
and LHC-NetC) saved in the released checkpoint layout; `python -m fer_jax.convert`, then
`python -m fer_jax.predict` (LHC-Net with the lhc62 TTA, LHC-NetC without) against the official
test ETL, the official model's logits and the official TTA_Inference; then `python -m
fer_jax.main --mode=eval` with the lhc62 TTA on a FER2013 CSV of the same images whose labels
are the official TTA's classes: its TTA confusion matrix must be diagonal and its single-pass
one must equal that of the official single-pass classes.

train_step (float64 on both sides; JAX_ENABLE_X64=1): from identical weights and batch,
augmentation and dropout off, two official training steps (stage B: SGD 0.01; stage C: Adam 1e-4,
everything but the five gains frozen) against fer_jax.train.make_train_step with the stage's
config: the loss, every parameter and BatchNorm statistic after each step, and stage C's Adam
moments. Prints the worst relative error per variable group.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)   # this checkout's fer_jax, not an installed one
KERAS_SCRIPT = os.path.join(ROOT, "tests", "reference", "official_lhcnet_keras.py")
NETWORKS = {"B": "LHC_Net", "C": "LHC_Net_Controller"}
FOLDERS = {"B": "LHC_Net", "C": "LHC_NetC"}


def run(command, **kwargs):
  print("$", " ".join(command), flush=True)
  subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def run_keras(args, command, *extra):
  if args.reuse_keras:
    return
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("JAX_ENABLE_X64", None)
  run([args.tf_python, KERAS_SCRIPT, command, f"--official={args.official}", f"--out={args.work}/keras", *extra],
      env=env)


def grey_faces():
  """Six 48×48 grey images: crops of matplotlib's sample photographs and one of noise."""
  from matplotlib import cbook
  from PIL import Image
  photos = [Image.open(cbook.get_sample_data(name)).convert("L") for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]
  boxes = [(0, (120, 40, 420, 340)), (0, (60, 0, 512, 452)), (0, (200, 150, 350, 300)),
           (1, (10, 20, 110, 120)), (1, (0, 0, 128, 128))]
  images = [np.asarray(photos[i].crop(box).resize((48, 48), Image.BILINEAR)) for i, box in boxes]
  images.append(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8))
  return images


def relative(ours, theirs):
  """max |ours − theirs| / max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-300))


def predict_rows(path):
  """Image names, probabilities and logits of a `fer_jax.predict` JSON file, by name."""
  with open(path) as f:
    output = json.load(f)
  rows = sorted(output["predictions"], key=lambda row: os.path.basename(row["image"]))
  table = lambda key: np.array([[row[key][name] for name in output["class_names"]] for row in rows])
  return [os.path.basename(row["image"]) for row in rows], table("probabilities"), table("logits")


def write_fer2013_csv(images, labels, path):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["emotion", "pixels", "Usage"])
    for usage in ("Training", "PublicTest", "PrivateTest"):
      for image, label in zip(images, labels):
        writer.writerow([int(label), " ".join(str(int(v)) for v in image.reshape(-1)), usage])


def compare_predict(args):
  from PIL import Image
  work = args.work
  os.makedirs(f"{work}/images", exist_ok=True)
  faces = grey_faces()
  for index, face in enumerate(faces):
    Image.fromarray(face).save(f"{work}/images/face{index}.png")
  run_keras(args, "predict", f"--images={work}/images")
  official = np.load(f"{work}/keras/official.npz")
  python = sys.executable
  for stage in ("B", "C"):
    config = f"--config=configs/lhcnet.py:fer2013,stage={stage}"
    run([python, "-m", "fer_jax.convert", config, f"--checkpoint={work}/keras/{FOLDERS[stage]}",
         f"--workdir={work}/converted_{stage}"])
    run([python, "-m", "fer_jax.predict", config, f"--checkpoint={work}/converted_{stage}", f"--input={work}/images",
         f"--output={work}/predict_{stage}.json", f"--batch_size={len(faces)}",
         *(["--tta=none"] if stage == "C" else [])])

  names, tta_probabilities, logits = predict_rows(f"{work}/predict_B.json")
  assert names == list(official["names"]), (names, official["names"])
  _, _, controller_logits = predict_rows(f"{work}/predict_C.json")
  figures = {
      "LHC-Net logits, relative": relative(logits, official["logits"]),
      "LHC-NetC logits, relative": relative(controller_logits, official["controller_logits"]),
      "LHC-Net lhc62 TTA probabilities, max abs": float(np.max(np.abs(tta_probabilities - official["tta"]))),
      "official logit spread (std)": float(np.std(official["logits"])),
      "official TTA − single pass, max abs": float(np.max(np.abs(official["tta"] - official["probabilities"]))),
  }

  tta_classes, plain_classes = np.argmax(official["tta"], 1), np.argmax(official["probabilities"], 1)
  write_fer2013_csv(faces, tta_classes, f"{work}/fer2013.csv")
  run([python, "-m", "fer_jax.data.prepare", "--dataset=fer2013", f"--manual_dir={work}", f"--data_dir={work}/tfds",
       "--overwrite"])
  run([python, "-m", "fer_jax.main", "--mode=eval", "--config=configs/lhcnet.py:fer2013,stage=B",
       f"--checkpoint={work}/converted_B", f"--workdir={work}/eval", f"--config.dataset.data_dir={work}/tfds",
       f"--config.eval_batch_size={len(faces)}"])   # not 256: on a CPU, 62 views of padding take hours
  with open(f"{work}/eval/eval_results.json") as f:
    report = json.load(f)
  expected_plain = np.zeros((7, 7), int)
  np.add.at(expected_plain, (tta_classes, plain_classes), 1)
  figures["--mode=eval lhc62 confusion matrix diagonal"] = bool(
      np.array_equal(np.array(report["tta"]["confusion_matrix"]), np.diag(np.bincount(tta_classes, minlength=7))))
  figures["--mode=eval single-pass confusion = official"] = bool(
      np.array_equal(np.array(report["confusion_matrix"]), expected_plain))
  figures["official TTA classes"] = tta_classes.tolist()
  figures["official single-pass classes"] = plain_classes.tolist()
  for name, value in figures.items():
    print(f"{name}: {value}")


def load_config(stage):
  import importlib.util
  spec = importlib.util.spec_from_file_location("lhcnet_config", os.path.join(ROOT, "configs", "lhcnet.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"fer2013,stage={stage}")
  config.model.update(dtype="float64", dropout_rate=0.0)   # dropout masks cannot be shared between frameworks
  return config


def group_of(path):
  """The variable group a flattened path belongs to, for the report."""
  collection, module = path.split("/")[:2]
  if path.endswith("/controller"):
    return "controller gains"
  if collection == "batch_stats":
    return "BatchNorm statistics"
  return {"backbone": "backbone parameters", "head": "head parameters"}.get(module, "LHC module parameters")


def flat(tree):
  import jax
  from fer_jax import optim
  return {optim.path_of(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def adam_moments(opt_state):
  """The {"count", "m", "v"} state of `optim.scale_by_keras_adam` inside the optimizer's state."""
  import jax
  found = [node for node in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, dict) and "m" in n)
           if isinstance(node, dict) and "m" in node]
  return found[0]


def worst_by_group(ours, theirs, before=None):
  """Per group: the worst max|ours − theirs| / max|theirs| over its variables; with `before`, of the
  changes from `before` instead (what one step adds, which the values themselves dwarf)."""
  worst = {}
  for path, value in theirs.items():
    if before is not None:
      if np.array_equal(value, before[path]):
        assert np.array_equal(ours[path], before[path]), path
        continue
      error = relative(ours[path] - before[path], value - before[path])
    else:
      error = relative(ours[path], value)
    group = group_of(path)
    worst[group] = max(worst.get(group, 0.0), error)
  return worst


def compare_train_step(args):
  import jax
  import jax.numpy as jnp
  from fer_jax import convert, mesh as mesh_lib, models, optim, train
  if not jax.config.jax_enable_x64:
    raise SystemExit("Run with JAX_ENABLE_X64=1: the comparison is in float64 on both sides.")
  run_keras(args, "train_step")
  for stage, network in NETWORKS.items():
    config = load_config(stage)
    folder = f"{args.work}/keras/{stage}"
    keras_steps = [flat(convert.convert(config, [f"{folder}/step{step}/{network}"])[0]) for step in (0, 1, 2)]
    official = np.load(f"{folder}/results.npz")
    model, method = models.build_model(config), models.get_method("lhcnet")
    optimizer = optim.make_optimizer(config.optimizer, 1, 1, models.abstract_variables(model, config)["params"])
    mesh = mesh_lib.make_mesh()
    step_fn = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed)
    variables, _ = convert.convert(config, [f"{folder}/step0/{network}"])
    state = {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": optimizer.tx.init(variables["params"])}
    state = jax.tree.map(jnp.array, state)   # one buffer per leaf: the step donates its state
    batch = {"image": jnp.asarray(official["image"]), "label": jnp.asarray(official["label"], jnp.int32)}
    print(f"stage {stage}: parameters in {jax.tree.leaves(state['params'])[0].dtype}, images in {batch['image'].dtype}")
    for step in (1, 2):
      state, metrics = step_fn(state, batch)
      ours = flat({"params": state["params"], "batch_stats": state["batch_stats"]})
      print(f"  step {step}: loss {float(metrics['loss']):.12g} (official {float(official[f'loss{step}']):.12g}), "
            f"relative error {relative(metrics['loss'], official[f'loss{step}']):.2e}")
      for group, error in sorted(worst_by_group(ours, keras_steps[step]).items()):
        print(f"    {group}: values {error:.2e}, ", end="")
        change = worst_by_group(ours, keras_steps[step], before=keras_steps[step - 1]).get(group)
        print("unchanged by both" if change is None else f"change over the step {change:.2e}")
      if stage == "C":
        moments = adam_moments(state["opt_state"])
        errors = {name: max(relative(moments[name][f"lhc{i}"]["controller"], official[f"step{step}/controller{i}/{name}"])
                            for i in range(1, 6)) for name in ("m", "v")}
        print(f"    Adam moments: m {errors['m']:.2e}, v {errors['v']:.2e}; step count {int(moments['count'])} "
              f"(official {int(official[f'step{step}/iterations'])})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=["predict", "train_step"])
  parser.add_argument("--official", required=True, help="a checkout of github.com/Bodhis4ttva/LHC_Net")
  parser.add_argument("--tf_python", required=True, help="a Python with tensorflow and tf-keras")
  parser.add_argument("--work", required=True, help="a scratch folder")
  parser.add_argument("--reuse_keras", action="store_true", help="reuse what an earlier run wrote in WORK/keras")
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  {"predict": compare_predict, "train_step": compare_train_step}[args.command](args)


if __name__ == "__main__":
  main()
