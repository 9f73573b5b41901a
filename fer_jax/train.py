"""The training loop: data-parallel jit over a device mesh, Orbax resume, eval and reports."""

import os
import signal
import threading
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import checkpointing
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import validation
from fer_jax.data import pipeline


def create_state(model, tx, config, mesh) -> dict:
  """{step, params, batch_stats, opt_state}, born replicated on the mesh."""
  def init():
    variables = models.init_variables(model, config, jax.random.key(config.seed))
    return {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": tx.init(variables["params"])}
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


MODEL_MODES = ("train", "inference")


def model_mode(config, step: int, steps_per_epoch: int) -> str:
  """The model's mode for training step `step` (1-based): "inference" from epoch
  `config.inference_mode_from_epoch` on (1-based; 0 = never), else "train"."""
  epoch = (step - 1) // steps_per_epoch + 1
  start = config.inference_mode_from_epoch
  return "inference" if start and epoch >= start else "train"


def make_train_step(model, loss_fn, loss_config, tx, schedule, mesh, seed: int, augment=None,
                    model_mode: str = "train"):
  """jit(state, batch) → (state, metrics). With `augment` (uint8 images, positions → model inputs,
  e.g. `TrainData.augment`), the batch holds uint8 images and their positions, augmented inside
  the step; without it, the images are model inputs already. `model_mode="inference"` computes
  the gradient with the model in inference mode (BatchNorm on its running statistics, which stay
  as they are; no dropout), as PyTorch does after `model.eval()`."""
  if model_mode not in MODEL_MODES:
    raise ValueError(f"Unknown model mode {model_mode!r}; valid: {', '.join(MODEL_MODES)}.")
  train = model_mode == "train"

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    images = batch["image"] if augment is None else augment(batch["image"], batch["position"])

    def objective(params):
      outputs, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                     train=train, rngs={"dropout": rng}, mutable=["batch_stats"])
      loss, parts = loss_fn(outputs, batch["label"], loss_config)
      return loss, (outputs["logits"], updates.get("batch_stats", state["batch_stats"]), parts)

    (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"], dtype=logits.dtype)
    return new_state, {"loss": loss, "accuracy": accuracy, "lr": schedule(state["step"]),
                       "grad_norm": optax.tree_utils.tree_norm(grads), **parts}

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                 out_shardings=(replicated, replicated), donate_argnums=0)


