r"""Trains a config over several seeds and reports every evaluator's metrics as mean ± std.

  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2
  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2 --print_commands

Seed N trains in DIR/seed_N with `--config.seed=N` (the initialisation, the data order and the
augmentation all follow it), one after the other; each run resumes where it stopped, and a
finished one (its eval_results.json reports its newest checkpoint's step) is only read: delete
that file to train or evaluate it again. `--print_commands` prints the per-seed training
commands instead (one cluster job each; any other --config.* overrides are passed on) and the
command that writes the summary once they are done (`--summarize_only`).

The summary, over the seeds' DIR/seed_N/eval_results.json: DIR/seeds_summary.json and .md (mean
and sample standard deviation, ddof = 1, of every metric of every evaluator, with and without
TTA, per-class accuracies included; n counts the seeds with a value, and one value has no
standard deviation, "–"), DIR/seeds_per_class.png (per-class accuracy with error bars, one group
per evaluator) and DIR/seeds_accuracy.png (accuracy per evaluator, one marker per seed). Reports
whose evaluators, model, data, classes, preprocessing or TTA differ, or whose recorded configs
differ in a key other than NOT_OF_THE_RUN's, come from different runs: they are refused (exit 2),
not averaged.

Exit status as `fer_jax.main`'s: 75 when SIGTERM/SIGINT stopped a seed's run after saving its step
(run the same command to resume it and train the seeds after it), 1 on a non-finite loss or
gradient (the message names the seed's step and last good checkpoint).
"""

import json
import os
import shlex
import statistics
import sys

from absl import flags
from absl import logging

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import figures
from fer_jax import stopping
from fer_jax.errors import UserError

SCALARS = ("accuracy", "mean_class_accuracy", "macro_f1")
REPORT = "eval_results.json"
# What every seed of one config shares in each evaluator's results (with its TTA's name).
RUN_KEYS = ("model", "dataset", "split", "class_names", "num_examples", "pp")
# Config keys seeds of one run may differ in: where and how often things are written, read and logged.
NOT_OF_THE_RUN = ("seed", *config_lib.NOT_OF_THE_TRAINING)


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  flags.DEFINE_string("workdir", None, "Folder of the runs: DIR/seed_N for each seed, and the summary.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds.")
  flags.DEFINE_bool("print_commands", False, "Print each seed's training command (and the summary's) instead.")
  flags.DEFINE_bool("summarize_only", False, "Only write the summary of runs already finished.")
  flags.mark_flags_as_required(["config", "workdir"])


def parse_seeds(values) -> list[int]:
  try:
    seeds = [int(value) for value in values]
  except ValueError as e:
    raise UserError(f"--seeds takes comma-separated integers, e.g. --seeds=0,1,2 ({e}).") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise UserError(f"--seeds={','.join(values)}: give at least one seed, each once.")
  return seeds


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


def commands(argv, workdir: str, seeds: list[int]) -> list[str]:
  """One `fer_jax.main` command per seed, then this program's summary command."""
  config = config_lib.config_arguments(argv)
  lines = [shlex.join([sys.executable, "-m", "fer_jax.main", *config, f"--workdir={seed_workdir(workdir, seed)}",
                       f"--config.seed={seed}"]) for seed in seeds]
  lines.append(shlex.join([sys.executable, "-m", "fer_jax.seeds", *config, f"--workdir={workdir}",
                           f"--seeds={','.join(map(str, seeds))}", "--summarize_only"]))
  return lines


def _read_report(path: str) -> dict:
  """A seed's eval_results.json."""
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f"{path} is not a complete report ({e}): delete it and run this command again to "
                    "evaluate that seed.") from None


def finished(run_dir: str) -> bool:
  """Whether the run in `run_dir` ended and wrote its report: its eval_results.json reports training up to its
  newest checkpoint's step (a report of fewer steps is from before the run resumed)."""
  report, checkpoints = os.path.join(run_dir, REPORT), os.path.join(run_dir, "checkpoints")
  if not os.path.exists(report) or not os.path.isdir(checkpoints):
    return False
  steps = [int(name) for name in os.listdir(checkpoints) if name.isdigit()]
  record = _read_report(report)
  return bool(steps) and record.get("trained_steps", record.get("step")) == max(steps)  # "step" alone before 2026-12-05


