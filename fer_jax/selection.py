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
  `start_step`: the step the run starts from (0 for a new run); a resumed run drops a best epoch kept after it, a new
  run refuses to start beside one (`dropped`: whether a best epoch was dropped)."""

  def __init__(self, config, workdir: str, start_step: int):
    self.metric, self.evaluator = config.select_metric, config.select_on
    self.patience = config.early_stopping_patience
    self.decimals, self.later_ties_win = config.select_decimals, config.select_ties == "latest"
    self.best_value, self.best_epoch, self.gain_epoch = -1.0, 0, 0
    self.checkpoints, self.dropped = None, False
    if self.metric:
      self.checkpoints = checkpointing.manager(os.path.join(workdir, checkpointing.BEST), max_to_keep=1)
      best_step = checkpointing.newest_step(self.checkpoints)
      if best_step is not None and best_step > start_step:
        self._drop_a_best_epoch_trained_again(best_step, start_step)
      elif best_step is not None:
        record = self._saved_record(checkpointing.step_path(self.checkpoints, best_step))
        self._check_same_selection(record)
        # Records before 2026-12-06 hold the rounded value alone, and no gain epoch apart from the best one.
        self.best_value = self._compared(record.get("unrounded", record["value"]))
        self.best_epoch, self.gain_epoch = record["epoch"], record.get("gain_epoch", record["epoch"])

  def _drop_a_best_epoch_trained_again(self, best_step: int, start_step: int) -> None:
    """A run stopped after it saved a best epoch and before a checkpoint of that step trains those steps again,
    perhaps with another learning rate: the best epoch kept is not of the run that goes on. A new run beside one (its
    checkpoints deleted) would lose it: refused."""
    if not start_step:
      raise UserError(f"{self.checkpoints.directory} keeps the best epoch of an earlier run (step {best_step}), and "
                      f"{os.path.dirname(self.checkpoints.directory)} holds no checkpoint to resume from: move best/ "
                      "away to train here from the start, or start a new --workdir.")
    logging.warning("%s keeps the best epoch at step %d, after step %d the run resumes from: those steps train again, "
                    "so it is dropped and chosen again from them (the epochs up to step %d are no longer candidates: "
                    "best/ keeps one).", self.checkpoints.directory, best_step, start_step, start_step)
    self.checkpoints.delete(best_step)
    self.dropped = True

  def _saved_record(self, best_directory: str) -> dict:
    """The best epoch's selection record ({value, epoch, metric, evaluator}) kept with its weights."""
    fix = (f"Delete {self.checkpoints.directory} to resume without it (the best epoch is then chosen among the "
           "epochs still to train), or start a new --workdir.")
    record = checkpointing.json_item(best_directory, "selection", "the best epoch's record", fix)
    if not {"value", "epoch", "metric"} <= record.keys():
      raise checkpointing.CheckpointError(f"{best_directory} holds no complete record of the best epoch "
                                          f"(selection/metadata): the checkpoint is damaged. {fix}")
    return record

  def _check_same_selection(self, record: dict) -> None:
    """The best epoch kept was chosen by one evaluator's metric; another's values do not compare with it."""
    saved = (record["metric"], record.get("evaluator", self.evaluator))  # the evaluator recorded since 2026-12-05
    if saved != (self.metric, self.evaluator):
      raise UserError(f"{self.checkpoints.directory} keeps the best epoch by {saved[0]} on {saved[1]}; this config "
                      f"selects by {self.metric} on {self.evaluator}, whose values do not compare with it. Resume with "
                      f"--config.select_metric={saved[0]} --config.select_on={saved[1]}, or start a new --workdir.")

  def update(self, epoch: int, step: int, results: dict, variables: dict, config,
             stored_shape: Sequence[int]) -> bool:
    """Records an evaluation; returns True when its epoch is the new best, whose `variables` this call saved.
    `stored_shape`: what the training split's images are decoded to, for the meta record
    (`checkpointing.dataset_record`)."""
    if not self.metric:
      return False
    unrounded = results[self.metric]
    value = self._compared(unrounded)
    if value > self.best_value or (self.later_ties_win and value == self.best_value):
      if value > self.best_value:
        self.gain_epoch = epoch
      self.best_value, self.best_epoch = value, epoch
      checkpointing.save(self.checkpoints, step, variables, config, stored_shape=stored_shape, records={"selection": {
          "value": self.best_value, "unrounded": unrounded, "epoch": epoch, "gain_epoch": self.gain_epoch,
          "metric": self.metric, "evaluator": self.evaluator}})
      logging.info("New best %s %.4f at epoch %d", self.metric, self.best_value, epoch)
      return True
    return False

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
