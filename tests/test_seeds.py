"""fer_jax.seeds: per-seed commands, and mean ± sample std of every evaluator's metrics over seeds."""

import json
import sys

import numpy as np
import pytest

from fer_jax import seeds
from fer_jax.errors import UserError
from helpers import run_command

CLASSES = ("a", "b")


def _results(accuracy, per_class, tta_accuracy=None):
  results = {"accuracy": accuracy, "mean_class_accuracy": accuracy / 2, "macro_f1": accuracy / 3,
             "per_class_accuracy": dict(zip(CLASSES, per_class))}
  if tta_accuracy is not None:
    results["tta"] = {**results, "accuracy": tta_accuracy}
  return results


REPORTS = {0: {"test": _results(0.8, (0.7, None), 0.82), "occluded": _results(0.5, (0.4, None))},
           1: {"test": _results(0.9, (0.8, None), 0.91), "occluded": _results(0.6, (0.6, None))},
           2: {"test": _results(0.7, (0.9, None), 0.74), "occluded": _results(0.4, (0.2, None))}}


def _write_runs(workdir):
  for seed, evaluators in REPORTS.items():
    (workdir / f"seed_{seed}").mkdir(parents=True)
    (workdir / f"seed_{seed}" / "eval_results.json").write_text(json.dumps({"evaluators": evaluators}))


def test_summary_is_the_mean_and_sample_std_of_every_metric(tmp_path):
  _write_runs(tmp_path)
  summary = seeds.write_summary(str(tmp_path), seeds.read_reports(str(tmp_path), [0, 1, 2]))
  test, occluded = summary["evaluators"]["test"], summary["evaluators"]["occluded"]
  for stats, values in ((test["accuracy"], [0.8, 0.9, 0.7]), (test["tta/accuracy"], [0.82, 0.91, 0.74]),
                        (test["macro_f1"], [0.8 / 3, 0.9 / 3, 0.7 / 3]),
                        (occluded["per_class_accuracy/a"], [0.4, 0.6, 0.2])):
    assert np.isclose(stats["mean"], np.mean(values)) and np.isclose(stats["std"], np.std(values, ddof=1))
  assert test["per_class_accuracy/b"]["mean"] is None  # no seed had an example of b
  assert "tta/accuracy" not in occluded
  assert json.loads((tmp_path / "seeds_summary.json").read_text())["seeds"] == [0, 1, 2]
  table = (tmp_path / "seeds_summary.md").read_text()
  assert "| test | 80.00 ± 10.00 |" in table and "| 82.33 ± 8.50 |" in table
  for picture in ("seeds_per_class.png", "seeds_accuracy.png"):
    assert (tmp_path / picture).stat().st_size > 5000


def test_missing_run_and_bad_seeds_are_user_errors(tmp_path):
  _write_runs(tmp_path)
  with pytest.raises(UserError, match=r"No report yet in .*seed_7/eval_results.json: train those seeds first"):
    seeds.read_reports(str(tmp_path), [0, 7])
  with pytest.raises(UserError, match="comma-separated integers"):
    seeds.parse_seeds(["0", "x"])
  with pytest.raises(UserError, match="each once"):
    seeds.parse_seeds(["1", "1"])


def test_commands_pass_the_config_overrides_on_and_set_the_seed():
  argv = ["--config", "configs/dan.py:synthetic", "--config.num_epochs=2", "--config.seed=5", "--workdir=w",
          "--seeds=0,3", "--print_commands"]
  lines = seeds.commands(argv, "runs", [0, 3])
  python = sys.executable
  assert lines == [
      f"{python} -m fer_jax.main --config=configs/dan.py:synthetic --config.num_epochs=2 --workdir=runs/seed_0 --config.seed=0",
      f"{python} -m fer_jax.main --config=configs/dan.py:synthetic --config.num_epochs=2 --workdir=runs/seed_3 --config.seed=3",
      f"{python} -m fer_jax.seeds --config=configs/dan.py:synthetic --config.num_epochs=2 --workdir=runs --seeds=0,3 "
      "--summarize_only"]


@pytest.mark.integration
def test_summarize_only_from_the_command_line(tmp_path):
  _write_runs(tmp_path)
  result = run_command("fer_jax.seeds", "--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--seeds=0,1,2",
                       "--summarize_only")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| occluded | 50.00 ± 10.00 |" in result.stdout
