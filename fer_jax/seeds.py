r"""Trains a config over several seeds and reports every evaluator's metrics as mean ± std.

  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2
  python -m fer_jax.seeds --config=configs/dan.py:synthetic --workdir=DIR --seeds=0,1,2 --print_commands

Seed N trains in DIR/seed_N with `--config.seed=N` (the initialisation, the data order and the
augmentation all follow it), one after the other; each run resumes where it stopped, and a
finished one (`why_unfinished`) is only read: delete its eval_results.json to train or evaluate it
again. A finished run whose report is of fewer epochs or other evaluation settings than the
command's is resumed (it trains on, or only evaluates again). Before any training, seed folders
holding another seed's run, or a run of settings a resume would not bring it to (another
learning rate, model, data…, fewer epochs), are refused (exit 2), naming the folders and keys.
`--print_commands` prints the per-seed training commands instead (one cluster job each; any
other --config.* overrides are passed on; the config file, --workdir, data_dir and init_from as absolute paths,
so that a job started in another folder reads the same files) and the command that writes the summary once they are
done (`--summarize_only`, which checks the runs against its --config alike and summarizes only
finished ones).

The summary, over the seeds' DIR/seed_N/eval_results.json: DIR/seeds_summary.json and .md (mean
and sample standard deviation, ddof = 1, of every metric of every evaluator, with and without
TTA, per-class accuracies included; n counts the seeds with a value, and one value has no
standard deviation, "–"; the flat config the seeds share but the seed, and each evaluator's data
set, split and TTA), DIR/seeds_per_class.png (per-class accuracy with error bars, one group per
evaluator) and DIR/seeds_accuracy.png (accuracy per evaluator, one marker per seed). Reports
whose evaluators, model, data, classes, preprocessing or TTA differ come from different runs:
they are refused (exit 2), not averaged.

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

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import compare
from fer_jax import config_lib
from fer_jax import figures
from fer_jax import files
from fer_jax import mesh as mesh_lib
from fer_jax import stopping
from fer_jax.errors import UserError

# What every seed of one config shares in each evaluator's results (with its TTA's name).
RUN_KEYS = ("model", "dataset", "split", "class_names", "num_examples", "pp")
# What resuming a seed's run brings it up to: more epochs (not under a schedule they shape,
# config_lib.resume_differences) and other evaluators (a finished run evaluates again). Other keys a resume may
# change (the learning rate, clipping, selection, initialisation) would leave the seeds trained differently, and
# fewer epochs would not undo training.
BROUGHT_UP_TO_DATE = ("num_epochs", "eval.", "evals.", "dataset.test_split")


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  cli.define_path("workdir", None, "Folder of the runs: DIR/seed_N for each seed, and the summary.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds.")
  flags.DEFINE_bool("print_commands", False, "Print each seed's training command (and the summary's) instead.")
  flags.DEFINE_bool("summarize_only", False, "Only summarize the seeds' runs, each finished as --config has it.")
  cli.mark_required(["config", "workdir"])


def parse_seeds(values) -> list[int]:
  try:
    seeds = [int(value) for value in values]
  except ValueError as e:
    raise UserError(f"--seeds takes comma-separated integers, e.g. --seeds=0,1,2 ({e}).") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise UserError(f"--seeds={','.join(values)}: give at least one seed, each once.")
  outside = [seed for seed in seeds if not 0 <= seed < config_lib.SEED_LIMIT]
  if outside:
    raise UserError(f"--seeds={','.join(values)}: {outside[0]} is not a seed; each must be from 0 to "
                    f"{config_lib.SEED_LIMIT - 1}.")
  return seeds


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


# The config keys that name files or folders, by their last part: their relative values are made absolute.
PATH_KEYS = ("data_dir", "init_from")


def commands(argv, workdir: str, seeds: list[int]) -> list[str]:
  """One `fer_jax.main` command per seed, then this program's summary command (`argv`: sys.argv), with the config
  file, --workdir and the config's paths (`PATH_KEYS`) absolute: a cluster job starts in another folder."""
  config = [_absolute(argument) for argument in config_lib.config_arguments(argv)]
  workdir = os.path.abspath(os.path.expanduser(workdir))
  lines = [shlex.join([sys.executable, "-m", "fer_jax.main", *config, f"--workdir={seed_workdir(workdir, seed)}",
                       f"--config.seed={seed}"]) for seed in seeds]
  lines.append(shlex.join([sys.executable, "-m", "fer_jax.seeds", *config, f"--workdir={workdir}",
                           f"--seeds={','.join(map(str, seeds))}", "--summarize_only"]))
  return lines


