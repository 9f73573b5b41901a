"""Every command that the README, docs/ and the config docstrings give with a shipped config
(`--config=configs/<method>.py[:<argument>]`) loads that config as the command line does, with the command's
`--config.KEY=VALUE` overrides: a renamed key, a data set or option that is gone, or a value of the wrong type
fails here instead of on a reader's machine."""

import ast
import glob
import os
import re
import shlex

from absl import flags
import jax
from ml_collections import config_flags
import pytest

from fer_jax import validation
from fer_jax.data import prepare
from helpers import ROOT

DOCUMENTS = ("README.md", "BENCHMARKS.md", "docs/**/*.md", "configs/*.py")
CONFIG = re.compile(r"--config=(configs/\w+\.py(?::[\w,=]+)?)")
# A value: quoted, or up to a space or backtick, less the punctuation of the sentence around it.
OVERRIDE = re.compile(r"--config\.[\w.]+=(?:'[^']*'|\"[^\"]*\"|[^\s`'\"]*[^\s`'\",.;:])")
# Where a command's words end on a line of prose or shell: inline code, a comment, the next command.
COMMAND_END = re.compile(r"`| #|;|&&| \| |--config=")


def documents() -> list[str]:
  return sorted({path for pattern in DOCUMENTS for path in glob.glob(pattern, root_dir=ROOT, recursive=True)})


def commands_in(text: str) -> list[tuple[str, ...]]:
  """(--config=…, --config.KEY=VALUE, …) of each command in `text`, lines continued by a backslash joined."""
  found = []
  for line in re.sub(r"\\\n\s*", " ", text).splitlines():
    for match in CONFIG.finditer(line):
      rest = COMMAND_END.split(line[match.end():], maxsplit=1)[0]
      overrides = (shlex.split(override)[0] for override in OVERRIDE.findall(rest))
      found.append((match.group(0), *overrides))
  return found


def documented_commands() -> dict[tuple[str, ...], list[str]]:
  """Each distinct command, with the documents that give it."""
  found = {}
  for path in documents():
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
      for command in dict.fromkeys(commands_in(file.read())):
        found.setdefault(command, []).append(path)
  return found


COMMANDS = documented_commands()


def load(command: tuple[str, ...]):
  """The config of `command` as a program's --config flag reads it, overrides applied."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=["program", *command])
  flag_values(["program", *command])
  return flag_values.config


def test_commands_are_found_in_every_kind_of_document():
  """The scan itself works: commands with overrides, continued lines and docstrings are all seen."""
  assert len(COMMANDS) >= 20
  assert {path.split("/")[0] for paths in COMMANDS.values() for path in paths} >= {"README.md", "docs", "configs"}
  assert COMMANDS[("--config=configs/lhcnet.py:fer2013,stage=A2", "--config.init_from=workdirs/lhc_A1/best")] \
      == ["README.md", "configs/lhcnet.py"]
  assert COMMANDS[("--config=configs/dan.py:rafdb", "--config.model.dtype=float64")] == ["docs/fidelity.md"]


def test_continued_lines_comments_and_quotes_are_read_as_the_shell_would():
  text = ("    python -m fer_jax.main --config=configs/apvit.py:rafdb \\\n"
          "        --config.optimizer.weight_decay_exclude='^vit/(cls_token)$' --workdir=w  # --config.seed=1\n"
          "`--config=configs/dan.py:synthetic` then `--config.batch_size=16`\n")
  assert commands_in(text) == [
      ("--config=configs/apvit.py:rafdb", "--config.optimizer.weight_decay_exclude=^vit/(cls_token)$"),
      ("--config=configs/dan.py:synthetic",)]


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_every_documented_command_loads_its_config(command, monkeypatch):
  monkeypatch.chdir(ROOT)
  config = load(command)
  with jax.enable_x64(config.model.dtype == "float64"):  # the float64 commands set JAX_ENABLE_X64=1
    validation.validate(config, training=False)


def test_loading_applies_the_overrides_and_refuses_what_the_config_lacks(monkeypatch):
  monkeypatch.chdir(ROOT)
  config = load(("--config=configs/lhcnet.py:fer2013,stage=B", "--config.batch_size=16",
                 "--config.model.dtype=float64"))
  assert (config.batch_size, config.model.dtype, config.early_stopping_patience) == (16, "float64", 3)
  with pytest.raises(AttributeError, match="no_such_key"):
    load(("--config=configs/dan.py:rafdb", "--config.model.no_such_key=1"))
  with pytest.raises(flags.Error, match="Unknown argument 'raf'"):
    load(("--config=configs/dan.py:raf",))
  with pytest.raises(flags.Error, match="invalid literal for int"):
    load(("--config=configs/dan.py:rafdb", "--config.batch_size=B"))


def docstring_overrides() -> list[tuple[str, str]]:
  """(config file, --config.KEY=VALUE) for each override a config's docstring names outside a command."""
  found = []
  for path in sorted(glob.glob("configs/[!_]*.py", root_dir=ROOT)):
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
      docstring = ast.get_docstring(ast.parse(file.read()))
    in_commands = {override for command in commands_in(docstring) for override in command[1:]}
    named = dict.fromkeys(shlex.split(word)[0] for word in OVERRIDE.findall(docstring))
    found += [(path, override) for override in named if override not in in_commands]
  return found


@pytest.mark.parametrize("path,override", docstring_overrides())
def test_every_override_a_config_docstring_names_loads_over_that_config(path, override, monkeypatch):
  monkeypatch.chdir(ROOT)
  config = load((f"--config={path}", override))
  validation.validate(config, training=False)
  name, _, builder_config = config.dataset.name.partition("/")
  assert not builder_config or builder_config in prepare.builder_class(name).builder_configs, override


def test_docstring_overrides_are_found_with_their_values_whole():
  found = set(docstring_overrides())
  assert {("configs/scan_cci.py", "--config.dataset.name=affectnet/classes8_facecrop"),
          ("configs/apvit.py",
           "--config.optimizer.weight_decay_exclude=^vit/(cls_token|cls_pos_embed|patch_pos_embed)$"),
          ("configs/scan_cci.py", "--config.inference_mode_from_epoch=0")} <= found
  assert ("configs/dan.py", "--config.init_from=converted/dan_init") not in found  # a command's: checked above
