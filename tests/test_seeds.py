"""fer_jax.seeds: per-seed commands, and mean ± sample std of every evaluator's metrics over seeds."""

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from fer_jax import seeds
from fer_jax import stopping
from fer_jax import train
from fer_jax.errors import UserError
from helpers import ROOT, assert_user_error, cpu_devices_env, run_command

CLASSES = ("a", "b")
# What every evaluator's results of one run share (seeds.RUN_KEYS).
IDENTITY = {"model": "dan", "dataset": "synthetic/tiny", "split": "test", "class_names": list(CLASSES),
            "num_examples": 70, "pp": "resize(32)|normalize('imagenet')"}
ANY_SEED = ml_collections.ConfigDict({"seed": 0, "model": {"dtype": "float32"}})  # reports recording none match it


def _results(accuracy, per_class, tta_accuracy=None):
  results = {"accuracy": accuracy, "mean_class_accuracy": accuracy / 2, "macro_f1": accuracy / 3,
             "per_class_accuracy": dict(zip(CLASSES, per_class)), **IDENTITY}
  if tta_accuracy is not None:
    results["tta"] = {**results, "accuracy": tta_accuracy, "name": "flip"}
  return results


REPORTS = {0: {"test": _results(0.8, (0.7, None), 0.82), "occluded": _results(0.5, (0.4, None))},
           1: {"test": _results(0.9, (0.8, None), 0.91), "occluded": _results(0.6, (0.6, None))},
           2: {"test": _results(0.7, (0.9, None), 0.74), "occluded": _results(0.4, (0.2, None))}}


def _write_runs(workdir, configs=None):
  for seed, evaluators in REPORTS.items():
    (workdir / f"seed_{seed}").mkdir(parents=True)
    config = {"config": configs[seed]} if configs else {}
    (workdir / f"seed_{seed}" / "eval_results.json").write_text(json.dumps({"evaluators": evaluators, **config}))


def test_summary_is_the_mean_and_sample_std_of_every_metric(tmp_path):
  _write_runs(tmp_path, {seed: {"seed": seed, "num_epochs": 5, "dataset.data_dir": f"/data{seed}"} for seed in REPORTS})
  summary = seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2]))
  test, occluded = summary["evaluators"]["test"], summary["evaluators"]["occluded"]
  for stats, values in ((test["accuracy"], [0.8, 0.9, 0.7]), (test["tta/accuracy"], [0.82, 0.91, 0.74]),
                        (test["macro_f1"], [0.8 / 3, 0.9 / 3, 0.7 / 3]),
                        (occluded["per_class_accuracy/a"], [0.4, 0.6, 0.2])):
    assert np.isclose(stats["mean"], np.mean(values)) and np.isclose(stats["std"], np.std(values, ddof=1))
  assert test["per_class_accuracy/b"]["mean"] is None  # no seed had an example of b
  assert "tta/accuracy" not in occluded
  written = json.loads((tmp_path / "seeds_summary.json").read_text())
  assert written["seeds"] == [0, 1, 2]
  assert written["config"] == {"num_epochs": 5}  # what the seeds share: not the seed, not the data's folder
  assert written["runs"]["test"] == {**IDENTITY, "tta": "flip"} and written["runs"]["occluded"]["tta"] == "none"
  table = (tmp_path / "seeds_summary.md").read_text()
  assert "over seeds 0, 1, 2 of dan" in table
  assert "| test | synthetic/tiny | test | 70 | 80.00 ± 10.00 |" in table and "| flip | 82.33 ± 8.50 |" in table
  # each seed's accuracy, not only the mean
  assert "| seed 0 | seed 1 | seed 2 |" in table and "| test | 80.00 | 90.00 | 70.00 |" in table
  for picture in ("seeds_per_class.png", "seeds_accuracy.png"):
    assert (tmp_path / picture).stat().st_size > 5000


