import numpy as np
import pytest

from fer_jax import linear_baseline
from helpers import assert_user_error, run_command


def test_ridge_separates_linear_classes_and_fails_on_xor():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  y = (x[:, 0] > 0).astype(int)
  assert linear_baseline.ridge_accuracy(x[:150], y[:150], x[150:], y[150:], 2, 1.0) > 0.9
  xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
  assert linear_baseline.ridge_accuracy(x[:150], xor[:150], x[150:], xor[150:], 2, 1.0) < 0.75


@pytest.mark.integration
def test_a_split_the_set_lacks_is_named_by_its_config_key(tiny_data_dir):
  result = run_command("fer_jax.linear_baseline", "--config=configs/dan.py:synthetic",
                       "--config.dataset.name=synthetic/tiny", f"--config.dataset.data_dir={tiny_data_dir}",
                       "--config.input.size=32", "--config.data_workers=0", "--config.dataset.test_split=tset")
  assert_user_error(result, "config.dataset.test_split='tset': Data set 'synthetic/tiny' has no split 'tset'")
