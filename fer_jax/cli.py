"""How every command starts and ends: absl flags, `--verbose`, and clean user errors.

    if __name__ == "__main__":
      cli.run(main)

Every flag naming a file or folder is defined by `define_path` (or its multi and list kinds), which expands
`~` as a shell does at the start of a word: bash leaves the `~` of `--workdir=~/run` as it is.

A `UserError` (or a file-system error such as a missing path, a denied permission or a full
disk) is printed as `error: <message>` and the command exits with status 2; `--verbose`
prints the traceback too. Ctrl-C that the command does not handle itself ends it with one line and
status 130, as a shell reports a command stopped by SIGINT. `--help` (`--helpshort`, `--helpfull`) exits
with 0, not absl's 1, which fer_jax's commands give a non-finite loss. Any other exception is a bug and keeps
its traceback.
"""

import contextlib
import difflib
import logging as std_logging
import os
import re
import signal
import sys
import tempfile
import traceback

from absl import app
from absl import flags
from absl import logging
import ml_collections

from fer_jax import config_lib
from fer_jax import errors
from fer_jax import starting
from fer_jax.errors import USER_ERROR_STATUS
from fer_jax.errors import UserError

_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the traceback of user errors too (for bug reports).")
# A flag defined by define_path belongs to the module calling it (whose --helpshort lists it), not to this one.
flags.disclaim_key_flags()

INTERRUPTED_STATUS = 128 + signal.SIGINT  # a shell's status for a command stopped by Ctrl-C
# What --help lists before a required flag's own words (no "(default: 'None')" line follows it).
REQUIRED = "(required) "
# absl's words after the help of a flag given once per value.
_MULTI_FLAG_NOTE = re.compile(r";\s*repeat this option to specify a list of values$")

# "gs://…", "s3:/…" (a slash lost): fer_jax reads and writes through the file system only.
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")


def local_path_problem(path: str) -> str | None:
  """Why `path` cannot be read or written by fer_jax (an object-store URL), with the fix; None for a path."""
  if "://" in path or URL_SCHEME.match(path):
    return ("is a URL; fer_jax reads and writes through the file system. Mount the bucket (e.g. gcsfuse, as "
            "launch/tpu.sh does) and pass the mounted path (docs/running_at_scale.md, \"Where the data and the "
            "workdir live\").")
  return None


class _PathParser(flags.ArgumentParser):
  """A path, `~` expanded; a URL refused."""

  def parse(self, argument: str) -> str:
    problem = local_path_problem(argument)
    if problem:
      raise ValueError(problem)
    return os.path.expanduser(argument)


class _PathListParser(flags.ListParser):
  """Comma-separated paths, each as `_PathParser` takes one; a URL refused, named."""

  def parse(self, argument) -> list[str]:
    paths = super().parse(argument)
    for path in paths:
      problem = local_path_problem(path)
      if problem:
        raise ValueError(f"{path} {problem}")
    return [os.path.expanduser(path) for path in paths]


def define_path(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
  """A flag naming a file or folder."""
  return flags.DEFINE(_PathParser(), name, default, help_text, serializer=flags.ArgumentSerializer())


def define_multi_path(name: str, default: list[str] | None, help_text: str) -> flags.FlagHolder:
  """A path flag given once per path."""
  return flags.DEFINE_multi(_PathParser(), flags.ArgumentSerializer(), name, default, help_text)


def define_path_list(name: str, default: list[str], help_text: str) -> flags.FlagHolder:
  """A flag of comma-separated paths."""
  return flags.DEFINE(_PathListParser(), name, default, help_text, serializer=flags.CsvListSerializer(","))


def mark_required(names: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """absl's mark_flags_as_required, with --help saying so: "(required)" before the flag's help, and no default."""
  flags.mark_flags_as_required(names, flag_values=flag_values)
  for name in names:
    flag = flag_values[name]
    flag.help = REQUIRED + flag.help
    flag.default_as_str = None  # a config flag's default shows as 'None', as if it could be left out


def own_help(flag) -> str:
  """A flag's help in its own words: without the required mark, absl's note on repeated flags, or a final stop."""
  text = flag.help.removeprefix(REQUIRED)
  return _MULTI_FLAG_NOTE.sub("", text).rstrip(".")


def check_writable_place(flag: str, folder: str) -> None:
  """Fails before any work unless `folder` (existing or to be created) can be written: its nearest
  existing part must be a writable folder. `flag` ("--output=PATH") names it in the message."""
  existing = os.path.abspath(folder)
  while not os.path.exists(existing):
    if os.path.islink(existing):
      raise UserError(f"{flag} cannot be created: {existing} is a link to {os.readlink(existing)}, which does not "
                      "exist; create its target or choose another path.")
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f"{flag} cannot be created: {existing} is a file, not a folder; choose another path.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{flag} cannot be written: the folder {existing} is not writable; fix its permissions or "
                    "choose another location.")
  try:  # permissions do not tell all (/proc, /sys, a read-only mount, root's bypass): make a folder there
    os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".fer_jax_write_check_"))
  except OSError as error:
    raise UserError(f"{flag} cannot be written: nothing can be made in {existing} ({error.strerror}); choose another "
                    "location.") from error


