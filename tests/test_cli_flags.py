"""Every command's path flags expand `~` (bash does not after `--flag=`), its --helpshort lists the flags
it takes from fer_jax's shared modules (--config, --verbose), marks the required ones and exits 0, a missing
required flag is named with its help, common slips are answered with the fix, Ctrl-C ends a command with one line,
and other packages' routine log lines are left out."""

import ast
import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

from absl import flags
from ml_collections import config_flags
import pytest

from fer_jax import cli
from fer_jax import starting
from fer_jax import stopping
from helpers import AS_FROM_A_TERMINAL, ROOT, assert_user_error, cpu_devices_env, killed_at_end, run_command

# Each command's path flags, and the flags it requires besides them.
PATH_FLAGS = {
    "fer_jax.main": (("workdir", "checkpoint"), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.seeds": (("workdir",), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.predict": (("checkpoint", "input", "output", "annotate"), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.export": (("checkpoint", "out", "verify_images"), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.visualize": (("checkpoint", "input", "out"), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.summary": (("checkpoint",), []),
    "fer_jax.benchmark": (("output", "profile_dir"), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.linear_baseline": ((), ["--config=configs/dan.py:rafdb"]),
    "fer_jax.data.prepare": (("manual_dir", "data_dir"), ["--dataset=rafdb"]),
    "fer_jax.data.generate_layout": (("out",), ["--dataset=rafdb"]),
    "fer_jax.convert.__main__": (("checkpoint", "workdir"), ["--config=configs/dan.py:rafdb"]),
}
# The commands' flags that take text but name no file or folder.
NOT_PATHS = {"coordinator_address", "dataset", "seeds", "platforms", "source"}

# Defines a command's flags as running it does, parses the arguments, prints {flag: [value, type]} of its flags.
PARSE_FLAGS = """
import importlib, json, sys
from absl import flags
module, *argv = sys.argv[1:]
importlib.import_module(module).define_flags()
flags.FLAGS([module, *argv])
print(json.dumps({flag.name: [flag.value, flag.flag_type()] for flag in flags.FLAGS.get_flags_for_module(module)}))
"""


def _arguments_and_value(module: str, name: str, home) -> tuple[list[str], str | list[str]]:
  """The arguments that give path flag `name` paths under `~`, and the value they parse to."""
  if name == "verify_images":  # comma-separated
    return ["--verify_images=~/a.jpg,~/b.jpg"], [str(home / "a.jpg"), str(home / "b.jpg")]
  if (module, name) == ("fer_jax.convert.__main__", "checkpoint"):  # repeated
    return ["--checkpoint=~/a.pth", "--checkpoint=~/b.pth"], [str(home / "a.pth"), str(home / "b.pth")]
  return [f"--{name}=~/{name}"], str(home / name)


@pytest.mark.parametrize("module", PATH_FLAGS)
def test_every_path_flag_expands_the_home_folder(module, tmp_path):
  paths, required = PATH_FLAGS[module]
  expected = {name: _arguments_and_value(module, name, tmp_path) for name in paths}
  arguments = [argument for name in paths for argument in expected[name][0]]
  result = subprocess.run([sys.executable, "-c", PARSE_FLAGS, module, *required, *arguments], cwd=ROOT,
                          env={**cpu_devices_env(1), "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  parsed = json.loads(result.stdout.splitlines()[-1])
  assert {name: parsed[name][0] for name in paths} == {name: value for name, (_, value) in expected.items()}
  texts = {name for name, (_, kind) in parsed.items() if kind in ("string", "list", "multi string")}
  assert texts - set(paths) <= NOT_PATHS, ("a new flag taking text: one naming a path is defined by cli.define_path "
                                           "and listed in PATH_FLAGS, any other goes in NOT_PATHS")


def test_generate_layout_writes_a_home_folder_path_under_home(tmp_path):
  home, working = tmp_path / "home", tmp_path / "working"
  home.mkdir()
  working.mkdir()  # where the command runs: the literal "~" folder it wrote went here, not into the repository
  result = subprocess.run([sys.executable, "-m", "fer_jax.data.generate_layout", "--dataset=rafdb", "--out=~/layout",
                           "--scale=0.001", "--workers=0"], cwd=working, env={**cpu_devices_env(1), "HOME": str(home)},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(home / "layout")
  assert not os.path.exists(working / "~")
  assert f"--manual_dir={home / 'layout'}" in result.stdout


@pytest.mark.parametrize("module, config_help", [
    ("fer_jax.main", "(required) configs/<method>.py:<dataset>"),
    ("fer_jax.predict", "configs/<method>.py:<dataset> of the checkpoint; default: its meta record's"),
    ("fer_jax.data.prepare", None)])
def test_helpshort_lists_the_shared_flags_the_command_takes(module, config_help):
  result = subprocess.run([sys.executable, "-m", module, "--helpshort"], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  listed = (result.stdout + result.stderr).partition("\nflags:\n")[2]
  assert result.returncode == 0, "absl's --help exits 1, the status of a non-finite loss"
  assert "\n  --[no]verbose:" in listed
  assert ("\n  --config: " in listed) == bool(config_help)
  assert not config_help or f" --config: {config_help}" in " ".join(listed.split())  # absl wraps the help


@pytest.mark.parametrize("module", ["fer_jax.predict", "fer_jax.summary"])
def test_a_config_key_without_the_config_is_named_with_the_fix(module):
  """predict and summary take the config from the checkpoint's record when --config is left out: a --config.KEY
  alone was "Unknown command line flag 'config.input.size'"."""
  result = subprocess.run([sys.executable, "-m", module, "--config.input.size=32", "--checkpoint=x"], cwd=ROOT,
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: --config.input.size changes a key of the config --config loads: "
                                          "pass --config=configs/<method>.py:<dataset> with it")


def test_a_missing_required_flag_is_named_with_its_help():
  result = subprocess.run([sys.executable, "-m", "fer_jax.main", "--config=configs/dan.py:synthetic"], cwd=ROOT,
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: --workdir is required (Run directory: checkpoints, TensorBoard events, "
                                   "reports) (--helpshort lists the flags).")


def test_help_marks_the_required_flags_and_gives_them_no_default(monkeypatch):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "configs/<method>.py:<dataset>", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Run directory.", flag_values=flag_values)
  cli.mark_required(["config", "workdir"], flag_values)
  help_text = flag_values.get_help()
  assert "--config: (required) configs/<method>.py:<dataset>" in help_text
  assert "--workdir: (required) Run directory." in help_text
  assert "(default: 'None')" not in help_text  # the config flag's showed, as if it could be left out
  monkeypatch.setattr(flags, "FLAGS", flag_values)
  error = flags.IllegalFlagValueError("flag --workdir=None: Flag --workdir must have a value other than None.")
  assert cli._flag_message(error, []) == "--workdir is required (Run directory)"  # pylint: disable=protected-access


def test_every_command_marks_its_required_flags_for_help_and_runs_through_cli():
  """benchmarks/checkpoint_save.py --help exited 1, and a user error there ended in a traceback."""
  modules = [path for folder in ("fer_jax", "benchmarks", "launch")
             for path in glob.glob(f"{folder}/**/*.py", root_dir=ROOT, recursive=True) if path != "fer_jax/cli.py"]
  sources = {path: open(os.path.join(ROOT, path), encoding="utf-8").read() for path in modules}
  unmarked = [path for path, source in sources.items() if re.search(r"mark_flags?_as_required", source)]
  assert not unmarked, "call cli.mark_required, which --help shows"
  bare = [path for path, source in sources.items() if "app.run(" in source]
  assert not bare, "call cli.run: --help exits 0, a user error is one line"


def test_a_missing_repeated_flag_is_named_on_one_line(monkeypatch):
  """convert's --checkpoint came with absl's note on repeated flags, on a second line."""
  flag_values = flags.FlagValues()
  flags.DEFINE_multi_string("checkpoint", None, "The file to convert; one per backbone.", flag_values=flag_values)
  flags.mark_flags_as_required(["checkpoint"], flag_values=flag_values)
  monkeypatch.setattr(flags, "FLAGS", flag_values)
  error = flags.IllegalFlagValueError("flag --checkpoint=None: Flag --checkpoint must have a value other than None.")
  assert cli._flag_message(error, []) == (  # pylint: disable=protected-access
      "--checkpoint is required (The file to convert; one per backbone)")


def test_a_url_in_a_list_of_paths_is_refused_by_name_as_a_single_path_flag_refuses_one():
  """export --verify_images=a.jpg,gs://b/x.jpg took the URL, which failed later as a file that cannot be opened."""
  parser = cli._PathListParser()  # pylint: disable=protected-access
  with pytest.raises(ValueError) as error:
    parser.parse("a.jpg,gs://b/x.jpg")
  assert str(error.value).startswith("gs://b/x.jpg is a URL; fer_jax reads and writes through the file system")
  assert parser.parse("a.jpg,~/b.jpg") == ["a.jpg", os.path.expanduser("~/b.jpg")]


def test_a_misspelt_flag_is_answered_with_the_flag_meant(monkeypatch):
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Run directory.", flag_values=flag_values)
  monkeypatch.setattr(flags, "FLAGS", flag_values)
  with pytest.raises(flags.UnrecognizedFlagError) as error:
    flag_values(["main", "--wrkdir=w"])
  assert cli._flag_message(error.value, ["main", "--wrkdir=w"]) == (  # pylint: disable=protected-access
      "Unknown command line flag 'wrkdir'. Did you mean: workdir ?")


def test_a_config_key_for_a_command_without_a_config_says_it_has_none(monkeypatch):
  monkeypatch.setattr(flags, "FLAGS", flags.FlagValues())  # prepare's, generate_layout's: no --config
  error = flags.UnrecognizedFlagError("config.batch_size")
  assert cli._flag_message(error, ["prepare", "--config.batch_size=3"]) == (  # pylint: disable=protected-access
      "this command has no config, so no --config.batch_size: its flags are its settings")


@pytest.mark.parametrize("given, meant", [("dan.py:synthetic", "configs/dan.py:synthetic"),
                                          ("configs/dan:rafdb", "configs/dan.py:rafdb"),
                                          ("dan", "configs/dan.py"), ("configs/dann.py", "configs/dan.py"),
                                          ("configs/scancci.py:rafdb", "configs/scan_cci.py:rafdb"),
                                          ("apvitt:rafdb", "configs/apvit.py:rafdb")])
def test_a_config_named_without_its_folder_or_py_is_found_for_the_user(given, meant, monkeypatch):
  """In the checkout, the message asked the user to run the command in the checkout (a misspelt name too)."""
  monkeypatch.chdir(ROOT)
  error = OSError("Configuration is not available because of an earlier failure to load: Failed loading config file "
                  f"config_config\n  Attempted [Relative path]:\n    {given.split(':')[0]}\n      [Errno 2] No such file "
                  f"or directory: '{given.split(':')[0]}'")
  assert cli._flag_message(error, ["main", f"--config={given}"]) == (  # pylint: disable=protected-access
      f"No such file or directory: '{given.split(':')[0]}': did you mean --config={meant}?")


# A command whose main is stopped by Ctrl-C, as summary, benchmark, visualize or linear_baseline may be.
_INTERRUPTED_COMMAND = """
import os, signal, time
from fer_jax import cli

def main(argv):
  signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's: a background job ignores it
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(60)

cli.run(main)
"""


def test_ctrl_c_ends_a_command_with_one_line_and_status_130():
  """Commands without their own stop handling printed a KeyboardInterrupt traceback."""
  result = subprocess.run([sys.executable, "-c", _INTERRUPTED_COMMAND], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 128 + signal.SIGINT, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      "Interrupted (Ctrl-C) before the command finished; what it was writing may be incomplete."]


# A command stopped by SIGINT while XLA compiles a program in its own threads (a training's initial state).
_STOPPED_WHILE_COMPILING = """
import os, signal, threading
import jax, jax.numpy as jnp
from fer_jax import cli, stopping

def slow_to_compile(x):
  for i in range(200):
    x = jnp.sin(x @ x.T + i) * jnp.cos(x[::-1] - i)
  return x

def main(argv):
  signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's: a background job ignores it
  with stopping.exit_status_on_stop():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    jax.jit(slow_to_compile).lower(jnp.ones((64, 64))).compile()
    print("compiled before the signal")

cli.run(main)
"""


def test_a_command_stopped_while_xla_compiles_exits_75():
  """Python's shutdown under XLA's compiling threads ended in a SIGSEGV (status 139): a training stopped by Ctrl-C
  while it compiled its initial state."""
  result = subprocess.run([sys.executable, "-c", _STOPPED_WHILE_COMPILING], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert result.stdout == "" and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith(
      "SIGINT received: stopped. The saved steps stand; run the same command to go on from the newest.")


def _loaded_jax(pid: int) -> bool:
  with open(f"/proc/{pid}/maps") as maps:
    return "jaxlib" in maps.read()


def test_ctrl_c_while_a_command_starts_ends_it_at_once(tmp_path):
  """Ctrl-C while the command imported its modules printed a KeyboardInterrupt traceback, or, raised inside JAX's
  garbage-collection callback, was printed as "Exception ignored" and lost: the training went on."""
  process = subprocess.Popen([*AS_FROM_A_TERMINAL, sys.executable, "-m", "fer_jax.main",
                              "--config=configs/dan.py:synthetic", f"--workdir={tmp_path / 'run'}"],
                             cwd=ROOT, env=cpu_devices_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  with killed_at_end([process]):
    while process.poll() is None and not _loaded_jax(process.pid):  # JAX, Flax, Orbax and TFDS take seconds more
      time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGINT, stderr[-3000:]
  assert (stdout, stderr.splitlines()) == ("", [starting.LINE])
  assert not (tmp_path / "run").exists()


# `python -m PACKAGE.start` of a package of another program that imports fer_jax, sending itself SIGINT.
_ANOTHER_PROGRAM = """
import os, signal
try:
  os.kill(os.getpid(), signal.SIGINT)
  signal.sigtimedwait([], 1)
except KeyboardInterrupt:
  print("KeyboardInterrupt")
"""


def test_another_program_importing_fer_jax_keeps_python_s_ctrl_c(tmp_path):
  (tmp_path / "program").mkdir()
  (tmp_path / "program" / "__init__.py").write_text("import fer_jax\n")
  (tmp_path / "program" / "start.py").write_text(_ANOTHER_PROGRAM)
  result = subprocess.run([*AS_FROM_A_TERMINAL, sys.executable, "-m", "program.start"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=60)
  assert (result.returncode, result.stdout, result.stderr) == (0, "KeyboardInterrupt\n", "")


# A command's spawned worker (`ARGV0` the command's sys.argv[0]) as grain starts it, reporting its SIGINT handler.
_WORKER_OF = """
import importlib, multiprocessing, signal, sys
sys.argv[0] = ARGV0
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
with multiprocessing.get_context("spawn").Pool(1, initializer=importlib.import_module, initargs=("fer_jax",)) as pool:
  print(pool.apply(signal.getsignal, (signal.SIGINT,)) is signal.SIG_IGN)
"""


@pytest.mark.parametrize("argv0, ignored", [("fer_jax/main.py", "True"), ("other/main.py", "False")])
def test_a_command_s_workers_leave_ctrl_c_to_it_from_their_start(argv0, ignored):
  """A terminal's Ctrl-C reaches a command's decoding workers too: those still importing the command's modules died
  of it, each with a traceback, and the command waited for their batches for ever (its worker_init_fn, which ignored
  SIGINT, runs after the imports)."""
  script = _WORKER_OF.replace("ARGV0", repr(os.path.join(ROOT, argv0)))
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=120)
  assert (result.returncode, result.stdout.strip()) == (0, ignored), result.stderr[-3000:]


def _swallowed_backslashes(path: str) -> list[str]:
  """The docstrings in `path` whose lines end in a backslash that Python takes as a line continuation."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as file:
    source = file.read()
  found = []
  for node in ast.walk(ast.parse(source)):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
      text = ast.get_source_segment(source, body[0].value)
      if not text.lower().startswith("r") and re.search(r"(?<!\\)(\\\\)*\\\n", text):
        found.append(f"{path}: {getattr(node, 'name', 'module')}")
  return found


def test_docstrings_show_their_commands_continued_lines_as_written():
  """--help of benchmark and predict ran each usage example's lines together, a backslash-newline being no newline
  in a docstring that is not raw."""
  paths = [path for pattern in ("fer_jax/**/*.py", "benchmarks/*.py", "configs/*.py", "launch/*.py")
           for path in glob.glob(pattern, root_dir=ROOT, recursive=True)]
  assert [found for path in sorted(paths) for found in _swallowed_backslashes(path)] == []


@pytest.mark.parametrize("script", ["accelerator.sh", "device_session.sh", "input_pipeline.sh"])
def test_benchmark_scripts_answer_help_and_refuse_an_option_before_any_work(script, tmp_path):
  """--help was taken for OUT_DIR (realpath's own help became a folder name), and input_pipeline.sh, which takes no
  argument, began its hour-long run."""
  environment = {**os.environ, "PY": "false", "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out.jsonl")}
  result = subprocess.run(["bash", f"benchmarks/{script}", "--help"], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert f"bash benchmarks/{script}" in result.stdout and "set -euo" not in result.stdout
  result = subprocess.run(["bash", f"benchmarks/{script}", "--out=x"], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2 and result.stderr.startswith("error: ") and "--help" in result.stderr
  assert not os.listdir(tmp_path)


def test_a_config_path_not_found_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
  """Run outside the checkout, the README's commands said only that configs/dan.py did not exist."""
  monkeypatch.chdir(tmp_path)
  error = OSError("Configuration is not available because of an earlier failure to load: Failed loading config file "
                  "config_config\n  Attempted [Relative path]:\n    configs/dan.py\n      [Errno 2] No such file or "
                  "directory: 'configs/dan.py'")
  assert cli._flag_message(error, ["main", "--config=configs/dan.py:synthetic"]) == (
      f"No such file or directory: 'configs/dan.py' in {tmp_path}: run the command in the fer_jax checkout, whose "
      "configs/ hold the configs, or pass a config file's path, --config=PATH/<method>.py:<dataset>")


def test_the_search_for_a_tpu_is_not_logged_where_there_is_none():
  environment = {key: value for key, value in cpu_devices_env(1).items() if key != "JAX_PLATFORMS"}
  result = subprocess.run([sys.executable, "-m", "fer_jax.summary", "--config=configs/dan.py:synthetic"], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "dan · synthetic" in result.stdout
  assert "Unable to initialize backend" not in result.stderr


@pytest.mark.parametrize("pathname, level, shown", [
    ("/site-packages/tensorflow_datasets/core/dataset_builder.py", logging.INFO, False),
    ("/site-packages/tensorflow_datasets/core/dataset_builder.py", logging.WARNING, True),
    ("/site-packages/orbax/checkpoint/checkpoint_manager.py", logging.WARNING, False),
    ("/work/fer_jax/train.py", logging.INFO, True),
])
def test_other_packages_routine_lines_are_left_out(pathname, level, shown):
  record = logging.LogRecord("absl", level, pathname, 1, "Load dataset info from %s", ("/data",), None)
  assert cli._worth_showing(record) == shown  # pylint: disable=protected-access


def test_a_log_copied_to_a_file_ends_with_the_error_and_a_full_disk_ends_the_copy_with_one_warning(tmp_path, caplog):
  """train.log lacked the line that ended the run (the command prints it after the log); on a full disk, logging
  printed a traceback for every line."""
  from fer_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  caplog.set_level(logging.INFO)
  path = tmp_path / "train.log"
  with pytest.raises(UserError):
    with cli.logged_to(str(path)):
      logging.getLogger("absl").info("step 1")
      raise UserError("config.init_from=x does not exist")
  lines = path.read_text().splitlines()
  assert lines[0].endswith("step 1") and lines[1].endswith("error: config.init_from=x does not exist")
  if os.path.exists("/dev/full"):  # Linux's always-full device
    with cli.logged_to("/dev/full"):
      for step in range(3):
        logging.getLogger("absl").info("step %d", step)
    assert caplog.text.count("Stopped copying the log to /dev/full: [Errno 28] No space left on device") == 1


def test_a_bug_raised_while_handling_a_file_error_is_a_bug_and_a_wrapped_one_is_the_users():
  """An error in an `except OSError:` block was printed as the OSError it handled ("check the path", exit 2), hiding
  the bug and its traceback; a file error given as the cause (`raise … from`) stays the user's."""
  missing = FileNotFoundError(2, "No such file or directory", "/nowhere/cache.json")
  try:
    try:
      raise missing
    except OSError:
      None.strip()  # the handler's own bug
  except AttributeError as bug:
    assert cli.describe(bug) is None
  wrapped = RuntimeError("could not read the cache")
  wrapped.__cause__ = missing
  assert cli.describe(wrapped) == "No such file or directory: /nowhere/cache.json (check the path)."


CONFIG_FILES_IN_ERROR = {
    "syntax.py": ("def get_config(:\n", "syntax.py, line 1: invalid syntax: def get_config(:"),
    "no_function.py": ("SIZE = 1\n", "no_function.py defines no get_config(argument), the function every config "),
    "bad_import.py": ("import no_such_module_xyz\n", "bad_import.py, line 1: ModuleNotFoundError: No module named "
                                                     "'no_such_module_xyz'"),
    "raises.py": ("def get_config(arg=None):\n  return {}[arg]\n", "raises.py, line 2: KeyError: None"),
    "calls_get_config.py": ("import ml_collections\ndef get_config(arg=None):\n  return ml_collections.ConfigDict()"
                            ".get_config()\n", "calls_get_config.py, line 3: AttributeError: "),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CONFIG_FILES_IN_ERROR))
def test_an_error_in_a_config_file_names_the_file_and_its_line(name, tmp_path):
  """The message was Python's alone ("invalid syntax", "module 'config_config' has no attribute 'get_config'")."""
  text, expected = CONFIG_FILES_IN_ERROR[name]
  (tmp_path / name).write_text(text)
  assert_user_error(run_command("fer_jax.main", f"--config={tmp_path / name}", f"--workdir={tmp_path / 'run'}"),
                    f"error: the config file {tmp_path / name}" + ("" if name == "no_function.py" else ", line "),
                    expected)
