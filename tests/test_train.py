"""The real loop on tiny synthetic data: end to end, resume, multi-device, checkpoints, CLI errors."""

import asyncio
import contextlib
import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import provenance
from fer_jax import selection as selection_lib
from fer_jax import stopping
from fer_jax import train
from fer_jax import train_log
from fer_jax import watched_step
from fer_jax.errors import ConfigError
from fer_jax.errors import UserError
from helpers import (TINY_NET, assert_user_error, cpu_devices_env, get_config, run_command, short_dan_run,
                     short_tiny_net_run, tiny_run)
from jax._src import array as jax_array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_dan(epochs=1):
  return tiny_run(get_config("configs/dan.py:synthetic"), epochs=epochs)


SHORT_RUN_STEPS = 8  # helpers.short_dan_run's 2 epochs of 4 steps


def _short_main_config():
  """short_dan_run's config as `_tiny_main_args` give it to the CLI: each step logged, every third saved (the 3
  newest kept, steps 3, 6 and 8), evaluated at the end only."""
  config = short_dan_run()
  config.update(log_every_steps=1, checkpoint_every_steps=3, max_checkpoints=3)
  config.eval.every_epochs = 2
  return config


def _tiny_main_args(workdir, data_dir, checkpoint_every_steps=3):
  """The flags that give the CLI `_short_main_config()` (its checkpoints saved every `checkpoint_every_steps`,
  which changes nothing trained) on `data_dir`."""
  config = _short_main_config()
  config.update(checkpoint_every_steps=checkpoint_every_steps)
  config.dataset.data_dir = str(data_dir)
  shipped, short = config_lib.flat(get_config("configs/dan.py:synthetic")), config_lib.flat(config)
  return ["--config=configs/dan.py:synthetic", f"--workdir={workdir}",
          *(f"--config.{key}={value}" for key, value in short.items() if shipped[key] != value)]


def _final_params(workdir, step):
  restored = checkpointing.restore_model(os.path.join(workdir, "checkpoints", str(step)),
                                         models.abstract_variables(models.build_model(_tiny_dan()), _tiny_dan()))
  return restored


def _assert_same_saved_state(workdir_a, workdir_b, step):
  """The whole training state saved at `step` in two workdirs, read as saved: the step counter and the
  optimizer state as well as the model's variables."""
  def saved(workdir):
    directory = os.path.join(workdir, "checkpoints", str(step), "state")
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointing._saved_tree(directory))
    return ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  a, b = saved(workdir_a), saved(workdir_b)
  assert int(a["step"]) == int(b["step"]) == step
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("installed", [True, False])
def test_the_training_curves_line_says_to_install_tensorboard_where_it_is_missing(tmp_path, monkeypatch, installed):
  """fer_jax writes the scalars with tensorboardX; the `tensorboard` command the log names is not among its
  dependencies."""
  monkeypatch.setattr(train_log.importlib.util, "find_spec", lambda name: object() if installed else None)
  command = f"Training curves: tensorboard --logdir {tmp_path}"
  assert train_log.training_curves_line(str(tmp_path)) == (command if installed else
                                                            f"{command} (after pip install tensorboard)")


WRITE_SCALARS = """
import sys
from fer_jax import train_log
writer = train_log.Writer(sys.argv[1])
writer.scalars(3, {"train/loss": 0.25})
writer.close()
print("torch" in sys.modules)
"""