def train_seeds(config, workdir: str, seeds: list[int]) -> None:
  """Trains each unfinished seed in turn; a stop ends the command as fer_jax.main's does (75 preempted,
  1 non-finite)."""
  pending = [seed for seed in seeds if not finished(seed_workdir(workdir, seed))]
  for seed in sorted(set(seeds) - set(pending)):
    logging.info("Seed %d finished in %s: reading its report", seed, seed_workdir(workdir, seed))
  if not pending:
    return
  from fer_jax import train  # the training stack loads only when a seed trains
  with stopping.exit_status_on_stop():
    for seed in pending:
      run_config = config.copy_and_resolve_references()
      run_config.seed = seed
      logging.info("Seed %d in %s", seed, seed_workdir(workdir, seed))
      train.train_and_evaluate(run_config, seed_workdir(workdir, seed))


def read_reports(workdir: str, seeds: list[int]) -> dict[int, dict]:
  """{seed: {evaluator: results}} from each seed's eval_results.json."""
  reports, missing = {}, []
  for seed in seeds:
    path = os.path.join(seed_workdir(workdir, seed), REPORT)
    if not os.path.exists(path):
      missing.append(path)
      continue
    reports[seed] = _read_report(path)
  if missing:
    raise UserError(f"No report yet in {', '.join(missing)}: train those seeds first (or drop them from --seeds).")
  check_same_run(workdir, reports)
  return {seed: report["evaluators"] for seed, report in reports.items()}


def _run_record(evaluators: dict) -> dict:
  """{evaluator: what every seed of one config has alike in its results}."""
  return {name: {**{key: results.get(key) for key in RUN_KEYS}, "tta": results.get("tta", {}).get("name", "none")}
          for name, results in evaluators.items()}


def _differences(first: dict, other: dict) -> list[str]:
  """How the run record `other` differs from `first`, each difference once with the evaluators it is in."""
  found = {} if set(first) == set(other) else {f"evaluators {', '.join(other)} (not {', '.join(first)})": []}
  for name in [name for name in first if name in other]:
    for key, value in first[name].items():
      if other[name][key] != value:
        found.setdefault(f"{key} {other[name][key]!r} (not {value!r})", []).append(name)
  return [difference + (f" in {', '.join(names)}" if names else "") for difference, names in found.items()]


def _config_differences(first: dict, other: dict) -> list[str]:
  """The config keys of the run in which two reports differ (none where a report records no config)."""
  if not first or not other:
    return []
  keys = sorted((set(first) | set(other)) - set(NOT_OF_THE_RUN))
  return [f"config.{key} {other.get(key)!r} (not {first.get(key)!r})" for key in keys if first.get(key) != other.get(key)]


def check_same_run(workdir: str, reports: dict[int, dict]) -> None:
  """Refuses reports that are not of one config: seeds of different runs do not average."""
  (first_seed, first), *others = reports.items()
  differing = []
  for seed, report in others:
    differences = (_differences(_run_record(first["evaluators"]), _run_record(report["evaluators"]))
                   + _config_differences(first.get("config", {}), report.get("config", {})))
    if differences:
      differing.append(f"seed_{seed} differs from seed_{first_seed} in {'; '.join(differences)}")
  if differing:
    raise UserError(f"The seed folders in {workdir} hold different runs: {'. '.join(differing)}. Summarize the "
                    "seeds of one config only: drop the others from --seeds, or train them again in new folders.")


def _metrics(results: dict) -> dict[str, float | None]:
  """Every metric of one evaluator's results, flat: "accuracy", "per_class_accuracy/anger", "tta/accuracy", …"""
  flat = {}
  for prefix, entry in (("", results), ("tta/", results.get("tta"))):
    if entry:
      flat.update({f"{prefix}{name}": entry[name] for name in SCALARS})
      flat.update({f"{prefix}per_class_accuracy/{c}": v for c, v in entry["per_class_accuracy"].items()})
  return flat