def _absolute(argument: str) -> str:
  """"--config=configs/dan.py:rafdb" → "--config=/abs/configs/dan.py:rafdb"; so for a relative --config.*data_dir or
  --config.init_from; other arguments as they are."""
  name, has_value, value = argument.partition("=")
  if name == "--config":
    path, colon, arg = value.partition(":")
    return f"{name}={os.path.abspath(os.path.expanduser(path))}{colon}{arg}"
  if has_value and value and name.startswith("--config.") and name.rsplit(".", 1)[-1] in PATH_KEYS:
    return f"{name}={os.path.abspath(os.path.expanduser(value))}"
  return argument


def _seed_report(path: str) -> dict:
  """A seed's eval_results.json."""
  return compare.read_report(path, "delete it and run this command again to evaluate that seed.")


def seed_config(config, seed: int):
  """The command's config as seed `seed`'s run trains it."""
  run_config = config.copy_and_resolve_references()
  run_config.seed = seed
  return run_config


def _newest_step(run_dir: str) -> int | None:
  return checkpointing.newest_saved_step(os.path.join(run_dir, checkpointing.CHECKPOINTS))


def _reported_step(report: dict) -> int | None:
  return report.get("trained_steps", report.get("step"))  # "step" alone before 2026-12-05


def _current_report(run_dir: str) -> dict | None:
  """The run's report where it covers every checkpoint the run has: it reports training up to the newest
  checkpoint's step, or no checkpoint is left (deleted once the run had finished). None where there is no report,
  or the run trained on after it (resumed, then stopped)."""
  path = os.path.join(run_dir, files.REPORT)
  if not os.path.exists(path):
    return None
  report, newest = _seed_report(path), _newest_step(run_dir)
  return report if newest is None or _reported_step(report) == newest else None


def recorded_config(run_dir: str) -> dict:
  """The flat config the run in `run_dir` last trained or reported with: its current report's, else its newest
  checkpoint's meta record's; {} where none is recorded (no run, or one from before 2026-12-05)."""
  report = _current_report(run_dir)
  if report is not None:
    return report.get("config", {})
  if _newest_step(run_dir) is None:
    return {}
  return checkpointing.read_meta(os.path.join(run_dir, checkpointing.CHECKPOINTS)).get("config", {})


def _config_changes(recorded: dict, config) -> list[tuple[str, object, object]]:
  """(key, `config`'s value, the recorded one) for each key changing reported numbers (not
  config_lib.NOT_OF_THE_RESULTS' or the seed) in which `config` differs from a run's recorded flat config. Keys one
  side lacks (another fer_jax version's) are not compared, but for evaluators added or removed, and those of
  config_lib.ADDED_SINCE, which a run recorded before them trained as their value there says; nor is a dtype the
  command leaves "auto" (a run records what it resolved to on its machine: seeds trained on GPUs are summarized on a
  CPU)."""
  auto_dtype = ("model.dtype",) if config_lib.flat(config).get("model.dtype") == "auto" else ()
  trained = config_lib.as_trained(recorded) if recorded else recorded  # {}: no run (or none recorded) to compare
  return config_lib.differences(trained, config, ("seed", *config_lib.NOT_OF_THE_RESULTS, *auto_dtype),
                                unshared="evals.")


def _selection_keys(config) -> tuple[str, ...]:
  """The evaluator whose results choose the kept epoch and the stop (select_metric set): evaluating it otherwise
  again would not choose again."""
  if not config.get("select_metric"):
    return ()
  return (("eval.every_epochs", "dataset.eval_split") if config.select_on == "eval"
          else (f"evals.{config.select_on}.",))


