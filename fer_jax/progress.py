"""Progress of long loops in the log: the training log's ETA, and evaluations' batches."""

import time

from absl import logging

LOG_EVERY_SECONDS = 30.0


def format_eta(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class BatchProgress:
  """Logs "<label>: k/n batches, ETA …" at most every LOG_EVERY_SECONDS (the first after as long),
  so that a long evaluation shows that it runs and when it ends; a short one logs nothing."""

  def __init__(self, label: str, num_batches: int):
    self.label, self.num_batches = label, num_batches
    self._start = self._logged = time.perf_counter()

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if done and now - self._logged >= LOG_EVERY_SECONDS:
      self._logged = now
      logging.info("%s: %d/%d batches, ETA %s", self.label, done, self.num_batches,
                   format_eta((self.num_batches - done) * (now - self._start) / done))