def check_writable_file(flag: str, path: str, expected: str, folder_must_exist: bool = False) -> None:
  """Fails before any work unless the file `path` (new or existing) can be written: not a folder, writable if it
  exists, in a folder that exists (with `folder_must_exist`) or can be created, where a file can be made. `flag`
  ("--output") names it in messages; `expected` ("a file path ending in .csv") is what to pass instead of a folder."""
  named = f"{flag}={path}"
  if os.path.isdir(path):
    raise UserError(f"{named} is a folder: pass {expected}.")
  folder = os.path.dirname(os.path.abspath(path))
  if folder_must_exist and not os.path.isdir(folder):
    raise UserError(f"{named}: there is no folder {folder}; create it or choose another path.")
  check_writable_place(named, folder)
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise UserError(f"{named} exists and is not writable: fix its permissions or choose another path.")
  try:  # permissions do not tell all (/proc, a read-only mount, root's bypass): make a file there
    os.makedirs(folder, exist_ok=True)
    tempfile.TemporaryFile(dir=folder).close()
  except OSError as error:
    raise UserError(f"{named} cannot be written: a file cannot be made in {folder} ({error.strerror}); "
                    "choose another location.") from error


def describe(error: BaseException) -> str | None:
  """The one-line message for a user error, or None for a bug."""
  if isinstance(error, UserError):
    return str(error)
  if errors.is_file_system_error(error):
    where = error.filename if error.filename is not None else ""
    return f"{error.strerror}{': ' + str(where) if where != '' else ''} ({errors.FILE_SYSTEM_HINTS[error.errno]})."
  # `raise … from` only: an error raised while handling another (its __context__) is a bug of the handler.
  cause = error.__cause__
  return describe(cause) if cause is not None and cause is not error else None


def run(main) -> None:
  """absl's app.run, with user errors printed as one message and exit status 2."""
  _list_shared_flags_in_short_help()
  app.run(with_clean_errors(main), flags_parser=_parse_flags)


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, with the command's own line for it (what was kept, how to go on) instead of the general one."""


def with_clean_errors(main):
  """`main` with user errors printed as one line and exit status 2, and Ctrl-C as one line and status 130."""

  def main_with_clean_errors(argv):
    logging.get_absl_handler().addFilter(_worth_showing)
    errors.quiet_closed_event_loops()
    starting.raise_on_ctrl_c()
    try:
      return main(argv)
    except KeyboardInterrupt as interrupt:
      if _VERBOSE.value:
        raise
      _exit_with_line(str(interrupt) if isinstance(interrupt, Interrupted) else
                      "Interrupted (Ctrl-C) before the command finished; what it was writing may be incomplete.",
                      INTERRUPTED_STATUS)
    except Exception as error:  # pylint: disable=broad-except
      message = describe(error)
      if message is None or _VERBOSE.value:
        raise
      _exit_with_line(f"error: {message}", USER_ERROR_STATUS)
    except SystemExit as stop:  # a stopped or failed command (75, 1) whose own line is logged
      if not isinstance(stop.code, int) or not stop.code or _several_processes():
        raise  # several processes leave through JAX's shutdown barrier, which the others meet
      _exit_without_shutdown(stop.code)

  return main_with_clean_errors


def _exit_with_line(line: str, status: int) -> None:
  print(line, file=sys.stderr, flush=True)
  _exit_without_shutdown(status)


