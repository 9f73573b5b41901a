"""How a training or conversion stops: SIGTERM/SIGINT during and outside the training steps, a
non-finite loss, and the exit statuses the commands end with (75: run the same command to go on)."""

import contextlib
import os
import signal
import sys
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL: the run saved its step; the same command resumes it


class Preempted(Exception):
  """SIGTERM or SIGINT arrived (on any of the processes); the current step was saved."""


class NonFiniteError(RuntimeError):
  """A loss or gradient norm was NaN or Inf; nothing from that step on was evaluated or saved."""


class StoppedOutsideSteps(Exception):
  """SIGTERM or SIGINT arrived outside the training steps (setting up, evaluating, reporting), where
  nothing is left to save: what the run saved stands, and the same command goes on from it."""


def _stop_outside_steps(signum, frame):
  del frame
  raise StoppedOutsideSteps(signal.Signals(signum).name)


@contextlib.contextmanager
def exit_status_on_stop(stopped: str = "The saved steps stand; run the same command to go on from the newest."):
  """Ends a command whose training or conversion stopped (fer_jax.main, fer_jax.seeds, fer_jax.convert)
  with exit status 75 when preempted (the step is saved) or signalled outside the training steps
  (StopSignals holds SIGTERM and SIGINT during them; `stopped` says what stands then), 1 after logging
  a non-finite loss's message."""
  main_thread = threading.current_thread() is threading.main_thread()
  previous = {s: signal.signal(s, _stop_outside_steps) for s in StopSignals.SIGNALS} if main_thread else {}
  try:
    yield
  except Preempted:
    sys.exit(PREEMPTED_EXIT_STATUS)
  except StoppedOutsideSteps as e:
    logging.warning("%s received: stopped. %s", e, stopped)
    sys.exit(PREEMPTED_EXIT_STATUS)
  except NonFiniteError as e:
    logging.error("%s", e)
    sys.exit(1)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def wait_interruptibly(array: jax.Array, longest_sleep: float = 0.05) -> None:
  """Waits in Python until `array` is computed, so that a SIGINT/SIGTERM handler runs meanwhile (inside
  `block_until_ready` it would run only once the device is done). The sleeps grow from 0.1 ms: a short
  wait costs little more than itself."""
  sleep = 1e-4
  while not array.is_ready():
    time.sleep(sleep)
    sleep = min(2 * sleep, longest_sleep)


class StopSignals:
  """The first SIGTERM/SIGINT asks the loop to save and stop; a second one exits at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)
  TRAINING = ("stopping once the steps already queued (and an evaluation they end) are done, then saving the last "
              "of them (send it again to exit at once, unsaved).")

  def __init__(self, what_follows: str = TRAINING):
    self.received = None
    self.what_follows = what_follows  # logged after "SIGTERM received: "
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received:
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    logging.warning("%s received: %s", self.received, self.what_follows)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def agreed_signal(received: str | None) -> str | None:
  """The signal that stops every process after this step, the same on each: this process's own
  (`received`), else the lowest-numbered process's ("SIGTERM on process 1"), else None. A collective:
  every process calls it after the same steps."""
  numbers = multihost_utils.process_allgather(np.int32(signal.Signals[received] if received else 0)).tolist()
  if received:
    return received
  return next((f"{signal.Signals(n).name} on process {index}" for index, n in enumerate(numbers) if n), None)
