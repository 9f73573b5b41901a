"""How a training or conversion stops: SIGTERM/SIGINT during and outside the training steps, a
non-finite loss, and the exit statuses the commands end with (75: run the same command to go on)."""

import asyncio
import atexit
import contextlib
import functools
import itertools
import os
import re
import signal
import sys
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from fer_jax import distributed
from fer_jax import lifeline

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL: the run saved its step; the same command resumes it


class Preempted(Exception):
  """SIGTERM or SIGINT arrived (on any of the processes); the current step was saved."""


class NonFiniteError(RuntimeError):
  """A loss or gradient norm was NaN or Inf; nothing from that step on was evaluated or saved. `what` says where and
  which values, `fix` what to do (the command that trains decides)."""

  def __init__(self, what: str, fix: str):
    super().__init__(f"{what} {fix}")
    self.what, self.fix = what, fix


class StoppedOutsideSteps(BaseException):
  """SIGTERM or SIGINT arrived outside the training steps (setting up, evaluating, reporting), where
  nothing is left to save: what the run saved stands, and the same command goes on from it. A BaseException, as
  KeyboardInterrupt is: code that catches every Exception (logging's handlers, while a line is written) lets it
  through."""


# A SIGTERM/SIGINT outside the training steps not yet acted on, for the training loop's StopSignals (or, on one
# process, `stop_if_held`) to take up. On several processes the first one is held so: they stop together at their
# next agreed step (`agreed_signal`) or evaluation batch (`stop_if_agreed`); one process leaving alone would leave
# the others waiting for it in a collective, and itself in JAX's shutdown barrier, until both abort. On one, the
# handler's exception stops the command, but inside an event loop (Orbax reading or writing a checkpoint), where the
# exception would be printed and lost in a callback, or surface as a damaged checkpoint; and unless Python swallows
# it (raised inside a garbage-collection callback, it prints "Exception ignored" and goes on).
_held: list[str] = []


def _stop_outside_steps(signum, frame):
  del frame
  name = signal.Signals(signum).name
  several, in_event_loop = jax.distributed.is_initialized(), _in_event_loop()
  if _held and (several or in_event_loop):
    os._exit(128 + signum)
  _held.append(name)
  if several:
    logging.warning("%s received outside the training steps: held until every process of the run stops with this "
                    "one, at a saved step or before an evaluation's next batch (a report being written is finished "
                    "first; send it again, a second or more later, to exit at once, unsaved).", name)
  elif in_event_loop:
    logging.warning("%s received: stopping once the checkpoint being read or written is complete (send it again, a "
                    "second or more later, to exit at once).", name)
  else:
    raise StoppedOutsideSteps(name)


def _in_event_loop() -> bool:
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    return False
  return True


def stop_if_held() -> None:
  """On one process, raises StoppedOutsideSteps for a signal held while an event loop ran (`_stop_outside_steps`);
  called once a checkpoint is read or written."""
  if _held and not jax.distributed.is_initialized():
    raise StoppedOutsideSteps(_held[-1])


# What a collective reports when another process of the run stopped or died (gloo on CPUs, NCCL on GPUs, JAX's
# coordination service everywhere).
LOST_PEER = re.compile(r"Gloo|NCCL|[Cc]onnection (reset|closed|refused)|[Hh]eartbeat|UNAVAILABLE|DEADLINE_EXCEEDED")


def lost_peer_message(error: BaseException) -> str | None:
  """The one line for a collective that failed because another process of the run stopped or died; None for any
  other error."""
  if not (jax.distributed.is_initialized() and isinstance(error, jax.errors.JaxRuntimeError)
          and LOST_PEER.search(str(error))):
    return None
  return _lost_peer_line(f"A collective with the other processes of the run failed "
                         f"({str(error).strip().splitlines()[0][:200]})")


def _lost_peer_line(what: str) -> str:
  return (f"{what}: another process stopped or died. The steps saved stand: start every process again with the same "
          "command to go on from the newest.")


def _exit_lost_peer(line: str) -> None:
  logging.error("%s", line)
  logging.flush()
  os._exit(PREEMPTED_EXIT_STATUS)  # not sys.exit: JAX's shutdown barrier would wait for the lost process, then abort


