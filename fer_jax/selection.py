"""The best epoch of a run: chosen on one evaluator's metric, kept in workdir/best with its record, and early
stopping counted from it."""

from collections.abc import Sequence
import os

from absl import logging

from fer_jax import checkpointing
from fer_jax.errors import UserError


class Selection:
  """Best epoch on the evaluator `config.select_on` by `config.select_metric`, kept in workdir/best;
  early stopping.

  The metric is compared rounded to `config.select_decimals` (0 = unrounded); on a tie the
  earlier epoch stays best unless `config.select_ties == "latest"`. Early stopping counts the epochs since the last
  strict gain (`gain_epoch`), which a later tie kept does not move, as Keras' EarlyStopping counts them.

  A new best epoch's step is saved as a checkpoint, which records the selection as it stands (`record`), and its
  weights in best/, side by side; best/ keeps the two newest. A run resumed from any checkpoint goes on with the
  selection it records, whose best epoch best/ holds: the checkpoint's own step's, which a kill may have left
  unsaved (`save_best_again` saves it), or an earlier one, kept beside a newer best epoch whose checkpoint the kill
  left incomplete (dropped: those steps train again). `start_step`: the step the run starts from (0 for a new run);
  `resumed_from`: the folder of that step's checkpoint, whose selection record is read (none before a best epoch, or
  in checkpoints saved before 2026-12-07, when best/ held the only record); `training_data`: the run's training split
  (`pipeline.split_identity`). A new run beside a best epoch refuses to start unless that epoch is of the same
  command (its first checkpoint not complete), which it drops (`dropped`: whether a best epoch was dropped)."""

  def __init__(self, config, workdir: str, start_step: int, resumed_from: str = "", training_data: dict | None = None):
    self.metric, self.evaluator = config.select_metric, config.select_on
    self.patience = config.early_stopping_patience
    self.decimals, self.later_ties_win = config.select_decimals, config.select_ties == "latest"
    self.best_value, self.best_unrounded, self.best_epoch, self.gain_epoch, self.best_step = -1.0, -1.0, 0, 0, 0
    self.checkpoints, self.dropped, self.unsaved, self.training_data = None, False, False, training_data
    if self.metric:
      self.checkpoints = checkpointing.manager(os.path.join(workdir, checkpointing.BEST), max_to_keep=2)
      fix = "Delete that step to resume from the one before, or start a new --workdir."
      resumed_record = resumed_from and self._saved_record(resumed_from, fix, kept=False)
      while (best_step := checkpointing.newest_step(self.checkpoints)) is not None and best_step > start_step:
        self._drop_a_best_epoch_trained_again(best_step, start_step, config, bool(resumed_record))
      if resumed_record:
        # Taken where best/ holds its best epoch (another metric's is refused), or where the run may save it again.
        # Else best/ was deleted, or a resume selects by another metric without it: chosen again (warned).
        same_selection = (resumed_record["metric"], resumed_record.get("evaluator")) == (self.metric, self.evaluator)
        if resumed_record["step"] == best_step or (same_selection and resumed_record["step"] == start_step):
          self._take(resumed_record, resumed_record["step"])
      elif best_step is not None:
        fix = (f"Delete {self.checkpoints.directory} to resume without it (the best epoch is then chosen among the "
               "epochs still to train), or start a new --workdir.")
        self._take(self._saved_record(checkpointing.step_path(self.checkpoints, best_step), fix), best_step)

  def _take(self, record: dict, step: int) -> None:
    """The selection a record holds (best/'s, or a checkpoint's), whose best epoch is at `step`, chosen by this
    config's metric on its evaluator. Records before 2026-12-06 hold the rounded value alone and no gain epoch apart
    from the best one."""
    self._check_same_selection(record)
    self.best_unrounded = record.get("unrounded", record["value"])
    self.best_value = self._compared(self.best_unrounded)
    self.best_epoch, self.gain_epoch, self.best_step = record["epoch"], record.get("gain_epoch", record["epoch"]), step

  def _drop_a_best_epoch_trained_again(self, best_step: int, start_step: int, config, recorded: bool) -> None:
    """A best epoch saved after the step the run starts from (killed before its checkpoint was complete): those steps
    train again, perhaps with another learning rate, so the best epoch kept is not of the run that goes on. A new run
    beside one of another command (whose checkpoints were deleted) would lose it: refused. `recorded`: the step the
    run resumes from records its selection (a run saved before 2026-12-07 could only choose again)."""
    directory = checkpointing.step_path(self.checkpoints, best_step)
    if not start_step and not checkpointing.of_this_run(directory, config, self.training_data or {}):
      raise UserError(f"{self.checkpoints.directory} keeps the best epoch of an earlier run (step {best_step}), and "
                      f"{os.path.dirname(self.checkpoints.directory)} holds no checkpoint to resume from: move best/ "
                      "away to train here from the start, or start a new --workdir.")
    if recorded or not start_step:
      logging.info("Dropping the best epoch saved at step %d in %s: the run stopped before that step's checkpoint "
                   "was complete, and trains it again from step %d.", best_step, self.checkpoints.directory,
                   start_step)
    else:
      logging.warning("%s keeps the best epoch at step %d, after step %d the run resumes from: those steps train "
                      "again, so it is dropped and chosen again from them (the epochs up to step %d are no longer "
                      "candidates).", self.checkpoints.directory, best_step, start_step, start_step)
    self.checkpoints.delete(best_step)
    self.dropped = True

  @staticmethod
  def _saved_record(step_directory: str, fix: str, kept: bool = True) -> dict:
    """The selection record ({value, epoch, metric, evaluator, step}) of a best epoch `kept` with its weights, which
    it must hold, or of a checkpoint ({} where it holds none); a CheckpointError naming the `fix` if it is damaged."""
    record = checkpointing.json_item(step_directory, "selection", "the selection record", fix)
    required = {"value", "epoch", "metric"} if kept else {"value", "epoch", "metric", "step"}
    if (record or kept) and not required <= record.keys():
      raise checkpointing.CheckpointError(f"{step_directory} holds no complete selection record "
                                          f"(selection/metadata): the checkpoint is damaged. {fix}")
    return record

  def _check_same_selection(self, record: dict) -> None:
    """The best epoch kept was chosen by one evaluator's metric; another's values do not compare with it."""
    saved = (record["metric"], record.get("evaluator", self.evaluator))  # the evaluator recorded since 2026-12-05
    if saved != (self.metric, self.evaluator):
      raise UserError(f"{self.checkpoints.directory} keeps the best epoch by {saved[0]} on {saved[1]}; this config "
                      f"selects by {self.metric} on {self.evaluator}, whose values do not compare with it. Resume with "
                      f"--config.select_metric={saved[0]} --config.select_on={saved[1]}, or start a new --workdir.")

  def update(self, epoch: int, step: int, results: dict) -> bool:
    """Records an evaluation; returns True when its epoch is the new best, which `save_best` saves once the
    checkpoint of its step is complete (`unsaved` until then)."""
    if not self.metric:
      return False
    unrounded = results[self.metric]
    value = self._compared(unrounded)
    if value > self.best_value or (self.later_ties_win and value == self.best_value):
      if value > self.best_value:
        self.gain_epoch = epoch
      self.best_value, self.best_unrounded, self.best_epoch, self.best_step = value, unrounded, epoch, step
      self.unsaved = True
      logging.info("New best %s %.4f at epoch %d", self.metric, self.best_value, epoch)
      return True
    return False

  def record(self) -> dict | None:
    """The selection as it stands, for the checkpoint of this step; None before a best epoch."""
    if not self.best_epoch:
      return None
    return {"value": self.best_value, "unrounded": self.best_unrounded, "epoch": self.best_epoch,
            "gain_epoch": self.gain_epoch, "step": self.best_step, "metric": self.metric, "evaluator": self.evaluator}

  def save_best(self, variables: dict, config, stored_shape: Sequence[int]) -> None:
    """Starts saving the new best epoch (`variables`, of its step), whose checkpoint is saved. `stored_shape`: what
    the training split's images are decoded to, for the meta record (`checkpointing.dataset_record`)."""
    checkpointing.save(self.checkpoints, self.best_step, variables, config, stored_shape=stored_shape,
                       training_data=self.training_data, records={"selection": self.record()})
    self.unsaved = False

  def save_best_again(self, start_step: int, variables: dict, config, stored_shape: Sequence[int]) -> None:
    """Saves the best epoch that the checkpoint a run resumes from records as its own step's, where the run was
    killed before best/ held it (`variables`: the checkpoint's)."""
    if self.best_epoch and self.best_step == start_step and self.checkpoints.latest_step() != start_step:
      logging.info("Saving the best epoch (step %d) in %s again: the run stopped before it was saved.", start_step,
                   self.checkpoints.directory)
      self.save_best(variables, config, stored_shape)

  def _compared(self, value: float) -> float:
    """The metric's value as epochs are compared: rounded to `select_decimals` (which a resume may change)."""
    return round(value, self.decimals) if self.decimals else value

  def patience_ran_out(self, epoch: int) -> bool:
    """Whether early stopping ends training after `epoch`: `patience` epochs without a strict gain."""
    return bool(self.patience) and epoch - self.gain_epoch >= self.patience

  def wait_until_finished(self) -> None:
    if self.checkpoints:
      checkpointing.wait_until_saved(self.checkpoints)

  def best_variables(self, abstract: dict) -> dict:
    self.wait_until_finished()
    return checkpointing.restore_model(checkpointing.step_path(self.checkpoints, self.checkpoints.latest_step()),
                                       abstract)
