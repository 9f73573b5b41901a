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
from fer_jax import config_lib
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax.data import pipeline


def create_state(model, tx, config, mesh) -> dict:
  """{step, params, batch_stats, opt_state}, born replicated on the mesh."""
  def init():
    variables = models.init_variables(model, config, jax.random.key(config.seed))
    return {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": tx.init(variables["params"])}
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def make_train_step(model, loss_fn, loss_config, tx, schedule, mesh, seed: int, augment=None):
  """jit(state, batch) → (state, metrics). With `augment` (uint8 images, positions → model inputs,
  e.g. `TrainData.augment`), the batch holds uint8 images and their positions, augmented inside
  the step; without it, the images are model inputs already."""
  def step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    images = batch["image"] if augment is None else augment(batch["image"], batch["position"])

    def objective(params):
      outputs, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                     train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
      loss, parts = loss_fn(outputs, batch["label"], loss_config)
      return loss, (outputs["logits"], updates.get("batch_stats", {}), parts)

    (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
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
  """Best epoch on eval_split by `config.select_metric`, kept in workdir/best; early stopping."""

  def __init__(self, config, workdir: str):
    self.metric = config.select_metric
    self.patience = config.early_stopping_patience
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
    if results[self.metric] > self.best_value:
      self.best_value, self.best_epoch = results[self.metric], epoch
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and writes the eval report."""
  checkpoints = checkpointing.manager(os.path.join(workdir, "checkpoints"), config.max_checkpoints)
  start_step = checkpoints.latest_step() or 0
  config_lib.validate(config, training=True, new_run=not start_step)
  mesh = mesh_lib.make_mesh()
  method = models.get_method(config.model.name)
  model = method.build(config.model)
  train_data = pipeline.TrainData(config, mesh)
  evaluator = Evaluator(model, config, mesh)
  for split in {config.dataset.eval_split, config.dataset.test_split} - {""}:
    evaluator.data(split)  # fail now, not after training
  steps_per_epoch, num_steps = train_data.steps_per_epoch, train_data.num_steps
  abstract = models.abstract_variables(model, config)
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch, config.num_epochs, abstract["params"])
  schedule = optim.lr_schedule(config.optimizer, steps_per_epoch, config.num_epochs)
  state = create_state(model, tx, config, mesh)

  if start_step:
    state = checkpointing.restore_state(checkpoints, start_step, state)
    logging.info("Resumed from step %d in %s", start_step, workdir)
  elif config.init_from:
    state = load_initial_variables(state, config, model, mesh)
  selection = Selection(config, workdir)
  stopped_early = start_step and selection.patience and (
      start_step // steps_per_epoch - selection.best_epoch >= selection.patience)

  loss_config = loss_config_for(config, train_data.split)
  train_step = make_train_step(model, method.loss, loss_config, tx, schedule, mesh, config.seed, train_data.augment)
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  writer = Writer(workdir)
  logging.info("Training %s on %s: %d steps (%d per epoch), global batch %d, %d devices",
               config.model.name, config.dataset.name, num_steps, steps_per_epoch, config.batch_size,
               mesh.devices.size)
  window_start, window_steps, pending = time.perf_counter(), 0, []
  step, last_eval = start_step, None
  guard = FiniteGuard(checkpoints, steps_per_epoch)
  with StopSignals() as signals:
    for step, batch in enumerate(() if stopped_early else train_data.batches(start_step), start=start_step + 1):
      state, step_metrics = train_step(state, batch)
      pending.append(step_metrics)
      guard.add(step, step_metrics)
      window_steps += 1
      if step % config.log_every_steps == 0 or step == num_steps:
        guard.check()
        means = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        elapsed = time.perf_counter() - window_start
        images_per_second = window_steps * config.batch_size / elapsed
        logging.info("step %d/%d epoch %.2f loss %.4f accuracy %.3f lr %.3g | %.1f img/s ETA %s", step,
                     num_steps, step / steps_per_epoch, means["loss"], means["accuracy"], means["lr"],
                     images_per_second, _format_eta((num_steps - step) * elapsed / window_steps))
        writer.scalars(step, {f"train/{k}": v for k, v in means.items()} | {"train/img_per_s": images_per_second})
        window_start, window_steps, pending = time.perf_counter(), 0, []
      last_eval, stop = None, False
      epoch, epoch_end = divmod(step, steps_per_epoch)[0], step % steps_per_epoch == 0
      evaluate_now = epoch_end and (epoch % config.eval.every_epochs == 0 or step == num_steps)
      if evaluate_now or step % checkpoint_every == 0 or signals.received:
        guard.check()
      if evaluate_now:
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        last_eval = evaluator(variables, config.dataset.eval_split)
        logging.info("epoch %d %s: accuracy %.4f mean-class %.4f", epoch, config.dataset.eval_split,
                     last_eval["accuracy"], last_eval["mean_class_accuracy"])
        writer.scalars(step, {"eval/accuracy": last_eval["accuracy"],
                              "eval/mean_class_accuracy": last_eval["mean_class_accuracy"]})
        stop = selection.update(epoch, step, last_eval, variables, config)
        window_start = time.perf_counter()
      if step % checkpoint_every == 0 or step == num_steps or stop or signals.received:
        checkpointing.save(checkpoints, step, state, config)
      if signals.received:
        checkpointing.wait_until_saved(checkpoints)
        selection.wait_until_finished()
        logging.warning("Saved step %d (epoch %.2f) in %s after %s; start the same command again to resume.",
                        step, step / steps_per_epoch, checkpoints.directory, signals.received)
        raise Preempted(step)
      if stop:
        logging.info("Early stopping at epoch %d: no gain in %s for %d epochs", epoch, selection.metric,
                     selection.patience)
        break
  checkpointing.wait_until_saved(checkpoints)
  selection.wait_until_finished()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  if config.restore_best and selection.metric and selection.checkpoints.latest_step() is not None:
    variables = jax.device_put(selection.best_variables(abstract), NamedSharding(mesh, P()))
    logging.info("Reporting the best epoch (%d, %s %.4f)", selection.best_epoch, selection.metric, selection.best_value)
    last_eval = None
  reuse = last_eval if not config.dataset.test_split or config.dataset.test_split == config.dataset.eval_split else None
  results = final_report(evaluator, variables, workdir, step, reuse)
  writer.scalars(step, {"test/accuracy": results["accuracy"], "test/mean_class_accuracy": results["mean_class_accuracy"]})
  writer.close()
  return results


def evaluate_checkpoint(config, checkpoint: str, workdir: str) -> dict:
  """`--mode=eval`: evaluates a saved or converted checkpoint and writes the report."""
  mesh = mesh_lib.make_mesh()
  model = models.build_model(config)
  variables = models.load_trained_variables(config, model, checkpoint)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  return final_report(Evaluator(model, config, mesh), variables, workdir, step=-1)