def _exit_without_shutdown(status: int) -> None:
  """Exits without Python's shutdown, in which Orbax's background reads and writes printed tracebacks, a stop
  that came while XLA compiled in its own threads ended in a SIGSEGV (the threads outliving the devices they
  compile for), and grain's finalizer printed one for a prefetch whose worker had not started."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def _several_processes() -> bool:
  """Whether jax.distributed started, asked without importing JAX (importing cli stays light)."""
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized()


class _LogFile(std_logging.FileHandler):
  """A copy of the log in a file, made by its first line; a line that cannot be written (a full disk) ends the copy
  with one warning, where logging printed a traceback for every line."""

  def handleError(self, record):
    std_logging.getLogger().removeHandler(self)
    logging.warning("Stopped copying the log to %s: %s", self.baseFilename, sys.exc_info()[1])


@contextlib.contextmanager
def logged_to(path: str):
  """Every line the command logs meanwhile (those the terminal shows: absl's format, routine lines left out) is also
  appended to the file `path`, and the error that ends the block, as the command will print it."""
  handler = _LogFile(path, encoding="utf-8", delay=True)
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(_worth_showing)
  std_logging.getLogger().addHandler(handler)
  try:
    yield
  except Exception as error:
    line = f"error: {describe(error)}" if describe(error) else traceback.format_exc().rstrip()
    handler.handle(std_logging.LogRecord("fer_jax", std_logging.ERROR, __file__, 0, "%s", (line,), None))
    raise
  finally:
    std_logging.getLogger().removeHandler(handler)
    with contextlib.suppress(OSError):  # the write that failed, warned about once (handleError)
      handler.close()


def _worth_showing(record) -> bool:
  """Leaves out other packages' routine lines: Orbax's on every save and restore, TFDS's INFO on every set it reads
  or writes (the commands log what they saved and read themselves), and JAX's INFO that it found no TPU."""
  if "/orbax/" in record.pathname:
    return False
  routine = "/tensorflow_datasets/" in record.pathname or record.getMessage().startswith("Unable to initialize backend")
  return record.levelno >= logging.converter.STANDARD_WARNING or not routine


def _list_shared_flags_in_short_help() -> None:
  """--helpshort lists the key flags of the main module (named by sys.argv[0]): its own flags, and so the
  shared ones it takes, defined here and in fer_jax.config_lib."""
  for name in ("config", "verbose"):
    if name in flags.FLAGS:
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def _parse_flags(argv):
  """absl's flag parsing, with every flag error (a missing flag, a config file or `--config.KEY`
  that does not load) printed as one `error:` line and exit status 2."""
  try:
    try:
      remaining = flags.FLAGS(argv)
    except SystemExit as stop:
      if stop.code == 1 and _asks_for_help(argv):
        sys.exit(0)  # the help asked for is all done
      raise
    if len(remaining) > 1:
      print(f"error: unexpected arguments {' '.join(remaining[1:])}: write every setting as a flag, --name=value "
            "(--helpshort lists the flags).", file=sys.stderr)
      sys.exit(USER_ERROR_STATUS)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      # A config file that failed to load is a stand-in raising its error on first attribute access.
      flags.FLAGS["config"].value.to_dict  # pylint: disable=pointless-statement
    return remaining
  except Exception as error:  # pylint: disable=broad-except  (config files raise what they like)
    if "--verbose" in argv:
      raise
    message = (_config_file_error(error, argv) or _config_file_line(error, argv)
               or _flag_message(error, argv) + " (--helpshort lists the flags).")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _asks_for_help(argv) -> bool:
  """Whether the command line has one of absl's help flags (after which absl exits with 1)."""
  return any(arg.startswith("-") and arg.lstrip("-").partition("=")[0] in HELP_FLAGS for arg in argv[1:])


def _flag_message(error: BaseException, argv) -> str:
  text = str(error.args[0]) if error.args else str(error)
  missing = re.findall(r"Flag --(\w+) must have a value other than None", text)
  if missing:  # absl's words: "flag --workdir=None: Flag --workdir must have a value other than None."
    return "; ".join(f"--{name} is required ({own_help(flags.FLAGS[name])})" for name in missing)
  unknown_config_key = re.match(r"Unknown command line flag '(config\.[\w.]+)'", text)
  if unknown_config_key and "config" not in flags.FLAGS:
    return f"this command has no config, so no --{unknown_config_key.group(1)}: its flags are its settings"
  if unknown_config_key and flags.FLAGS["config"].value is None:
    return (f"--{unknown_config_key.group(1)} changes a key of the config --config loads: pass "
            "--config=configs/<method>.py:<dataset> with it")
  unknown, node = re.search(r"'(\w+)\\?'", text), _config_node_raising(error)
  if isinstance(error, (AttributeError, KeyError)) and unknown and node is not None:  # a --config.KEY not there
    key, near = unknown.group(1), re.search(r'Did you mean "(\w+)"', text)  # ml_collections' suggestion
    where = _config_path_to(key, argv)
    if where == "the config" and key in config_lib.ARGUMENT_OPTIONS:
      return f"the config has no key {key!r}: {key} is the config file's argument, {config_lib.ARGUMENT_OPTIONS[key]}"
    hint = (f"did you mean {near.group(1)!r}?" if near else f"valid: {', '.join(sorted(node.keys()))}" if node.keys()
            else "it has none: a --config.KEY flag changes a key the config file made; add new ones in a config file "
                 "(docs/evaluation.md shows one adding evaluators)")
    return f"{where} has no key {key!r}; {hint}"
  missing_file = re.search(r"Failed loading config file.*?\[Errno \d+\] (.*)", text, re.DOTALL)
  if missing_file:  # ml_collections' words, the paths it tried included
    meant = _config_file_meant(missing_file.group(1), argv)
    if meant:
      return f"{missing_file.group(1).strip()}: did you mean --config={meant}?"
    return (f"{missing_file.group(1).strip()} in {os.getcwd()}: run the command in the fer_jax checkout, whose "
            "configs/ hold the configs, or pass a config file's path, --config=PATH/<method>.py:<dataset>")
  return " ".join(text.split())


def _given_config_file(argv) -> str:
  given = next((argument.partition("=")[2] for argument in config_lib.config_arguments(argv)
                if argument.startswith("--config=")), "")
  return given.partition(":")[0]


def _config_file_error(error: BaseException, argv) -> str | None:
  """A config file's own exception, as ml_collections wraps it (its traceback in the text), named by the file where
  its message does not name it; None for any other flag error."""
  text = str(error.args[0]) if error.args else str(error)
  if "Traceback (most recent call last)" not in text:
    return None
  message = " ".join(re.sub(r"^\w+(Error|Exception): ", "", text.strip().splitlines()[-1]).split())
  config_file = _given_config_file(argv)
  return message if not config_file or config_file in message else f"the config file {config_file}: {message}"


def _config_file_line(error: BaseException, argv) -> str | None:
  """An error in loading the --config file (its syntax, an import, its get_config) with the file's line, which the
  bare message lacks; None for an error raised elsewhere."""
  config_file = _given_config_file(argv)
  if not config_file:
    return None
  path = os.path.abspath(config_file)
  if isinstance(error, SyntaxError) and error.filename and os.path.abspath(error.filename) == path:
    return f"the config file {config_file}, line {error.lineno}: {error.msg}: {(error.text or '').strip()}"
  lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
           if os.path.abspath(frame.f_code.co_filename) == path]
  if not lines and isinstance(error, AttributeError) and error.name == "get_config":  # ml_collections' call of it
    return (f"the config file {config_file} defines no get_config(argument), the function every config file has "
            "(configs/dan.py shows one)")
  if not lines:
    return None
  return f"the config file {config_file}, line {lines[-1]}: {type(error).__name__}: {error}"