def test_an_evaluator_the_seeds_skipped_is_in_the_summary_with_why(tmp_path):
  """Seeds trained on a set prepared without a subset list skipped its evaluator; the summary had no trace of it."""
  _write_runs(tmp_path)
  for seed in REPORTS:
    report = json.loads((tmp_path / f"seed_{seed}" / "eval_results.json").read_text())
    report["skipped_evaluators"] = {"pose45": "rafdb has no split 'test_pose45'"}
    (tmp_path / f"seed_{seed}" / "eval_results.json").write_text(json.dumps(report))
  summary = seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2]))
  assert summary["skipped_evaluators"] == {"pose45": "rafdb has no split 'test_pose45'"}
  assert "| pose45 | skipped: rafdb has no split 'test_pose45' |" in (tmp_path / "seeds_summary.md").read_text()


def test_the_summary_of_selected_epochs_says_how_each_seed_chose_its_weights(tmp_path):
  _write_runs(tmp_path)
  for seed in REPORTS:
    report = json.loads((tmp_path / f"seed_{seed}" / "eval_results.json").read_text())
    report["selection"] = {"metric": "accuracy", "evaluator": "eval", "dataset": "synthetic/tiny", "split": "test",
                           "epoch": seed + 2, "value": 0.5, "trained_epochs": 5, "reported_on_the_same_split": ["test"]}
    (tmp_path / f"seed_{seed}" / "eval_results.json").write_text(json.dumps(report))
  summary = seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2]))
  assert summary["selection"]["epoch"] == {0: 2, 1: 3, 2: 4}
  assert ("Weights: each seed’s best epoch (seed 0: 2 of 5, seed 1: 3 of 5, seed 2: 4 of 5) by accuracy on the "
          "evaluator eval (synthetic/tiny test). test reads images the epoch was chosen on: the best of the "
          "epochs evaluated there, an optimistic figure") in (tmp_path / "seeds_summary.md").read_text()


def test_a_summary_over_other_seeds_replacing_the_last_says_so(tmp_path, caplog):
  _write_runs(tmp_path)
  with caplog.at_level(logging.WARNING):
    seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2]))
    seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2]))
    assert not caplog.records  # the same seeds summarised again
    seeds.write_summary(str(tmp_path), seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1]))
  assert f"The summary over seeds 0, 1, 2 in {tmp_path} is replaced by this one over seeds 0, 1." in caplog.text


