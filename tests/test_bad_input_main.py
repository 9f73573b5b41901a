"""Bad input to training, evaluation, summary, export and benchmark: each case exits with status 2
and one message naming the file or key and the fix (tests/test_bad_input_{prepare,convert,predict}.py
cover the other commands); an evaluation stopped by Ctrl-C exits with status 75 and one message."""

import glob
import os
import shutil
import subprocess
import sys

import jax
import pytest

from fer_jax import checkpointing
from fer_jax import models
from fer_jax import stopping
from helpers import ROOT, TINY_NET, assert_user_error, cpu_devices_env, get_config, run_command, tiny_run

pytestmark = pytest.mark.integration  # every test runs a command (main, summary, export, benchmark) in a subprocess

TINY = ["--config=configs/dan.py:synthetic", "--config.dataset.name=synthetic/tiny",
        "--config.input.size=32", "--config.batch_size=32", "--config.eval_batch_size=32", "--config.num_epochs=1",
        "--config.data_workers=0", "--config.dataset.drop_last=True"]


def _main(*args, **kwargs):
  return run_command("fer_jax.main", *args, **kwargs)


def _tiny_dan(num_classes: int = 7):
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.model.num_classes = num_classes
  return config


def _save_variables(directory, config) -> str:
  model = models.build_model(config)
  variables = jax.jit(lambda: models.init_variables(model, config, jax.random.key(0)))()
  return checkpointing.save_model(str(directory), variables, config)


@pytest.fixture(scope="module")
def dan_checkpoint(tmp_path_factory) -> str:
  """A converted-style DAN checkpoint (7 classes, fer2013 order) for the tiny config."""
  return _save_variables(tmp_path_factory.mktemp("dan") / "model", _tiny_dan())


@pytest.fixture
def damaged_copy(dan_checkpoint, tmp_path):
  def copy():
    step = tmp_path / "model" / "0"
    shutil.copytree(dan_checkpoint, step)
    return step
  return copy