class Writer:
  """TensorBoard scalars (tensorboardX, no TensorFlow needed) from process 0."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(workdir)

  def scalars(self, step: int, values: dict) -> None:
    if self._writer:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
      self._writer.flush()

  def close(self):
    if self._writer:
      self._writer.close()


def _format_eta(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def load_initial_variables(state: dict, config, model, mesh) -> dict:
  fresh = ({"params": jax.device_get(state["params"]), "batch_stats": jax.device_get(state["batch_stats"])}
           if config.init_from_missing else None)
  variables = checkpointing.restore_model(config.init_from, models.abstract_variables(model, config),
                                          fresh, config.init_from_missing)
  logging.info("Initialised params and batch_stats from %s", config.init_from)
  return {**state, **jax.device_put(variables, NamedSharding(mesh, P()))}


class Evaluator:
  """Eval data per split and a jitted step per (split, TTA), built once and reused every epoch."""

  def __init__(self, model, config, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    self._data, self._steps = {}, {}

  def data(self, split: str) -> pipeline.EvalData:
    if split not in self._data:
      self._data[split] = pipeline.EvalData(self.config, self.mesh, split)
    return self._data[split]

  def __call__(self, variables, split: str, tta_name: str = "none") -> dict:
    eval_data = self.data(split)
    if (split, tta_name) not in self._steps:
      self._steps[split, tta_name] = evaluate.confusion_step(self.model, self.config.model.num_classes, self.mesh,
                                                             tta_name, eval_data.preprocess)
    confusion = evaluate.confusion_matrix(self._steps[split, tta_name], variables, eval_data)
    results = evaluate.metrics(confusion, eval_data.split.class_names)
    return {**results, "split": split, "dataset": self.config.dataset.name, "model": self.config.model.name}


def final_report(evaluator: Evaluator, variables, workdir: str, step: int, plain: dict | None = None) -> dict:
  """Evaluates the report split (test_split, else eval_split), single pass and, if configured, with TTA."""
  config = evaluator.config
  split = config.dataset.test_split or config.dataset.eval_split
  results = plain or evaluator(variables, split)
  results["step"] = step
  if config.eval.tta != "none":
    with_tta = evaluator(variables, split, config.eval.tta)
    results["tta"] = {"name": config.eval.tta, **{k: with_tta[k] for k in (
        "accuracy", "mean_class_accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix")}}
  evaluate.write_report(results, workdir)
  logging.info("%s %s: accuracy %.4f, mean-class accuracy %.4f over %d examples%s", config.dataset.name, split,
               results["accuracy"], results["mean_class_accuracy"], results["num_examples"],
               f"; with {config.eval.tta} TTA: accuracy {results['tta']['accuracy']:.4f}" if "tta" in results else "")
  return results


class Selection:
  """Best epoch on eval_split by `config.select_metric`, kept in workdir/best; early stopping.

  The metric is compared rounded to `config.select_decimals` (0 = unrounded); on a tie the
  earlier epoch stays best unless `config.select_ties == "latest"`."""

  def __init__(self, config, workdir: str):
    self.metric = config.select_metric
    self.patience = config.early_stopping_patience
    self.decimals, self.later_ties_win = config.select_decimals, config.select_ties == "latest"
    self.best_value, self.best_epoch = -1.0, 0
    self.checkpoints = None
    if self.metric:
      self.checkpoints = checkpointing.manager(os.path.join(workdir, "best"), max_to_keep=1)
      if self.checkpoints.latest_step() is not None:
        record = self.checkpoints.restore(self.checkpoints.latest_step(),
                                          args=ocp.args.Composite(selection=ocp.args.JsonRestore()))["selection"]
        self.best_value, self.best_epoch = record["value"], record["epoch"]

  def update(self, epoch: int, step: int, results: dict, variables: dict, config) -> bool:
    """Records an evaluation; returns True when training should stop early."""
    if not self.metric:
      return False
    value = round(results[self.metric], self.decimals) if self.decimals else results[self.metric]
    if value > self.best_value or (self.later_ties_win and value == self.best_value):
      self.best_value, self.best_epoch = value, epoch
      with checkpointing.save_errors(self.checkpoints):
        self.checkpoints.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(checkpointing.metadata(config)),
            selection=ocp.args.JsonSave({"value": self.best_value, "epoch": epoch, "metric": self.metric})))
      logging.info("New best %s %.4f at epoch %d", self.metric, self.best_value, epoch)
    return bool(self.patience) and epoch - self.best_epoch >= self.patience

  def wait_until_finished(self) -> None:
    if self.checkpoints:
      checkpointing.wait_until_saved(self.checkpoints)

  def best_variables(self, abstract: dict) -> dict:
    self.wait_until_finished()
    return checkpointing.restore_model(os.path.join(self.checkpoints.directory, str(self.checkpoints.latest_step())),
                                       abstract)


def loss_config_for(config, train_split: pipeline.Split) -> ml_collections.ConfigDict:
  """config.loss; a loss that takes `class_counts` but was given none gets the training split's."""
  loss_config = config.loss.copy_and_resolve_references()
  if "class_counts" in loss_config and not loss_config.class_counts:
    counts = np.bincount(train_split.labels[train_split.indices], minlength=len(train_split.class_names))
    loss_config.class_counts = tuple(int(c) for c in counts)
    logging.info("Class counts of the training split (%s): %s", ", ".join(train_split.class_names),
                 loss_config.class_counts)
  return loss_config


PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL: the run saved its step; the same command resumes it


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the current step was saved."""


class NonFiniteError(RuntimeError):
  """A loss or gradient norm was NaN or Inf; nothing from that step on was evaluated or saved."""


class StopSignals:
  """The first SIGTERM/SIGINT asks the loop to save and stop; a second one exits at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received:
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    logging.warning("%s received: saving the current step, then stopping (send it again to exit at once).",
                    self.received)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


class FiniteGuard:
  """Stops the run at the first step whose loss or gradient norm is not finite, before any
  evaluation or save can see its parameters."""

  def __init__(self, checkpoints, steps_per_epoch: int):
    self.checkpoints, self.steps_per_epoch = checkpoints, steps_per_epoch
    self._unchecked = []

  def add(self, step: int, metrics: dict) -> None:
    self._unchecked.append((step, metrics))

  def check(self) -> None:
    values = jax.device_get([metrics for _, metrics in self._unchecked])
    for (step, _), metrics in zip(self._unchecked, values):
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
        checkpointing.wait_until_saved(self.checkpoints)
        last = self.checkpoints.latest_step()
        parts = ", ".join(f"{name} {float(value):.4g}" for name, value in metrics.items() if name != "lr")
        raise NonFiniteError(
            f"Non-finite training values at step {step} (epoch {step / self.steps_per_epoch:.2f}): {parts}. "
            "Nothing from that step on was saved; the last good checkpoint is "
            f"{os.path.join(self.checkpoints.directory, str(last)) if last is not None else 'none (no step saved yet)'}. "
            "Lower --config.optimizer.lr or set --config.optimizer.grad_clip_norm, then start the command again "
            "(it resumes from that checkpoint).")
    self._unchecked = []


