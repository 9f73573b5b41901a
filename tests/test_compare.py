"""fer_jax.compare: several runs' reports side by side, with the config keys they differ in."""

import csv
import json
import os
import subprocess
import sys

import pytest

from fer_jax import compare
from fer_jax import config_lib
from fer_jax import provenance
from fer_jax import train
from helpers import ROOT, short_tiny_net_run


def _compare(*args):
  return subprocess.run([sys.executable, "-m", "fer_jax.compare", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.integration
def test_two_runs_are_compared_by_their_reports_and_the_keys_they_differ_in(tmp_path):
  """A researcher had only each run's report, and a diff of their flat configs by hand."""
  plain = short_tiny_net_run()
  plain.log_every_steps = 2  # differs, and changes no result: not a column
  faster = short_tiny_net_run()
  faster.optimizer.lr = 0.01
  faster.update(select_metric="accuracy", restore_best=True)
  reports = {name: train.train_and_evaluate(config, str(tmp_path / "sweep" / name))
             for name, config in (("lr_base", plain), ("lr_high", faster))}
  table = tmp_path / "sweep" / "table.csv"  # beside the runs: a second glob matches it, and keeps the folders only
  for _ in range(2):
    result = _compare(f"--workdir={tmp_path / 'sweep' / '*'}", f"--output={table}")
    assert result.returncode == 0, result.stderr[-2000:]
  percent = lambda value: f"{100 * value:.2f}"  # noqa: E731
  base, high = reports["lr_base"], reports["lr_high"]
  selection = high["selection"]
  commit = provenance.software()["git_commit"]
  assert f"| lr_base | step {base['step']}, last | {percent(base['accuracy'])} | " in result.stdout
  assert (f"| lr_high | step {high['step']}, best epoch {selection['epoch']} of {selection['trained_epochs']} | "
          f"{percent(high['accuracy'])} | {percent(high['mean_class_accuracy'])} | {percent(high['macro_f1'])} |"
          in result.stdout)
  lr = base["config"]["optimizer.lr"]
  assert "| run | optimizer.lr | restore_best | select_metric | commit |" in result.stdout
  assert f"| lr_base | {json.dumps(lr)} | false | \"\" | " in result.stdout
  assert "| lr_high | 0.01 | true | accuracy | " + (commit[:10] if commit else "–") in result.stdout
  with open(table, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [row["run"] for row in rows] == ["lr_base", "lr_high"]
  assert rows[1]["optimizer.lr"] == "0.01" and rows[1]["test accuracy"] == percent(high["accuracy"])
  assert rows[0]["workdir"] == str(tmp_path / "sweep" / "lr_base")


def test_a_workdir_without_a_report_a_damaged_one_or_a_pattern_matching_nothing_is_named(tmp_path):
  (tmp_path / "running").mkdir()
  result = _compare(f"--workdir={tmp_path / 'running'}")
  assert result.returncode == 2
  assert f"{tmp_path / 'running'} holds no eval_results.json: pass a workdir whose training has ended" in result.stderr
  assert (f"--workdir={tmp_path / 'gone'} does not exist: pass a training run's folder"
          in _compare(f"--workdir={tmp_path / 'gone'}").stderr)  # it "held no eval_results.json"
  (tmp_path / "notes.txt").write_text("")
  with pytest.raises(compare.UserError, match=r"notes.txt is a file: pass a training run's folder"):
    compare.expand([str(tmp_path / "notes.txt")])
  nothing = f"--workdir={tmp_path / 'nothing*'}"
  assert f"{nothing} matches no folder." in _compare(nothing).stderr
  (tmp_path / "running" / "eval_results.json").write_text('{"step": 3')
  with pytest.raises(compare.UserError, match=r"eval_results.json is not a complete report \(Expecting .*\): evaluate "
                                              r"the run again"):
    compare.read_reports(compare.expand([str(tmp_path / "running")]))
  (tmp_path / "running" / "eval_results.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError traceback
  with pytest.raises(compare.UserError, match=r"eval_results.json is not a complete report \(JSON nested too deep\)"):
    compare.read_reports(compare.expand([str(tmp_path / "running")]))
  assert "must end in .md or .csv" in _compare(f"--workdir={tmp_path}", "--output=table.txt").stderr


def test_two_folders_of_one_name_are_told_apart_by_their_paths():
  names = compare._names({"a/run": {}, "b/run": {}, "c/other": {}})  # pylint: disable=protected-access
  assert names == {"a/run": "a/run", "b/run": "b/run", "c/other": "other"}



def test_an_evaluations_report_compares_its_data_and_its_checkpoints_training():
  """Two evaluations of one checkpoint on other sets were said to differ in no key: their trained_config alone was
  compared. A report from before a key was added showed it as a difference ("–" against its value then)."""
  trained = {"optimizer.lr": 0.1, "dataset.name": "rafdb", "eval.tta": "none"}
  on_ferplus = {"config": {"optimizer.lr": 0.0003, "dataset.name": "ferplus", "eval.tta": "flip"},
                "trained_config": trained}
  assert compare.run_config(on_ferplus) == {**config_lib.ADDED_SINCE, "optimizer.lr": 0.1, "dataset.name": "ferplus",
                                            "eval.tta": "flip"}
  old, new = {"config": {"optimizer.lr": 0.1}}, {"config": {"optimizer.lr": 0.1, **config_lib.ADDED_SINCE}}
  reports = {"old": {**old, "evaluators": {}}, "new": {**new, "evaluators": {}}}
  assert compare.config_columns(reports)[0] == ["commit"]  # no key differs


def _results(dataset, split, examples, classes, accuracy):
  return {"dataset": dataset, "split": split, "num_examples": examples, "class_names": list("abcdefgh"[:classes]),
          "accuracy": accuracy, "mean_class_accuracy": accuracy, "macro_f1": accuracy}


def test_an_evaluator_reading_other_images_or_skipped_in_some_runs_is_said_so():
  """Columns were lined up by evaluator name alone: a 7-class model's AffectNet accuracy (its contempt images left
  out) beside an 8-class one's over every image; a run that skipped its pose45 evaluator showed "–", and the configs
  were said to differ in no key that changes the results."""
  seven = {"config": {"seed": 0}, "evaluators": {"test": _results("rafdb", "test", 70, 7, 0.5),
                                                 "pose45": _results("rafdb", "test_pose45", 9, 7, 0.25),
                                                 "affectnet": _results("affectnet", "validation", 7, 7, 1 / 7)}}
  eight = {"config": {"seed": 0}, "skipped_evaluators": {"pose45": "rafdb has no split 'test_pose45'"},
           "evaluators": {"test": _results("rafdb", "test", 70, 7, 0.5),
                          "affectnet": _results("affectnet", "validation", 8, 8, 0.25)}}
  text = compare.markdown({"runs/seven": seven, "runs/eight": eight})
  assert "| eight | –, evaluated | 50.00 | 50.00 | 50.00 | skipped | skipped | skipped | 25.00 |" in text
  assert ("- affectnet reads other images in other runs: seven: affectnet validation, 7 examples of 7 classes; eight: "
          "affectnet validation, 8 examples of 8 classes.") in text
  assert "- eight skipped pose45: rafdb has no split 'test_pose45'." in text
  eight["changed_on_resume"] = [{"step": 40, "key": "optimizer.lr", "saved": 0.1, "now": 0.01}]
  assert ("- eight resumed at step 40 with optimizer.lr=0.01 (trained with 0.1 before)."
          in compare.markdown({"runs/seven": seven, "runs/eight": eight}))
  assert "test reads" not in text
  assert "The runs' configs differ in no key that changes their results (but see the notes above)." in text


def test_a_folder_of_seeds_is_named_with_the_pattern_of_its_runs(tmp_path):
  (tmp_path / "seeds_summary.json").write_text("{}")
  with pytest.raises(compare.UserError, match=rf"^{tmp_path} is a folder of fer_jax.seeds runs \(its seeds_summary.md "
                                              rf"has their mean and spread\): pass its runs, "
                                              rf"--workdir='{tmp_path}/seed_\*'"):
    compare.expand([str(tmp_path)])
