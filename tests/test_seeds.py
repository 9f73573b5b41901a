"""fer_jax.seeds: per-seed commands, and mean ± sample std of every evaluator's metrics over seeds."""

import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from fer_jax import seeds
from fer_jax import train
from fer_jax.errors import UserError
from helpers import ROOT, cpu_devices_env, run_command

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


@pytest.mark.parametrize("stop, status", [(train.Preempted, train.PREEMPTED_EXIT_STATUS),
                                          (train.NonFiniteError, 1)])
def test_a_stopped_seed_ends_the_command_with_mains_exit_status(tmp_path, monkeypatch, caplog, stop, status):
  started = []

  def train_and_evaluate(config, workdir):
    started.append((config.seed, workdir))
    if config.seed == 3:
      raise stop("Non-finite training values at step 2" if stop is train.NonFiniteError else "")

  monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
  with pytest.raises(SystemExit) as exited:
    seeds.train_seeds(ml_collections.ConfigDict({"seed": 0}), str(tmp_path), [0, 3, 5])
  assert exited.value.code == status
  assert started == [(0, str(tmp_path / "seed_0")), (3, str(tmp_path / "seed_3"))]  # seed 5 never started
  assert ("Non-finite training values at step 2" in caplog.text) == (stop is train.NonFiniteError)


# `python -m fer_jax.seeds` with the training replaced by a stop (a SIGTERM saves the step, then raises Preempted).
STOPPED_SEEDS = """
import sys
from fer_jax import cli, seeds, train
def train_and_evaluate(config, workdir):
  raise train.Preempted()
train.train_and_evaluate = train_and_evaluate
seeds.define_flags()
sys.argv = ["fer_jax.seeds", *sys.argv[1:]]
cli.run(seeds.main)
"""


@pytest.mark.integration
def test_preempted_seeds_command_exits_75_without_a_traceback(tmp_path):
  result = subprocess.run([sys.executable, "-c", STOPPED_SEEDS, "--config=configs/dan.py:synthetic",
                           f"--workdir={tmp_path}", "--seeds=0,1"], cwd=ROOT, env=cpu_devices_env(1),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == train.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