def test_importing_seeds_loads_neither_training_nor_inference():
  """The summary's figures come from fer_jax.figures (matplotlib loads when one is drawn); training loads
  only when a seed trains."""
  code = ("import sys, fer_jax.seeds; "
          "print(' '.join(name for name in sys.modules if name.startswith('fer_jax') or name in ('cv2', 'matplotlib')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  loaded = set(result.stdout.split())
  assert "fer_jax.figures" in loaded
  assert not loaded & {"fer_jax.train", "fer_jax.models", "fer_jax.visualize", "fer_jax.predict", "fer_jax.inference",
                       "fer_jax.api", "cv2", "matplotlib"}


def test_missing_run_and_bad_seeds_are_user_errors(tmp_path):
  _write_runs(tmp_path)
  with pytest.raises(UserError, match=r"Not finished in .*: seed_7 \(no run yet\)\. Train them first: run this "
                                      "command without --summarize_only"):
    seeds.read_reports(ANY_SEED, str(tmp_path), [0, 7])
  with pytest.raises(UserError, match="comma-separated integers"):
    seeds.parse_seeds(["0", "x"])
  with pytest.raises(UserError, match="each once"):
    seeds.parse_seeds(["1", "1"])
  with pytest.raises(UserError, match=r"^--seeds=0,-1: -1 is not a seed; each must be from 0 to 4294967295\.$"):
    seeds.parse_seeds(["0", "-1"])  # seed 0 trained, then seed -1 stopped in the data pipeline with a traceback


@pytest.mark.parametrize("in_a_flagfile", [False, True])
def test_commands_pass_the_config_overrides_on_and_set_the_seed(tmp_path, in_a_flagfile):
  """Overrides in a --flagfile were left out: the printed commands trained and summarized another config."""
  overrides = ["--config.num_epochs=2", "--config.seed=5"]
  if in_a_flagfile:
    (tmp_path / "overrides.txt").write_text("\n".join(overrides) + "\n")
    overrides = [f"--flagfile={tmp_path / 'overrides.txt'}"]
  argv = ["seeds.py", "--config", "configs/dan.py:synthetic", *overrides, "--workdir=w", "--seeds=0,3",
          "--print_commands"]
  lines = seeds.commands(argv, "runs", [0, 3])
  python, config, runs = sys.executable, os.path.abspath("configs/dan.py"), os.path.abspath("runs")
  assert lines == [
      f"{python} -m fer_jax.main --config={config}:synthetic --config.num_epochs=2 --workdir={runs}/seed_0 "
      "--config.seed=0",
      f"{python} -m fer_jax.main --config={config}:synthetic --config.num_epochs=2 --workdir={runs}/seed_3 "
      "--config.seed=3",
      f"{python} -m fer_jax.seeds --config={config}:synthetic --config.num_epochs=2 --workdir={runs} --seeds=0,3 "
      "--summarize_only"]


def test_commands_give_the_config_file_workdir_and_data_paths_absolute(monkeypatch, tmp_path):
  """A cluster job starts in another folder: relative --config, --workdir, data_dir and init_from paths (printed as
  given until 2026-12-06) would name other files there, or none."""
  monkeypatch.chdir(tmp_path)
  argv = ["seeds.py", "--config=cfg/dan.py", "--config.dataset.data_dir=data", "--config.init_from=~/runs/pre",
          "--config.eval.transfer.data_dir=other", "--config.dataset.name=rafdb", "--config.init_from_missing=head",
          "--workdir=w", "--print_commands"]
  training = shlex.split(seeds.commands(argv, "w", [1])[0])
  home = os.path.expanduser("~")
  assert training[3:] == [f"--config={tmp_path}/cfg/dan.py", f"--config.dataset.data_dir={tmp_path}/data",
                          f"--config.init_from={home}/runs/pre", f"--config.eval.transfer.data_dir={tmp_path}/other",
                          "--config.dataset.name=rafdb", "--config.init_from_missing=head",
                          f"--workdir={tmp_path}/w/seed_1", "--config.seed=1"]


@pytest.mark.integration
def test_summarize_only_from_the_command_line(tmp_path):
  _write_runs(tmp_path)
  result = run_command("fer_jax.seeds", "--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--seeds=0,1,2",
                       "--summarize_only")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| occluded | synthetic/tiny | test | 70 | 50.00 ± 10.00 |" in result.stdout
  assert (f"Wrote the summary to {tmp_path} (seeds_summary.json, seeds_summary.md, seeds_accuracy.png, "
          "seeds_per_class.png)."
          in result.stderr)


@pytest.mark.parametrize("stop, status", [(stopping.Preempted, stopping.PREEMPTED_EXIT_STATUS),
                                          (stopping.NonFiniteError, 1)])
def test_a_stopped_seed_ends_the_command_with_mains_exit_status(tmp_path, monkeypatch, caplog, stop, status):
  started = []

  def train_and_evaluate(config, workdir):
    started.append((config.seed, workdir))
    if config.seed == 3:
      raise (stop("Non-finite training values at step 2.", "Lower --config.optimizer.lr, then start the command again "
                  "(it resumes from that checkpoint).") if stop is stopping.NonFiniteError else stop(""))

  monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
  with pytest.raises(SystemExit) as exited:
    seeds.train_seeds(ANY_SEED, str(tmp_path), [0, 3, 5])
  assert exited.value.code == status
  assert started == [(0, str(tmp_path / "seed_0")), (3, str(tmp_path / "seed_3"))]  # seed 5 never started
  if stop is stopping.NonFiniteError:  # main's advice, to resume this seed with a lower lr, this command refuses
    assert caplog.messages[-1] == (
        "Non-finite training values at step 2. Every seed trains with one config: give this command the lower "
        "--config.optimizer.lr (or a --config.optimizer.grad_clip_norm) and a new --workdir, or delete the seed "
        f"folders in {tmp_path} first.")


# `python -m fer_jax.seeds` with the training replaced by a stop (a SIGTERM saves the step, then raises Preempted).
STOPPED_SEEDS = """
import sys
from fer_jax import cli, seeds, stopping, train
def train_and_evaluate(config, workdir):
  raise stopping.Preempted()
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
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


def _run(model="dan", tta="flip", classes=CLASSES, evaluators=("test", "occluded")):
  """A seed's report as training writes it: each evaluator's results with the run's model, data and TTA."""
  identity = {"model": model, "dataset": "synthetic/tiny", "split": "test", "class_names": list(classes),
              "num_examples": 70, "pp": "resize(32)|normalize('imagenet')"}
  report = {name: {**_results(0.5, (0.5, 0.5)), **identity} for name in evaluators}
  report["test"]["tta"] = {**_results(0.6, (0.6, 0.6)), "name": tta}
  return report


def _write_reports(workdir, reports):
  for seed, evaluators in reports.items():
    (workdir / f"seed_{seed}").mkdir(parents=True)
    (workdir / f"seed_{seed}" / "eval_results.json").write_text(json.dumps({"evaluators": evaluators}))


def test_reports_of_different_runs_are_refused_naming_the_seed_folders_and_what_differs(tmp_path):
  _write_reports(tmp_path, {0: _run(), 1: _run(model="scan_cci", classes=("b", "a")), 2: _run(tta="none"),
                            3: _run(evaluators=("test",)), 4: _run()})
  with pytest.raises(UserError) as refused:
    seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2, 3, 4])
  message = str(refused.value)
  assert f"The seed folders in {tmp_path} hold different runs" in message
  assert "seed_1 differs from seed_0 in model 'scan_cci' (not 'dan') in test, occluded; class_names ['b', 'a'] " \
         "(not ['a', 'b']) in test, occluded" in message
  assert "seed_2 differs from seed_0 in tta 'none' (not 'flip') in test" in message
  assert "seed_3 differs from seed_0 in evaluators test (not test, occluded)" in message
  assert "seed_4" not in message and "drop the others from --seeds" in message
  assert set(seeds.read_reports(ANY_SEED, str(tmp_path), [0, 4])) == {0, 4}