def _events_in(folder, names=None):
  """The TensorBoard events of the files `names` (default every event file) in `folder`: TFRecord framing (8-byte
  length, its CRC, the Event, its CRC) read here, the Event parsed with tensorboardX's own protocol buffers."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  for name in sorted(names or (name for name in os.listdir(folder) if name.startswith("events.out.tfevents"))):
    data, offset = (folder / name).read_bytes(), 0
    while offset < len(data):
      length = int.from_bytes(data[offset:offset + 8], "little")
      yield event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4


def _scalars_in(folder) -> list[tuple[int, str, float]]:
  """(step, tag, value) of each scalar in the TensorBoard event files under `folder`."""
  return [(event.step, value.tag, value.simple_value) for event in _events_in(folder) for value in event.summary.value]


def _purge_steps(folder, names) -> list[int]:
  """The steps of the SessionLog START events in `folder`'s files `names`: TensorBoard drops the scalars written
  before, at that step and after."""
  return [event.step for event in _events_in(folder, names)
          if event.HasField("session_log") and event.session_log.status == event.session_log.START]


def test_the_tensorboard_scalars_are_written_without_importing_pytorch(tmp_path):
  """tensorboardX imports PyTorch where it is installed (as the converters need it): 1.5 s and 480 MB at every start
  of a training run, for nothing it writes."""
  result = subprocess.run([sys.executable, "-c", WRITE_SCALARS, str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "False"
  assert _scalars_in(tmp_path) == [(3, "train/loss", 0.25)]


def test_a_watched_step_counts_its_compilations_and_names_what_changed(caplog):
  def scale(x):
    return 2 * x

  step = watched_step.WatchedStep("scale step", jax.jit(scale))
  with caplog.at_level(logging.WARNING):
    step(np.ones(3, np.float32))
    jax.jit(scale)(np.ones(5, np.float32))  # another jitted function's compilation, though of the same name
    step(np.zeros(3, np.float32))
    assert step.compiles == 1 and not caplog.records
    step(np.ones(4, np.float32))
  assert step.compiles == 2
  [record] = caplog.records
  assert record.getMessage().startswith("scale step compiled again (2 compilations this run); changed since its "
                                        "first compilation: [0]: float32[3] on the host → float32[4] on the host")


@contextlib.contextmanager
def counting_host_fetches():
  """Counts reads of device arrays' values on the host: float(), np.asarray and jax.device_get of a
  jax.Array all read ArrayImpl._value. On a GPU or TPU each is a device-to-host copy; on the CPU
  they are free and jax.transfer_guard does not see them, hence this count."""
  fetch = jax_array.ArrayImpl._value.fget
  count = [0]

  def counted(array):
    count[0] += 1
    return fetch(array)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(jax_array.ArrayImpl, "_value", property(counted))
    yield lambda: count[0]


@pytest.mark.integration
def test_the_loop_compiles_each_step_once_donates_the_state_and_fetches_only_to_log(tmp_path, caplog):
  """Two epochs of the real loop, evaluated at each end and reported on the best epoch's restored
  weights; each training step runs with implicit host-device transfers disallowed."""
  config = short_tiny_net_run()
  config.update(select_metric="accuracy", restore_best=True, log_every_steps=3)
  run = train.TrainingRun(config, str(tmp_path))
  train_one, fetches = run.train, {}

  def train_guarded(step, batch):
    with jax.transfer_guard("disallow"), counting_host_fetches() as count:
      train_one(step, batch)
    fetches[step] = count()

  run.train = train_guarded
  with caplog.at_level(logging.WARNING):
    report = run.run()
  assert run.compilations() == {"train step (train mode)": 1, "train step (inference mode)": 0,
                                "eval step (eval)": 1}
  # The step of the weights reported, the best epoch's (it reported the last step before), and the steps trained.
  assert report["step"] == run.selection.checkpoints.latest_step() == 4 * run.selection.best_epoch
  assert report["trained_steps"] == 8
  assert not [r.getMessage() for r in caplog.records if "compiled again" in r.getMessage()]
  # 4 steps per epoch: the metrics reach the host at the log steps (and the last) only, not at the end of epoch 1.
  assert [step for step, count in fetches.items() if count] == [3, 6, 8] and len(fetches) == 8
  # The compiled step writes the new state over the old one: every byte of it is aliased.
  batch = next(run.data.batches(0))
  memory = run.train_steps[("train", run.config.batch_size)].jitted.lower(run.state, batch).compile().memory_analysis()
  assert memory.alias_size_in_bytes == sum(leaf.nbytes for leaf in jax.tree.leaves(run.state))


@pytest.mark.integration
def test_a_run_that_selects_without_restore_best_says_where_its_best_epoch_is_kept(tmp_path):
  """The report of the last epoch said nothing of the best epoch the run had kept in best/."""
  config = short_tiny_net_run()
  config.update(select_metric="accuracy", restore_best=False)
  run = train.TrainingRun(config, str(tmp_path))
  update = run.selection.update
  run.selection.update = lambda epoch, step, results, *rest: update(epoch, step, {**results, "accuracy": 2 - epoch},
                                                                    *rest)
  report = run.run()
  best = str(tmp_path / "best" / str(run.steps_per_epoch))
  assert report["step"] == 2 * run.steps_per_epoch and report["selection"] is None
  assert {k: report["best_epoch_kept"][k] for k in ("epoch", "trained_epochs", "value", "checkpoint")} == {
      "epoch": 1, "trained_epochs": 2, "value": 1.0, "checkpoint": best}
  assert (f"Not these weights: The best epoch (1 of 2) by accuracy on the evaluator eval (synthetic/tiny test). It is "
          f"kept in {best} (accuracy 1.0000;") in (tmp_path / "eval_results.md").read_text()
  # Each epoch's evaluation, drawn: eval_history.png (accuracy and mean-class accuracy per epoch).
  with Image.open(tmp_path / "eval_history.png") as drawn:
    assert drawn.format == "PNG" and drawn.width > 500
  # The report says which code and releases made it, and the model's size.
  assert report["provenance"]["git_commit"] == provenance.software()["git_commit"]
  assert report["num_params"] == sum(np.size(leaf) for leaf in jax.tree.leaves(run.variables["params"]))


@pytest.mark.integration
def test_the_report_of_the_best_epoch_reuses_its_evaluation_unless_a_restart_came_between(tmp_path, monkeypatch,
                                                                                          caplog):
  """restore_best evaluated the best epoch's weights again on the split they had been evaluated on at that epoch
  (84 s of SCAN-CCI's synthetic run on the CPU). A run started again has only the saved weights: it evaluates them."""
  config = short_tiny_net_run()
  config.update(select_metric="accuracy", restore_best=True)
  evaluations, confusion_matrix = [], evaluate.confusion_matrix

  def counted(*args):
    evaluations.append(confusion_matrix(*args))
    return evaluations[-1]

  monkeypatch.setattr(evaluate, "confusion_matrix", counted)
  run = train.TrainingRun(config, str(tmp_path))
  update = run.selection.update
  # Epoch 1 stays the best, as if epoch 2 scored lower: the last epoch's evaluation is not the one to reuse.
  run.selection.update = lambda epoch, step, results, *rest: update(epoch, step, {**results, "accuracy": 2 - epoch},
                                                                    *rest)
  with caplog.at_level(logging.INFO):
    report = run.run()
  assert len(evaluations) == 2  # the "eval" evaluator (whose inputs "test" shares) at each epoch's end, none after
  assert report["step"] == run.steps_per_epoch and report["confusion_matrix"] == evaluations[0].tolist()
  # The config in TensorBoard's text tab, at the step the run started from.
  texts = [(event.step, value.tag, value.tensor.string_val[0].decode()) for event in _events_in(tmp_path)
           for value in event.summary.value if value.tag.startswith("config")]
  assert texts and texts[0][0] == 0 and "| optimizer.lr | 0.0003 |" in texts[0][2]
  # TensorBoard's final/ scalars at the step of the weights reported, not at the last step trained.
  assert {step for step, tag, _ in _scalars_in(tmp_path) if tag.startswith("final/")} == {run.steps_per_epoch}
  assert {k: report["selection"][k] for k in ("epoch", "trained_epochs", "evaluator", "reported_on_the_same_split")} \
      == {"epoch": 1, "trained_epochs": 2, "evaluator": "eval", "reported_on_the_same_split": ["test"]}
  selected = "Selected: The best epoch (1 of 2) by accuracy on the evaluator eval (synthetic/tiny test)"
  assert selected in (tmp_path / "eval_results.md").read_text()
  assert f"Reporting step {run.steps_per_epoch}. {selected}" in caplog.text  # the log too, as docs/training.md says
  assert (f"epoch 1 eval (test): accuracy {report['accuracy']:.4f} mean-class {report['mean_class_accuracy']:.4f}"
          in caplog.text)
  # The silent first step is said to compile (its time is left out of img/s), and the end names the outputs.
  assert caplog.text.count("Compiling the train step (train mode)…") == 1
  assert "Compiled the train step (train mode) in " in caplog.text
  assert f"Training {TINY_NET} on synthetic/tiny" in caplog.text
  assert f"Wrote the report to {tmp_path} (eval_results.json" in caplog.text
  assert f"Training curves: tensorboard --logdir {tmp_path}" in caplog.text
  evaluations.clear()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    again = train.TrainingRun(config, str(tmp_path)).run()
  assert len(evaluations) == 1 and again["confusion_matrix"] == report["confusion_matrix"]
  # A finished run started again says so, and does not look like a training.
  assert (f"The run in {tmp_path} ended at step {2 * run.steps_per_epoch} (epoch 2): nothing is left to train; "
          "evaluating it again for the report.") in caplog.text
  assert f"Training {TINY_NET}" not in caplog.text and "Compiling" not in caplog.text


@pytest.mark.integration
def test_a_bf16_train_step_returns_the_state_in_its_float32_types():
  """bf16 computes; the parameters, BatchNorm statistics and Adam's moments stay float32, so the
  step's output state is its next input without a recompilation (traced, not run)."""
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  config.model.dtype = "bfloat16"
  model = models.build_model(config)
  method = models.get_method(config.model.name)
  abstract = models.abstract_variables(model, config)
  optimizer = optim.make_optimizer(config.optimizer, 8, 1, abstract["params"])
  mesh = mesh_lib.make_mesh()
  state = train.abstract_state(abstract, optimizer.tx, mesh)
  batch = {"image": jax.ShapeDtypeStruct((32, 32, 32, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((32,), jnp.int32)}
  step = train.make_train_step(model, method.loss, config.loss, optimizer, mesh, config.seed)
  new_state, _ = jax.eval_shape(step, state, batch)
  types = lambda tree: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype, leaf.weak_type), tree)  # noqa: E731
  assert types(new_state) == types(state)
  floating = {leaf.dtype for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert floating == {jnp.dtype(jnp.float32)} and config.optimizer.name == "adam"


@pytest.mark.integration
def test_the_quickly_compiled_initial_state_is_the_default_compiles():
  """create_state compiles with CPU_INIT_COMPILER_OPTIONS; XLA's default compile of the same
  initialisation is the reference (APViT: truncated-normal, Xavier and Kaiming initialisers)."""
  config = tiny_run(get_config("configs/apvit.py:synthetic"))
  model, mesh = models.build_model(config), mesh_lib.make_mesh()
  abstract = models.abstract_variables(model, config)
  tx = optim.make_optimizer(config.optimizer, 8, 1, abstract["params"]).tx

  def init():
    variables = models.init_variables(model, config, jax.random.key(config.seed))
    return {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": tx.init(variables["params"])}
  quick, reference = train.create_state(model, tx, config, mesh), jax.jit(init)()
  assert mesh_lib.CPU_INIT_COMPILER_OPTIONS == {"xla_backend_optimization_level": 1}
  jax.tree.map(np.testing.assert_array_equal, reference, quick)
  assert jax.tree.map(lambda leaf: leaf.sharding, quick) == jax.tree.map(
      lambda leaf: leaf.sharding, train.abstract_state(abstract, tx, mesh))


@pytest.mark.integration
def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path, monkeypatch, straight, caplog):
  """Resumed in this process from a copy of the uninterrupted CLI run (`straight`) cut back to its step 3."""
  config = _short_main_config()
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  # Interrupted after the step-3 checkpoint, within epoch 1: the later ones and the reports never got written.
  for step in (6, SHORT_RUN_STEPS):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  os.remove(resumed / "eval_results.json")
  checks, check_resumable = [], checkpointing.check_resumable
  monkeypatch.setattr(checkpointing, "check_resumable", lambda *args: checks.append(args) or check_resumable(*args))
  with caplog.at_level(logging.INFO):  # as the CLI logs
    results = train.train_and_evaluate(config, str(resumed))
  assert len(checks) == 1  # the saved state is checked (its metadata read) once
  # TensorBoard drops what the interrupted run logged after step 3 (SessionLog START at step 4 in the new file): its
  # curves had two values at each step trained again.
  events = [name for name in set(os.listdir(resumed)) - set(os.listdir(straight)) if name.startswith("events.out")]
  assert events and _purge_steps(resumed, events) == [4]
  # eval_history.jsonl: the interrupted run's line of a step trained again dropped, its evaluation written again.
  untimed = lambda folder: [{k: v for k, v in json.loads(line).items() if k not in ("time", "seconds")}
                            for line in (folder / "eval_history.jsonl").read_text().splitlines()]
  assert untimed(resumed) == untimed(straight)
  # train.log: the terminal's lines, the resumed run's after the interrupted one's (it was lost with the terminal).
  log = (resumed / "train.log").read_text()
  assert log.startswith((straight / "train.log").read_text()) and f"Resumed from step 3 in {resumed}" in log
  assert f"epoch 2 eval (test): accuracy {results['accuracy']:.4f}" in log
  assert [(line["step"], line["epoch"], line["evaluator"]) for line in untimed(straight)] == [
      (SHORT_RUN_STEPS, 2, "eval")]
  _assert_same_saved_state(straight, resumed, SHORT_RUN_STEPS)
  with open(straight / "eval_results.json") as f:
    assert json.load(f)["accuracy"] == results["accuracy"]
  # --mode=eval on the saved checkpoint reproduces the final report.
  evaluated = evaluate.evaluate_checkpoint(config, str(straight), str(tmp_path / "eval"))
  assert evaluated["confusion_matrix"] == results["confusion_matrix"]
  with open(tmp_path / "eval" / "eval_results.json") as f:
    assert json.load(f)["step"] == results["step"] == SHORT_RUN_STEPS  # the step of the checkpoint it read
  # Evaluated again into the folder: the warning names the step folder read, as the report does (it named the workdir).
  with caplog.at_level(logging.WARNING):
    evaluate.evaluate_checkpoint(config, str(straight), str(tmp_path / "eval"))
  step_folder = straight / "checkpoints" / str(SHORT_RUN_STEPS)
  assert f"holds the report of an evaluation of {step_folder}: this one of {step_folder} replaces it" in caplog.text


@pytest.mark.usefixtures("tiny_data_dir")  # built here; the subprocess inherits its path
@pytest.mark.integration
def test_eight_devices_match_one_device_and_resume_exactly():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "multidevice_check.py")], cwd=ROOT,
                          env=cpu_devices_env(8), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  np.testing.assert_allclose(report["one_device_losses"], report["all_device_losses"], rtol=1e-5)
  assert report["max_param_difference"] < 1e-5
  # DAN's affinity and partition losses are means over the sharded batch, its centres trained by the first. One step:
  # a ReLU input within rounding of 0 takes either side by the device count, its gradient passed back or not. At seed
  # 3 (`python tests/multidevice_check.py 3`, JAX 0.10.2) one such input of layer4_1's 8,192 moves every trunk
  # kernel's gradient by 0.87 % (seed 0: 1.2e-5; the step is not clipped, so that a gradient's scale counts); a sharding
  # error moves it by O(1).
  np.testing.assert_allclose(report["dan"]["one_device_losses"], report["dan"]["all_device_losses"], rtol=1e-5)
  differences = report["dan"]["update_differences"]
  assert set(differences) == {"trunk", "head0", "head1", "head2", "head3", "bn", "fc", "affinity"}
  assert max(differences.values()) < 0.03, differences
  assert report["resumed_exactly"]
  assert report["same_evaluation"]
  # The step's one BatchNorm reduces its batch statistics in one all-gather; the backward pass's sums
  # and the gradient take an all-reduce each. The two-pass error on one device is of order (ε·mean/std)².
  assert report["train_step_collectives"] == {"all-gather": 1, "all-reduce": 2}
  assert report["batch_moments_error"]["one_device"] < 1e-4
  assert report["batch_moments_error"]["all_devices"] < 1e-6


