r"""Several runs' reports side by side, and the config keys in which the runs differ.

  python -m fer_jax.compare --workdir=workdirs/dan_lr01 --workdir=workdirs/dan_lr001 [--workdir='sweep/*'] \
      [--output=comparison.md | comparison.csv]

Each --workdir (repeatable; a glob pattern is expanded, in name order, to the folders it matches) is a training or
`--mode=eval` workdir holding its report, eval_results.json (a `fer_jax.seeds` folder is refused, naming its runs'
pattern, DIR/seed_*). The first table gives, per run, the weights reported (their step, and the best epoch E of N
where the run selected them), then each evaluator's accuracy, mean-class accuracy and macro F1 in %, and its TTA
accuracy where the report has one; an evaluator a run lacks is "–", one it skipped (its split missing) "skipped".
Below it, a line for each evaluator whose runs read other images (another data set, split, example count or classes:
a 7-class model leaves AffectNet's contempt images out) and each one skipped. The second gives every config key
(flat, as the reports record it) whose value differs among the runs, but for those that change no reported number
(where data is read, logging, checkpoints, the evaluation batch, `config.model.remat`), and the commit each report
names (`provenance`, where it was made from a git checkout). A `--mode=eval` report compares the config its
checkpoint records (`trained_config`) with the evaluation's own data, evaluators and test-time settings; a report of
an earlier fer_jax, its keys added since read as what it ran (`config_lib.ADDED_SINCE`).

The tables are printed as Markdown; --output also writes them to a .md file, or to a .csv file as one row per run
(every column of both tables). Reading needs no JAX and no device.
"""

import csv
import glob
import json
import os

from absl import flags

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import files
from fer_jax.errors import UserError

METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")


def read_report(path: str, fix: str) -> dict:
  """The report in `path` (an eval_results.json); a UserError naming what is wrong with it, and `fix`."""
  try:
    report = files.strict_json_object(path)
  except ValueError as e:
    raise UserError(f"{path} is not a complete report ({e}): {fix}") from None
  if not isinstance(report.get("evaluators"), dict):
    raise UserError(f"{path} is not a complete report (no \"evaluators\": written by a fer_jax from before 2026-12-01, "
                    f"or not by fer_jax): {fix}")
  return report


def expand(patterns: list[str]) -> list[str]:
  """The workdirs `patterns` name (`~` expanded), each glob pattern expanded in name order, each named once; a
  UserError for a pattern that matches nothing, a workdir that is no folder, or one without a report."""
  workdirs = []
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    matched = sorted(filter(os.path.isdir, glob.glob(pattern))) if glob.has_magic(pattern) else [pattern]
    if not matched:
      raise UserError(f"--workdir={pattern} matches no folder.")
    workdirs += [path for path in matched if path not in workdirs]
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise UserError(f"--workdir={workdir} {'is a file' if os.path.exists(workdir) else 'does not exist'}: pass a "
                      "training run's folder (or a pattern, --workdir='workdirs/dan_*').")
    if os.path.isfile(os.path.join(workdir, "seeds_summary.json")):
      raise UserError(f"{workdir} is a folder of fer_jax.seeds runs (its seeds_summary.md has their mean and spread): "
                      f"pass its runs, --workdir='{os.path.join(workdir, 'seed_*')}'.")
    if not os.path.isfile(os.path.join(workdir, files.REPORT)):
      raise UserError(f"{workdir} holds no {files.REPORT}: pass a workdir whose training has ended (its report is "
                      "written then), or evaluate a checkpoint into it (python -m fer_jax.main --mode=eval).")
  return workdirs


def read_reports(workdirs: list[str]) -> dict[str, dict]:
  return {workdir: read_report(os.path.join(workdir, files.REPORT), "evaluate the run again (python -m fer_jax.main "
                                                                 "--mode=eval) to write it anew.")
          for workdir in workdirs}


def _names(reports: dict[str, dict]) -> dict[str, str]:
  """Each workdir's shortest distinct name: its folder name, or its path where two folders share a name."""
  short = {workdir: os.path.basename(os.path.normpath(workdir)) for workdir in reports}
  repeated = {name for name in short.values() if list(short.values()).count(name) > 1}
  return {workdir: workdir if name in repeated else name for workdir, name in short.items()}


def _weights(report: dict) -> str:
  step = "–" if report.get("step") is None else f"step {report['step']}"
  if selection := report.get("selection"):
    return f"{step}, best epoch {selection['epoch']} of {selection['trained_epochs']}"
  return f"{step}, last" if report.get("trained_steps") is not None else f"{step}, evaluated"


def percent(value) -> str:
  """A fraction as a table's cell in %, "–" for none."""
  return "–" if value is None else f"{100 * value:.2f}"


def result_columns(reports: dict[str, dict]) -> tuple[list[str], dict[str, list[str]]]:
  """(header, {workdir: cells}) of the results table, the evaluators in the order the runs first name them."""
  evaluators = list(dict.fromkeys(name for report in reports.values() for name in report["evaluators"]))
  with_tta = {name for report in reports.values() for name, results in report["evaluators"].items()
              if results.get("tta")}
  header = ["weights"] + [f"{name} {metric}" for name in evaluators
                          for metric in (*METRICS, *(("TTA accuracy",) if name in with_tta else ()))]
  rows = {}
  for workdir, report in reports.items():
    cells = [_weights(report)]
    for name in evaluators:
      results = report["evaluators"].get(name, {})
      if name in (report.get("skipped_evaluators") or {}):
        cells += ["skipped"] * len(METRICS) + (["skipped"] if name in with_tta else [])
        continue
      cells += [percent(results.get(metric)) for metric in METRICS]
      if name in with_tta:
        cells.append(percent((results.get("tta") or {}).get("accuracy")))
    rows[workdir] = cells
  return header, rows