class ProgressLog:
  """Mean loss, accuracy and learning rate, img/s and ETA every `log_every_steps`, to the log and
  TensorBoard; each logged window is first checked for non-finite values."""

  def __init__(self, config, num_steps: int, steps_per_epoch: int, writer: Writer, guard: FiniteGuard):
    self.config, self.num_steps, self.steps_per_epoch = config, num_steps, steps_per_epoch
    self.writer, self.guard = writer, guard
    self.restart_clock()

  def restart_clock(self) -> None:
    """Starts a new timing window (after an evaluation, whose time is not training time)."""
    self._start, self._pending = time.perf_counter(), []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append(metrics)
    self.guard.add(step, metrics)
    if step % self.config.log_every_steps == 0 or step == self.num_steps:
      self.guard.check()
      means = {k: float(np.mean([m[k] for m in jax.device_get(self._pending)])) for k in self._pending[0]}
      elapsed = time.perf_counter() - self._start
      images_per_second = len(self._pending) * self.config.batch_size / elapsed
      logging.info("step %d/%d epoch %.2f loss %.4f accuracy %.3f lr %.3g | %.1f img/s ETA %s", step, self.num_steps,
                   step / self.steps_per_epoch, means["loss"], means["accuracy"], means["lr"], images_per_second,
                   _format_eta((self.num_steps - step) * elapsed / len(self._pending)))
      self.writer.scalars(step, {f"train/{k}": v for k, v in means.items()} | {"train/img_per_s": images_per_second})
      self.restart_clock()