SYNTHETIC_CONFIGS = ["configs/dan.py:synthetic", "configs/apvit.py:synthetic", "configs/scan_cci.py:synthetic",
                     "configs/lhcnet.py:synthetic"]


def test_some_synthetic_configs_evaluate_in_batches_that_do_not_divide_over_eight_devices():
  """Each method's end-to-end test trains its `:synthetic` config on 8 devices with the config's
  own evaluation batch (helpers.train_on_eight_devices), DAN's aside: tests/multidevice_check.py compares its train
  step on 8 devices with one device's, and evaluates a small net on 8 devices in a batch of 25."""
  assert [get_config(spec).eval_batch_size % 8 for spec in SYNTHETIC_CONFIGS] != [0] * len(SYNTHETIC_CONFIGS)


def _saved_tiny_dan(folder):
  """(config, model, variables, checkpoint path) of a freshly initialised tiny DAN saved in `folder`."""
  config = _tiny_dan()
  model = models.build_model(config)
  variables = jax.jit(lambda: models.init_variables(model, config, jax.random.key(0)))()
  return config, model, variables, checkpointing.save_model(str(folder), variables, config)


@pytest.mark.integration
def test_checkpoint_of_another_model_is_refused_by_name(tmp_path):
  _, _, _, path = _saved_tiny_dan(tmp_path / "dan7")
  eight = _tiny_dan()
  eight.model.update(num_classes=8)
  with pytest.raises(checkpointing.CheckpointError, match=r"\(model dan, 7 classes\).*params/fc/bias: checkpoint \(7,\) vs model \(8,\)"):
    checkpointing.restore_model(path, models.abstract_variables(models.build_model(eight), eight))
  with pytest.raises(checkpointing.CheckpointError, match="No checkpoint found"):
    checkpointing.restore_model(str(tmp_path / "nothing"), {})


@pytest.mark.integration
def test_checkpoint_with_another_class_order_is_refused_for_inference(tmp_path):
  config, model, variables, path = _saved_tiny_dan(tmp_path / "fer2013_order")
  restored = models.load_trained_variables(config, model, path)
  np.testing.assert_array_equal(restored["params"]["fc"]["bias"], variables["params"]["fc"]["bias"])
  config.dataset.class_order = "rafdb"  # same 7 classes, another order
  with pytest.raises(checkpointing.CheckpointError, match=r"predicts the classes \(anger, .*class_order"):
    models.load_trained_variables(config, model, path)


@pytest.mark.integration
def test_checkpoint_trained_on_another_input_size_is_refused_for_inference(tmp_path):
  """A DAN takes any size, so the same weights on other inputs ran and gave confident nonsense."""
  config, model, _, path = _saved_tiny_dan(tmp_path / "small")
  larger = config.copy_and_resolve_references()
  larger.input.size = 2 * config.input.size
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"trained on inputs of size {config.input.size} but the config gives size "
                           rf"{larger.input.size}: pass --config.input.size={config.input.size} as"):
    models.load_trained_variables(larger, model, path)


def _main(*args, timeout=600):
  return run_command("fer_jax.main", *args, timeout=timeout)


def _kept(selection, epoch: int, step: int, results: dict, variables: dict, config) -> bool:
  """`selection.update`, and the new best epoch saved as the training loop saves it (once its step is)."""
  new_best = selection.update(epoch, step, results)
  if new_best:
    selection.save_best(variables, config, (8, 8, 3))
  return new_best