# A command's config, and how its runs record it (model.dtype "auto" resolved on the CPU the tests ran on).
COMMAND = {"seed": 0, "num_epochs": 5, "optimizer": {"lr": 0.1, "schedule": "constant"}, "eval": {"tta": "flip"},
           "eval_batch_size": 64, "dataset": {"data_dir": "/a"}, "log_every_steps": 50, "model": {"dtype": "auto"}}
RECORDED = {"num_epochs": 5, "optimizer.lr": 0.1, "optimizer.schedule": "constant", "eval.tta": "flip",
            "eval_batch_size": 64, "dataset.data_dir": "/a", "log_every_steps": 50, "model.dtype": "float32"}


def test_reports_are_summarized_only_as_runs_of_the_commands_config_but_for_what_changes_no_number(tmp_path):
  """Seeds differing in where the data is read from, logging or the evaluation batch are one run's; a report of
  another learning rate or TTA is not one of the command's config."""
  configs = {0: {**RECORDED, "seed": 0}, 1: {**RECORDED, "seed": 1, "dataset.data_dir": "/b", "eval_batch_size": 16},
             2: {**RECORDED, "seed": 2, "optimizer.lr": 0.01}, 3: {}, 4: {**RECORDED, "seed": 4, "eval.tta": "none"}}
  for seed, run_config in configs.items():
    (tmp_path / f"seed_{seed}").mkdir()
    (tmp_path / f"seed_{seed}" / "eval_results.json").write_text(json.dumps({"evaluators": _run(),
                                                                             "config": run_config}))
  command = ml_collections.ConfigDict(COMMAND)
  assert set(seeds.read_reports(command, str(tmp_path), [0, 1, 3])) == {0, 1, 3}  # 3: before configs were recorded
  with pytest.raises(UserError) as refused:
    seeds.read_reports(command, str(tmp_path), [0, 1, 2])
  assert str(refused.value) == (
      f"The seed folders in {tmp_path} hold runs this command would not continue as runs of its config: seed_2 "
      "trained with config.optimizer.lr 0.01 (this command's 0.1). The seeds of a summary are of one config: give "
      "the settings the runs trained with (--config.optimizer.lr=0.01), or train this config in a new --workdir.")
  with pytest.raises(UserError, match=r"seed_4 \(its report is of config.eval.tta 'none' \(this command's 'flip'\)"):
    seeds.read_reports(command, str(tmp_path), [0, 4])


