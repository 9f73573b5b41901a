"""An exclusive lock on an open file (flock), held by the one run that may write a folder: training's workdir,
prepare's data set. flock locks are seen by runs on the same host, or on a file system that shares them (NFS)."""

import fcntl

from absl import logging


def take(lock_file, *, unlocked_warning: str, on_held=None) -> bool:
  """Takes the lock of the open `lock_file`: False if another process holds it, or, given `on_held`, calls it and
  waits for the lock. A file system without locks takes none: logs `unlocked_warning` and returns True."""
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    if on_held is None:
      return False
    on_held()
    fcntl.flock(lock_file, fcntl.LOCK_EX)
  except OSError as error:
    logging.warning("Cannot lock %s (%s): %s", lock_file.name, error.strerror, unlocked_warning)
  return True
