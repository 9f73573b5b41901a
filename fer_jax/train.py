"""The training loop: data-parallel jit over a device mesh, Orbax resume, periodic evaluation, best-epoch
selection and the final report (fer_jax.evaluate)."""

import contextlib
import os
import shutil
import socket
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import distributed
from fer_jax import errors
from fer_jax import evaluate
from fer_jax import files
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import optim
from fer_jax import selection as selection_lib
from fer_jax import stopping
from fer_jax import train_log
from fer_jax import validation
from fer_jax import watched_step
from fer_jax.data import pipeline
from fer_jax.errors import UserError


def _initialiser(model, tx, config, mesh):
  def init():
    variables = models.init_variables(model, config, jax.random.key(config.seed))
    return {"step": jnp.zeros((), jnp.int32), **variables, "opt_state": tx.init(variables["params"])}
  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))


def create_state(model, tx, config, mesh) -> dict:
  """{step, params, batch_stats, opt_state}, born replicated on the mesh."""
  compiled = _initialiser(model, tx, config, mesh).lower().compile(
      compiler_options=mesh_lib.init_compiler_options(mesh))
  return compiled()


def abstract_state(abstract_variables: dict, tx, mesh) -> dict:
  """create_state's shapes, dtypes and shardings from the model's (`models.abstract_variables`), computing nothing
  and tracing no model: what a resumed run restores into, and what a step is lowered for."""
  replicated = NamedSharding(mesh, P())
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), **abstract_variables,
           "opt_state": jax.eval_shape(tx.init, abstract_variables["params"])}
  return jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.weak_type, sharding=replicated), state)


MODEL_MODES = ("train", "inference")


def train_step_name(mode: str, images: int, batch_size: int) -> str:
  """"train step (train mode)"; "train step (train mode, last batch of 47)" for an epoch's last, short batch."""
  return f"train step ({mode} mode)" if images == batch_size else f"train step ({mode} mode, last batch of {images})"


def model_mode(config, step: int, steps_per_epoch: int) -> str:
  """The model's mode for training step `step` (1-based): "inference" from epoch
  `config.inference_mode_from_epoch` on (1-based; 0 = never), else "train"."""
  epoch = (step - 1) // steps_per_epoch + 1
  start = config.inference_mode_from_epoch
  return "inference" if start and epoch >= start else "train"


def make_train_step(model, loss_fn, loss_config, optimizer, mesh, seed: int, augment_fn=None,
                    mode: str = "train"):
  """jit(state, batch) → (state, metrics), stepping `optimizer` (optim.Optimizer). With `augment_fn`
  (uint8 images, positions → model inputs, e.g. `TrainData.augment`), the batch holds uint8 images
  and their positions, augmented inside the step; without it, the images are model inputs already. `mode="inference"` computes
  the gradient with the model in inference mode (BatchNorm on its running statistics, which stay
  as they are; no dropout), as PyTorch does after `model.eval()`. On CPUs it compiles with
  `mesh_lib.compiler_options`, which JAX accepts on a top-level jit only: call, `.trace` or `.lower` it,
  not inside another jit."""
  if mode not in MODEL_MODES:
    raise ValueError(f"Unknown model mode {mode!r}; valid: {', '.join(MODEL_MODES)}.")
  train = mode == "train"

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    images = batch["image"] if augment_fn is None else augment_fn(batch["image"], batch["position"])

    def objective(params):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # BatchNorm splits its statistics by its data axis
        outputs, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                       train=train, rngs={"dropout": rng}, mutable=["batch_stats"])
      loss, parts = loss_fn(outputs, batch["label"], loss_config)
      return loss, (outputs["logits"], updates.get("batch_stats", state["batch_stats"]), parts)

    (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = optimizer.tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"], dtype=logits.dtype)
    return new_state, {"loss": loss, "accuracy": accuracy, "lr": optimizer.schedule(state["step"]),
                       "grad_norm": optim.trained_norm(grads, optimizer.trained), **parts}

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(replicated, NamedSharding(mesh, P("data"))),
                 out_shardings=(replicated, replicated), donate_argnums=0,
                 compiler_options=mesh_lib.compiler_options(mesh))