def test_a_dtype_left_auto_summarizes_runs_of_any_machine_and_the_selecting_evaluator_is_not_evaluated_again(tmp_path):
  """Seeds trained on GPUs record bfloat16, which "auto" gave them: a CPU summarizes them (it took them for another
  dtype). With select_metric set, the selecting evaluator evaluated at other epochs would have chosen another epoch:
  evaluating the kept weights again does not make the run one of the command's."""
  for seed in (0, 1):
    (tmp_path / f"seed_{seed}").mkdir()
    (tmp_path / f"seed_{seed}" / "eval_results.json").write_text(json.dumps({"evaluators": _run(), "config": {
        **RECORDED, "seed": seed, "model.dtype": "bfloat16", "select_metric": "accuracy", "select_on": "eval",
        "eval.every_epochs": 1}}))
  command = ml_collections.ConfigDict({**COMMAND, "select_metric": "accuracy", "select_on": "eval",
                                       "eval": {"tta": "flip", "every_epochs": 1}})
  assert set(seeds.read_reports(command, str(tmp_path), [0, 1])) == {0, 1}
  command.model.dtype = "float32"  # given, not left to the machine
  with pytest.raises(UserError, match=r"seed_0, seed_1 trained with config.model.dtype 'bfloat16'"):
    seeds.read_reports(command, str(tmp_path), [0, 1])
  command.model.dtype, command.eval.every_epochs = "auto", 2
  with pytest.raises(UserError, match=r"seed_0, seed_1 trained with config.eval.every_epochs 1 \(this command's 2\)"):
    seeds.read_reports(command, str(tmp_path), [0, 1])


def test_one_value_has_no_std_and_fewer_values_than_seeds_are_counted(tmp_path):
  one = seeds.summarize({0: {"evaluators": REPORTS[0]}})
  assert one["evaluators"]["test"]["accuracy"] == {"mean": 0.8, "std": None, "n": 1, "values": [0.8]}
  table = seeds.markdown(one)
  assert "| test | synthetic/tiny | test | 70 | 80.00 ± – |" in table and "| flip | 82.00 ± – |" in table
  reports = {seed: json.loads(json.dumps(report)) for seed, report in REPORTS.items()}
  reports[0]["occluded"]["per_class_accuracy"]["b"] = 0.3  # b had examples under seed 0 only
  reports[1]["occluded"]["per_class_accuracy"]["b"] = 0.5
  summary = seeds.summarize({seed: {"evaluators": report} for seed, report in reports.items()})
  assert summary["evaluators"]["occluded"]["per_class_accuracy/b"]["n"] == 2
  assert summary["evaluators"]["test"]["accuracy"]["n"] == 3
  table = seeds.markdown(summary)
  assert "over seeds 0, 1, 2 of dan (n = 3 per metric unless marked)" in table
  assert "| occluded | 40.00 ± 20.00 | 40.00 ± 14.14 (n=2) |" in table


def _finished_or_not(workdir, seed, checkpoint_steps, reported_step=None, trained_steps=None, config=None):
  """A seed's run: its checkpoints (each with its meta record of `config`) and its report, if `reported_step`."""
  run = workdir / f"seed_{seed}"
  run.mkdir(parents=True, exist_ok=True)
  recorded = {} if config is None else {"config": {**config, "seed": seed}}
  for step in checkpoint_steps:
    (run / "checkpoints" / str(step) / "state").mkdir(parents=True)
    (run / "checkpoints" / str(step) / "meta").mkdir()
    (run / "checkpoints" / str(step) / "meta" / "metadata").write_text(json.dumps(recorded))
  if reported_step is not None:
    trained = {} if trained_steps is None else {"trained_steps": trained_steps}
    (run / "eval_results.json").write_text(json.dumps({"step": reported_step, **trained, "evaluators": REPORTS[0],
                                                       **recorded}))


