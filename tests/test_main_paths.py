"""`fer_jax.main` refuses object-store URLs at start-up, naming the flag or key and the fix."""

import pytest

from fer_jax import main
from fer_jax.errors import UserError
from helpers import get_config


@pytest.mark.parametrize("url", ["gs://bucket/path", "gs:/bucket/path", "s3:/bucket/path"])  # a slash lost: still a URL
@pytest.mark.parametrize("key", ["workdir", "checkpoint", "data_dir", "init_from", "evaluator"])
def test_a_url_is_refused_with_the_key_and_the_mount_fix(key, url):
  config = get_config("configs/dan.py:synthetic")
  workdir, checkpoint = (url if key == "workdir" else "/tmp/run"), (url if key == "checkpoint" else None)
  if key == "data_dir":
    config.dataset.data_dir = url
  elif key == "init_from":
    config.init_from = url
  elif key == "evaluator":
    config.evals.ferplus = {"data_dir": url}
  with pytest.raises(UserError, match=r"is a URL.*Mount the bucket") as error:
    main.reject_urls(config, workdir, checkpoint)
  assert {"workdir": "--workdir", "checkpoint": "--checkpoint", "data_dir": "config.dataset.data_dir",
          "init_from": "config.init_from", "evaluator": "config.evals.ferplus.data_dir"}[key] in str(error.value)


def test_local_paths_pass():
  main.reject_urls(get_config("configs/dan.py:synthetic"), "/tmp/run", "workdirs/x")
  main.reject_urls(get_config("configs/dan.py:synthetic"), "runs/gs:1/x", "./gs:/x")