class TrainingRun:
  """One run in `workdir`: set up (or resumed) once, then driven step by step by `train_and_evaluate`."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.checkpoints = checkpointing.manager(os.path.join(workdir, "checkpoints"), config.max_checkpoints)
    self.start_step = self.checkpoints.latest_step() or 0
    validation.validate(config, training=True, new_run=not self.start_step)
    self.mesh = mesh_lib.make_mesh()
    method = models.get_method(config.model.name)
    self.model = method.build(config.model)
    self.data = pipeline.TrainData(config, self.mesh)
    self.evaluator = Evaluator(self.model, config, self.mesh)
    for split in {config.dataset.eval_split, config.dataset.test_split} - {""}:
      self.evaluator.data(split)  # fail now, not after training
    self.steps_per_epoch, self.num_steps = self.data.steps_per_epoch, self.data.num_steps
    self.abstract = models.abstract_variables(self.model, config)
    tx = optim.make_optimizer(config.optimizer, self.steps_per_epoch, config.num_epochs, self.abstract["params"])
    schedule = optim.lr_schedule(config.optimizer, self.steps_per_epoch, config.num_epochs)
    self.state = self._restore_or_initialise(create_state(self.model, tx, config, self.mesh))
    self.selection = Selection(config, workdir)
    loss_config = loss_config_for(config, self.data.split)
    self.train_steps = {mode: make_train_step(self.model, method.loss, loss_config, tx, schedule, self.mesh,
                                              config.seed, self.data.augment, mode) for mode in MODEL_MODES}
    self.writer = Writer(workdir)
    self.guard = FiniteGuard(self.checkpoints, self.steps_per_epoch)
    self.progress = ProgressLog(config, self.num_steps, self.steps_per_epoch, self.writer, self.guard)
    self.step, self.last_eval = self.start_step, None
    logging.info("Training %s on %s: %d steps (%d per epoch), global batch %d, %d devices", config.model.name,
                 config.dataset.name, self.num_steps, self.steps_per_epoch, config.batch_size, self.mesh.devices.size)

  def _restore_or_initialise(self, state: dict) -> dict:
    if self.start_step:
      state = checkpointing.restore_state(self.checkpoints, self.start_step, state)
      logging.info("Resumed from step %d in %s", self.start_step, self.workdir)
      return state
    if self.config.init_from:
      return load_initial_variables(state, self.config, self.model, self.mesh)
    return state

  @property
  def variables(self) -> dict:
    return {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}

  def remaining_batches(self):
    """(step, batch) from the step after the newest checkpoint; none if early stopping already ended the run."""
    patience = self.selection.patience
    if self.start_step and patience and self.start_step // self.steps_per_epoch - self.selection.best_epoch >= patience:
      return iter(())
    return enumerate(self.data.batches(self.start_step), start=self.start_step + 1)

  def train(self, step: int, batch: dict) -> None:
    """One step, in the model mode of its epoch (each mode's step is compiled once)."""
    mode = model_mode(self.config, step, self.steps_per_epoch)
    self.state, metrics = self.train_steps[mode](self.state, batch)
    self.step = step
    self.progress.add(step, metrics)

  def evaluate_and_select(self) -> bool:
    """At the end of an evaluated epoch: evaluates eval_split and updates the selection; returns
    True when early stopping ends training."""
    epoch, epoch_end = divmod(self.step, self.steps_per_epoch)[0], self.step % self.steps_per_epoch == 0
    self.last_eval = None
    if not epoch_end or (epoch % self.config.eval.every_epochs and self.step != self.num_steps):
      return False
    self.guard.check()
    split = self.config.dataset.eval_split
    self.last_eval = self.evaluator(self.variables, split)
    logging.info("epoch %d %s: accuracy %.4f mean-class %.4f", epoch, split, self.last_eval["accuracy"],
                 self.last_eval["mean_class_accuracy"])
    self.writer.scalars(self.step, {f"eval/{k}": self.last_eval[k] for k in ("accuracy", "mean_class_accuracy")})
    stop = self.selection.update(epoch, self.step, self.last_eval, self.variables, self.config)
    if stop:
      logging.info("Early stopping at epoch %d: no gain in %s for %d epochs", epoch, self.selection.metric,
                   self.selection.patience)
    self.progress.restart_clock()
    return stop

  def checkpoint(self, force: bool = False) -> None:
    """Saves the step when due (every checkpoint_every_steps, else every epoch, and the last one) or forced."""
    every = self.config.checkpoint_every_steps or self.steps_per_epoch
    if force or self.step % every == 0 or self.step == self.num_steps:
      self.guard.check()
      checkpointing.save(self.checkpoints, self.step, self.state, self.config)

  def stop_for(self, signal_name: str) -> None:
    """After a forced checkpoint: waits for every save, then raises Preempted."""
    checkpointing.wait_until_saved(self.checkpoints)
    self.selection.wait_until_finished()
    logging.warning("Saved step %d (epoch %.2f) in %s after %s; start the same command again to resume.",
                    self.step, self.step / self.steps_per_epoch, self.checkpoints.directory, signal_name)
    raise Preempted(self.step)

  def report(self) -> dict:
    """The final report on test_split (else eval_split), with the best epoch's weights if configured."""
    checkpointing.wait_until_saved(self.checkpoints)
    self.selection.wait_until_finished()
    variables, reusable = self.variables, self.last_eval
    if self.config.restore_best and self.selection.metric and self.selection.checkpoints.latest_step() is not None:
      variables = jax.device_put(self.selection.best_variables(self.abstract), NamedSharding(self.mesh, P()))
      logging.info("Reporting the best epoch (%d, %s %.4f)", self.selection.best_epoch, self.selection.metric,
                   self.selection.best_value)
      reusable = None
    if self.config.dataset.test_split not in ("", self.config.dataset.eval_split):
      reusable = None
    results = final_report(self.evaluator, variables, self.workdir, self.step, reusable)
    self.writer.scalars(self.step, {f"test/{k}": results[k] for k in ("accuracy", "mean_class_accuracy")})
    self.writer.close()
    return results


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and writes the eval report."""
  run = TrainingRun(config, workdir)
  with StopSignals() as signals:
    for step, batch in run.remaining_batches():
      run.train(step, batch)
      stop = run.evaluate_and_select()
      run.checkpoint(force=stop or bool(signals.received))
      if signals.received:
        run.stop_for(signals.received)
      if stop:
        break
  return run.report()


def evaluate_checkpoint(config, checkpoint: str, workdir: str) -> dict:
  """`--mode=eval`: evaluates a saved or converted checkpoint and writes the report."""
  validation.validate(config, training=False)
  mesh = mesh_lib.make_mesh()
  model = models.build_model(config)
  variables = models.load_trained_variables(config, model, checkpoint)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  return final_report(Evaluator(model, config, mesh), variables, workdir, step=-1)