def _config_file_meant(problem: str, argv) -> str | None:
  """The --config value that names an existing config file where the one given (its folder or its `.py` left out, or
  its name misspelt) names none, e.g. configs/dan.py:rafdb for dan.py:rafdb, configs/dan:rafdb or configs/dann.py:rafdb;
  None when no such file is here."""
  given = re.search(r"'([^']+)'", problem)
  argument = next((arg.partition("=")[2] for arg in argv if arg.startswith("--config=")), "")
  path, colon, config_argument = argument.partition(":")
  if given is None or path != given.group(1):
    return None
  stem = path if path.endswith(".py") else f"{path}.py"
  candidates = [stem, os.path.join("configs", stem)]
  existing = next((candidate for candidate in candidates if candidate != path and os.path.isfile(candidate)), None)
  for folder, name in map(os.path.split, candidates):
    if existing is None and os.path.isdir(folder or "."):
      near = difflib.get_close_matches(name, [file for file in os.listdir(folder or ".") if file.endswith(".py")], n=1)
      existing = os.path.join(folder, near[0]) if near else None
  return existing and f"{existing}{colon}{config_argument}"


def _config_path_to(key: str, argv) -> str:
  """"config.a.b" for the `--config.a.b.KEY…` argument that names `key`; "the config" at the top."""
  for arg in argv:
    parts = arg.split("=")[0].split(".")
    if parts[0] == "--config" and key in parts[1:]:
      return ".".join(["config", *parts[1:parts.index(key)]]) if parts.index(key) > 1 else "the config"
  return "the config"


def _config_node_raising(error: BaseException):
  """The innermost ConfigDict whose own method raised `error` (the node an unknown key was looked up
  in), or None."""
  node, frame = None, error.__traceback__
  while frame is not None:
    candidate = frame.tb_frame.f_locals.get("self")
    if isinstance(candidate, ml_collections.ConfigDict):
      node = candidate
    frame = frame.tb_next
  return node
