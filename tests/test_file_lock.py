"""fer_jax.file_lock: the flock that keeps a second run out of a workdir or a data set being prepared."""

import errno
import fcntl
import logging
import threading

from fer_jax import file_lock


def test_a_lock_held_elsewhere_is_refused_or_waited_for(tmp_path):
  path = tmp_path / "x.lock"
  with open(path, "a+") as first, open(path, "a+") as second:  # two open files: flock treats them as two holders
    assert file_lock.take(first, unlocked_warning="")
    assert not file_lock.take(second, unlocked_warning="")
    told, taken = threading.Event(), []
    waiter = threading.Thread(target=lambda: taken.append(file_lock.take(second, unlocked_warning="",
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
    assert file_lock.take(lock, unlocked_warning="make sure no other run writes here.")
  assert f"Cannot lock {tmp_path / 'x.lock'} (No locks available): make sure no other run writes here." in caplog.text
