"""Every command's path flags expand `~` (bash does not after `--flag=`), its --helpshort lists the flags
it takes from fer_jax's shared modules (--config, --verbose), a missing required flag is named with its help,
and other packages' routine log lines are left out."""

import json
import logging
import os
import subprocess
import sys

import pytest

from fer_jax import cli
from helpers import ROOT, cpu_devices_env

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


@pytest.mark.parametrize("module, takes_config", [("fer_jax.main", True), ("fer_jax.predict", True),
                                                  ("fer_jax.data.prepare", False)])
def test_helpshort_lists_the_shared_flags_the_command_takes(module, takes_config):
  result = subprocess.run([sys.executable, "-m", module, "--helpshort"], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  listed = (result.stdout + result.stderr).partition("\nflags:\n")[2]
  assert "\n  --[no]verbose:" in listed
  assert ("\n  --config:" in listed) == takes_config


def test_a_missing_required_flag_is_named_with_its_help():
  result = subprocess.run([sys.executable, "-m", "fer_jax.main", "--config=configs/dan.py:synthetic"], cwd=ROOT,
                          env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: --workdir is required (Run directory: checkpoints, TensorBoard events, "
                                   "reports) (--helpshort lists the flags).")


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