@contextlib.contextmanager
def exit_when_a_process_dies():
  """On several processes, the block holds a lifeline to the others (fer_jax.lifeline): when one of them dies
  without leaving the run, this one ends at once with one line and exit 75, wherever it waits (a collective that
  would never fail, a barrier), or 5 s after one left by an error of its own that this one does not raise too. A
  process ended by os._exit (a lost peer of its own, a second signal) sends no farewell, so the others end too."""
  if not jax.distributed.is_initialized():
    yield
    return
  with lifeline.held(distributed.coordination_client(), jax.process_index(), distributed.coordinator_host(),
                     lambda what: _exit_lost_peer(_lost_peer_line(what)), distributed.COORDINATOR_TIMEOUT_S):
    yield


@contextlib.contextmanager
def exit_status_on_stop(stopped: str = "The saved steps stand; run the same command to go on from the newest."):
  """Ends a command whose training or conversion stopped (fer_jax.main, fer_jax.seeds, fer_jax.convert)
  with exit status 75 when preempted (the step is saved) or signalled outside the training steps
  (StopSignals holds SIGTERM and SIGINT during them; `stopped` says what stands then), 1 after logging
  a non-finite loss's message. On several processes a signal outside the steps is held for the training loop,
  where they stop together (a second one exits at once), and a collective failed because another process stopped
  or died ends the command with one line and 75 (`lost_peer_message`)."""
  with _handling(_stop_outside_steps):
    try:
      yield
    except Preempted:
      _forget_stop_requests()
      sys.exit(PREEMPTED_EXIT_STATUS)
    except StoppedOutsideSteps as e:
      _held.clear()
      _forget_stop_requests()
      logging.warning("%s received: stopped. %s", e, stopped)
      sys.exit(PREEMPTED_EXIT_STATUS)
    except NonFiniteError as e:
      logging.error("%s", e)
      sys.exit(1)
    except jax.errors.JaxRuntimeError as e:
      if (message := lost_peer_message(e)) is None:
        raise
      _exit_lost_peer(message)
  if _held:
    logging.warning("The %s held was not acted on: the command had finished what it was doing.", _held.pop())


# Slurm ends a job by signalling every process of its steps, srun among them, and srun passes the signal on to its
# tasks: each gets SIGTERM twice within milliseconds. A signal this soon after the last one handled is that one again,
# not the second that exits at once.
SAME_SIGNAL_WITHIN_S = 1.0
_last_handled = [float("-inf")]  # time.monotonic() of the last SIGTERM/SIGINT given to a handler, in the blocks open
_blocks_open = [0]  # `_handling` blocks: the outermost one starts with no signal handled


def _once_per_burst(handler):
  """`handler`, but for a SIGTERM or SIGINT within SAME_SIGNAL_WITHIN_S of the last one handled."""
  @functools.wraps(handler)
  def handle(signum, frame):
    if _in_burst():
      logging.info("%s received again within %g s: taken as the same signal.", signal.Signals(signum).name,
                   SAME_SIGNAL_WITHIN_S)
      return
    _last_handled[0] = time.monotonic()
    handler(signum, frame)
  return handle