def test_a_finished_seed_is_only_read_and_the_others_train(tmp_path, monkeypatch):
  _finished_or_not(tmp_path, 0, [2, 4, "6.orbax-checkpoint-tmp-17"], reported_step=4)  # finished (a save left behind)
  _finished_or_not(tmp_path, 1, [2, 6], reported_step=2)  # resumed after an earlier report, then stopped
  _finished_or_not(tmp_path, 2, [4])  # stopped before its report
  _finished_or_not(tmp_path, 5, [4, 6], reported_step=2, trained_steps=6)  # reports its best epoch (restore_best)
  _finished_or_not(tmp_path, 6, [4, 6], reported_step=2, trained_steps=4)  # resumed after that report, then stopped
  started = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: started.append(config.seed))
  seeds.train_seeds(ANY_SEED, str(tmp_path), [0, 1, 2, 3, 5, 6])
  assert started == [1, 2, 3, 6]
  started.clear()
  seeds.train_seeds(ANY_SEED, str(tmp_path), [0])
  assert started == []
  _finished_or_not(tmp_path, 4, [2])
  (tmp_path / "seed_4" / "eval_results.json").write_text('{"step": 2, "evalua')  # cut off while written
  with pytest.raises(UserError, match=r"seed_4/eval_results.json is not a complete report .*: delete it"):
    seeds.train_seeds(ANY_SEED, str(tmp_path), [4])
  (tmp_path / "seed_4" / "eval_results.json").write_text("[]")  # JSON, no report: it raised AttributeError
  with pytest.raises(UserError, match=r"seed_4/eval_results.json is not a complete report \(a JSON list, not an "
                                      r"object\): delete it"):
    seeds.train_seeds(ANY_SEED, str(tmp_path), [4])



def test_seed_runs_a_resume_would_not_make_runs_of_the_commands_config_are_refused_before_any_training(
    tmp_path, monkeypatch):
  """Finished seeds of another learning rate were read as finished (the old table, exit 0), and a copy of one seed's
  run in another seed's folder was averaged as a third value."""
  for seed in (0, 1):
    _finished_or_not(tmp_path, seed, [4], reported_step=4, config=RECORDED)
  _finished_or_not(tmp_path, 2, [2], config=RECORDED)  # stopped before its report: its checkpoint's record counts
  shutil.copytree(tmp_path / "seed_0", tmp_path / "seed_5")
  started = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: started.append(config.seed))
  command = ml_collections.ConfigDict({**COMMAND, "num_epochs": 4, "optimizer": {"lr": 0.05, "schedule": "constant"}})
  with pytest.raises(UserError) as refused:
    seeds.train_seeds(command, str(tmp_path), [0, 1, 2, 5])
  assert str(refused.value) == (
      f"The seed folders in {tmp_path} hold runs this command would not continue as runs of its config: seed_0, "
      "seed_1, seed_2 trained with config.num_epochs 5 (this command's 4); seed_0, seed_1, seed_2 trained with "
      "config.optimizer.lr 0.1 (this command's 0.05); seed_5 holds a run of config.seed 0 (move it to seed_0 or "
      "delete it). The seeds of a summary are of one config: give the settings the runs trained with "
      "(--config.num_epochs=5 --config.optimizer.lr=0.1), or train this config in a new --workdir.")
  assert started == []
  cosine = {**RECORDED, "optimizer.schedule": "cosine"}
  _finished_or_not(tmp_path, 6, [4], reported_step=4, config=cosine)
  with pytest.raises(UserError, match=r"seed_6 trained with config.num_epochs 5 \(this command's 6\) \(it shapes the "
                                      r"cosine schedule\)"):
    seeds.train_seeds(ml_collections.ConfigDict({**COMMAND, "num_epochs": 6, "optimizer": {"lr": 0.1,
                                                 "schedule": "cosine"}}), str(tmp_path), [6])


