"""fer_jax.summary without --config: the config from a checkpoint's meta record or an export's model.json
(tests/test_fingerprint.py covers `summary --checkpoint`'s digest, tests/test_bad_input_main.py its user errors)."""

import shutil

import numpy as np
import pytest

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import models
from fer_jax import summary
from fer_jax import validation
from fer_jax.errors import UserError
from helpers import assert_user_error, get_config, random_variables, run_command


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(config, a workdir-like folder with its checkpoint, a StableHLO export of the same weights)."""
  folder = tmp_path_factory.mktemp("summary")
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  variables = random_variables(config, seed=3)
  checkpointing.save_model(str(folder / "workdir" / "checkpoints"), variables, config)
  export.export(config, variables, str(folder / "exported"), platforms=("cpu",))
  return config, folder / "workdir", folder / "exported"


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_the_config_comes_from_the_record(saved, kind):
  config, workdir, exported = saved
  recorded = summary.rebuilt_config(str(workdir if kind == "checkpoint" else exported))
  for key in ("model.name", "model.num_classes", "input.size", "input.channels", "dataset.name",
              "dataset.class_order"):
    section, name = key.split(".")
    assert recorded[section][name] == config[section][name], key


@pytest.mark.parametrize("spec", ["configs/dan.py:rafdb", "configs/apvit.py:rafdb", "configs/scan_cci.py:rafdb",
                                  "configs/lhcnet.py:fer2013,stage=C"])
def test_every_methods_record_rebuilds_a_config_that_passes_the_check(spec):
  """SCAN-CCI's check read config.loss keys that the rebuilt config lacks: summary and fer_jax.load of any SCAN-CCI
  checkpoint without --config ended in AttributeError 'class_weights'."""
  rebuilt = checkpointing.config_from_meta(checkpointing.metadata(get_config(spec)))
  validation.validate(rebuilt, training=False)
  expected = get_config(spec)
  models.resolve_dtype(expected)  # as the check resolved the rebuilt config's "auto"
  assert rebuilt.model.to_dict() == expected.model.to_dict()


def test_a_checkpoint_without_a_meta_record_asks_for_its_config(saved, tmp_path):
  _, workdir, _ = saved
  shutil.copytree(workdir, tmp_path / "workdir")
  shutil.rmtree(tmp_path / "workdir" / "checkpoints" / "0" / "meta")
  with pytest.raises(UserError, match=rf"^--checkpoint={tmp_path / 'workdir'} has no meta record to rebuild its "
                                      r"config from: pass its --config=configs/<method>\.py:<dataset>\.$"):
    summary.rebuilt_config(str(tmp_path / "workdir"))


@pytest.mark.integration
def test_summary_of_a_checkpoint_needs_no_config(saved):
  """--config was required even where the checkpoint's meta record gives the model."""
  _, workdir, _ = saved
  given = run_command("fer_jax.summary", "--config=configs/dan.py:synthetic", "--config.input.size=32",
                      f"--checkpoint={workdir}")
  recorded = run_command("fer_jax.summary", f"--checkpoint={workdir}")
  assert given.returncode == 0, given.stderr[-3000:]
  assert recorded.returncode == 0, recorded.stderr[-3000:]
  assert recorded.stdout == given.stdout
  assert_user_error(run_command("fer_jax.summary"), "Pass --config=configs/<method>.py:<dataset>, or a --checkpoint "
                    "whose meta record gives it.")


def test_numbered_modules_are_listed_in_their_numbers_order():
  """SCAN-CCI's 25 region units were listed local_scan_0, _1, _10 … _19, _2."""
  params = {f"local_scan_{n}": {"kernel": np.zeros(n + 1)} for n in (10, 2, 0, 1)}
  params["lhc1"] = {"controller": {"kernel": np.zeros(3)}}
  assert summary.module_table(params, depth=1) == [("lhc1", 3), ("local_scan_0", 1), ("local_scan_1", 2),
                                                   ("local_scan_2", 3), ("local_scan_10", 11)]


@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_a_config_the_weights_do_not_fit_is_named_by_its_differing_fields(saved, kind):
  """An export folder's refusal named the unexpected variables alone, not the model fields its model.json gives."""
  config, workdir, exported = saved
  config = config.copy_and_resolve_references()
  config.model.num_heads = 2
  validation.validate(config, training=False)
  model = models.get_method("dan").build(config.model)
  with pytest.raises(UserError, match=r"differs from the config in num_heads=4 \(config 2\)\) does not fit"):
    summary.trained_variables(config, model, models.abstract_variables(model, config),
                              str(workdir if kind == "checkpoint" else exported))