def load_initial_variables(state: dict, config, abstract_variables: dict, mesh) -> dict:
  """`state` with config.init_from's params and batch_stats (`abstract_variables`: the model's)."""
  parts = config_lib.init_from_parts(config.init_from_parts)
  fresh = jax.device_get(checkpointing.model_variables(state)) if config.init_from_missing or parts else None
  with distributed.errors_together():  # init_from may be damaged on some hosts' disks only
    if parts:
      variables = checkpointing.restore_parts(config.init_from, fresh, parts)
    else:
      variables = checkpointing.restore_model(config.init_from, abstract_variables, fresh, config.init_from_missing)
  distributed.check_same_weights(f"--config.init_from={config.init_from}", lambda: checkpointing.fingerprint(variables))
  logging.info("Initialised params and batch_stats%s from %s", f" of {', '.join(parts.values())}" if parts else "",
               config.init_from)
  return {**state, **mesh_lib.replicated(variables, mesh)}


def loss_config_for(config, train_split: pipeline.Split | None) -> ml_collections.ConfigDict:
  """config.loss; a loss that takes `class_counts` but was given none gets the training split's (one of each class
  without a split: the contract's check before the data opens)."""
  loss_config = config.loss.copy_and_resolve_references()
  if "class_counts" in loss_config and not loss_config.class_counts:
    if train_split is None:
      loss_config.class_counts = (1,) * config.model.num_classes
      return loss_config
    counts = np.bincount(train_split.labels[train_split.indices], minlength=len(train_split.class_names))
    loss_config.class_counts = tuple(int(c) for c in counts)
    logging.info("Class counts of the training split (%s): %s", ", ".join(train_split.class_names),
                 loss_config.class_counts)
  return loss_config


