"""The one base class of errors caused by what the user gave: a file, a flag or a config key.

Every command prints such an error as its message alone and exits with `USER_ERROR_STATUS`
(`fer_jax.cli.run`); any other exception is a bug and keeps its traceback. Messages name
the file or key and say what to do, in the caller's terms: a config change is a flag on the command
line and a Python statement under `python_caller` (`fer_jax.load`'s caller).
"""

import contextlib
import contextvars
import errno
import sys

USER_ERROR_STATUS = 2

_PYTHON_CALLER = contextvars.ContextVar("python_caller", default=False)

# The errors of a file system (not of a file's content), each with its fix: commands print them as user errors.
FILE_SYSTEM_HINTS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "the path is a folder where a file is expected",
    errno.EEXIST: "choose a path that does not exist yet",
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOSPC: "the disk is full: free space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another location",
    errno.ELOOP: "the path has a symbolic-link loop",
}


def is_file_system_error(error: BaseException) -> bool:
  """A missing file, a permission, a full disk (FILE_SYSTEM_HINTS), not a reader's complaint about a file's bytes
  (PyTorch's reader raises EINVAL for a file cut short)."""
  return isinstance(error, OSError) and error.errno in FILE_SYSTEM_HINTS


class UserError(Exception):
  """A problem with the user's input, explained in the message (what, where, the fix)."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work."""


@contextlib.contextmanager
def python_caller():
  """Messages raised inside name config changes as Python code, not as flags: the caller has a config object."""
  token = _PYTHON_CALLER.set(True)
  try:
    yield
  finally:
    _PYTHON_CALLER.reset(token)


def config_key(key: str = "") -> str:
  """The config, or its `key` ("input.size"), as the user names it: --config.input.size, or in Python
  config.input.size (the config passed to fer_jax.load)."""
  name = f"config.{key}" if key else "config"
  return name if _PYTHON_CALLER.get() else f"--{name}"


def config_setting(key: str, value) -> str:
  """--config.input.size=32, or in Python config.input.size = 32."""
  return f"{config_key(key)} = {value!r}" if _PYTHON_CALLER.get() else f"{config_key(key)}={value}"


def config_change(settings: dict) -> str:
  """"pass --config.input.size=32 --config.input.channels=1", or in Python "set config.input.size = 32;
  config.input.channels = 1"."""
  if _PYTHON_CALLER.get():
    return "set " + "; ".join(config_setting(key, value) for key, value in settings.items())
  return "pass " + " ".join(config_setting(key, value) for key, value in settings.items())


def chosen(table: dict, name: str, key: str):
  """`table[name]`, the entry config.`key` names; a ValueError naming the key and the valid names otherwise (for a
  config not validated: `fer_jax.validation` lists such a name among its problems first)."""
  if name not in table:
    raise ValueError(f"Unknown config.{key} {name!r}; valid: {', '.join(table)}.")
  return table[name]


def registered(table: dict, function, what: str):
  """Adds `function` to `table` under its name, which another function must not hold (its own, from a module imported
  again, may: it replaces itself); a ValueError naming both otherwise. Returns `function` (for decorators). `what`:
  what the table's names name ("op", "schedule", "optimiser")."""
  taken = table.get(function.__name__)
  if taken and (taken.__module__, taken.__qualname__) != (function.__module__, function.__qualname__):
    raise ValueError(f"The {what} {function.__name__!r} of {function.__module__} would replace {taken.__module__}'s "
                     "wherever it is named: give its function another name.")
  table[function.__name__] = function
  return function


def counted(count: int, noun: str) -> str:
  """"1 prediction", "2 predictions": a count and its noun, in the plural unless it is one."""
  return f"{count} {noun}{'' if count == 1 else 's'}"


def first(items, count: int, separator: str = ", ") -> str:
  """The first `count` of `items` (strings) joined, and "… (N in all)" after them where there are more."""
  return separator.join(items[:count]) + (f" … ({len(items)} in all)" if len(items) > count else "")


def with_article(word: str) -> str:
  """"an apvit", "a dan": a name (a method's) after the indefinite article its first letter calls for."""
  return f"{'an' if word and word[0].lower() in 'aeiou' else 'a'} {word}"


def quiet_closed_event_loops() -> None:
  """Leaves "Event loop is closed" out of the unraisable-exception hook, once per process: after a failed Orbax read
  (a damaged checkpoint or export) the reads still in flight complete on TensorStore's threads and call back into
  the asyncio loop the failure closed, each printing that error's traceback beside the clear error (the commands
  at start-up, `fer_jax.checkpointing.read_errors` in a Python process at the first failed read)."""
  hook = sys.unraisablehook
  if getattr(hook, "quiets_closed_event_loops", False):
    return

  def filtered(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)

  filtered.quiets_closed_event_loops = True
  sys.unraisablehook = filtered
