"""Files that concurrent runs and full disks cannot spoil: the lock held by the one run that may write a folder
(training's workdir, prepare's data set), and files replaced whole once written (reports, predictions, summaries)."""

import contextlib
import fcntl
import json
import os

from absl import logging

REPORT = "eval_results.json"  # a training or evaluation workdir's report (fer_jax.evaluate.write_report)


def take_lock(lock_file, *, unlocked_warning: str, on_held=None) -> bool:
  """Takes the flock of the open `lock_file`: False if another process holds it, or, given `on_held`, calls it and
  waits for the lock. A file system without locks takes none: logs `unlocked_warning` and returns True. flock locks
  are seen by runs on the same host, or on a file system that shares them (NFS)."""
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


@contextlib.contextmanager
def written_whole(path: str, mode: str = "w", **open_kwargs):
  """A file opened to write (`open`'s `mode`, "w" or "wb", and `open_kwargs`) that replaces `path` once written: a
  failure while writing (a full disk) leaves the file before it as it was, where writing in place left it empty, and no
  partial file; the OSError names `path`."""
  folder, name = os.path.split(os.path.realpath(path))
  partial = os.path.join(folder, f".{name}.{os.getpid()}.partial")
  try:
    with open(partial, mode, **open_kwargs) as f:
      yield f
    os.replace(partial, os.path.join(folder, name))
  except OSError as error:
    raise OSError(error.errno, error.strerror, path) from error
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(partial)


def write_whole(path: str, text: str) -> None:
  """`text` into `path`, replacing it whole (`written_whole`)."""
  with written_whole(path) as f:
    f.write(text)


def is_within(path: str, folder: str) -> bool:
  """Whether `path` (existing or not) is `folder` or lies under it, links resolved."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def strict_json_object(path: str) -> dict:
  """The JSON object in `path`; a ValueError saying why there is none (no JSON, JSON nested too deep, another type of
  JSON value); open's OSError where the file cannot be read."""
  with open(path, encoding="utf-8") as f:
    try:
      record = json.load(f)
    except RecursionError:
      raise ValueError("JSON nested too deep") from None
  if not isinstance(record, dict):
    raise ValueError(f"a JSON {type(record).__name__}, not an object")
  return record


def json_object(path: str) -> dict | None:
  """The JSON object in `path`; None where the file is missing, unreadable, or holds no JSON object (a report an
  earlier run left, read only to inform or tidy up)."""
  try:
    return strict_json_object(path)
  except (OSError, ValueError):
    return None
