"""What a training run tells while it runs: the progress lines and TensorBoard scalars of its steps, every periodic
evaluation in eval_history.jsonl, and the check that stops it at the first non-finite loss or gradient norm."""

import contextlib
import datetime
import importlib.util
import json
import os
import sys
import time

from absl import logging
import jax
import numpy as np

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import figures
from fer_jax import files
from fer_jax import models
from fer_jax import progress
from fer_jax import stopping


def training_curves_line(workdir: str) -> str:
  """The command that shows a run's TensorBoard scalars; where TensorBoard is missing (fer_jax writes them with
  tensorboardX and does not install it), also the install, or the command is not found."""
  command = f"Training curves: tensorboard --logdir {os.path.abspath(workdir)}"
  return command if importlib.util.find_spec("tensorboard") else f"{command} (after pip install tensorboard)"


LOG = "train.log"  # in a workdir


@contextlib.contextmanager
def log_file(workdir: str):
  """Process 0's log lines of a training run appended to workdir/train.log, as the terminal shows them: a run's log
  was lost with its terminal."""
  if jax.process_index() != 0:
    yield
    return
  with cli.logged_to(os.path.join(workdir, LOG)):
    yield


class Writer:
  """TensorBoard scalars (tensorboardX, no TensorFlow needed) from process 0. A run resumed from `start_step` has
  TensorBoard drop what it logged after that step before it stopped (those steps are trained again)."""

  def __init__(self, workdir: str, start_step: int = 0):
    self._writer, self._workdir = None, workdir
    if jax.process_index() == 0:
      self._writer = _summary_writer_class()(workdir, purge_step=start_step + 1 if start_step else None)

  def config(self, step: int, flat_config: dict) -> None:
    """The run's config (flat) as a Markdown table in TensorBoard's text tab, at the step the run starts from: the
    settings beside the curves, and between runs."""
    if self._writer:
      rows = "\n".join(f"| {key} | {json.dumps(value)} |" for key, value in sorted(flat_config.items()))
      with self._written():
        self._writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", step)

  def scalars(self, step: int, values: dict) -> None:
    if self._writer:
      with self._written():
        for name, value in values.items():
          self._writer.add_scalar(name, value, step)

  @contextlib.contextmanager
  def _written(self):
    """Flushed; a failed write (a full disk) names the workdir, which tensorboardX's OSError does not, and closes the
    writer, whose threads and exit hook would each print the error again."""
    try:
      yield
      self._writer.flush()
    except OSError as error:
      writer, self._writer = self._writer, None
      with contextlib.suppress(Exception):
        writer.close()
      raise OSError(error.errno, error.strerror, self._workdir) from error

  def close(self):
    if self._writer:
      self._writer.close()
      self._writer = None


HISTORY = "eval_history.jsonl"  # in a workdir


