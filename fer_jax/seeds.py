r"""Trains a config over several seeds and reports every evaluator's metrics as mean ± std.

  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2
  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2 --print_commands

Seed N trains in DIR/seed_N with `--config.seed=N` (the initialisation, the data order and the
augmentation all follow it), one after the other; each run resumes where it stopped, and a
finished one is only read. `--print_commands` prints the per-seed training commands instead (one
cluster job each; any other --config.* overrides are passed on) and the command that writes the
summary once they are done (`--summarize_only`).

The summary, over the seeds' DIR/seed_N/eval_results.json: DIR/seeds_summary.json and .md (mean
and sample standard deviation, ddof = 1, of every metric of every evaluator, with and without
TTA, per-class accuracies included), DIR/seeds_per_class.png (per-class accuracy with error
bars, one group per evaluator) and DIR/seeds_accuracy.png (accuracy per evaluator, one marker
per seed).

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
from fer_jax import visualize
from fer_jax.errors import UserError

SCALARS = ("accuracy", "mean_class_accuracy", "macro_f1")


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


def config_arguments(argv) -> list[str]:
  """The --config and --config.* arguments of this command line (as --name=value), without --config.seed."""
  arguments = []
  for index, word in enumerate(argv):
    name = word.split("=", 1)[0]
    if name == "--config" or (name.startswith("--config.") and name != "--config.seed"):
      arguments.append(f"{word}={argv[index + 1]}" if name == "--config" and "=" not in word else word)
  return arguments


def commands(argv, workdir: str, seeds: list[int]) -> list[str]:
  """One `fer_jax.main` command per seed, then this program's summary command."""
  config = config_arguments(argv)
  lines = [shlex.join([sys.executable, "-m", "fer_jax.main", *config, f"--workdir={seed_workdir(workdir, seed)}",
                       f"--config.seed={seed}"]) for seed in seeds]
  lines.append(shlex.join([sys.executable, "-m", "fer_jax.seeds", *config, f"--workdir={workdir}",
                           f"--seeds={','.join(map(str, seeds))}", "--summarize_only"]))
  return lines


def train_seeds(config, workdir: str, seeds: list[int]) -> None:
  """Trains each seed in turn; a stop ends the command as fer_jax.main's does (75 preempted, 1 non-finite)."""
  from fer_jax import train  # JAX starts only when training
  with train.exit_status_on_stop():
    for seed in seeds:
      run_config = config.copy_and_resolve_references()
      run_config.seed = seed
      logging.info("Seed %d in %s", seed, seed_workdir(workdir, seed))
      train.train_and_evaluate(run_config, seed_workdir(workdir, seed))


def read_reports(workdir: str, seeds: list[int]) -> dict[int, dict]:
  """{seed: {evaluator: results}} from each seed's eval_results.json."""
  reports, missing = {}, []
  for seed in seeds:
    path = os.path.join(seed_workdir(workdir, seed), "eval_results.json")
    if not os.path.exists(path):
      missing.append(path)
      continue
    with open(path) as f:
      reports[seed] = json.load(f)["evaluators"]
  if missing:
    raise UserError(f"No report yet in {', '.join(missing)}: train those seeds first (or drop them from --seeds).")
  return reports


def _metrics(results: dict) -> dict[str, float | None]:
  """Every metric of one evaluator's results, flat: "accuracy", "per_class_accuracy/anger", "tta/accuracy", …"""
  flat = {}
  for prefix, entry in (("", results), ("tta/", results.get("tta"))):
    if entry:
      flat.update({f"{prefix}{name}": entry[name] for name in SCALARS})
      flat.update({f"{prefix}per_class_accuracy/{c}": v for c, v in entry["per_class_accuracy"].items()})
  return flat


def _mean_std(values: list) -> dict:
  present = [v for v in values if v is not None]
  if not present:
    return {"mean": None, "std": None, "values": values}
  return {"mean": statistics.fmean(present), "std": statistics.stdev(present) if len(present) > 1 else 0.0,
          "values": values}


def summarize(reports: dict[int, dict]) -> dict:
  """{evaluator: {metric: {mean, std, values}}} over the seeds (evaluators every seed has)."""
  seeds = list(reports)
  names = [name for name in reports[seeds[0]] if all(name in reports[s] for s in seeds)]
  summary = {}
  for name in names:
    per_seed = [_metrics(reports[seed][name]) for seed in seeds]
    summary[name] = {metric: _mean_std([m.get(metric) for m in per_seed]) for metric in per_seed[0]}
  return {"seeds": seeds, "evaluators": summary}


def _cell(stats: dict) -> str:
  return "–" if stats["mean"] is None else f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def markdown(summary: dict) -> str:
  seeds = ", ".join(map(str, summary["seeds"]))
  lines = [f"Mean ± sample standard deviation (%) over seeds {seeds}.", "",
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
  visualize.plot_per_class({n: {c: s["mean"] for c, s in v.items()} for n, v in per_class.items()},
                           {n: {c: s["std"] for c, s in v.items()} for n, v in per_class.items()},
                           os.path.join(workdir, "seeds_per_class.png"),
                           f"per-class accuracy over seeds {', '.join(map(str, summary['seeds']))}")
  visualize.plot_accuracies({f"seed {seed}": {name: results["accuracy"] for name, results in report.items()}
                             for seed, report in reports.items()}, os.path.join(workdir, "seeds_accuracy.png"))
  return summary


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}")
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