def test_workdir_under_a_file(tmp_path, tiny_data_dir):
  (tmp_path / "file").write_text("x")
  assert_user_error(_main(*TINY, f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={tmp_path}/file/run"),
                    str(tmp_path / "file"), "a file, not a folder")


def test_read_only_workdir(tmp_path, tiny_data_dir):
  (tmp_path / "locked").mkdir(mode=0o555)
  result = _main(*TINY, f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={tmp_path}/locked/run",
                 obey_permissions=True)
  assert_user_error(result, "Permission denied", str(tmp_path / "locked"), "fix its permissions")


def test_data_set_not_prepared(tmp_path):
  result = _main("--config=configs/dan.py:rafdb", f"--workdir={tmp_path}", f"--config.dataset.data_dir={tmp_path}")
  assert_user_error(result, "'rafdb' is not prepared", "python -m fer_jax.data.prepare --dataset=rafdb")


def test_patience_without_select_metric_stops_before_any_work(tmp_path):
  result = _main(*TINY, f"--workdir={tmp_path}", "--config.early_stopping_patience=2", "--config.select_metric=",
                 "--config.dataset.data_dir=/nonexistent")
  assert_user_error(result, "config.early_stopping_patience=2 needs a metric", "--config.select_metric=accuracy")
  assert not os.path.exists(tmp_path / "checkpoints")  # nor would --mode=eval into it be taken for a training run


@pytest.mark.parametrize("spec", ["configs/scan_cci.py:sfew", "configs/lhcnet.py:fer2013,stage=C"])
def test_fine_tuning_without_init_from_stops_before_reading_data(tmp_path, spec):
  result = _main(f"--config={spec}", f"--workdir={tmp_path}", "--config.dataset.data_dir=/nonexistent")
  assert_user_error(result, "config.init_from_required", "--config.init_from=CHECKPOINT")


def test_a_stage_given_as_a_key_is_refused(tmp_path):
  """The stage is the config file's argument; as a key it was ignored (stage A1 trained)."""
  result = _main("--config=configs/lhcnet.py:fer2013", "--config.stage=B", f"--workdir={tmp_path}")
  assert_user_error(result, "the config has no key 'stage': stage is the config file's argument, "
                    "--config=configs/lhcnet.py:fer2013,stage=<A1|A2|A3|B|C>")


def test_apvit_depth_without_a_keep_rate_per_block_stops_before_reading_data(tmp_path):
  result = _main("--config=configs/apvit.py:rafdb", "--config.model.depth=9", "--config.model.num_heads=7",
                 f"--workdir={tmp_path}", "--config.dataset.data_dir=/nonexistent")
  assert_user_error(result, "config.model.atp_keep_rates=(1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9) needs one keep rate",
                    "config.model.num_heads=7 must divide config.model.width=768")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_an_input_too_small_for_apvits_kept_patches_stops_before_reading_data(tmp_path):
  """The model's own shape rule (traced with the abstract variables) runs before the data is opened and decoded."""
  result = _main("--config=configs/apvit.py:rafdb", "--config.input.size=64", f"--workdir={tmp_path}",
                 "--config.dataset.data_dir=/nonexistent")
  assert_user_error(result, "config.model.app_keep=160 tokens cannot be kept from the 8×8 patch grid (the input's side over 8, rounded up)")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_trainable_regex_matching_no_parameter_stops_before_reading_data(tmp_path):
  result = _main(*TINY, "--config.dataset.data_dir=/nonexistent", f"--workdir={tmp_path}",
                 "--config.optimizer.trainable=^nothing_matches")
  assert_user_error(result, "config.optimizer.trainable='^nothing_matches' matches none of the model's",
                    "paths such as", "correct the regex")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_batch_size_that_does_not_divide_over_the_devices(tmp_path, tiny_data_dir):
  result = _main(*TINY, f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={tmp_path}",
                 "--config.batch_size=12", devices=8)
  assert_user_error(result, "config.batch_size=12 must divide evenly over this run's 8 devices",
                    "--config.batch_size=8")


def test_eval_without_checkpoint(tmp_path):
  assert_user_error(_main(*TINY, "--mode=eval", f"--workdir={tmp_path}"), "--mode=eval needs --checkpoint=PATH")


def test_eval_with_a_checkpoint_of_another_method(dan_checkpoint, tmp_path):
  result = _main("--config=configs/scan_cci.py:synthetic", f"--config.dataset.data_dir={tmp_path}/tfds", "--mode=eval",
                 f"--checkpoint={dan_checkpoint}", f"--workdir={tmp_path}/report")
  assert not os.path.exists(tmp_path / "tfds")  # the weights, refused, are read before the data
  assert_user_error(result, dan_checkpoint, "holds a dan model with 7 classes", "builds scan_cci",
                    "configs/dan.py:<dataset>")


def test_eval_with_a_checkpoint_of_another_class_count(dan_checkpoint, tmp_path):
  result = _main(*TINY, "--config.model.num_classes=8", "--config.dataset.class_order=affectnet8", "--mode=eval",
                 f"--checkpoint={dan_checkpoint}", f"--workdir={tmp_path}")
  assert_user_error(result, "holds a dan model with 7 classes", "builds dan with 8")


def test_eval_with_a_checkpoint_without_meta_record(damaged_copy, tmp_path):
  step = damaged_copy()
  shutil.rmtree(step / "meta")
  result = _main(*TINY, "--mode=eval", f"--checkpoint={step}", f"--workdir={tmp_path}/report")
  assert_user_error(result, str(step), "has no meta record", "class order cannot be checked")


def test_eval_with_an_unreadable_meta_record(damaged_copy, tmp_path):
  step = damaged_copy()
  (step / "meta" / "metadata").write_text('{"model": {"name": "da')
  result = _main(*TINY, "--mode=eval", f"--checkpoint={step}", f"--workdir={tmp_path}/report")
  assert_user_error(result, f"Cannot read the meta record {step / 'meta' / 'metadata'}", "convert or export")


def test_eval_with_a_truncated_checkpoint(damaged_copy, tmp_path):
  step = damaged_copy()
  largest = max(glob.glob(f"{step}/state/**/*", recursive=True), key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  result = _main(*TINY, "--mode=eval", f"--checkpoint={step}", f"--workdir={tmp_path}/report")
  assert_user_error(result, f"Cannot read the checkpoint {step}", "damaged or incomplete",
                    # TensorStore's other read threads may report the same failed read as it happens.
                    foreign_traceback="OUT_OF_RANGE")


def test_resume_from_a_damaged_only_step_says_to_start_over(tmp_path, tiny_data_dir):
  """TinyNet trained (its checkpoint's largest file, the arrays', cut in half), then the same command."""
  command = (*TINY, f"--config.model.name={TINY_NET}", f"--config.dataset.data_dir={tiny_data_dir}",
             f"--workdir={tmp_path}")
  assert _main(*command).returncode == 0
  largest = max(filter(os.path.isfile, glob.glob(f"{tmp_path}/checkpoints/8/state/**/*", recursive=True)),
                key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  result = _main(*command)
  assert_user_error(result, f"Cannot read the checkpoint {tmp_path / 'checkpoints' / '8'}",
                    f"it is the run's only checkpoint, so start the run over: delete {tmp_path} or pass a new --workdir")


def test_summary_of_an_lhcnet_checkpoint_of_another_stage(tmp_path):
  stage_b = get_config("configs/lhcnet.py:synthetic,stage=B")
  stage_b.input.size = 32
  path = _save_variables(tmp_path / "stage_b", stage_b)
  result = run_command("fer_jax.summary", "--config=configs/lhcnet.py:synthetic", "--config.input.size=32",
                       f"--checkpoint={path}")
  assert_user_error(result, "does not fit the configured model", "use_lhc=True (config False)",
                    "unexpected: params/lhc", "pass the --config it was trained or converted with. Or pass "
                    "--config.model.use_lhc=True.")


def test_export_into_a_folder_that_is_not_empty(dan_checkpoint, tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  result = run_command("fer_jax.export", *TINY[:3], f"--checkpoint={dan_checkpoint}", f"--out={tmp_path / 'out'}")
  assert_user_error(result, f"--out={tmp_path / 'out'} is not empty", "export into a new folder")


def test_export_of_a_missing_checkpoint(tmp_path):
  result = run_command("fer_jax.export", *TINY[:3], f"--checkpoint={tmp_path / 'nothing'}", f"--out={tmp_path / 'o'}")
  assert_user_error(result, f"No checkpoint found at {tmp_path / 'nothing'}", "python -m fer_jax.convert")


def test_benchmark_with_an_unknown_cache_mode():
  result = run_command("fer_jax.benchmark", "--config=configs/dan.py:synthetic", "--config.dataset.cache=disk")
  assert_user_error(result, "config.dataset.cache='disk' is not one of")


def test_benchmark_checks_its_output_and_arguments_before_any_work(tmp_path):
  """Both ran the whole benchmark: one failed only when appending its line, the other ignored the argument."""
  benchmark = ("fer_jax.benchmark", "--config=configs/dan.py:synthetic", "--config.input.size=16", "--steps=1")
  result = run_command(*benchmark, f"--output={tmp_path / 'missing' / 'x.jsonl'}")
  assert_user_error(result, f"--output={tmp_path / 'missing' / 'x.jsonl'}: there is no folder {tmp_path / 'missing'}")
  assert result.stdout == ""
  result = run_command(*benchmark, "host")  # meant --input=host
  assert_user_error(result, "unexpected arguments host: write every setting as a flag, --name=value")
  assert result.stdout == ""


@pytest.mark.integration
@pytest.mark.parametrize("command", ["fer_jax.summary", "fer_jax.linear_baseline"])
def test_arguments_that_are_not_flags_are_refused_by_every_command(command):
  """summary and linear_baseline ignored them; every command now refuses them as it parses its flags."""
  assert_user_error(run_command(command, "--config=configs/dan.py:synthetic", "rafdb"),
                    "unexpected arguments rafdb: write every setting as a flag")


@pytest.fixture
def small_disk(tmp_path):
  """A 130 MB tmpfs: room for one tiny-DAN training checkpoint (~90 MB), not for two."""
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=130m", "tmpfs", str(mount)]).returncode:
    pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
  yield mount
  subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint(small_disk, tiny_data_dir):
  result = _main(*TINY, f"--config.dataset.data_dir={tiny_data_dir}", f"--workdir={small_disk}",
                 "--config.checkpoint_every_steps=4")
  assert_user_error(result, f"Saving a checkpoint in {small_disk / 'checkpoints'} failed",
                    "No space left on device", f"{small_disk / 'checkpoints' / '4'}, is intact", "run the same command",
                    # TensorStore's write threads report to an event loop Orbax has closed; nothing of ours.
                    foreign_traceback="RuntimeError: Event loop is closed")
  config = _tiny_dan()
  restored = checkpointing.restore_model(str(small_disk), models.abstract_variables(models.build_model(config), config))
  assert all(bool(jax.numpy.isfinite(leaf).all()) for leaf in jax.tree.leaves(restored))


# Sends this process SIGINT as the evaluation first waits for the devices, as a Ctrl-C would, then runs the command.
INTERRUPTED_EVALUATION = """
import os, runpy, signal, sys
from fer_jax import stopping
wait_interruptibly = stopping.wait_interruptibly
def interrupted(array):
  os.kill(os.getpid(), signal.SIGINT)
  return wait_interruptibly(array)
stopping.wait_interruptibly = interrupted
sys.argv[0] = "fer_jax.main"
runpy.run_module("fer_jax.main", run_name="__main__")
"""


def test_an_evaluation_stopped_by_ctrl_c_exits_75_with_one_line(dan_checkpoint, tmp_path, tiny_data_dir):
  report = tmp_path / "report"
  result = subprocess.run([sys.executable, "-c", INTERRUPTED_EVALUATION, *TINY, "--mode=eval",
                           f"--config.dataset.data_dir={tiny_data_dir}", f"--checkpoint={dan_checkpoint}",
                           f"--workdir={report}"], cwd=ROOT, env=cpu_devices_env(1), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == stopping.PREEMPTED_EXIT_STATUS, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert ("SIGINT received: stopped. The evaluation's report is missing or incomplete; run the same command to "
          "evaluate again.") in result.stderr
  assert not (report / "eval_results.json").exists()


def _fake_export(folder):
  """A folder with the files that make an export folder (fer_jax.export.is_export)."""
  (folder / "variables").mkdir(parents=True)
  for name in ("model.json", "model.stablehlo"):
    (folder / name).write_text("{}")
  return folder


@pytest.mark.parametrize("given, flag", [("export", "--checkpoint"), ("official_file", "--checkpoint"),
                                         ("official_file", "--config.init_from")])
def test_an_export_or_an_unconverted_official_file_is_named_with_what_to_pass(tmp_path, given, flag):
  """Both were "No checkpoint found … pass a training workdir, …, or the output of python -m fer_jax.convert"."""
  if given == "export":
    path = _fake_export(tmp_path / "exported")
    expected = (f"{path} is an export folder, not a checkpoint: pass the checkpoint it was exported from",
                "Exports are for deployment, not for training, evaluation or exporting again")
  else:
    path = tmp_path / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
    path.write_bytes(b"PK")
    expected = (f"{path} is a checkpoint of the official code (or a pretrained backbone), not converted: run "
                f"`python -m fer_jax.convert --config=configs/<method>.py:<dataset> --checkpoint={path} --workdir=OUT`",)
  mode = ("--mode=eval",) if flag == "--checkpoint" else ()
  result = _main(*TINY, *mode, f"{flag}={path}", f"--workdir={tmp_path / 'run'}")
  assert_user_error(result, *expected)


def test_a_missing_record_file_of_the_prepared_data_exits_2_naming_it(tmp_path, tiny_data_dir):
  """A data folder copied to a cluster node incompletely ended training in array_record's traceback ("open() failed:
  No such file or directory"), exit 1, the status of a NaN loss."""
  shutil.copytree(tiny_data_dir, tmp_path / "tfds")
  shard = tmp_path / "tfds" / "synthetic" / "tiny" / "1.1.0" / "synthetic-train.array_record-00000-of-00001"
  shard.unlink()
  result = _main(*TINY, f"--config.dataset.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'run'}")
  assert_user_error(result, f"{shard} is missing", f"Delete {shard.parent}")