@contextlib.contextmanager
def _handling(handler):
  """SIGTERM and SIGINT go to `handler` in the block (`_once_per_burst`), then back to their handlers before; left as
  they are outside the main thread, where Python cannot set them."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if not _blocks_open[0]:
    _last_handled[0] = float("-inf")
  previous = {s: signal.signal(s, _once_per_burst(handler)) for s in StopSignals.SIGNALS}
  _blocks_open[0] += 1
  raised = False
  try:
    yield
  except BaseException:
    raised = True
    raise
  finally:
    _blocks_open[0] -= 1
    # Left by the exception a signal raised (the command exiting 75), the burst's rest would meet the default action.
    rest_of_burst = raised and not _blocks_open[0] and _in_burst()
    for s, before in previous.items():
      signal.signal(s, _after_the_burst(before) if rest_of_burst else before)


def _in_burst() -> bool:
  return time.monotonic() - _last_handled[0] < SAME_SIGNAL_WITHIN_S


@atexit.register
def _ignore_the_burst_at_exit() -> None:
  """Python puts the default actions back as it exits, which the burst's rest would meet (killed: 143, not the exit
  status); a process exiting within the burst ignores it."""
  if _in_burst() and threading.current_thread() is threading.main_thread():
    for s in StopSignals.SIGNALS:
      signal.signal(s, signal.SIG_IGN)


def _after_the_burst(before):
  """A handler that drops the rest of the burst of the signal just handled, then puts `before` (a handler, SIG_DFL
  or SIG_IGN) back and gives it the first signal after."""
  def handle(signum, frame):
    if _in_burst():
      return
    signal.signal(signum, before)
    if callable(before):
      before(signum, frame)
    elif before == signal.SIG_DFL:
      os.kill(os.getpid(), signum)  # the default action, as if the handler had never been set
  return handle


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
              "of them (send it again, a second or more later, to exit at once, unsaved).")

  def __init__(self, what_follows: str = TRAINING):
    self.received = None
    self.what_follows = what_follows  # logged after "SIGTERM received: "
    self._handling = None

  def _handle(self, signum, frame):
    del frame
    if self.received:
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    logging.warning("%s received: %s", self.received, self.what_follows)

  def __enter__(self):
    if _held:  # received while the run was setting up (several processes): acted on as if received now
      self.received = _held.pop()
    self._handling = _handling(self._handle)
    self._handling.__enter__()
    return self

  def __exit__(self, *exc):
    self._handling.__exit__(*exc)


@contextlib.contextmanager
def signals_held():
  """A first SIGINT or SIGTERM waits until the block is done, then stops the command as it would have
  (`StoppedOutsideSteps`): an Orbax save interrupted in Python goes on writing on TensorStore's threads,
  into the folder the stop removes. A second one stops at once."""
  received = []

  def hold(signum, frame):
    del frame
    if received:
      raise StoppedOutsideSteps(signal.Signals(signum).name)
    received.append(signal.Signals(signum).name)

  with _handling(hold):
    yield
  if received:
    raise StoppedOutsideSteps(received[0])


def agreed_signal(received: str | None) -> str | None:
  """The signal that stops every process after this step, the same on each: this process's own
  (`received`), else the lowest-numbered process's ("SIGTERM on process 1"), else None. A collective:
  every process calls it after the same steps."""
  numbers = multihost_utils.process_allgather(np.int32(signal.Signals[received] if received else 0)).tolist()
  if received:
    return received
  return next((f"{signal.Signals(n).name} on process {index}" for index, n in enumerate(numbers) if n), None)


STOP_REQUESTS = "fer_jax/stop_requests"  # the coordination service's folder of the signals processes hold
_posted: list[str] = []  # this process's held signal, once written there
_stops: list[int] = []  # the stops every process took together: the requests written before the last are stale
_agreements = itertools.count()  # the points passed so far: the same sequence on every process


def stop_if_agreed() -> None:
  """Raises StoppedOutsideSteps on every process together once any of them holds a SIGTERM/SIGINT (`_held`), at a
  point every process passes alike (before each of an evaluation's batches). Outside the training steps only (the
  handler of `exit_status_on_stop` in place): inside them StopSignals takes the signals and they stop at an agreed
  step. On one process the handler raised already. Agreed through the coordination service's key-value store, not
  a device collective: one would wait for the evaluation batches queued on the devices before it."""
  handler = getattr(signal.getsignal(signal.SIGTERM), "__wrapped__", None)
  if not jax.distributed.is_initialized() or handler is not _stop_outside_steps:
    return
  decision = agreed_stop(_held[-1] if _held else None, jax.process_index(), distributed.coordination_client(),
                         next(_agreements))
  if decision:
    raise StoppedOutsideSteps(_held[-1] if _held else decision)


def agreed_stop(held: str | None, index: int, client, number: int) -> str:
  """Process 0's decision at the `number`th agreement: the signal it holds ("SIGTERM on process 0"), else the one the
  lowest-numbered process has written to STOP_REQUESTS (in the folder of the stops taken so far), else "". Every
  other process writes its `held` signal there once and waits for the decision; process 0 waits for none. `client`:
  the coordination service's (jax.distributed's)."""
  requests_folder = f"{STOP_REQUESTS}/{len(_stops)}"
  if held and index and not _posted:
    client.key_value_set(f"{requests_folder}/{index}", held)
    _posted.append(held)
  key = f"fer_jax/stop_decisions/{number}"
  if index:
    return client.blocking_key_value_get(key, distributed.COORDINATOR_TIMEOUT_S * 1000)
  requests = sorted((int(path.rsplit("/", 1)[1]), name) for path, name in client.key_value_dir_get(requests_folder))
  decision = f"{held} on process 0" if held else next((f"{name} on process {i}" for i, name in requests), "")
  client.key_value_set(key, decision)
  return decision


def _forget_stop_requests() -> None:
  """After a stop every process took together: the requests written for it stay in the coordination service, where
  the next agreement of a command run again in these processes would take them for new ones (a folder per stop)."""
  _posted.clear()
  _stops.append(len(_stops))