def test_selection_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
  config = _tiny_dan()
  config.update(select_metric="mean_class_accuracy", early_stopping_patience=2)
  variables = {"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  best = {"params": {"w": np.ones(2, np.float32)}, "batch_stats": {}}
  kept = [_kept(selection, epoch, 10 * epoch, {"mean_class_accuracy": value}, weights, config)
          for epoch, value, weights in ((1, 0.5, variables), (2, 0.6, best), (3, 0.6, variables), (4, 0.55, variables))]
  assert kept == [True, True, False, False]  # equal is no gain
  assert [selection.patience_ran_out(epoch) for epoch in (3, 4)] == [False, True]
  selection.wait_until_finished()
  restored = selection_lib.Selection(config, str(tmp_path), 40)  # as after a restart
  assert (restored.best_epoch, restored.best_value) == (2, 0.6)
  np.testing.assert_array_equal(restored.best_variables(jax.eval_shape(lambda: best))["params"]["w"], [1, 1])


def test_a_best_epoch_kept_after_the_step_a_run_resumes_from_is_dropped(tmp_path, caplog):
  """A run stopped between saving best/20 and checkpoints/20 resumed from step 10 and, with another learning rate,
  reported best/20, weights of steps it had trained again otherwise, as its best epoch."""
  config = _tiny_dan()
  config.select_metric = "accuracy"
  old = {"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  _kept(selection, 2, 20, {"accuracy": 0.9}, old, config)
  selection.wait_until_finished()
  with pytest.raises(UserError, match=r"best keeps the best epoch of an earlier run \(step 20\), and .* holds no "
                                      r"checkpoint to resume from: move best/ away"):
    selection_lib.Selection(config, str(tmp_path), 0)  # a new run beside it: best/ was the only model left
  with caplog.at_level(logging.WARNING):
    resumed = selection_lib.Selection(config, str(tmp_path), 10)
  assert f"{tmp_path / 'best'} keeps the best epoch at step 20, after step 10 the run resumes from" in caplog.text
  assert (resumed.best_epoch, resumed.best_value) == (0, -1.0)
  new = {"params": {"w": np.ones(2, np.float32)}, "batch_stats": {}}
  assert _kept(resumed, 2, 20, {"accuracy": 0.5}, new, config)  # epoch 2 trained again: its own value
  np.testing.assert_array_equal(resumed.best_variables(jax.eval_shape(lambda: new))["params"]["w"], [1, 1])


class _Killed(Exception):
  """The process killed outright, here: nothing after it runs."""


@pytest.mark.integration
@pytest.mark.parametrize("killed", ["as the step's save starts", "as best/'s save starts", "with best/ saved alone"])
@pytest.mark.parametrize("killed_at_epoch", [1, 2])
def test_a_run_killed_as_it_saves_a_new_best_epoch_resumes_to_the_uninterrupted_run_s_end(tmp_path, monkeypatch,
                                                                                         killed, killed_at_epoch):
  """Killed with best/STEP saved and checkpoints/STEP not, the rerun of a run refused to start (epoch 1: "best keeps
  the best epoch of an earlier run", no checkpoint beside it), or dropped the selection it resumed (epoch 2, a later
  tie kept: its early stopping trained one epoch more than the uninterrupted run). However the two saves of a new
  best epoch are cut, the run ends as the uninterrupted one."""
  accuracy = {1: 0.5, 2: 0.5, 3: 0.75, 4: 0.9}  # epoch 2 ties epoch 1: kept, and patience 1 ends the run there
  update = selection_lib.Selection.update
  monkeypatch.setattr(selection_lib.Selection, "update", lambda self, epoch, step, results, *rest: update(
      self, epoch, step, {**results, "accuracy": accuracy[epoch]}, *rest))
  config = short_tiny_net_run()  # 4 steps an epoch
  config.update(num_epochs=4, select_metric="accuracy", select_ties="latest", early_stopping_patience=1,
                restore_best=True)
  straight = train.TrainingRun(config, str(tmp_path / "straight")).run()
  save, managers = checkpointing.save, set()

  def kill() -> _Killed:
    """A kill ends the saves under way with the process: none finishes under the rerun, as here it would, on its
    threads, beside the rerun's own saves of the same folders."""
    for manager in managers:
      checkpointing.wait_until_saved(manager)
    return _Killed()

  def killed_saving_the_best(checkpoints, step, *args, **kwargs):
    managers.add(checkpoints)
    if step != 4 * killed_at_epoch:
      return save(checkpoints, step, *args, **kwargs)
    if checkpoints.directory.name == "checkpoints":  # its save cut: the step never completes
      if killed == "as the step's save starts":
        raise kill()
      if killed == "with best/ saved alone":
        return None
    elif killed == "as best/'s save starts":
      raise kill()
    save(checkpoints, step, *args, **kwargs)  # best/'s, complete
    raise kill()

  monkeypatch.setattr(checkpointing, "save", killed_saving_the_best)
  with pytest.raises(_Killed):
    train.TrainingRun(config, str(tmp_path / "killed")).run()
  monkeypatch.setattr(checkpointing, "save", save)
  resumed = train.TrainingRun(config, str(tmp_path / "killed")).run()
  assert straight["selection"]["epoch"] == resumed["selection"]["epoch"] == 2
  assert straight["step"] == resumed["step"] == 8 and straight["accuracy"] == resumed["accuracy"]
  assert straight["selection"]["trained_epochs"] == resumed["selection"]["trained_epochs"] == 2
  assert sorted(os.listdir(tmp_path / "killed" / "best")) == sorted(os.listdir(tmp_path / "straight" / "best"))
  abstract = models.abstract_variables(models.build_model(config), config)
  kept = [checkpointing.fingerprint(checkpointing.restore_model(str(tmp_path / run / "best" / "8"), abstract))
          for run in ("straight", "killed")]
  assert kept[0] == kept[1]


@pytest.mark.integration
def test_selection_can_round_the_metric_and_let_a_later_tie_win(tmp_path):
  config = _tiny_dan()
  config.update(select_metric="accuracy", select_decimals=4, select_ties="latest")
  variables = {"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  _kept(selection, 1, 10, {"accuracy": 0.91234}, variables, config)
  _kept(selection, 2, 20, {"accuracy": 0.91226}, variables, config)  # 0.9123 either way: epoch 2 wins
  assert (selection.best_epoch, selection.best_value) == (2, 0.9123)
  _kept(selection, 3, 30, {"accuracy": 0.9122}, variables, config)
  assert selection.best_epoch == 2


@pytest.mark.integration
def test_a_later_tie_kept_does_not_reset_the_patience_and_a_resume_rounds_anew(tmp_path):
  """Patience counts epochs without a strict gain (config_lib, Keras' EarlyStopping): a tie kept under
  select_ties="latest" moved the count, so a flat metric never stopped. The kept value was stored rounded: resumed
  with other select_decimals, a worse epoch compared against the old rounding."""
  config = _tiny_dan()
  config.update(select_metric="accuracy", select_decimals=4, select_ties="latest", early_stopping_patience=2)
  variables = {"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  for epoch in (1, 2, 3):
    assert _kept(selection, epoch, 10 * epoch, {"accuracy": 0.91234}, variables, config)
  assert selection.best_epoch == 3 and [selection.patience_ran_out(epoch) for epoch in (2, 3)] == [False, True]
  selection.wait_until_finished()
  config.select_decimals = 0
  restored = selection_lib.Selection(config, str(tmp_path), 30)  # resumed, comparing unrounded values
  assert (restored.best_epoch, restored.best_value, restored.patience_ran_out(3)) == (3, 0.91234, True)
  assert not _kept(restored, 4, 40, {"accuracy": 0.91231}, variables, config)


@pytest.mark.parametrize("new_best", [False, True])
def test_a_step_is_saved_once_the_best_epoch_it_records_is_and_a_new_best_beside_it(monkeypatch, new_best):
  """best/ and checkpoints/ were saved asynchronously side by side: a run killed once checkpoints/STEP had landed,
  best/STEP not, resumed after that evaluation and kept an older best epoch, unseen. A new best epoch forces its
  step's save, which records the selection, its own weights saved beside it."""
  order = []
  record = {"step": 8} if new_best else None
  selection = types.SimpleNamespace(unsaved=new_best, record=lambda: record,
                                    wait_until_finished=lambda: order.append("best/ complete"),
                                    save_best=lambda *args: order.append("best/8 started"))
  run = types.SimpleNamespace(step=8, steps_per_epoch=3, num_steps=16, config=ml_collections.ConfigDict(
      {"checkpoint_every_steps": 0}), checkpoints="checkpoints", state={}, guard=types.SimpleNamespace(check=list),
      data=types.SimpleNamespace(shape=(8, 8, 3), identity={}, last_batch=0), selection=selection, variables={},
      changed_on_resume=[])
  run.checkpoint_due = lambda: train.TrainingRun.checkpoint_due(run)  # step 8 ends no epoch: due for its best only
  monkeypatch.setattr(checkpointing, "save", lambda checkpoints, step, *args, **kwargs: order.append(
      f"{checkpoints}/{step} started, recording {kwargs['records']}"))
  monkeypatch.setattr(checkpointing, "wait_until_saved", lambda checkpoints: order.append(f"{checkpoints}/ complete"))
  train.TrainingRun.checkpoint(run, force=not new_best)
  assert order == (["best/ complete", "checkpoints/8 started, recording {'selection': {'step': 8}}",
                    "best/8 started"] if new_best else
                   ["best/ complete", "checkpoints/8 started, recording None"])


def test_an_evaluation_report_is_refused_in_a_training_workdir(tmp_path):
  """`--mode=eval --checkpoint=D --workdir=D` overwrote the training's eval_results.json."""
  (tmp_path / "checkpoints" / "8").mkdir(parents=True)
  (tmp_path / "eval_results.json").write_text("{}")
  with pytest.raises(UserError, match=rf"^--workdir={tmp_path} holds a training run \({tmp_path / 'checkpoints'}\): "
                                      r"this evaluation's report would overwrite the run's eval_results.json and "
                                      r"figures. Pass another --workdir for the evaluation"):
    evaluate.evaluate_checkpoint(get_config("configs/dan.py:synthetic"), str(tmp_path), str(tmp_path))
  assert (tmp_path / "eval_results.json").read_text() == "{}"


@pytest.mark.integration
def test_main_rejects_bad_config_keys_and_arguments(tmp_path):
  assert_user_error(_main("--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--config.batch_sise=3"),
                    "the config has no key 'batch_sise'; did you mean 'batch_size'?")
  assert_user_error(_main("--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--config.optimizer.lrr=3"),
                    "config.optimizer has no key 'lrr'; did you mean 'lr'?")
  assert_user_error(_main("--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--config.optimizer.zzqq=3"),
                    "config.optimizer has no key 'zzqq'; valid: b1, b2, eps, gamma, grad_clip_norm, lr, lr_groups, "
                    "momentum, name, nesterov, schedule, step_epochs, trainable, weight_decay, weight_decay_exclude")
  assert_user_error(_main("--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--config.evals.mine.pp=x"),
                    "config.evals has no key 'mine'; it has none: a --config.KEY flag changes a key the config file "
                    "made; add new ones in a config file")
  assert_user_error(_main("--config=configs/dann.py", f"--workdir={tmp_path}"),
                    "No such file or directory: 'configs/dann.py'")
  assert_user_error(_main("--config=configs/dan.py", "--workdir"), "Missing value for flag --workdir")


@pytest.mark.integration
def test_a_new_run_of_a_recipe_from_pretrained_weights_without_them_warns(tmp_path, caplog):
  """The README's SCAN-CCI command trained a random trunk at the recipe's fine-tuning rate of 1e-4, silently."""
  config = _tiny_dan()
  config.init_from_recipe = "the MS-Celeb-1M ResNet-18 (resnet18_msceleb.pth)"
  with caplog.at_level(logging.WARNING):
    run = train.TrainingRun(config, str(tmp_path / "run"))
  run.writer.close()  # its TensorBoard thread would outlive the test
  run.checkpoints.close()
  assert ("The paper's run starts from the MS-Celeb-1M ResNet-18 (resnet18_msceleb.pth); without --config.init_from "
          "this one starts from random weights") in caplog.text


def test_init_from_may_lack_the_modules_a_later_stage_adds(tmp_path):
  """TinyNet's checkpoint without its BatchNorm (as LHC-Net's stage A checkpoint lacks the modules stage B adds): those
  come from the fresh model, the rest from the checkpoint."""
  config = short_tiny_net_run()
  model = models.build_model(config)
  variables = jax.jit(lambda: models.init_variables(model, config, jax.random.key(0)))()
  partial = {collection: {k: v for k, v in tree.items() if k != "bn"} for collection, tree in variables.items()}
  path = checkpointing.save_model(str(tmp_path / "partial"), partial, config)
  abstract = models.abstract_variables(model, config)
  fresh = jax.jit(lambda: models.init_variables(model, config, jax.random.key(1)))()
  fresh["params"]["bn"]["scale"] = fresh["params"]["bn"]["scale"] + 0.5  # told apart from an initial BatchNorm's
  with pytest.raises(checkpointing.CheckpointError, match="missing: batch_stats/bn"):
    checkpointing.restore_model(path, abstract)
  restored = checkpointing.restore_model(path, abstract, fresh, r"^(params|batch_stats)/bn/")
  np.testing.assert_array_equal(restored["params"]["bn"]["scale"], fresh["params"]["bn"]["scale"])
  np.testing.assert_array_equal(restored["params"]["conv"]["kernel"], variables["params"]["conv"]["kernel"])


@pytest.mark.integration
def test_init_from_of_another_class_count_stops_before_the_data_naming_the_parts_that_fit(tmp_path):
  """A DAN checkpoint of 8 classes for a 7-class DAN: found once the data was open, without a word of the parts that
  would start the run."""
  eight = _tiny_dan()
  eight.model.num_classes = 8
  eight.dataset.class_order = "affectnet8"
  model = models.build_model(eight)
  path = checkpointing.save_model(str(tmp_path / "eight"),
                                  jax.jit(lambda: models.init_variables(model, eight, jax.random.key(0)))(), eight)
  config = _tiny_dan()
  config.init_from = path
  config.dataset.update(name="rafdb", data_dir=str(tmp_path / "no_data"))  # read after the check: else it stops here
  with pytest.raises(checkpointing.CheckpointError, match=(
      r"model dan, 8 classes; differs from the config in num_classes=8 \(config 7\)\) does not fit .*shape mismatch: "
      r"batch_stats/bn/mean: checkpoint \(8,\) vs model \(7,\).* Or start from the parts of it that fit: "
      r"--config.init_from_parts=affinity,head0,head1,head2,head3,trunk\.$")):
    train.TrainingRun(config, str(tmp_path / "run"))
  # With init_from_missing, the parts that fit are those the checkpoint holds, and the pattern is to go (the two are
  # refused together): head3 was suggested, filled from the model, and then missing.
  partial = {collection: {k: v for k, v in tree.items() if k != "head3"} for collection, tree in
             checkpointing.model_variables(jax.tree.map(np.asarray, jax.jit(
                 lambda: models.init_variables(model, eight, jax.random.key(0)))())).items()}
  path = checkpointing.save_model(str(tmp_path / "eight_partial"), partial, eight)
  config.update(init_from=path, init_from_missing=r"^(params|batch_stats)/head3/")
  with pytest.raises(checkpointing.CheckpointError, match=r"Or start from the parts of it that fit: "
                     r"--config.init_from_parts=affinity,head0,head1,head2,trunk --config.init_from_missing=\.$"):
    train.TrainingRun(config, str(tmp_path / "run"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_data_dir, worker_id):
  """The uninterrupted run that the interrupted and resumed ones must end equal to: run once a session, by the
  first pytest-xdist worker that asks (the other waits on a lock, then reads the same folder)."""
  shared = tmp_path_factory.getbasetemp()
  if worker_id != "master":  # the workers' folders share a parent, this session's own
    shared = shared.parent
  workdir = shared / "straight"
  with open(shared / "straight.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "eval_results.json").exists():
      result = _main(*_tiny_main_args(workdir, tiny_data_dir))
      assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.integration
def test_a_resumed_run_whose_best_epoch_is_lost_says_so(tmp_path, straight, caplog):
  """A resumed run selecting its best epoch, whose best/ folder was deleted or not copied, chose among the epochs
  still to train and reported "the best epoch (2 of 2)", saying nothing."""
  config = _short_main_config()
  config.update(select_metric="accuracy", restore_best=True)
  config.eval.every_epochs = 1
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("8"))  # resumed at step 6, in epoch 2
  with caplog.at_level(logging.WARNING):
    train.TrainingRun(config, str(resumed)).writer.close()
  assert (f"{resumed}/best holds no best epoch, though the run evaluated eval until epoch 1: its best epoch is "
          "chosen from epoch 2 only. Put the run's best/ folder back") in caplog.text


@pytest.mark.integration
def test_sigterm_saves_the_step_and_the_restart_ends_as_an_uninterrupted_run(tmp_path, straight, tiny_data_dir):
  preempted = tmp_path / "preempted"
  args = _tiny_main_args(preempted, tiny_data_dir, checkpoint_every_steps=SHORT_RUN_STEPS)  # no save but SIGTERM's
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  process = subprocess.Popen([sys.executable, "-m", "fer_jax.main", *args],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  log = []
  for line in process.stderr:
    log.append(line)
    if f"step 2/{SHORT_RUN_STEPS}" in line:
      process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == stopping.PREEMPTED_EXIT_STATUS, "".join(log[-30:])
  saved = [line for line in log if "after SIGTERM; start the same command again" in line]
  assert saved, "".join(log[-30:])
  step = int(saved[0].split("Saved step ")[1].split(" ")[0])
  assert 2 <= step < SHORT_RUN_STEPS and os.listdir(preempted / "checkpoints") == [str(step)]
  assert (preempted / "checkpoints" / str(step) / "state").is_dir()
  assert not (preempted / "eval_results.json").exists()
  assert _main(*args).returncode == 0
  _assert_same_saved_state(straight, preempted, SHORT_RUN_STEPS)


@pytest.mark.integration
def test_a_signal_after_the_last_steps_check_lets_its_save_finish_and_stops_before_the_report(tmp_path, monkeypatch,
                                                                                              caplog):
  """A SIGTERM during the last step's save, after the loop's last look at the signals: the final report's wait for
  the save was outside the loop's StopSignals, so the signal cut the save short (exit 75 with the last epoch lost);
  one during the last evaluation was dropped (the report ran, exit 0)."""
  config = short_tiny_net_run()
  run, wait_until_saved, sent = train.TrainingRun(config, str(tmp_path)), checkpointing.wait_until_saved, []

  def signalled_wait(checkpoints):
    if run.step == run.num_steps and not sent:
      sent.append("SIGTERM")
      os.kill(os.getpid(), signal.SIGTERM)
    wait_until_saved(checkpoints)

  monkeypatch.setattr(checkpointing, "wait_until_saved", signalled_wait)
  with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stopped:
    with stopping.exit_status_on_stop():
      run.run()
  assert stopped.value.code == stopping.PREEMPTED_EXIT_STATUS
  assert sent and sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]  # complete: no temporary folder
  assert f"Saved step {SHORT_RUN_STEPS} (epoch 2.00)" in caplog.text and not (tmp_path / "eval_results.json").exists()


@pytest.mark.integration
def test_a_resumed_run_ends_where_early_stopping_ended_it_and_nowhere_else(tmp_path, monkeypatch):
  """A run resumed from a step its evaluations had not ended (a stop signal's save in epoch 4 of a run evaluated every
  second epoch; the save ending epoch 2 with best/ deleted) was taken for early-stopped: "nothing is left to train",
  its last epochs never trained, though an uninterrupted run trains them."""
  config = short_tiny_net_run()  # 4 steps an epoch
  config.update(num_epochs=4, max_checkpoints=4, select_metric="accuracy", early_stopping_patience=1)
  config.eval.every_epochs = 2
  run = train.TrainingRun(config, str(tmp_path / "run"))
  for step, batch in run.remaining_batches():
    run.train(step, batch)
    stop = run.evaluate_and_select()  # epoch 2 is the first evaluated, and the best: no stop
    run.checkpoint(force=step == 14, stopped_early=stop)  # 14: as a stop signal in epoch 4 saves it
    if step == 14:
      break
  run.wait_for_saves()
  run.writer.close()

  def first_step_resumed(config, workdir):
    resumed = train.TrainingRun(config, str(workdir))
    resumed.writer.close()
    return next(iter(resumed.remaining_batches()), (None,))[0]

  assert first_step_resumed(config, tmp_path / "run") == 15
  for deleted in ("checkpoints/14", "checkpoints/12", "best"):
    shutil.rmtree(tmp_path / "run" / deleted)
  assert first_step_resumed(config, tmp_path / "run") == 9  # from epoch 2, best/ lost: patience unknown, trained on
  # A run early stopping did end is ended when resumed, unless the resumed config's patience lets it train on.
  monkeypatch.setattr(selection_lib.Selection, "update", lambda *args: False)  # no epoch improves: stops after epoch 1
  config.eval.every_epochs = 1
  train.TrainingRun(config, str(tmp_path / "stopped")).run()
  assert checkpointing.recorded_early_stop(checkpointing.manager(str(tmp_path / "stopped" / "checkpoints")), 4)
  assert first_step_resumed(config, tmp_path / "stopped") is None
  config.early_stopping_patience = 3
  assert first_step_resumed(config, tmp_path / "stopped") == 5


def test_a_second_training_in_a_workdir_stops_at_once_naming_the_first(tmp_path):
  """Two trainings in one workdir both trained to the end, then failed, each save's temporary folder deleted by the
  other run's manager as a killed run's leftovers ("Save failed … Free space or fix the folder")."""
  workdir = tmp_path / "run"
  with train.training_lock(str(workdir)):
    with pytest.raises(UserError, match=rf"^Another training runs in {workdir} \(process {os.getpid()} on .*, since "
                       r".*, holding \.training\.lock\): wait for it to end or stop it, or pass another --workdir\.$"):
      train.train_and_evaluate(short_dan_run(), str(workdir))
    assert os.listdir(workdir) == [".training.lock"]  # the refused run leaves the first's lock and workdir alone
  assert not os.path.exists(workdir)  # made by the first, which stopped before training: nothing left behind
  with train.training_lock(str(workdir)):  # released when the first ended
    pass
  config = short_dan_run()
  config.batch_size = 0
  with pytest.raises(ConfigError):  # a run its config stops leaves no workdir behind
    train.train_and_evaluate(config, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new")


@pytest.mark.integration
def test_non_finite_loss_stops_before_anything_non_finite_is_saved(tmp_path):
  config = short_dan_run()
  config.optimizer.lr = 1e30  # Adam's, as short_dan_run's other runs: only the train step is compiled anew
  config.update(checkpoint_every_steps=1, log_every_steps=100)
  with pytest.raises(stopping.NonFiniteError, match=r"Non-finite training values at step 2 \(epoch 0.50\): .* loss nan.*"
                     r"the last good checkpoint is .*checkpoints/1\. Lower --config.optimizer.lr"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  for leaf in jax.tree.leaves(_final_params(str(tmp_path), 1)):
    assert np.all(np.isfinite(leaf))
  # The TensorBoard writer was closed: left to its exit hook, Python 3.12 prints a traceback.
  assert not [thread for thread in threading.enumerate() if type(thread).__module__.startswith("tensorboardX")]


def _kill_at(process, moment, log, checkpoints) -> bool:
  """SIGKILL once training runs: "save" as soon as a save is under way beside a complete step,
  else after `moment` seconds. Whether a save was seen under way."""
  def saving():
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    return any(name.isdigit() for name in names) and any("tmp" in name for name in names)

  while process.poll() is None and "img/s ETA" not in log.read_text():
    time.sleep(0.01)
  deadline = time.monotonic() + (60 if moment == "save" else moment)
  under_way = False
  while not under_way and time.monotonic() < deadline and process.poll() is None:
    time.sleep(0.002)
    under_way = moment == "save" and saving()
  process.kill()
  process.wait()
  return under_way


def _unfinished_saves(workdir) -> list[str]:
  return [name for name in os.listdir(workdir / "checkpoints") if not name.isdigit()]


@pytest.mark.integration
def test_kills_at_random_moments_never_break_the_newest_checkpoint(tmp_path, straight, tiny_data_dir):
  args = lambda workdir: _tiny_main_args(workdir, tiny_data_dir)  # saves steps 3, 6 and 8
  killed = tmp_path / "killed"
  model_config = _tiny_dan()
  abstract = models.abstract_variables(models.build_model(model_config), model_config)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for moment in ("save", *np.random.default_rng(0).uniform(0.0, 2.0, size=1)):
    log = tmp_path / "log.txt"
    with open(log, "w") as stderr:
      process = subprocess.Popen([sys.executable, "-m", "fer_jax.main", *args(killed)], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
      under_way = _kill_at(process, moment, log, killed / "checkpoints")
    assert under_way or moment != "save", "no save was seen under way to kill the run in: " + log.read_text()[-3000:]
    # The newest complete step restores (names, shapes, values) whatever the kill interrupted.
    checkpointing.restore_model(str(killed), abstract)
    if _unfinished_saves(killed):  # the killed save's folder (unless renamed complete before the kill landed) is
      checkpointing.manager(str(killed / "checkpoints"))  # deleted when the next run opens, in a thread of its own
      deadline = time.monotonic() + 30
      while _unfinished_saves(killed) and time.monotonic() < deadline:
        time.sleep(0.05)
      assert not _unfinished_saves(killed), os.listdir(killed / "checkpoints")
  result = _main(*args(killed))
  assert result.returncode == 0, result.stderr[-3000:]
  assert not _unfinished_saves(killed)
  _assert_same_saved_state(straight, killed, SHORT_RUN_STEPS)


def test_the_logged_means_cover_every_step_since_the_last_log_across_an_evaluation(monkeypatch, caplog):
  """ProgressLog: an evaluation between two logs leaves its time out of img/s but keeps the steps
  before it in the next logged means (they were dropped, and that mean covered fewer steps)."""
  class Scalars:
    def __init__(self):
      self.logged = {}

    def scalars(self, step, values):
      self.logged[step] = values

  class Guard:
    def add(self, step, metrics):
      pass

    def check(self):
      pass

  clock = [0.0]
  monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
  config = get_config("configs/dan.py:synthetic")
  config.log_every_steps, config.batch_size = 4, 2
  writer = Scalars()
  progress = train_log.ProgressLog(config, num_steps=8, steps_per_epoch=2, writer=writer, guard=Guard())
  losses = [1.0, 2.0, 3.0, 6.0]
  caplog.set_level(logging.INFO)
  for step, loss in enumerate(losses, start=1):
    clock[0] += 1.0  # a second a step
    images = 1 if step == 4 else 2  # epoch 2's last batch is short
    progress.add(step, {"loss": loss, "accuracy": 0.5, "lr": 0.1 if step <= 2 else 0.01}, images)
    if step == 2:  # an evaluation of 100 s at the end of epoch 1
      clock[0] += 100.0
      progress.epoch_ended(100.0)
  assert writer.logged[4]["train/loss"] == np.mean(losses)
  # ETA: 4 steps left at 1 s, and the 2 epochs left's evaluations at epoch 1's 100 s (training's 4 s alone were said).
  assert "ETA 3m24s" in caplog.text
  assert writer.logged[4]["train/lr"] == 0.01  # the last step's rate: the mean, 0.055, was no step's
  assert writer.logged[4]["train/img_per_s"] == (3 * 2 + 1) / 4.0  # the images trained, over the training time
  # A run stopping between windows (a signal, early stopping) logs the steps it trained since the last: they were lost.
  for step, loss in ((5, 1.0), (6, 3.0)):
    clock[0] += 1.0
    progress.add(step, {"loss": loss, "accuracy": 0.5, "lr": 0.01}, 2)
  assert 6 not in writer.logged
  progress.flush(6)
  assert writer.logged[6]["train/loss"] == 2.0
  progress.flush(6)  # nothing pending: nothing logged again
  assert sorted(writer.logged) == [4, 6]


def test_the_log_line_gives_the_loss_parts_unless_the_loss_is_its_one_part(caplog):
  """The loss's own metrics (DAN's three terms) reached TensorBoard only; the log line showed their sum."""
  class Quiet:
    def scalars(self, step, values):
      pass

    def add(self, step, metrics):
      pass

    def check(self):
      pass

  config = get_config("configs/dan.py:synthetic")
  config.log_every_steps = 1
  progress = train_log.ProgressLog(config, num_steps=2, steps_per_epoch=2, writer=Quiet(), guard=Quiet())
  with caplog.at_level(logging.INFO):
    progress.add(1, {"loss": 1.5, "accuracy": 0.5, "lr": 0.1, "grad_norm": 2.0, "ce_loss": 1.25,
                     "affinity_loss": 0.125, "partition_loss": 0.125}, config.batch_size)
    progress.add(2, {"loss": 1.5, "accuracy": 0.5, "lr": 0.1, "grad_norm": 2.0, "ce_loss": 1.5}, config.batch_size)
  lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("step ")]
  assert lines[0].startswith("step 1/2 epoch 0.50 loss 1.5000 (ce_loss 1.25, affinity_loss 0.125, partition_loss "
                             "0.125) accuracy 0.500 lr 0.1 | ")
  assert lines[1].startswith("step 2/2 epoch 1.00 loss 1.5000 accuracy 0.500 lr 0.1 | ")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_outside_the_training_steps_stops_with_exit_75_and_no_traceback(name):
  """Setting up, evaluating or reporting, where StopSignals does not hold the signals: a SIGINT gave
  a KeyboardInterrupt traceback (exit 130) and a SIGTERM killed the process (143)."""
  code = ("import os, signal, time\nfrom fer_jax import stopping\nwith stopping.exit_status_on_stop():\n"
          f"  os.kill(os.getpid(), signal.{name})\n  time.sleep(60)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert f"{name} received: stopped. The saved steps stand; run the same command to go on" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_signal_delivered_twice_at_once_is_one_and_a_later_one_exits_unsaved():
  """Slurm ending a job signals srun too, which passes SIGTERM on: each task got it twice within milliseconds, and the
  second exited at once, unsaved (os._exit). Run in a subprocess: that exit would end pytest's."""
  script = (
      "import os, signal, sys, time\n"
      "from fer_jax import stopping\n"
      "with stopping.StopSignals() as signals:\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  time.sleep(0.1)\n"
      "  print('one stop:', signals.received, flush=True)\n"
      "  time.sleep(stopping.SAME_SIGNAL_WITHIN_S + 0.1)\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(1)\n"
      "  print('not ended')\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cpu_devices_env(1), capture_output=True,
                          text=True, timeout=300)
  assert (result.returncode, result.stdout) == (128 + signal.SIGINT, "one stop: SIGTERM\n"), result.stderr[-2000:]


@pytest.mark.parametrize("gap_s", [0.002, 0.1])
def test_a_signal_delivered_twice_outside_the_steps_exits_75(gap_s):
  """The first SIGTERM outside the training steps ends the command (75) as the block closes, and the default handler
  it put back met Slurm's second SIGTERM: killed, 143 (srun's wrapper then cancelled the step as failed)."""
  child = ("import time\nfrom fer_jax import stopping\n"
           "with stopping.exit_status_on_stop():\n  print('ready', flush=True)\n  while True: time.sleep(0.001)\n")
  process = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, env=cpu_devices_env(1), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == "ready\n"
  process.send_signal(signal.SIGTERM)
  time.sleep(gap_s)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 75, stderr[-2000:]
  assert "SIGTERM received: stopped." in stderr


def test_on_several_processes_a_signal_while_setting_up_is_held_for_the_loop(monkeypatch, caplog):
  """Process 1 signalled while setting up left alone (exit 75) while process 0 waited for it in a collective: both
  sat 5 minutes in JAX's barriers, then aborted (exit 134). Held, it stops them together at the first agreed step."""
  monkeypatch.setattr(stopping.jax.distributed, "is_initialized", lambda: True)
  with caplog.at_level(logging.WARNING):
    with stopping.exit_status_on_stop():
      os.kill(os.getpid(), signal.SIGTERM)  # handled at once (the main thread, between bytecodes): no exception
      with stopping.StopSignals() as signals:
        assert signals.received == "SIGTERM"
  assert "SIGTERM received outside the training steps: held until every process of the run stops" in caplog.text
  assert getattr(signal.getsignal(signal.SIGTERM), "__wrapped__", None) is None  # the handler before, set back


class InMemoryCoordination:
  """The key-value store of jax.distributed's coordination service, for processes simulated one after another."""

  def __init__(self):
    self.store = {}

  def key_value_set(self, key, value):
    assert key not in self.store, f"{key} written twice"  # as the service refuses
    self.store[key] = value

  def key_value_dir_get(self, directory):
    return [(key, value) for key, value in self.store.items() if key.startswith(directory + "/")]

  def blocking_key_value_get(self, key, timeout_ms):
    del timeout_ms
    return self.store[key]


def test_processes_agree_to_stop_an_evaluation_at_the_point_after_process_0_sees_the_signal(monkeypatch):
  """A signal held on several processes outside the training steps was held to the end of an evaluation (its report
  written, exit 0). Process 1's signal, written after process 0 decided point 1, stops both at point 2; process 1
  writes it once."""
  monkeypatch.setattr(stopping, "_posted", [])
  coordination = InMemoryCoordination()
  decisions = [stopping.agreed_stop(None, 0, coordination, 0), stopping.agreed_stop(None, 1, coordination, 0),
               stopping.agreed_stop(None, 0, coordination, 1), stopping.agreed_stop("SIGTERM", 1, coordination, 1),
               stopping.agreed_stop(None, 0, coordination, 2), stopping.agreed_stop("SIGTERM", 1, coordination, 2)]
  assert decisions == ["", "", "", "", "SIGTERM on process 1", "SIGTERM on process 1"]
  assert stopping.agreed_stop("SIGINT", 0, coordination, 3) == "SIGINT on process 0"  # its own first


def test_a_stop_agreed_on_leaves_no_request_for_the_next_command_run_in_the_same_processes(monkeypatch):
  """Process 1's request stayed in the coordination service after every process stopped for it: the next command run
  in these processes (a notebook, a test calling main twice) stopped at its first batch unsignalled, and a new
  signal of process 1 could not be written (the service refuses a key written twice)."""
  monkeypatch.setattr(stopping, "_posted", [])
  monkeypatch.setattr(stopping, "_stops", [], raising=False)
  coordination = InMemoryCoordination()
  decisions = [stopping.agreed_stop(None, 0, coordination, 0), stopping.agreed_stop("SIGTERM", 1, coordination, 0),
               stopping.agreed_stop(None, 0, coordination, 1), stopping.agreed_stop("SIGTERM", 1, coordination, 1)]
  assert decisions == ["", "", "SIGTERM on process 1", "SIGTERM on process 1"]
  with pytest.raises(SystemExit), stopping.exit_status_on_stop():
    raise stopping.StoppedOutsideSteps(decisions[-1])
  decisions = [stopping.agreed_stop(None, 0, coordination, 2), stopping.agreed_stop("SIGINT", 1, coordination, 2),
               stopping.agreed_stop(None, 0, coordination, 3), stopping.agreed_stop("SIGINT", 1, coordination, 3)]
  assert decisions == ["", "", "SIGINT on process 1", "SIGINT on process 1"]


def test_an_evaluation_agrees_on_stopping_outside_the_training_steps_only(monkeypatch):
  """Inside the training steps StopSignals holds the signals (they stop at an agreed step); on one process the
  handler raised already. Neither exchanges anything."""
  monkeypatch.setattr(stopping, "agreed_stop", lambda *args: pytest.fail("agreed inside the steps"))
  stopping.stop_if_agreed()  # one process
  monkeypatch.setattr(stopping.jax.distributed, "is_initialized", lambda: True)
  with stopping.exit_status_on_stop(), stopping.StopSignals():
    stopping.stop_if_agreed()
  monkeypatch.setattr(stopping, "agreed_stop", lambda *args: "SIGTERM on process 1")
  monkeypatch.setattr(stopping.distributed, "coordination_client", lambda: None)
  with pytest.raises(SystemExit) as stopped, stopping.exit_status_on_stop():
    stopping.stop_if_agreed()
  assert stopped.value.code == stopping.PREEMPTED_EXIT_STATUS


def test_a_signal_whose_exception_python_swallowed_still_stops_the_loop(caplog):
  """A SIGINT arriving inside JAX's garbage-collection callback raised there; Python printed "Exception ignored"
  and the command went on as if never signalled (about one export in 20)."""
  with stopping.exit_status_on_stop():
    with pytest.raises(stopping.StoppedOutsideSteps):  # what Python swallows inside a garbage-collection callback
      stopping._stop_outside_steps(signal.SIGINT, None)  # pylint: disable=protected-access
    with stopping.StopSignals() as signals:
      assert signals.received == "SIGINT"
  with caplog.at_level(logging.WARNING):
    with stopping.exit_status_on_stop():
      with pytest.raises(stopping.StoppedOutsideSteps):
        stopping._stop_outside_steps(signal.SIGTERM, None)  # pylint: disable=protected-access
  assert "The SIGTERM held was not acted on: the command had finished what it was doing." in caplog.text


def test_a_signal_while_a_log_line_is_written_stops_the_command():
  """logging's handlers catch every Exception while they write a line: a signal arriving then printed "--- Logging
  error ---" and the run set up, trained and saved a step before stopping (or wrote its whole report, exit 0)."""

  class SignalledWhileWriting(logging.Handler):
    def emit(self, record):
      try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here, inside emit
      except Exception:  # pylint: disable=broad-except  (as logging.StreamHandler.emit does)
        self.handleError(record)

  handler = SignalledWhileWriting()
  logger = logging.getLogger("fer_jax_signal_test")
  logger.addHandler(handler)
  try:
    with pytest.raises(SystemExit) as stopped, stopping.exit_status_on_stop():
      logger.warning("a line")
      pytest.fail("the command went on after the signal")
  finally:
    logger.removeHandler(handler)
  assert stopped.value.code == stopping.PREEMPTED_EXIT_STATUS


@pytest.mark.parametrize("around", ["read", "save"])
def test_a_signal_while_a_checkpoint_is_read_or_saved_stops_once_it_is_done(around, tmp_path, caplog):
  """Orbax reads and writes in an event loop on the main thread. The handler's exception raised there surfaced as
  "Cannot read the checkpoint … (SIGTERM): it is damaged or incomplete; delete …" (exit 2, telling the user to
  delete a good step), or was printed and lost in one of the loop's callbacks (exit 0)."""
  async def checkpoint_io():
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.01)
    return "done"

  done = []
  errors_of = {"read": lambda: checkpointing.read_errors("the checkpoint X", "delete X"),
               "save": lambda: checkpointing.save_errors(checkpointing.manager(str(tmp_path)))}[around]
  with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as stopped:
    with stopping.exit_status_on_stop():
      with errors_of():
        done.append(asyncio.run(checkpoint_io()))
  assert stopped.value.code == stopping.PREEMPTED_EXIT_STATUS and done == ["done"]
  assert "SIGTERM received: stopping once the checkpoint being read or written is complete" in caplog.text


def test_a_collective_failed_for_a_lost_process_ends_with_one_line_and_75(monkeypatch):
  """The survivor of a process killed mid-run printed a JaxRuntimeError traceback ("Gloo AllGather failed …
  Connection reset by peer"), then waited 76 s in JAX's shutdown barrier and aborted (exit 134)."""
  lost = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset by "
                                    "peer\nmore")
  assert stopping.lost_peer_message(lost) is None  # one process: no other to lose
  monkeypatch.setattr(stopping.jax.distributed, "is_initialized", lambda: True)
  assert stopping.lost_peer_message(lost) == (
      "A collective with the other processes of the run failed (UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read "
      "error: Connection reset by peer): another process stopped or died. The steps saved stand: start every process "
      "again with the same command to go on from the newest.")
  assert stopping.lost_peer_message(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory")) is None
  assert stopping.lost_peer_message(RuntimeError("Connection reset by peer")) is None


def test_processes_exchange_their_stop_signals_only_after_logged_or_saved_steps(monkeypatch):
  """TrainingRun.stop_signal: one process stops after the step its signal arrived in, exchanging
  nothing; several exchange their signals only after the steps logged (every 4 here) or saved (every
  6, and the last), with no collective in the steps between, and all stop at the first such step
  after any process's signal."""
  config = get_config("configs/dan.py:synthetic")
  config.log_every_steps, config.checkpoint_every_steps = 4, 6
  run = train.TrainingRun.__new__(train.TrainingRun)  # only what stop_signal reads
  run.config, run.steps_per_epoch, run.num_steps = config, 5, 10
  run.progress = train_log.ProgressLog(config, num_steps=10, steps_per_epoch=5, writer=None, guard=None)
  signals, exchanged, other = stopping.StopSignals(), [], [0]

  def allgather(number):
    exchanged.append(run.step)
    return np.array([number, other[0]])  # this process's signal number and process 1's

  def stop_signal(step, received=None):
    run.step, signals.received = step, received
    return run.stop_signal(signals)

  monkeypatch.setattr(stopping.multihost_utils, "process_allgather", allgather)
  assert [stop_signal(step) for step in range(1, 11)] == [None] * 10
  assert stop_signal(3, "SIGTERM") == "SIGTERM" and not exchanged
  monkeypatch.setattr(train.jax, "process_count", lambda: 2)
  assert [stop_signal(step) for step in range(1, 11)] == [None] * 10
  assert exchanged == [4, 6, 8, 10]
  assert [stop_signal(step, "SIGINT") for step in (1, 2, 3, 4)] == [None, None, None, "SIGINT"]
  other[0] = signal.SIGTERM  # process 1 received one, this one none
  assert [stop_signal(step) for step in (5, 6)] == [None, "SIGTERM on process 1"]
  assert exchanged == [4, 6, 8, 10, 4, 6]


def test_importing_training_loads_no_inference_stack():
  """The report's figures come from fer_jax.figures: training loads none of predict, the API, export or
  face detection (the review counted 33 fer_jax modules, the inference stack among them)."""
  code = "import sys, fer_jax.train; print(' '.join(name for name in sys.modules if name.startswith('fer_jax')))"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  loaded = set(result.stdout.split())
  assert "fer_jax.figures" in loaded
  assert not loaded & {"fer_jax.predict", "fer_jax.api", "fer_jax.inference", "fer_jax.export", "fer_jax.onnx_export",
                       "fer_jax.visualize", "fer_jax.face"}


@pytest.mark.integration
def test_selecting_on_an_evaluator_skipped_for_its_missing_split_is_refused(tmp_path):
  """The evaluator was dropped with a warning and selection, early stopping and restore_best silently did nothing."""
  config = _tiny_dan()
  config.evals = {"occluded": config_lib.evaluator(split="test_occlusion", skip_if_missing=True, every_epochs=1)}
  config.update(select_on="occluded", select_metric="accuracy", early_stopping_patience=1)
  with pytest.raises(UserError, match=r"^config.select_on='occluded' names an evaluator skipped for its missing split"):
    train.TrainingRun(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


class _Head(nn.Module):
  """A method's module as an author might get it wrong (`mistake`)."""
  mistake: str = ""

  @nn.compact
  def __call__(self, images, train: bool = False):
    logits = nn.Dense(9 if self.mistake == "nine_logits" else 7)(jnp.mean(images, axis=(1, 2)))
    if self.mistake == "bfloat16":
      logits = logits.astype(jnp.bfloat16)
    if self.mistake == "own_collection":
      self.variable("stats", "count", lambda: jnp.zeros(()))
    if self.mistake == "own_random_stream" and train:
      logits = logits + jax.random.normal(self.make_rng("noise"), logits.shape)
    if self.mistake == "array":
      return logits
    return {"scores" if self.mistake == "no_logits" else "logits": logits}


class _HeadTakingTraining(nn.Module):
  @nn.compact
  def __call__(self, images, training: bool = False):
    return {"logits": nn.Dense(7)(jnp.mean(images, axis=(1, 2)))}


def _per_example_loss(outputs, labels, loss_config):
  del loss_config
  losses = -jax.nn.log_softmax(outputs["logits"])[jnp.arange(labels.shape[0]), labels]
  return losses, {}


@pytest.mark.parametrize("module, loss, message", [
    (_Head("nine_logits"), models.cross_entropy_loss, r"its \"logits\" for a batch of 2 have shape \(2, 9\), not \(2, 7\)"),
    (_Head("array"), models.cross_entropy_loss, r"its module returns an array, not a dict with \"logits\""),
    (_Head("bfloat16"), models.cross_entropy_loss,
     r"its \"logits\" are bfloat16: softmax and losses would round in it"),
    (_Head("own_collection"), models.cross_entropy_loss, r"its module keeps variables of another collection than "
     r"\"params\" and \"batch_stats\", the two a method's variables may be in \(Tried to access \"count\" from "
     r"collection \"stats\" in \"/\" but the collection is empty\.\)"),
    (_Head("no_logits"), models.cross_entropy_loss, r"its module returns a dict of 'scores', not a dict with \"logits\""),
    (_Head("own_random_stream"), models.cross_entropy_loss, r"its module asks for a random stream the train step does "
     r"not give: \"dropout\" is the one stream \(self.make_rng\(\"dropout\"\), nn.Dropout\) \(.*\"noise\""),
    (_Head(), lambda outputs, labels, loss_config: (loss_config.aux_weight * jnp.zeros(()), {}),
     r"its loss reads config.loss.aux_weight, which the config does not set: set it in the config file \(and name it "
     r"in the Method's loss_keys\)\.$"),
    (_HeadTakingTraining(), models.cross_entropy_loss, r"its module, called as model.apply\(variables, images, train=True\), raised TypeError: .*unexpected keyword "
     r"argument 'train'"),
    (_Head(), _per_example_loss, r"its loss has shape \(2,\), not \(\) : reduce it over the batch"),
    (_Head(), lambda outputs, labels, loss_config: models.cross_entropy(outputs["logits"], labels),
     r"its loss returns an array, not a pair \(scalar loss, \{name: scalar metric\}\)"),
    (_Head(), lambda outputs, labels: models.cross_entropy_loss(outputs, labels, None),
     r"its loss, called as loss\(outputs, labels, loss_config\), raised TypeError: .*takes 2 positional arguments but "
     r"3 were given"),
    (_Head(), lambda outputs, labels, loss_config: (jnp.zeros(()), [jnp.zeros(())]), r"its loss returns tuple, not a pair"),
    (_Head(), lambda outputs, labels, loss_config: (jnp.zeros(()), {"loss": jnp.zeros(()), "accuracy": jnp.ones(())}),
     r"its loss's metrics 'accuracy', 'loss' take names the train step logs \(loss, accuracy, lr, grad_norm, "
     r"img_per_s\), whose values they would replace: rename them"),
])
def test_a_method_breaking_its_contract_is_named_before_any_step(module, loss, message):
  """An author's module with 9 logits for 7 classes trained a whole epoch and failed at the evaluation (5 logits: a
  NaN loss blamed on the learning rate); the other mistakes gave JAX tracebacks after the data was read and the step
  compiled."""
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.model.name = "my_methods.head"
  method = models.Method(build=lambda model_config: module, loss=loss)
  # The module's own variables (init calls it with train=False, which _HeadTakingTraining refuses: _Head's then).
  variables = models.abstract_variables(_Head() if isinstance(module, _HeadTakingTraining) else module, config)
  with pytest.raises(ConfigError, match=r"^Method 'my_methods.head' does not keep the Method contract \(docs/extending"
                                        r".md, 'A method of yours'\): " + message):
    models.check_contract(method, module, variables, config.loss, config)
  variables = models.abstract_variables(_Head(), config)
  models.check_contract(models.Method(build=lambda model_config: _Head()), _Head(), variables, config.loss, config)


def test_a_module_that_takes_no_train_argument_is_named_before_its_initialisation():
  """Its first initialisation (before the contract's check) ended in Flax's TypeError, with a traceback, exit 1."""
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.model.name = "my_methods.head"
  with pytest.raises(ConfigError, match=r"^Method 'my_methods.head' does not keep the Method contract \(docs/extending"
                                        r".md, 'A method of yours'\): its module is called as module\(images, "
                                        r"train=...\), which its __call__\(images, training: bool = False\) cannot "
                                        r"take \(got an unexpected keyword argument 'train'\)\.$"):
    models.abstract_variables(_HeadTakingTraining(), config)



def test_provenance_names_the_commit_the_code_runs_from_and_the_releases():
  """A report or checkpoint gave no way to tell which code made it."""
  software = provenance.software()
  if os.path.exists(os.path.join(ROOT, ".git")):
    expected = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
  else:  # an installed copy: no commit to name
    expected = None
  assert software["git_commit"] == expected
  assert software["fer_jax"] == importlib.metadata.version("fer_jax") and software["jax"] == jax.__version__
  assert provenance.record()["devices"] == jax.device_count()


def test_provenance_names_no_commit_outside_a_checkout_or_where_git_hangs(tmp_path, monkeypatch):
  """An installed copy (no .git), or a git that does not answer, gives None: never a commit of another folder, never
  a run held."""
  monkeypatch.setattr(provenance, "ROOT", str(tmp_path))
  assert provenance._git() == {"git_commit": None, "git_modified": None}  # pylint: disable=protected-access
  (tmp_path / ".git").mkdir()
  def hanging(*args, **kwargs):
    raise subprocess.TimeoutExpired(args[0], 10)
  monkeypatch.setattr(provenance.subprocess, "run", hanging)
  assert provenance._git() == {"git_commit": None, "git_modified": None}  # pylint: disable=protected-access


def test_the_evaluation_history_of_a_resumed_run_keeps_its_whole_lines_up_to_the_resumed_step(tmp_path):
  """A line cut short by a kill, or a kept line without its newline, would run into the next line written."""
  (tmp_path / "eval_history.jsonl").write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"st')
  history = train_log.EvalHistory(str(tmp_path), 10)
  history.add(15, 3, {"evaluator": "eval", "accuracy": 0.5}, 1.0)
  lines = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
  assert [(line["step"], line.get("accuracy")) for line in lines] == [(5, None), (10, None), (15, 0.5)]
  (tmp_path / "eval_history.jsonl").write_text('{"step": 5}')  # whole, but its newline lost
  train_log.EvalHistory(str(tmp_path), 10).add(10, 2, {"evaluator": "eval"}, 1.0)
  assert [json.loads(line)["step"] for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()] == [5, 10]


def test_a_tensorboard_write_that_fails_names_the_workdir_and_closes_the_writer(tmp_path, monkeypatch):
  """A full disk at the first scalars printed "No space left on device" alone (tensorboardX's OSError has no file),
  and its threads and exit hook printed it again, each with a traceback."""
  writer = train_log.Writer(str(tmp_path))
  closed = []
  monkeypatch.setattr(writer._writer, "flush", lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
  monkeypatch.setattr(writer._writer, "close", lambda: closed.append(True))
  with pytest.raises(OSError) as failed:
    writer.scalars(1, {"loss": 1.0})
  assert cli.describe(failed.value) == (f"No space left: {tmp_path} (the disk is full: free space or choose another "
                                        "location).")
  assert closed == [True]
  writer.scalars(2, {"loss": 1.0})  # closed: nothing more is written, nothing raised


def test_a_method_breaking_its_contract_is_named_before_the_data_is_read(tmp_path, monkeypatch):
  """The check ran once the training split was decoded and every evaluator's split opened: minutes on a large set."""
  config = short_tiny_net_run()
  config.dataset.update(name="rafdb", data_dir=str(tmp_path / "not_prepared"))  # read after the check: else it stops
  monkeypatch.setattr(models, "get_method", lambda name: models.Method(build=lambda model_config: _Head("nine_logits")))
  with pytest.raises(ConfigError, match=r"does not keep the Method contract .*: its \"logits\" for a batch of 2 have "
                                        r"shape \(2, 9\), not \(2, 7\)"):
    train.TrainingRun(config, str(tmp_path / "run"))


@pytest.mark.parametrize("loss", [lambda outputs, labels, loss_config: (outputs["features"].sum(), {}),
                                  lambda outputs, labels, loss_config: (outputs.logits.sum(), {})],
                         ids=["key", "attribute"])
def test_a_loss_s_own_bug_is_not_taken_for_a_missing_config_key(loss):
  """A KeyError or AttributeError of the loss's own (an output the module does not return, a typo) was reported as
  "its loss reads config.loss.features, which the config does not set"."""
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  method = models.Method(build=lambda model_config: _Head(), loss=loss)
  with pytest.raises((KeyError, AttributeError)):
    models.check_contract(method, _Head(), models.abstract_variables(_Head(), config), config.loss, config)


def test_a_method_is_made_with_keywords_only():
  with pytest.raises(TypeError, match="positional"):
    models.Method(lambda model_config: _Head(), models.cross_entropy_loss, ("aux_weight",))  # pylint: disable=E1121