def _not_brought_up_to_date(recorded: dict, config) -> list[tuple[str, object, object]]:
  """The changes of `_config_changes` that resuming the run would not bring it to: what a resume may not change
  (config_lib.resume_differences), fewer epochs, the selecting evaluator (`_selection_keys`), and what
  BROUGHT_UP_TO_DATE leaves out."""
  fixed = {key for key, _, _ in config_lib.resume_differences(recorded, config)}
  selection = _selection_keys(config)
  return [(key, now, saved) for key, now, saved in _config_changes(recorded, config)
          if key in fixed or not config_lib.named_by(key, BROUGHT_UP_TO_DATE) or config_lib.named_by(key, selection)
          or (key == "num_epochs" and now < saved)]


def check_runs(config, workdir: str, seeds: list[int]) -> None:
  """Refuses, before any training, seed folders whose runs this command would not make runs of `config` (for their
  seed): a run of another seed, or one differing in keys resuming it would not bring it to."""
  problems, flags_of_the_runs = {}, {}
  for seed in seeds:
    recorded = recorded_config(seed_workdir(workdir, seed))
    if recorded.get("seed", seed) != seed:
      other = recorded["seed"]
      problems.setdefault(f"holds a run of config.seed {other} (move it to seed_{other} or delete it)", []).append(seed)
      continue
    for key, now, saved in _not_brought_up_to_date(recorded, seed_config(config, seed)):
      shaped = config_lib.num_epochs_shaped(config) if key == "num_epochs" and now > saved else ""
      problems.setdefault(f"trained with config.{key} {saved!r} (this command's {now!r}){shaped}", []).append(seed)
      flags_of_the_runs[config_lib.override(key, saved)] = None
  if not problems:
    return
  fix = (f" The seeds of a summary are of one config: give the settings the runs trained with "
         f"({' '.join(flags_of_the_runs)}), or train this config in a new --workdir." if flags_of_the_runs else "")
  raise UserError(f"The seed folders in {workdir} hold runs this command would not continue as runs of its config: "
                  + "; ".join(f"{', '.join(f'seed_{seed}' for seed in folders)} {problem}"
                              for problem, folders in problems.items()) + "." + fix)


def why_unfinished(run_dir: str, config) -> str | None:
  """None where the run in `run_dir` is finished as `config` (the command's, for its seed) would have it, else why
  not. Finished: its report covers every checkpoint it has (`_current_report`) and records `config` in every key
  that changes reported numbers. A run whose report is of fewer epochs or other evaluation settings is not (the
  command resumes it), so a summary never mixes runs of different lengths or evaluations."""
  report, newest = _current_report(run_dir), _newest_step(run_dir)
  if report is None:
    if newest is None:
      return "no run yet"
    path = os.path.join(run_dir, files.REPORT)
    before = f"after its report of step {_reported_step(_seed_report(path))}" if os.path.exists(path) \
        else "before its report"
    return f"stopped at step {newest}, {before}"
  changes = _config_changes(report.get("config", {}), config)
  if not changes:
    return None
  left = "" if newest is not None else " (no checkpoint is left: it trains from the start)"
  return "its report is of " + ", ".join(f"config.{key} {saved!r} (this command's {now!r})"
                                         for key, now, saved in changes) + left


def train_seeds(config, workdir: str, seeds: list[int]) -> None:
  """Checks the seed folders (check_runs), then trains each unfinished seed in turn; a stop ends the command as
  fer_jax.main's does (75 preempted, 1 non-finite)."""
  check_runs(config, workdir, seeds)
  pending = {}
  for seed in seeds:
    why = why_unfinished(seed_workdir(workdir, seed), seed_config(config, seed))
    if why is None:
      logging.info("Seed %d finished in %s: reading its report", seed, seed_workdir(workdir, seed))
    else:
      pending[seed] = why
  if not pending:
    return
  from fer_jax import train  # the training stack loads only when a seed trains
  with stopping.exit_status_on_stop():
    for seed, why in pending.items():
      logging.info("Seed %d in %s: %s; training it", seed, seed_workdir(workdir, seed), why)
      try:
        train.train_and_evaluate(seed_config(config, seed), seed_workdir(workdir, seed))
      except stopping.NonFiniteError as error:  # resumed with a lower lr, the seed would not be one of this run
        raise stopping.NonFiniteError(error.what, (
            "Every seed trains with one config: give this command the lower --config.optimizer.lr (or a "
            f"--config.optimizer.grad_clip_norm) and a new --workdir, or delete the seed folders in {workdir} first."
        )) from None