def test_a_finished_seed_of_fewer_epochs_or_other_evaluators_trains_on_and_each_seed_says_why_it_trains(
    tmp_path, monkeypatch, caplog):
  """With num_epochs raised, finished seeds were read (their old reports) and only a stopped one trained on: the
  summary then mixed runs of different lengths."""
  longer = {**RECORDED, "num_epochs": 6}
  _finished_or_not(tmp_path, 0, [4], reported_step=4, config=RECORDED)  # finished at 5 epochs, the command asks 6
  _finished_or_not(tmp_path, 1, [4], reported_step=4, config={**longer, "eval.tta": "none"})  # evaluated without TTA
  alike = {**longer, "eval_batch_size": 16, "dataset.data_dir": "/b"}  # in what changes no number
  _finished_or_not(tmp_path, 2, [4], reported_step=4, config=alike)
  _finished_or_not(tmp_path, 3, [], reported_step=4, config=longer)  # finished, its checkpoints deleted since
  _finished_or_not(tmp_path, 4, [], reported_step=4, config=RECORDED)  # of 5 epochs, its checkpoints deleted since
  _finished_or_not(tmp_path, 6, [4, 7], reported_step=4, config=longer)  # resumed after its report, then stopped
  started = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: started.append(config.seed))
  caplog.set_level(logging.INFO)
  seeds.train_seeds(ml_collections.ConfigDict({**COMMAND, "num_epochs": 6}), str(tmp_path), [0, 1, 2, 3, 4, 6, 7])
  assert started == [0, 1, 4, 6, 7]
  for line in ("Seed 0 in {}/seed_0: its report is of config.num_epochs 5 (this command's 6); training it",
               "Seed 1 in {}/seed_1: its report is of config.eval.tta 'none' (this command's 'flip'); training it",
               "Seed 2 finished in {}/seed_2: reading its report", "Seed 3 finished in {}/seed_3: reading its report",
               "Seed 4 in {}/seed_4: its report is of config.num_epochs 5 (this command's 6) (no checkpoint is left: "
               "it trains from the start); training it",
               "Seed 6 in {}/seed_6: stopped at step 7, after its report of step 4; training it",
               "Seed 7 in {}/seed_7: no run yet; training it"):
    assert line.format(tmp_path) in caplog.text


def test_only_finished_runs_are_summarized(tmp_path):
  """A seed resumed after its report, then stopped, was summarized from its stale report."""
  _finished_or_not(tmp_path, 0, [11], reported_step=11, config=RECORDED)
  _finished_or_not(tmp_path, 1, [7, 11], reported_step=7, config=RECORDED)
  with pytest.raises(UserError) as refused:
    seeds.read_reports(ml_collections.ConfigDict(COMMAND), str(tmp_path), [0, 1])
  assert str(refused.value) == (
      f"Not finished in {tmp_path}: seed_1 (stopped at step 11, after its report of step 7). Train them first: run "
      "this command without --summarize_only (or their commands from --print_commands), or drop them from --seeds.")
  assert set(seeds.read_reports(ml_collections.ConfigDict(COMMAND), str(tmp_path), [0])) == {0}


@pytest.mark.integration
def test_summarize_only_refuses_a_stale_report_and_a_copy_of_another_seeds_run(tmp_path):
  for seed in (0, 1):  # runs of today's configs/dan.py:synthetic record its drop_last (config_lib.ADDED_SINCE)
    _finished_or_not(tmp_path, seed, [7], reported_step=7, config={"dataset.drop_last": False})
  shutil.copytree(tmp_path / "seed_0", tmp_path / "seed_5")
  summarize = ("fer_jax.seeds", "--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--summarize_only")
  assert_user_error(run_command(*summarize, "--seeds=0,1,5"), "seed_5 holds a run of config.seed 0 (move it to seed_0")
  _finished_or_not(tmp_path, 2, [7, 11], reported_step=7)
  assert_user_error(run_command(*summarize, "--seeds=0,1,2"), "seed_2 (stopped at step 11, after its report of step 7)",
                    "run this command without --summarize_only")
  assert not (tmp_path / "seeds_summary.json").exists()

@pytest.mark.integration
def test_print_commands_read_every_argument_form_absl_accepts(tmp_path):
  result = run_command("fer_jax.seeds", "--config", "configs/dan.py:synthetic", "--config.optimizer.lr", "0.01",
                       "-config.num_epochs", "3", "--noconfig.restore_best", "-config.batch_size=16", "--config.seed",
                       "7", "--workdir", str(tmp_path), "--seeds", "0,1", "--print_commands")
  assert result.returncode == 0, result.stderr[-2000:]
  forwarded = [f"--config={ROOT}/configs/dan.py:synthetic", "--config.optimizer.lr=0.01", "--config.num_epochs=3",
               "--noconfig.restore_best", "--config.batch_size=16"]
  lines = [shlex.split(line) for line in result.stdout.splitlines()]
  assert [argv[1:] for argv in lines] == [
      ["-m", "fer_jax.main", *forwarded, f"--workdir={tmp_path}/seed_0", "--config.seed=0"],
      ["-m", "fer_jax.main", *forwarded, f"--workdir={tmp_path}/seed_1", "--config.seed=1"],
      ["-m", "fer_jax.seeds", *forwarded, f"--workdir={tmp_path}", "--seeds=0,1", "--summarize_only"]]


