"""fer_jax.files.take_lock: the flock that keeps a second run out of a workdir or a data set being prepared."""

import errno
import fcntl
import logging
import os
import threading

import pytest

from fer_jax import files


def test_a_lock_held_elsewhere_is_refused_or_waited_for(tmp_path):
  path = tmp_path / "x.lock"
  with open(path, "a+") as first, open(path, "a+") as second:  # two open files: flock treats them as two holders
    assert files.take_lock(first, unlocked_warning="")
    assert not files.take_lock(second, unlocked_warning="")
    told, taken = threading.Event(), []
    waiter = threading.Thread(target=lambda: taken.append(files.take_lock(second, unlocked_warning="",
                                                                         on_held=told.set)))
    waiter.start()
    assert told.wait(timeout=30)
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not taken  # waits while the first holds it
    fcntl.flock(first, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert taken == [True]


def test_a_file_system_without_locks_is_used_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
  def no_locks(*_):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  with open(tmp_path / "x.lock", "a+") as lock, caplog.at_level(logging.WARNING):
    assert files.take_lock(lock, unlocked_warning="make sure no other run writes here.")
  assert f"Cannot lock {tmp_path / 'x.lock'} (No locks available): make sure no other run writes here." in caplog.text


def test_a_file_replaced_whole_stays_as_it_was_when_writing_fails(tmp_path, monkeypatch):
  path = tmp_path / "report.json"
  path.write_text("before")

  def full_disk(file, mode="r", **kwargs):  # the partial file opens, its writes fail as on a full disk
    open(file, mode, **kwargs).close()
    return open("/dev/full", mode, **kwargs)

  monkeypatch.setattr(files, "open", full_disk, raising=False)
  with pytest.raises(OSError) as error:
    files.write_whole(str(path), "after" * 10_000)
  assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(path))
  monkeypatch.undo()
  with pytest.raises(KeyboardInterrupt), files.written_whole(str(path)) as f:
    f.write("half")
    raise KeyboardInterrupt
  assert path.read_text() == "before" and os.listdir(tmp_path) == ["report.json"]  # no partial file left
  with files.written_whole(str(path), encoding="utf-8", errors="backslashreplace") as f:
    f.write("caf\udce9")
  assert path.read_bytes() == b"caf\\udce9"


def test_a_json_object_or_none(tmp_path):
  for name, text in (("list.json", "[1, 2]"), ("damaged.json", '{"step": 1'), ("object.json", '{"step": 16}')):
    (tmp_path / name).write_text(text)
  assert [files.json_object(str(tmp_path / name)) for name in ("missing.json", "list.json", "damaged.json")] == [None] * 3
  assert files.json_object(str(tmp_path / "object.json")) == {"step": 16}