class EvalHistory:
  """Every periodic evaluation of a run, one JSON object a line in workdir/eval_history.jsonl, written by process 0:
  "step", "epoch", "time" (UTC), "seconds" (the evaluation's) and the evaluator's results as the report gives them
  (accuracy, mean-class accuracy, macro F1, per-class accuracy, confusion matrix, split). A run resumed from
  `start_step` first drops the lines of later steps, which it trains again (a new run, every line)."""

  def __init__(self, workdir: str, start_step: int):
    self.path = os.path.join(workdir, HISTORY) if jax.process_index() == 0 else None
    if self.path and os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        text = f.read()
      kept = "".join(f"{line}\n" for line in text.splitlines()
                     if (step := _step_of(line)) is not None and step <= start_step)
      if kept != text:
        files.write_whole(self.path, kept)

  def plot(self) -> None:
    """workdir/eval_history.png: the accuracies of every evaluation so far, per epoch (`figures.plot_history`)."""
    if self.path and os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        history = [json.loads(line) for line in f if _step_of(line) is not None]
      if history:
        figures.plot_history(history, os.path.splitext(self.path)[0] + ".png")

  def add(self, step: int, epoch: int, results: dict, seconds: float) -> None:
    if self.path:
      line = {"step": step, "epoch": epoch, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"), "seconds": round(seconds, 3), **results}
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _step_of(line: str) -> int | None:
  """A history line's step; None for a line cut short (a run killed as it wrote)."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return None


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: where PyTorch is installed (for the converters),
  tensorboardX imports it only to accept its tensors, an import that cost each training run 1.5 s and 480 MB of host
  memory (docs/performance.md). A PyTorch already imported is left as it is."""
  hidden = "torch" not in sys.modules
  if hidden:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hidden:
      del sys.modules["torch"]
  return SummaryWriter


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
        raise stopping.NonFiniteError(
            f"Non-finite training values at step {step} (epoch {step / self.steps_per_epoch:.2f}): {parts}. "
            "Nothing from that step on was saved; the last good checkpoint is "
            f"{checkpointing.step_path(self.checkpoints, last) if last is not None else 'none (no step saved yet)'}.",
            "Lower --config.optimizer.lr or set --config.optimizer.grad_clip_norm, then start the command again "
            "(it resumes from that checkpoint).")
    self._unchecked = []


class ProgressLog:
  """Mean loss and accuracy, the last step's learning rate, img/s and ETA every `log_every_steps`, to the log and
  TensorBoard; each logged window is first checked for non-finite values."""

  def __init__(self, config, num_steps: int, steps_per_epoch: int, writer: Writer, guard: FiniteGuard):
    self.config, self.num_steps, self.steps_per_epoch = config, num_steps, steps_per_epoch
    self.writer, self.guard = writer, guard
    self._evaluation_seconds, self._epochs_ended = 0.0, 0  # this process's, for the ETA
    self.restart_clock()

  def restart_clock(self) -> None:
    """Starts a new window of steps and of their time."""
    self._start, self._pending, self._images = time.perf_counter(), [], 0

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (a compilation's, not training time) out of the window's time; its steps stay."""
    self._start += seconds

  def epoch_ended(self, evaluation_seconds: float) -> None:
    """An epoch's end, whose evaluations took `evaluation_seconds` (0 for none): left out of the window's time, and
    counted into the ETA for the epochs to come."""
    self.exclude(evaluation_seconds)
    self._evaluation_seconds += evaluation_seconds
    self._epochs_ended += 1

  def due(self, step: int) -> bool:
    """Whether `step` ends a logged window, whose metrics the host waits for."""
    return step % self.config.log_every_steps == 0 or step == self.num_steps

  def add(self, step: int, metrics: dict, images: int) -> None:
    """The metrics of `step`, which trained on `images` examples."""
    self._pending.append(metrics)
    self._images += images
    self.guard.add(step, metrics)
    if self.due(step):
      self._log(step)

  def flush(self, step: int) -> None:
    """Logs the steps up to `step` not logged yet (a run stopping between windows: a signal, early stopping)."""
    if self._pending:
      self._log(step)

  def _log(self, step: int) -> None:
    self.guard.check()
    window = jax.device_get(self._pending)
    # The rate is the last step's: a mean over a window crossing a decay is a rate no step had.
    means = {k: float(np.mean([m[k] for m in window])) for k in self._pending[0]} | {"lr": float(window[-1]["lr"])}
    elapsed = time.perf_counter() - self._start
    images_per_second = self._images / elapsed
    logging.info("step %d/%d epoch %.2f loss %.4f%s accuracy %.3f lr %.3g | %.1f img/s ETA %s", step, self.num_steps,
                 step / self.steps_per_epoch, means["loss"], _loss_parts(means), means["accuracy"], means["lr"],
                 images_per_second, progress.format_eta(self._seconds_left(step, elapsed / len(self._pending))))
    self.writer.scalars(step, {f"train/{k}": v for k, v in means.items()} | {"train/img_per_s": images_per_second})
    self.restart_clock()


  def _seconds_left(self, step: int, step_seconds: float) -> float:
    """The steps left at `step_seconds` each, and the evaluations of the epochs left at the mean time a past epoch's
    took (an ETA of training alone ended well before the run)."""
    epochs_left = -(-(self.num_steps - step) // self.steps_per_epoch)
    per_epoch = self._evaluation_seconds / self._epochs_ended if self._epochs_ended else 0.0
    return (self.num_steps - step) * step_seconds + epochs_left * per_epoch

def _loss_parts(means: dict) -> str:
  """" (ce_loss 0.81, affinity_loss 0.12)": the loss's own metrics, unless one alone is the loss itself."""
  parts = {name: value for name, value in means.items() if name not in models.TRAIN_STEP_METRICS}
  if not parts or list(parts.values()) == [means["loss"]]:
    return ""
  return f" ({', '.join(f'{name} {value:.4g}' for name, value in parts.items())})"