# What an evaluation of a checkpoint sets itself (its `config`), where the rest is its training's (`trained_config`).
EVALUATION_KEYS = ("dataset.", "eval.", "evals.", "input.eval_pp", "model.dtype")


def run_config(report: dict) -> dict:
  """The flat config a report's figures come from: a training's, as it trained (`config_lib.as_trained`: a report of
  an earlier fer_jax lacks the keys added since); an evaluation's, its checkpoint's training config with the
  evaluation's data, evaluators and test-time settings."""
  config = config_lib.as_trained(report.get("config") or {})
  if trained := report.get("trained_config"):
    return {**config_lib.as_trained(trained), **{key: value for key, value in config.items()
                                                 if config_lib.named_by(key, EVALUATION_KEYS)}}
  return config


def config_columns(reports: dict[str, dict]) -> tuple[list[str], dict[str, list[str]]]:
  """(header, {workdir: cells}) of the config keys that differ among the runs (`run_config`), and each report's
  commit."""
  configs = {workdir: run_config(report) for workdir, report in reports.items()}
  keys = sorted({key for config in configs.values() for key in config
                 if not config_lib.named_by(key, config_lib.NOT_OF_THE_RESULTS)
                 and len({json.dumps(other.get(key), sort_keys=True) for other in configs.values()}) > 1})
  header = [*keys, "commit"]
  rows = {workdir: [("–" if key not in config else _value(config[key])) for key in keys]
          + [_commit(reports[workdir])] for workdir, config in configs.items()}
  return header, rows


def _value(value) -> str:
  """A config value as a cell: a string as it is (the empty one as ""), others as JSON (true, [1, 2])."""
  return value if isinstance(value, str) and value else json.dumps(value)


def _commit(report: dict) -> str:
  software = report.get("provenance") or {}
  commit = software.get("git_commit")
  return "–" if not commit else commit[:10] + (" (modified)" if software.get("git_modified") else "")


def _markdown_table(names: dict[str, str], header: list[str], rows: dict[str, list[str]]) -> list[str]:
  return (["| run | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
          + [f"| {names[workdir]} | " + " | ".join(cells) + " |" for workdir, cells in rows.items()])


def data_notes(reports: dict[str, dict], names: dict[str, str]) -> list[str]:
  """A line per evaluator whose runs read other images (another data set, split, example count or classes), per
  evaluator a run skipped, and per setting a run's resume changed (its config column shows the last value): their
  columns do not compare like with like."""
  notes = []
  for name in dict.fromkeys(name for report in reports.values() for name in report["evaluators"]):
    read = {}
    for workdir, report in reports.items():
      if results := report["evaluators"].get(name):
        described = (f"{results.get('dataset')} {results.get('split')}, {results.get('num_examples')} examples of "
                     f"{len(results.get('class_names') or ())} classes")
        read.setdefault(described, []).append(names[workdir])
    if len(read) > 1:
      notes.append(f"{name} reads other images in other runs: " + "; ".join(
          f"{', '.join(runs)}: {described}" for described, runs in read.items()) + ".")
  for workdir, report in reports.items():
    notes += [f"{names[workdir]} skipped {name}: {reason}." for name, reason in
              (report.get("skipped_evaluators") or {}).items()]
    notes += [f"{names[workdir]} resumed at step {change['step']} with {change['key']}={change['now']!r} (trained with "
              f"{change['saved']!r} before)." for change in report.get("changed_on_resume") or ()]
  return notes


def markdown(reports: dict[str, dict]) -> str:
  names = _names(reports)
  config_header, config_rows = config_columns(reports)
  notes = data_notes(reports, names)
  lines = [f"{errors.counted(len(reports), 'run')}; accuracy, mean-class accuracy and macro F1 in %.", "",
           *_markdown_table(names, *result_columns(reports)), "", *(f"- {note}" for note in notes),
           *([""] if notes else [])]
  if len(config_header) > 1:
    lines += ["Config keys in which the runs differ:", ""]
  elif len(reports) > 1:
    lines += ["The runs' configs differ in no key that changes their results"
              + (" (but see the notes above)." if notes else "."), ""]
  return "\n".join(lines + _markdown_table(names, config_header, config_rows) + [""])


def write_csv(reports: dict[str, dict], path: str) -> None:
  result_header, result_rows = result_columns(reports)
  config_header, config_rows = config_columns(reports)
  with files.written_whole(path, newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["run", "workdir", *result_header, *config_header])
    names = _names(reports)
    for workdir in reports:
      writer.writerow([names[workdir], os.path.abspath(workdir), *result_rows[workdir], *config_rows[workdir]])


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  flags.DEFINE_multi_string("workdir", None, "A run's workdir holding eval_results.json (repeat the flag; a glob "
                            "pattern such as 'sweep/*' is expanded).")
  cli.define_path("output", "", "Also write the tables to this .md file, or to this .csv file (one row per run).")
  cli.mark_required(["workdir"])


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  if args.output:
    if not args.output.lower().endswith((".md", ".csv")):
      raise UserError(f"--output={args.output} must end in .md or .csv.")
    cli.check_writable_file("--output", args.output, "a file path ending in .md or .csv")
  reports = read_reports(expand(args.workdir))
  text = markdown(reports)
  print(text, end="")
  if args.output.lower().endswith(".csv"):
    write_csv(reports, args.output)
  elif args.output:
    files.write_whole(args.output, text)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