@pytest.mark.integration
def test_summarizing_seeds_of_different_runs_exits_2(tmp_path):
  _write_reports(tmp_path, {0: _run(), 1: _run(model="scan_cci")})
  result = run_command("fer_jax.seeds", "--config=configs/dan.py:synthetic", f"--workdir={tmp_path}", "--seeds=0,1",
                       "--summarize_only")
  assert_user_error(result, "seed_1 differs from seed_0 in model 'scan_cci' (not 'dan')")
  assert not (tmp_path / "seeds_summary.json").exists()


def test_a_report_without_evaluators_is_named_with_its_fix(tmp_path):
  """A report of a fer_jax from before 2026-12-01 (no "evaluators") ended the summary with a KeyError traceback."""
  _write_runs(tmp_path)
  (tmp_path / "seed_1" / "eval_results.json").write_text(json.dumps({"accuracy": 0.9, "step": 8}))
  with pytest.raises(UserError, match=r"seed_1/eval_results\.json is not a complete report \(no \"evaluators\": .*\): "
                                      "delete it and run this command again"):
    seeds.read_reports(ANY_SEED, str(tmp_path), [0, 1, 2])


def test_the_markers_of_many_seeds_stay_over_their_evaluator(tmp_path, monkeypatch):
  """With 16 seeds the markers were spread ±0.9 around each evaluator, nearer its neighbours' bars than its own."""
  from fer_jax import figures
  import matplotlib.axes
  drawn, plot = [], matplotlib.axes.Axes.plot
  monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, *rest, **options: (drawn.append(list(x)),
                                                                                       plot(self, x, *rest, **options))[1])
  figures.plot_accuracies({f"seed {s}": {"test": 0.9, "occluded": 0.5} for s in range(16)}, str(tmp_path / "a.png"))
  assert len(drawn) == 16 and all(abs(x - evaluator) <= 0.4 for xs in drawn for evaluator, x in enumerate(xs))


def test_asking_for_predictions_or_tta_does_not_refuse_seeds_that_selected_on_eval(tmp_path):
  """eval.predictions and eval.tta (the report's, not the selecting evaluator's) fell under the selecting evaluator's
  "eval." keys: seeds selected on eval were refused; its epochs and split still are."""
  from fer_jax import config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.select_metric = "accuracy"
  (tmp_path / "seed_0").mkdir()
  (tmp_path / "seed_0" / "eval_results.json").write_text(json.dumps(
      {"config": config_lib.flat(seeds.seed_config(config, 0)), "trained_steps": 10, "evaluators": {"test": {}}}))
  config.eval.update(predictions=True, tta="flip")
  seeds.check_runs(config, str(tmp_path), [0])
  config.eval.every_epochs = 2
  with pytest.raises(UserError, match="eval.every_epochs"):
    seeds.check_runs(config, str(tmp_path), [0])


def test_seeds_recorded_before_a_key_was_added_are_compared_as_they_trained(tmp_path):
  """A run recorded before dataset.drop_last existed dropped each epoch's last batch; `seeds` compared it on nothing
  (config_lib.ADDED_SINCE applied only on resume): a summary would mix seeds trained with and without the last
  batch, and an unfinished one failed only once the seeds before it had trained."""
  from fer_jax import config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  recorded = config_lib.flat(seeds.seed_config(config, 0))
  del recorded["dataset.drop_last"]
  (tmp_path / "seed_0").mkdir()
  (tmp_path / "seed_0" / "eval_results.json").write_text(json.dumps(
      {"config": recorded, "trained_steps": 10, "evaluators": {"test": {}}}))
  with pytest.raises(UserError, match=r"seed_0 trained with config.dataset.drop_last True \(this command's False\)\..*"
                                      r"\(--config.dataset.drop_last=true\)"):
    seeds.check_runs(config, str(tmp_path), [0, 1])
  config.dataset.drop_last = True
  seeds.check_runs(config, str(tmp_path), [0, 1])  # seed_1 has no run: nothing recorded to compare
