"""Train or evaluate a method: `python -m fer_jax.main --config=configs/dan.py:rafdb --workdir=DIR`.

Exit status: 0 done; 2 a user error (one `error:` line: the file or key and the fix); 75 stopped
by SIGTERM/SIGINT after saving its step, or (--distributed) because another process of the run stopped or died
(run the same command to resume; `--mode=eval`: to evaluate again); 1 non-finite loss or gradient (the message
names the step and the last good checkpoint).
"""

from absl import flags
from absl import logging
import jax
import ml_collections

from fer_jax import cli
from fer_jax import config_lib
from fer_jax import distributed
from fer_jax import evaluate
from fer_jax import mesh as mesh_lib
from fer_jax import stopping
from fer_jax import train
from fer_jax.errors import UserError

def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag()
  cli.define_path("workdir", None, "Run directory: checkpoints, TensorBoard events, reports.")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir; reports every evaluator "
                    "at the end) or eval (every evaluator of the config on --checkpoint).")
  cli.define_path("checkpoint", None, "--mode=eval: workdir, checkpoint or converted model.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-process): the cluster is "
                    "detected on Cloud TPU and Slurm, else give the three flags below (JAX_COORDINATOR_ADDRESS "
                    "may replace --coordinator_address).")
  flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "--distributed: how many processes take part.", lower_bound=1)
  flags.DEFINE_integer("process_id", None, "--distributed: this process's index, 0 … num_processes − 1.",
                       lower_bound=0)
  cli.mark_required(["config", "workdir"])


def reject_urls(config) -> None:
  """fer_jax reads and writes through the file system: an object-store URL must arrive as a mounted path (path
  flags refuse one as they are parsed, cli.local_path_problem; these are the config's paths). Runs before the
  config is validated: an evaluator entry that is not a dict, or lacks data_dir, is left to validation's message."""
  paths = {"config.dataset.data_dir": config.dataset.data_dir, "config.init_from": config.init_from,
           **{f"config.evals.{name}.data_dir": entry.get("data_dir") for name, entry in config.evals.items()
              if isinstance(entry, (dict, ml_collections.ConfigDict))}}
  for name, path in paths.items():
    problem = isinstance(path, str) and cli.local_path_problem(path)
    if problem:
      raise UserError(f"{name}={path} {problem}")


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  args = flags.FLAGS
  distributed.check_flags(args.distributed, {name: getattr(args, name) for name in distributed.FLAGS})
  if args.distributed:
    distributed.start(args.coordinator_address, args.num_processes, args.process_id)
  with stopping.exit_when_a_process_dies():
    train_or_evaluate(args)


def train_or_evaluate(args) -> None:
  """The command after jax.distributed started (where --distributed)."""
  if args.distributed:
    distributed.check_same_run(args.config, args.mode)
  reject_urls(args.config)
  if args.distributed and args.mode == "train":  # an evaluation's report is written by process 0 alone
    distributed.check_shared_workdir(args.workdir)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  mesh_lib.keep_compilations()
  if args.mode == "train":
    with stopping.exit_status_on_stop():
      train.train_and_evaluate(args.config, args.workdir)
  else:
    if not args.checkpoint:
      raise UserError("--mode=eval needs --checkpoint=PATH (a workdir, checkpoint or converted model).")
    with stopping.exit_status_on_stop("The evaluation's report is missing or incomplete; run the same command to "
                                      "evaluate again."):
      evaluate.evaluate_checkpoint(args.config, args.checkpoint, args.workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