def read_reports(config, workdir: str, seeds: list[int]) -> dict[int, dict]:
  """{seed: report} of the seeds' runs, each finished as `config` (for its seed) would have it; refuses runs that
  are not (check_runs, why_unfinished) or are not of one run (check_same_run)."""
  check_runs(config, workdir, seeds)
  unfinished = [f"seed_{seed} ({why})" for seed in seeds
                if (why := why_unfinished(seed_workdir(workdir, seed), seed_config(config, seed))) is not None]
  if unfinished:
    raise UserError(f"Not finished in {workdir}: {'; '.join(unfinished)}. Train them first: run this command without "
                    "--summarize_only (or their commands from --print_commands), or drop them from --seeds.")
  reports = {seed: _seed_report(os.path.join(seed_workdir(workdir, seed), files.REPORT)) for seed in seeds}
  check_same_run(workdir, reports)
  return reports


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


def check_same_run(workdir: str, reports: dict[int, dict]) -> None:
  """Refuses reports that are not of one config: seeds of different runs do not average."""
  (first_seed, first), *others = reports.items()
  differing = []
  for seed, report in others:
    differences = _differences(_run_record(first["evaluators"]), _run_record(report["evaluators"]))
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
      flat.update({f"{prefix}{name}": entry[name] for name in compare.METRICS})
      flat.update({f"{prefix}per_class_accuracy/{c}": v for c, v in entry["per_class_accuracy"].items()})
  return flat


def _mean_std(values: list) -> dict:
  """Over the values present (n of them): the mean, and the sample standard deviation from two on."""
  present = [v for v in values if v is not None]
  return {"mean": statistics.fmean(present) if present else None,
          "std": statistics.stdev(present) if len(present) > 1 else None, "n": len(present), "values": values}


def _shared_config(reports: dict[int, dict]) -> dict:
  """The flat config every seed's report records alike, but the seed ({} where one records none)."""
  first, *others = [report.get("config", {}) for report in reports.values()]
  return {key: value for key, value in first.items()
          if key != "seed" and all(key in other and other[key] == value for other in others)}


def summarize(reports: dict[int, dict]) -> dict:
  """Over the seeds' reports (of one run, check_same_run): {"seeds", "config" (_shared_config), "runs" (each
  evaluator's model, data set, split, examples, preprocessing and TTA), "evaluators": {evaluator: {metric: {mean,
  std, n, values}}}, "selection", "skipped_evaluators": {evaluator: why a seed skipped it}}."""
  seeds = list(reports)
  evaluators = {seed: report["evaluators"] for seed, report in reports.items()}
  summary = {}
  for name in evaluators[seeds[0]]:
    per_seed = [_metrics(evaluators[seed][name]) for seed in seeds]
    summary[name] = {metric: _mean_std([m.get(metric) for m in per_seed]) for metric in per_seed[0]}
  return {"seeds": seeds, "config": _shared_config(reports), "runs": _run_record(evaluators[seeds[0]]),
          "evaluators": summary, "selection": _selection(reports),
          "skipped_evaluators": {name: reason for report in reports.values()
                                 for name, reason in (report.get("skipped_evaluators") or {}).items()}}


def _selection(reports: dict[int, dict]) -> dict | None:
  """How every seed's reported weights were chosen (one rule, check_same_run), with each seed's epoch and value;
  None where they are the last epoch's."""
  selections = {seed: report.get("selection") for seed, report in reports.items()}
  if not all(selections.values()):
    return None
  return {**next(iter(selections.values())),
          **{key: {seed: selection[key] for seed, selection in selections.items()}
             for key in ("epoch", "value", "trained_epochs")}}


def _cell(stats: dict) -> str:
  """"mean ± std" in %: "–" for what there are too few values for, "(n=…)" where some seeds have none."""
  if stats["mean"] is None:
    return "–"
  std = "–" if stats["std"] is None else f"{100 * stats['std']:.2f}"
  fewer = f" (n={stats['n']})" if stats["n"] < len(stats["values"]) else ""
  return f"{100 * stats['mean']:.2f} ± {std}{fewer}"