class TrainingRun:
  """One run in `workdir`: set up (or resumed) once, then trained to its end by `run`."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self._find_the_start()
    self._build_the_model()
    self._open_the_data()
    self._restore_or_start_the_state()
    self._make_the_steps()
    self._open_the_best_epoch()
    self._open_the_logs()

  def _find_the_start(self) -> None:
    """The newest checkpoint's step (0 for a new run), and the config checked for a run that starts or resumes."""
    self.checkpoints = checkpointing.manager(os.path.join(self.workdir, checkpointing.CHECKPOINTS),
                                             self.config.max_checkpoints)
    self.start_step = checkpointing.newest_step(self.checkpoints) or 0
    with distributed.errors_together():  # init_from may exist on some hosts only
      validation.validate(self.config, training=True, new_run=not self.start_step, resumed=bool(self.start_step))
    if not self.start_step and (warning := validation.random_start_warning(self.config)):
      logging.warning(warning)

  def _build_the_model(self) -> None:
    """The mesh, the method's model and its variables' shapes, checked against the method's contract; a resumed run's
    checkpoint, or a new run's config.init_from, checked against them, before the data is read."""
    self.mesh = mesh_lib.make_mesh()
    self.method = models.get_method(self.config.model.name)
    self.model = self.method.build(self.config.model)
    self.abstract = models.abstract_variables(self.model, self.config)
    logging.info("Model %s: %s parameters", self.config.model.name,
                 f"{models.parameter_count(self.method, self.abstract['params']):,}")
    optim.check_patterns(self.config.optimizer, self.abstract["params"])
    models.check_contract(self.method, self.model, self.abstract, loss_config_for(self.config, None), self.config)
    self.resumable = self._check_resumable() if self.start_step else None
    self.changed_on_resume = (checkpointing.changes_on_resume(self.checkpoints, self.start_step, self.config)
                              if self.start_step else [])
    if not self.start_step and self.config.init_from:
      with distributed.errors_together():  # init_from may be damaged on some hosts' disks only
        checkpointing.check_initial_weights(self.config.init_from, self.abstract,
                                            config_lib.init_from_parts(self.config.init_from_parts),
                                            self.config.init_from_missing, self.config.model)

  def _open_the_data(self) -> None:
    """The training batches and every evaluator's split; the run's length in steps. A resumed run's training split
    must be the one it started on, checked before the evaluators' splits open by each process (a host's own copy may
    differ: errors_together stops them all), and every process's must be process 0's."""
    with distributed.errors_together():  # the data prepared on each host's disk, each host's free memory
      self.data = pipeline.TrainData(self.config, self.mesh)
      if self.start_step:
        checkpointing.check_training_data(self.checkpoints, self.start_step, self.data.identity,
                                          self.data.split.prepared_in)
    distributed.check_same_split("the training split", self.data.identity, self.data.split.prepared_in)
    self.evaluators = evaluate.Evaluators(self.model, self.config, self.mesh)
    self.evaluators.open_all()
    if self.config.select_metric and self.config.select_on not in self.evaluators.specs:
      raise UserError(f"config.select_on={self.config.select_on!r} names an evaluator skipped for its missing split "
                      "(above): select on another (e.g. --config.select_on=eval), or prepare the set with that split.")
    self.steps_per_epoch, self.num_steps = self.data.steps_per_epoch, self.data.num_steps

  def _restore_or_start_the_state(self) -> None:
    """The optimizer; the state, restored or initialised."""
    self.optimizer = optim.make_optimizer(self.config.optimizer, self.steps_per_epoch, self.config.num_epochs,
                                          self.abstract["params"])
    self.state = self._restore_or_initialise(self.optimizer.tx)

  def _make_the_steps(self) -> None:
    """One jitted train step per model mode (the loss checked again where it weighs the training split's class counts,
    which may lack a class)."""
    loss_config = loss_config_for(self.config, self.data.split)
    if loss_config != self.config.loss:
      models.check_contract(self.method, self.model, self.abstract, loss_config, self.config)
    steps = {mode: make_train_step(self.model, self.method.loss, loss_config, self.optimizer, self.mesh,
                                   self.config.seed, self.data.augment, mode) for mode in MODEL_MODES}
    # An epoch's last, short batch has its own shape, hence its own compilation, watched apart.
    self.train_steps = {(mode, size): watched_step.WatchedStep(train_step_name(mode, size, self.config.batch_size),
                                                               steps[mode])
                        for mode in MODEL_MODES for size in {self.config.batch_size, self.data.last_batch} if size}
    self.step, self.last_evals = self.start_step, {}
    self.best_evals = {}  # {step: its last_evals} of the best epoch, once this process has saved one

  def _open_the_best_epoch(self) -> None:
    """The best epoch kept so far; once every check that may refuse the run has passed, since one kept after the step
    a resumed run starts from is dropped (`selection.Selection`)."""
    resumed_from = checkpointing.step_path(self.checkpoints, self.start_step) if self.start_step else ""
    self.selection = selection_lib.Selection(self.config, self.workdir, self.start_step, resumed_from,
                                             self.data.identity)
    self.selection.save_best_again(self.start_step, self.variables, self.config, self.data.shape)
    self._warn_of_a_lost_best_epoch()

  def _open_the_logs(self) -> None:
    self.writer = train_log.Writer(self.workdir, self.start_step)
    self.writer.config(self.start_step, config_lib.flat(self.config))
    self.history = train_log.EvalHistory(self.workdir, self.start_step)
    self.guard = train_log.FiniteGuard(self.checkpoints, self.steps_per_epoch)
    self.progress = train_log.ProgressLog(self.config, self.num_steps, self.steps_per_epoch, self.writer, self.guard)

  def _check_resumable(self) -> tuple:
    """`checkpointing.check_resumable` of the state a resumed run restores into, before the data is read (a changed
    model, optimizer, batch or class order stops here): its layout does not depend on the epoch length, which
    the data gives later (`_restore_or_initialise` checks it), so an optimizer built for any is as good."""
    probe = optim.make_optimizer(self.config.optimizer, 1, self.config.num_epochs, self.abstract["params"])
    target = abstract_state(self.abstract, probe.tx, self.mesh)
    return checkpointing.check_resumable(self.checkpoints, self.start_step, target, self.config)

  def _warn_of_a_lost_best_epoch(self) -> None:
    """A resumed run's best/ folder holds no epoch though its selection's evaluator ran before the restart (best/
    deleted, or only checkpoints/ copied): its best epoch is chosen among the epochs still to train."""
    spec = self.evaluators.specs.get(self.selection.evaluator)
    epoch = self.start_step // self.steps_per_epoch
    if self.selection.metric and not self.selection.best_epoch and not self.selection.dropped and spec and (
        spec.every_epochs and epoch >= spec.every_epochs):
      left = (f"epoch {epoch + 1}" if epoch + 1 == self.config.num_epochs
              else f"epochs {epoch + 1}–{self.config.num_epochs}")
      logging.warning("%s holds no best epoch, though the run evaluated %s until epoch %d: its best epoch is chosen "
                      "from %s only. Put the run's best/ folder back to choose from all of them.",
                      self.selection.checkpoints.directory, self.selection.evaluator, epoch, left)

  def _restore_or_initialise(self, tx) -> dict:
    if self.start_step:
      checkpointing.check_epoch_length(self.checkpoints, self.start_step, self.steps_per_epoch, self.data.last_batch,
                                       self.mesh.size)
      state = checkpointing.restore_checked(self.checkpoints, self.start_step, self.resumable)
      logging.info("Resumed from step %d in %s", self.start_step, self.workdir)
      return state
    state = create_state(self.model, tx, self.config, self.mesh)
    if self.config.init_from:
      return load_initial_variables(state, self.config, self.abstract, self.mesh)
    return state

  @property
  def variables(self) -> dict:
    return checkpointing.model_variables(self.state)

  def remaining_batches(self):
    """(step, batch) from the step after the newest checkpoint; none if the run already ended (its last step, or
    early stopping)."""
    if self.start_step >= self.num_steps or self._stopped_early():
      logging.info("The run in %s ended at step %d (epoch %d): nothing is left to train; evaluating it again for "
                   "the report.", os.path.abspath(self.workdir), self.start_step, self.start_step // self.steps_per_epoch)
      return iter(())
    last = f", the last of {self.data.last_batch} images" if self.data.last_batch else ""
    logging.info("Training %s on %s: %d steps (%d per epoch%s), global batch %d, %s", self.config.model.name,
                 self.config.dataset.name, self.num_steps, self.steps_per_epoch, last, self.config.batch_size,
                 errors.counted(self.mesh.devices.size, "device"))
    return enumerate(self.data.batches(self.start_step), start=self.start_step + 1)

  def _stopped_early(self) -> bool:
    """Whether early stopping ended the run at start_step, as its meta record says, and would still under this
    config's patience (which a resumed run may raise, to train on). A step saved before the record said: one that
    ends an epoch where the selection's evaluator ran, with a best epoch kept (deleted, patience is unknown)."""
    if not self.start_step:
      return False
    epoch, within = divmod(self.start_step, self.steps_per_epoch)
    stopped = checkpointing.recorded_early_stop(self.checkpoints, self.start_step)
    if stopped is None:
      stopped = (not within and self.selection.best_epoch > 0 and self.config.select_on in self.due_evaluators())
    return stopped and self.selection.patience_ran_out(epoch)

  def train(self, step: int, batch: dict) -> None:
    """One step, in the model mode of its epoch (each mode's step is compiled once, its time left out of img/s)."""
    images = batch["label"].shape[0]
    train_step = self.train_steps[(model_mode(self.config, step, self.steps_per_epoch), images)]
    if train_step.calls:
      self.state, metrics = train_step(self.state, batch)
    else:
      logging.info("Compiling the %s…", train_step.name)
      start = time.perf_counter()
      self.state, metrics = train_step(self.state, batch)
      self.progress.exclude(time.perf_counter() - start)
      logging.info("Compiled the %s in %.1f s.", train_step.name, time.perf_counter() - start)
    self.step = step
    self.progress.add(step, metrics, images)

  def due_evaluators(self) -> list[str]:
    """The periodic evaluators due after this step: at the end of every epoch that is a multiple of
    their `every_epochs`, and at the last step."""
    epoch, within = divmod(self.step, self.steps_per_epoch)
    if within:
      return []
    return [name for name in self.evaluators.periodic
            if self.step == self.num_steps or epoch % self.evaluators.specs[name].every_epochs == 0]

  def evaluate_and_select(self) -> bool:
    """At the end of an evaluated epoch: runs the due evaluators and, when `select_on` is one of
    them, updates the selection; returns True when early stopping ends training."""
    epoch, within = divmod(self.step, self.steps_per_epoch)
    self.last_evals = {}
    due = self.due_evaluators()
    if not due:
      if not within:
        self.progress.epoch_ended(0.0)
      return False
    self.guard.check()
    results, start = {}, time.perf_counter()
    for name in due:
      began = time.perf_counter()
      results[name] = self.evaluators(self.variables, name)
      seconds = time.perf_counter() - began
      self.last_evals[self.evaluators.specs[name].inputs_identity] = results[name]
      logging.info("epoch %d %s (%s): accuracy %.4f mean-class %.4f (%.1f s)", epoch, name, results[name]["split"],
                   results[name]["accuracy"], results[name]["mean_class_accuracy"], seconds)
      self.writer.scalars(self.step, {f"{name}/{k}": results[name][k] for k in ("accuracy", "mean_class_accuracy")})
      self.history.add(self.step, epoch, {"evaluator": name, **results[name]}, seconds)
    self.progress.epoch_ended(time.perf_counter() - start)
    if self.config.select_on not in results:
      return False
    if self.selection.update(epoch, self.step, results[self.config.select_on]):
      self.best_evals = {self.step: self.last_evals}
    stop = self.selection.patience_ran_out(epoch)
    if stop:
      logging.info("Early stopping at epoch %d: no gain in %s for %d epochs", epoch, self.selection.metric,
                   self.selection.patience)
    return stop

  def checkpoint_due(self) -> bool:
    """Whether the step is saved unforced: every checkpoint_every_steps, else every epoch, and the last one."""
    every = self.config.checkpoint_every_steps or self.steps_per_epoch
    return self.step % every == 0 or self.step == self.num_steps

  def checkpoint(self, force: bool = False, stopped_early: bool = False) -> None:
    """Saves the step when due, forced or a new best epoch, with the selection as it stands, and a new best epoch's
    weights beside it; `stopped_early`: early stopping ends the run at this step. The best epoch the selection names
    is complete before the step is saved: a run resumed from any checkpoint finds the best epoch it records in best/,
    or (killed before) saves it again (`selection.Selection`)."""
    if force or self.checkpoint_due() or self.selection.unsaved:
      self.guard.check()
      self.selection.wait_until_finished()
      record = self.selection.record()
      checkpointing.save(self.checkpoints, self.step, self.state, self.config, steps_per_epoch=self.steps_per_epoch,
                         stored_shape=self.data.shape, stopped_early=stopped_early, training_data=self.data.identity,
                         last_batch=self.data.last_batch, records={"selection": record} if record else None,
                         changed_on_resume=self.changed_on_resume)
      if self.selection.unsaved:
        self.selection.save_best(self.variables, self.config, self.data.shape)

  def stop_signal(self, signals: stopping.StopSignals) -> str | None:
    """The signal to save this step and stop for, or None. One process stops after the step its
    signal arrived in. Several must stop at the same step: the launchers signal the hosts one by
    one, and a process saving alone would wait in the save's barrier for the others while they wait
    in the next step's collectives for it. So they agree (agreed_signal), but only after the steps
    the host waits for anyway (logged or saved ones), adding no wait to the others: on several
    processes a stop may come up to log_every_steps steps after the signal."""
    if jax.process_count() == 1 or self.progress.due(self.step) or self.checkpoint_due():
      return self.signal_received(signals)
    return None

  @staticmethod
  def signal_received(signals: stopping.StopSignals) -> str | None:
    """This process's signal; on several processes, the one they agree on (a collective: every process calls it)."""
    return signals.received if jax.process_count() == 1 else stopping.agreed_signal(signals.received)

  def wait_for_saves(self) -> None:
    checkpointing.wait_until_saved(self.checkpoints)
    self.selection.wait_until_finished()

  def stop_for(self, signal_name: str) -> None:
    """After a forced checkpoint: logs the steps not logged yet, waits for every save, then raises Preempted."""
    self.progress.flush(self.step)
    self.wait_for_saves()
    logging.warning("Saved step %d (epoch %.2f) in %s after %s; start the same command again to resume.",
                    self.step, self.step / self.steps_per_epoch, self.checkpoints.directory, signal_name)
    raise stopping.Preempted(self.step)

  def run(self) -> dict:
    """Trains to the last step (or early stop) and returns the final report. The TensorBoard
    writer is closed however the run ends: left to its exit hook, Python ≥ 3.12 prints a traceback
    (its thread cannot start at interpreter shutdown)."""
    try:
      with stopping.StopSignals() as signals:
        for step, batch in self.remaining_batches():
          self.train(step, batch)
          stop = self.evaluate_and_select()
          stop_signal = self.stop_signal(signals)
          self.checkpoint(force=stop or bool(stop_signal), stopped_early=stop)
          if stop_signal:
            self.stop_for(stop_signal)
          if stop:
            break
        self.progress.flush(self.step)
        self.wait_for_saves()
        if late_signal := self.signal_received(signals):  # after the last step's check: stopped before the report
          self.stop_for(late_signal)
      report = self.report()
    finally:
      self.writer.close()
    logging.debug("XLA compilations of the jitted steps: %s",
                  ", ".join(f"{name} {count}" for name, count in self.compilations().items()))
    logging.info(train_log.training_curves_line(self.workdir))
    return report

  def compilations(self) -> dict[str, int]:
    """{step name: XLA compilations so far} of the train steps and the eval steps: 1 each once used."""
    return {step.name: step.compiles for step in (*self.train_steps.values(), *self.evaluators.steps())}

  def report(self) -> dict:
    """The final report of every evaluator, with the best epoch's weights if configured. It reuses the evaluations
    made with the very weights reported: the last epoch's, or the best epoch's when this process saved them. A best
    epoch from before a restart is evaluated again: nothing kept proves that the split's images and the code that
    preprocesses them are still those it was evaluated on. Called once every save is complete."""
    variables, reusable, step, checkpoints = self.variables, self.last_evals, self.step, self.checkpoints
    selection = best_kept = None
    best_step = self.selection.checkpoints.latest_step() if self.selection.metric else None
    if best_step is not None:
      selection = evaluate.selection_record(self.evaluators, self.selection.metric, self.selection.evaluator,
                                            self.selection.best_epoch, self.selection.best_value,
                                            self.step // self.steps_per_epoch)
    if selection and self.config.restore_best:
      variables = mesh_lib.replicated(self.selection.best_variables(self.abstract), self.mesh)
      step, checkpoints = best_step, self.selection.checkpoints
      logging.info("Reporting step %d. Selected: %s", step, evaluate.selection_note(selection))
      reusable = self.best_evals.get(step, {})
    elif selection:  # the last epoch reported: the best one is said where it is kept
      best_kept, selection = {**selection, "checkpoint": checkpointing.step_path(self.selection.checkpoints,
                                                                                  best_step)}, None
      logging.info("Reporting the last epoch; the best by %s on %s, epoch %d, is kept in %s "
                   "(--config.restore_best=True reports it).", best_kept["metric"], best_kept["evaluator"],
                   best_kept["epoch"], best_kept["checkpoint"])
    report = evaluate.final_report(self.evaluators, variables, self.workdir, step,
                                   checkpointing.step_path(checkpoints, step), reusable, trained_steps=self.step,
                                   selection=selection, best_kept=best_kept,
                                   changed_on_resume=self.changed_on_resume)
    self.history.plot()
    for name, results in report["evaluators"].items():  # at the step of the weights reported
      self.writer.scalars(step, {f"final/{name}/{k}": results[k] for k in ("accuracy", "mean_class_accuracy")})
    return report


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and writes the eval report."""
  with training_lock(workdir), train_log.log_file(workdir):
    return TrainingRun(config, workdir).run()


LOCK_FILE = ".training.lock"  # in a workdir: which process trains there


@contextlib.contextmanager
def training_lock(workdir: str):
  """One training at a time in a workdir: process 0 holds a lock on workdir/LOCK_FILE while it trains (released
  however it ends, a kill too), and every process stops if another run holds it. Two runs saved the same steps over
  each other, and each deleted the other's saves under way as a killed run's leftovers, then both failed blaming the
  disk. flock locks are seen by runs on the same host, or on a file system that shares them (NFS)."""
  if jax.process_index() != 0:
    distributed.raise_process_zeros_error("")
    yield
    return
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as lock:
    distributed.raise_process_zeros_error(_lock(lock, workdir))
    try:
      yield
    finally:
      if created and set(os.listdir(workdir)) <= {LOCK_FILE, train_log.LOG}:  # a run its config stopped leaves none
        shutil.rmtree(workdir)


def _lock(lock, workdir: str) -> str:
  """Takes the lock of the open lock file `lock` and writes who holds it; else the error naming the holder."""
  if not files.take_lock(lock, unlocked_warning="make sure no other training uses this workdir."):
    lock.seek(0)
    return (f"Another training runs in {os.path.abspath(workdir)} ({lock.read().strip() or 'its process unknown'}, "
            f"holding {LOCK_FILE}): wait for it to end or stop it, or pass another --workdir.")
  lock.truncate(0)
  lock.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
  lock.flush()
  return ""