def _mean_std(values: list) -> dict:
  """Over the values present (n of them): the mean, and the sample standard deviation from two on."""
  present = [v for v in values if v is not None]
  return {"mean": statistics.fmean(present) if present else None,
          "std": statistics.stdev(present) if len(present) > 1 else None, "n": len(present), "values": values}


def summarize(reports: dict[int, dict]) -> dict:
  """{evaluator: {metric: {mean, std, n, values}}} over the seeds (reports of one run, check_same_run)."""
  seeds = list(reports)
  summary = {}
  for name in reports[seeds[0]]:
    per_seed = [_metrics(reports[seed][name]) for seed in seeds]
    summary[name] = {metric: _mean_std([m.get(metric) for m in per_seed]) for metric in per_seed[0]}
  return {"seeds": seeds, "evaluators": summary}


def _cell(stats: dict) -> str:
  """"mean ± std" in %: "–" for what there are too few values for, "(n=…)" where some seeds have none."""
  if stats["mean"] is None:
    return "–"
  std = "–" if stats["std"] is None else f"{100 * stats['std']:.2f}"
  fewer = f" (n={stats['n']})" if stats["n"] < len(stats["values"]) else ""
  return f"{100 * stats['mean']:.2f} ± {std}{fewer}"


def markdown(summary: dict) -> str:
  seeds = ", ".join(map(str, summary["seeds"]))
  lines = [f"Mean ± sample standard deviation (%) over seeds {seeds} (n = {len(summary['seeds'])} per metric "
           "unless marked).", "",
           "| evaluator | " + " | ".join(SCALARS) + " | TTA accuracy |", "|---|" + "---:|" * (len(SCALARS) + 1)]
  for name, metrics in summary["evaluators"].items():
    tta = _cell(metrics["tta/accuracy"]) if "tta/accuracy" in metrics else "–"
    lines.append(f"| {name} | " + " | ".join(_cell(metrics[m]) for m in SCALARS) + f" | {tta} |")
  first = next(iter(summary["evaluators"].values()))
  classes = [m.split("/", 1)[1] for m in first if m.startswith("per_class_accuracy/")]
  lines += ["", "| evaluator | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
  for name, metrics in summary["evaluators"].items():
    lines.append(f"| {name} | " + " | ".join(_cell(metrics[f"per_class_accuracy/{c}"]) for c in classes) + " |")
  return "\n".join(lines + [""])


def write_summary(workdir: str, reports: dict[int, dict]) -> dict:
  summary = summarize(reports)
  with open(os.path.join(workdir, "seeds_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, "seeds_summary.md"), "w") as f:
    f.write(markdown(summary))
  per_class = {name: {m.split("/", 1)[1]: stats for m, stats in metrics.items() if m.startswith("per_class_accuracy/")}
               for name, metrics in summary["evaluators"].items()}
  figures.plot_per_class({n: {c: s["mean"] for c, s in v.items()} for n, v in per_class.items()},
                         {n: {c: s["std"] for c, s in v.items()} for n, v in per_class.items()},
                         os.path.join(workdir, "seeds_per_class.png"),
                         f"per-class accuracy over seeds {', '.join(map(str, summary['seeds']))}")
  figures.plot_accuracies({f"seed {seed}": {name: results["accuracy"] for name, results in report.items()}
                           for seed, report in reports.items()}, os.path.join(workdir, "seeds_accuracy.png"))
  return summary


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  seeds = parse_seeds(args.seeds)
  if args.print_commands:
    print("\n".join(commands(sys.argv[1:], args.workdir, seeds)))
    return
  if not args.summarize_only:
    train_seeds(args.config, args.workdir, seeds)
  summary = write_summary(args.workdir, read_reports(args.workdir, seeds))
  print(markdown(summary))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