def markdown(summary: dict) -> str:
  seeds, runs = ", ".join(map(str, summary["seeds"])), summary["runs"]
  lines = [f"Mean ± sample standard deviation (%) over seeds {seeds} of {next(iter(runs.values()))['model']} "
           f"(n = {len(summary['seeds'])} per metric unless marked).", ""]
  if selection := summary.get("selection"):
    from fer_jax import evaluate  # the model stack loads only where a selection is told
    epochs = ", ".join(f"seed {seed}: {epoch} of {selection['trained_epochs'][seed]}"
                       for seed, epoch in selection["epoch"].items())
    lines += [f"Weights: {evaluate.selection_note(selection, f'each seed’s best epoch ({epochs})')}", ""]
  lines += ["| evaluator | data set | split | examples | " + " | ".join(compare.METRICS) + " | TTA | TTA accuracy |",
            "|---|---|---|---:|" + "---:|" * len(compare.METRICS) + "---|---:|"]
  for name, metrics in summary["evaluators"].items():
    run = runs[name]
    tta = _cell(metrics["tta/accuracy"]) if "tta/accuracy" in metrics else "–"
    lines.append(f"| {name} | {run['dataset']} | {run['split']} | {run['num_examples']} | "
                 + " | ".join(_cell(metrics[m]) for m in compare.METRICS) + f" | {run['tta']} | {tta} |")
  lines += [f"| {name} | skipped: {reason} |" + " |" * (len(compare.METRICS) + 4)
            for name, reason in (summary.get("skipped_evaluators") or {}).items()]
  lines += ["", "Accuracy (%) of each seed:", "", "| evaluator | " + " | ".join(f"seed {s}" for s in summary["seeds"])
            + " |", "|---|" + "---:|" * len(summary["seeds"])]
  for name, metrics in summary["evaluators"].items():
    lines.append(f"| {name} | " + " | ".join(map(compare.percent, metrics["accuracy"]["values"])) + " |")
  first = next(iter(summary["evaluators"].values()))
  classes = [m.split("/", 1)[1] for m in first if m.startswith("per_class_accuracy/")]
  lines += ["", "| evaluator | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
  for name, metrics in summary["evaluators"].items():
    lines.append(f"| {name} | " + " | ".join(_cell(metrics[f"per_class_accuracy/{c}"]) for c in classes) + " |")
  return "\n".join(lines + [""])


def write_summary(workdir: str, reports: dict[int, dict]) -> dict:
  summary = summarize(reports)
  _warn_of_other_seeds_replaced(workdir, summary["seeds"])
  files.write_whole(os.path.join(workdir, "seeds_summary.json"), json.dumps(summary, indent=2))
  files.write_whole(os.path.join(workdir, "seeds_summary.md"), markdown(summary))
  per_class = {name: {m.split("/", 1)[1]: stats for m, stats in metrics.items() if m.startswith("per_class_accuracy/")}
               for name, metrics in summary["evaluators"].items()}
  figures.plot_per_class({n: {c: s["mean"] for c, s in v.items()} for n, v in per_class.items()},
                         {n: {c: s["std"] for c, s in v.items()} for n, v in per_class.items()},
                         os.path.join(workdir, "seeds_per_class.png"),
                         f"per-class accuracy over seeds {', '.join(map(str, summary['seeds']))}")
  figures.plot_accuracies({f"seed {seed}": {name: results["accuracy"] for name, results in report["evaluators"].items()}
                           for seed, report in reports.items()}, os.path.join(workdir, "seeds_accuracy.png"))
  return summary


def _warn_of_other_seeds_replaced(workdir: str, seeds: list[int]) -> None:
  previous = (files.json_object(os.path.join(workdir, "seeds_summary.json")) or {}).get("seeds")
  if isinstance(previous, list) and previous != seeds:
    logging.warning("The summary over seeds %s in %s is replaced by this one over seeds %s.",
                    ", ".join(map(str, previous)), os.path.abspath(workdir), ", ".join(map(str, seeds)))


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  seeds = parse_seeds(args.seeds)
  if args.print_commands:
    print("\n".join(commands(sys.argv, args.workdir, seeds)))
    return
  if not args.summarize_only:
    mesh_lib.keep_compilations()
    train_seeds(args.config, args.workdir, seeds)
  summary = write_summary(args.workdir, read_reports(args.config, args.workdir, seeds))
  print(markdown(summary))
  logging.info("Wrote the summary to %s (seeds_summary.json, seeds_summary.md, seeds_accuracy.png, "
               "seeds_per_class.png).",
               os.path.abspath(args.workdir))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
