"""Object-store URLs are refused at start-up, naming the flag or key and the fix: path flags as they are parsed
(every command's), the config's paths by `fer_jax.main`."""

import os
import subprocess
import sys

import pytest

from fer_jax import main
from fer_jax.errors import UserError
from helpers import ROOT, assert_user_error, cpu_devices_env, get_config


@pytest.mark.parametrize("url", ["gs://bucket/path", "gs:/bucket/path", "s3:/bucket/path"])  # a slash lost: still a URL
@pytest.mark.parametrize("key", ["data_dir", "init_from", "evaluator"])
def test_a_url_in_the_config_is_refused_with_the_key_and_the_mount_fix(key, url):
  config = get_config("configs/dan.py:synthetic")
  if key == "data_dir":
    config.dataset.data_dir = url
  elif key == "init_from":
    config.init_from = url
  elif key == "evaluator":
    config.evals.ferplus = {"data_dir": url}
  with pytest.raises(UserError, match=r"is a URL.*Mount the bucket") as error:
    main.reject_urls(config)
  assert {"data_dir": "config.dataset.data_dir", "init_from": "config.init_from",
          "evaluator": "config.evals.ferplus.data_dir"}[key] + f"={url} is a URL" in str(error.value)


def test_local_paths_pass():
  config = get_config("configs/dan.py:synthetic")
  config.update(init_from="runs/gs:1/x")
  config.dataset.data_dir = "./gs:/x"
  main.reject_urls(config)


@pytest.mark.integration  # runs the commands
@pytest.mark.parametrize("command, flag", [("fer_jax.main", "--workdir"), ("fer_jax.main", "--checkpoint"),
                                           ("fer_jax.convert", "--workdir"), ("fer_jax.export", "--out")])
def test_a_url_flag_is_refused_before_anything_is_written(tmp_path, command, flag):
  """convert --workdir=gs://… and export --out=gs://… ended in a KeyError traceback and left a folder gs: here."""
  paths = {"--workdir": str(tmp_path / "run"), "--checkpoint": str(tmp_path / "ckpt"), "--out": str(tmp_path / "out")}
  paths[flag] = "gs://my-bucket/run"
  arguments = {"fer_jax.main": ["--workdir", "--checkpoint"], "fer_jax.convert": ["--workdir", "--checkpoint"],
               "fer_jax.export": ["--out", "--checkpoint"]}[command]
  result = subprocess.run([sys.executable, "-m", command, f"--config={os.path.join(ROOT, 'configs', 'dan.py')}:synthetic",
                           *(f"{name}={paths[name]}" for name in arguments)], cwd=tmp_path, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=300)
  assert_user_error(result, f"flag {flag}=gs://my-bucket/run: is a URL; fer_jax reads and writes through the file "
                    "system. Mount the bucket")
  assert list(tmp_path.iterdir()) == []
