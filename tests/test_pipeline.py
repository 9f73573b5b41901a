import concurrent.futures
import fcntl
import io
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
from PIL import Image
import pytest
from reference import datasets as fx
import tensorflow_datasets as tfds

from fer_jax import config_lib
from fer_jax import inference
from fer_jax import mesh as mesh_lib
from fer_jax.data import augment
from fer_jax.data import builder_utils
from fer_jax.data import decode
from fer_jax.data import labels
from fer_jax.data import pipeline
from fer_jax.data import prepare
import helpers
from helpers import get_config, tiny_run


def _config(**dataset):
  config = tiny_run(get_config("configs/dan.py:synthetic"))
  config.dataset.update(dataset)
  return config


def test_eval_pads_and_masks_so_each_example_counts_once():
  config = _config()
  eval_data = pipeline.EvalData(config, mesh_lib.make_mesh(), "test")
  batches = list(eval_data.batches())
  assert len(batches) == 3  # 70 examples in batches of 32
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  assert masks.sum() == 70 and masks[:70].all() and not masks[70:].any()
  np.testing.assert_array_equal(labels[:70], eval_data.split.labels)
  # deterministic: a second pass gives the same images
  again = next(iter(eval_data.batches()))
  np.testing.assert_array_equal(np.asarray(again["image"]), np.asarray(batches[0]["image"]))


def test_a_split_smaller_than_the_eval_batch_is_not_padded_to_it(caplog):
  """--config.eval_batch_size=4096 evaluated a 14-image split as one padded batch of 4096: 72 s and 2 GB where a
  batch of 16 took seconds (DAN's default of 250 pads the small occlusion and pose subsets the same way)."""
  config = _config()
  config.eval_batch_size = 4096
  with caplog.at_level(logging.INFO):
    eval_data = pipeline.EvalData(config, mesh_lib.make_mesh(), "test")
  batches = list(eval_data.batches())
  assert eval_data.global_batch == 70 and [b["image"].shape[0] for b in batches] == [70]
  assert np.asarray(batches[0]["mask"]).all()
  assert "Evaluating test in batches of 70: config.eval_batch_size 4096 capped at the split's 70 images." in caplog.text


def test_a_built_in_set_generated_on_first_use_gives_no_tfds_warning(tmp_path, caplog):
  """The quick start's first run warned "Variant folder … has no dataset_info.json" before generating its set."""
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(name="synthetic/tiny", data_dir=os.fspath(tmp_path))
  with caplog.at_level(logging.WARNING):
    assert pipeline.split_absence(config, "train") == ""
  assert "dataset_info.json" not in caplog.text


def test_a_built_in_set_generated_again_deletes_what_a_killed_first_use_left(tmp_path):
  """A first run killed while it generated the set left TFDS's incomplete.* folder (up to 180 MB for the synthetic
  set), and each later kill another: only `fer_jax.prepare` deleted such folders."""
  left = tmp_path / "synthetic" / "tiny" / "incomplete.KILLED1_1.1.0"
  left.mkdir(parents=True)
  (left / "synthetic-train.array_record-00000-of-00001").write_bytes(b"cut short")
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(name="synthetic/tiny", data_dir=os.fspath(tmp_path))
  assert pipeline.split_absence(config, "train") == ""
  assert sorted(path.name for path in left.parent.iterdir()) == [".prepare.lock", "1.1.0"]


def test_a_built_in_set_generated_on_first_use_by_two_runs_is_generated_once(tmp_path):
  """A second run's first use waits for the first's (which holds prepare's lock) instead of deleting its folder
  under way as a killed run's leftover."""
  under_way = tmp_path / "synthetic" / "tiny" / "incomplete.RUNNING_1.1.0"
  under_way.mkdir(parents=True)
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(name="synthetic/tiny", data_dir=os.fspath(tmp_path))
  with open(under_way.parent / prepare.LOCK_FILE, "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the first run, generating
    second = concurrent.futures.ThreadPoolExecutor(1).submit(pipeline.split_absence, config, "train")
    time.sleep(2)
    assert under_way.exists() and not second.done()
    under_way.rmdir()  # the first run's folder becomes the set (here: gone), and its lock is released
  assert second.result(timeout=120) == ""


def test_a_set_not_prepared_is_named_without_tfds_warning(tmp_path, caplog):
  config = get_config("configs/dan.py:synthetic")
  config.dataset.update(name="fedro", data_dir=os.fspath(tmp_path))
  with caplog.at_level(logging.WARNING), pytest.raises(builder_utils.DataError, match="'fedro' is not prepared"):
    pipeline.split_absence(config, "test")
  assert "dataset_info.json" not in caplog.text


def _interrupt_handler(index: int) -> bool:
  return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_decoding_workers_leave_ctrl_c_to_the_command():
  """Ctrl-C reaches every process of the command: each decoding worker printed a KeyboardInterrupt traceback."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (CI's runner ignores it)
  try:
    ignored = list(pipeline._prefetched(grain.MapDataset.range(4).map(_interrupt_handler), workers=2, prefetch=2))
    assert ignored == [True] * 4 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, previous)


WORKERS_TO_THE_END = """
from absl import app
import grain
import numpy as np
from fer_jax.data import pipeline

def image(index):
  return np.full((64, 64, 3), index % 255, np.uint8)

def main(argv):
  print(sum(len(batch) for batch in pipeline._prefetched(grain.MapDataset.range(64).map(image).batch(8), 2, 2)))

if __name__ == "__main__":  # the workers import this module
  app.run(main)
"""


@pytest.mark.integration
def test_a_run_with_decoding_workers_ends_without_the_resource_trackers_warning(tmp_path):
  """Every run with data_workers > 0 ended with "resource_tracker: There appear to be 3 leaked shared_memory
  objects to clean up at shutdown" (Grain's, google/grain issue 398; the tracker frees them)."""
  (tmp_path / "workers_to_the_end.py").write_text(WORKERS_TO_THE_END)
  result = subprocess.run([sys.executable, str(tmp_path / "workers_to_the_end.py")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": helpers.ROOT})
  assert result.returncode == 0 and result.stdout.split() == ["64"], result.stderr[-3000:]
  assert "leaked shared_memory" not in result.stderr


WORKERS_OF_A_KILLED_COMMAND = """
import os, time
from absl import app
import grain
import numpy as np
from fer_jax.data import pipeline

def worker_pid(index):
  time.sleep(0.01)
  return np.array(os.getpid())

def main(argv):
  seen = set()
  for pid in pipeline._prefetched(grain.MapDataset.range(10**6).map(worker_pid), 2, 2):
    seen.add(int(pid))
    if len(seen) == 2:
      print(*seen, flush=True)
      time.sleep(600)

if __name__ == "__main__":  # the workers import this module
  app.run(main)
"""


def _running(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (a container's init may never reap an orphan)."""
  try:
    with open(f"/proc/{pid}/stat") as stat:
      return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.integration
def test_decoding_workers_end_when_their_command_is_killed_outright(tmp_path):
  """A training killed by SIGKILL (or the out-of-memory killer) left its decoding workers running, ~240 MB each."""
  (tmp_path / "killed.py").write_text(WORKERS_OF_A_KILLED_COMMAND)
  command = subprocess.Popen([sys.executable, str(tmp_path / "killed.py")], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": helpers.ROOT})
  workers = [int(pid) for pid in command.stdout.readline().split()]
  assert len(workers) == 2 and all(map(_running, workers))
  command.kill()
  command.wait()
  deadline = time.monotonic() + 30
  while any(map(_running, workers)) and time.monotonic() < deadline:
    time.sleep(0.2)
  left = [pid for pid in workers if _running(pid)]
  for pid in left:  # not left to run on after a failure
    os.kill(pid, signal.SIGKILL)
  assert not left


def test_training_stream_is_a_function_of_the_step():
  config = _config()
  data = pipeline.TrainData(config, mesh_lib.make_mesh())
  assert data.steps_per_epoch == 280 // 32
  first = [np.asarray(b["image"]) for _, b in zip(range(4), data.batches(0))]
  resumed = [np.asarray(b["image"]) for _, b in zip(range(2), data.batches(2))]
  np.testing.assert_array_equal(first[2], resumed[0])
  np.testing.assert_array_equal(first[3], resumed[1])
  assert not np.array_equal(first[0], first[1])


def test_labels_are_remapped_to_the_configured_order():
  fer_order = pipeline.load_split(_config(), "test")
  # RAF-DB order: surprise, fear, disgust, happiness, sadness, anger, neutral
  raf_order = pipeline.load_split(_config(class_order="rafdb"), "test")
  fer_to_raf = np.array([5, 2, 1, 3, 4, 0, 6])
  np.testing.assert_array_equal(raf_order.labels, fer_to_raf[fer_order.labels])
  assert raf_order.class_names[0] == "surprise"


def test_a_class_order_of_a_config_file_s_own_trains_on_its_classes_and_names_the_fix_for_a_missing_one(monkeypatch):
  """A set with fewer classes could not train: every order of fer_jax's named classes the set lacks, and a config
  could name no other (docs/extending.md)."""
  monkeypatch.setattr(labels, "CLASS_ORDERS", dict(labels.CLASS_ORDERS))
  labels.add_class_order("valence", ("sadness", "neutral", "happiness"))
  labels.add_class_order("valence", ["sadness", "neutral", "happiness"])  # a config file read again
  fer_order = pipeline.load_split(_config(), "test")  # anger, disgust, fear, happiness, sadness, surprise, neutral
  valence = pipeline.load_split(_config(class_order="valence"), "test")
  np.testing.assert_array_equal(valence.labels, np.array([-1, -1, -1, 2, 0, -1, 1])[fer_order.labels])
  for names, problem in ((("sadness", "joy"), r"\['sadness', 'joy'\] must be classes of fer_jax.data.labels.CLASSES"),
                         (("fear", "fear"), "each once"),
                         (("fear",), r"is already \('sadness', 'neutral', 'happiness'\)")):
    with pytest.raises(ValueError, match=problem):
      labels.add_class_order("valence" if len(names) == 1 else "mine", names)
  labels.add_class_order("with_contempt", ("happiness", "contempt"))
  with pytest.raises(builder_utils.DataError, match=r"config.dataset.class_order='with_contempt': Target classes "
                                                    r"\['contempt'\] are not in .* name their order in the config file "
                                                    r"with fer_jax.data.labels.add_class_order"):
    pipeline.load_split(_config(class_order="with_contempt"), "train")


@pytest.mark.parametrize("spec, problem", [
    ("train[:0]", "selects no record (the splits hold train 280, test 70 records): choose a slice that selects some"),
    ("test[1%:2%]", "selects no record"),
    ("train[:10]+test[80:]", "Requested slice [80:70] incompatible with 70 examples (the splits hold train 280, test "
                             "70 records): choose a slice within its split"),
])
def test_a_split_slice_that_selects_no_record_or_passes_the_split_is_named(spec, problem):
  """array_record's "Paths sequence can not be of 0 length" and TFDS's "Requested slice [80:70] incompatible…" came as
  tracebacks (exit 1) for the train, eval and test splits."""
  with pytest.raises(pipeline.DataError) as refused:
    pipeline.load_split(_config(), spec, split_key="dataset.train_split")
  assert str(refused.value).startswith(f"config.dataset.train_split={spec!r}: {problem}")
  assert pipeline.load_split(_config(), "train[:10]+test[60:]").labels.shape == (20,)


def test_splits_joined_with_plus_are_read_in_order():
  train_split, test_split = (pipeline.load_split(_config(), name) for name in ("train", "test"))
  joined = pipeline.load_split(_config(), "train+test")
  np.testing.assert_array_equal(joined.labels, np.concatenate([train_split.labels, test_split.labels]))
  last = len(train_split.labels) + len(test_split.labels) - 1
  np.testing.assert_array_equal(joined.source[last]["image"], test_split.source[len(test_split.labels) - 1]["image"])


def _split(labels):
  return pipeline.Split(source=None, labels=np.array(labels), class_names=("a", "b", "c"), image_shape=(8, 8, 3))


def test_samplers():
  split = _split([0] * 90 + [1] * 9 + [2] * 1)
  uniform = pipeline.epoch_indices(split, "uniform", 0, 0, 0.15)
  assert sorted(uniform) == list(range(100))
  assert not np.array_equal(uniform, pipeline.epoch_indices(split, "uniform", 0, 1, 0.15))
  balanced = pipeline.epoch_indices(split, "class_balanced", 0, 0, 0.15)
  counts = np.bincount(split.labels[balanced], minlength=3)
  assert len(balanced) == 100 and all(20 < c < 47 for c in counts)
  # repeat factor: class frequencies 0.9, 0.09, 0.01 → ceil(max(1, sqrt(0.15 / f))) = 1, 2, 4
  repeated = pipeline.epoch_indices(split, "repeat_factor", 0, 0, 0.15)
  np.testing.assert_array_equal(np.bincount(split.labels[repeated]), [90, 18, 4])
  with pytest.raises(ValueError, match=r"^Unknown config\.dataset\.sampler 'random'; valid: uniform, class_balanced, "
                     r"repeat_factor\.$"):
    pipeline.epoch_indices(split, "random", 0, 0, 0.15)


# RAF-DB's training split per class (surprise, fear, disgust, happiness, sadness, anger, neutral).
RAFDB_TRAIN_COUNTS = (1290, 281, 717, 4772, 1982, 705, 2524)


def test_the_repeat_factor_epoch_of_rafdb_is_apvits_15545_samples():
  """mmcls' ClassBalancedDataset: each image ceil(max(1, sqrt(0.15 / f))) times, f its class's share of the images."""
  labels = np.repeat(np.arange(7), RAFDB_TRAIN_COUNTS)
  split = pipeline.Split(source=None, labels=labels, class_names=tuple("abcdefg"), image_shape=(8, 8, 3))
  repeats = [math.ceil(max(1.0, math.sqrt(0.15 / (count / len(labels))))) for count in RAFDB_TRAIN_COUNTS]
  assert repeats == [2, 3, 2, 1, 1, 2, 1]
  epoch = pipeline.epoch_indices(split, "repeat_factor", 0, 0, 0.15)
  assert len(epoch) == 15_545 and len(epoch) // 256 == 60
  np.testing.assert_array_equal(np.bincount(epoch, minlength=len(labels)), np.array(repeats)[labels])


def test_class_balanced_draws_each_record_with_the_official_probability():
  """ImbalancedDatasetSampler (DAN, SCAN-CCI): an epoch of the split's size, drawn with replacement, record i with
  probability proportional to 1 / (its class's count): each class 1/K of the draws, spread evenly inside it."""
  labels = np.array([0] * 60 + [1] * 25 + [-1] * 5 + [2] * 10)  # -1: a class the model lacks, never drawn
  split = _split(labels)
  epochs = [pipeline.epoch_indices(split, "class_balanced", 3, epoch, 0.15) for epoch in range(2000)]
  assert {len(epoch) for epoch in epochs} == {95}
  drawn = np.bincount(np.concatenate(epochs), minlength=len(labels))
  class_sizes = np.bincount(labels[labels >= 0])
  expected = np.where(labels >= 0, 95 * 2000 / (3 * class_sizes[np.maximum(labels, 0)]), 0)
  assert not drawn[labels < 0].any()
  chi_square = np.sum((drawn - expected)[labels >= 0] ** 2 / expected[labels >= 0])
  assert chi_square < 94 + 5 * math.sqrt(2 * 94)  # 94 degrees of freedom: five standard deviations


def test_each_epoch_reads_its_own_draw_and_a_resume_in_a_later_epoch_continues_it():
  """280 images in batches of 32: 8 steps an epoch read the first 256 of the epoch's permutation (the rest dropped),
  and epoch 1 is the draw of (seed, 1), also when the run resumes inside it."""
  data = pipeline.TrainData(_config(cache="host"), mesh_lib.make_mesh())
  span = data.steps_per_epoch * data.global_batch
  for epoch in (0, 1):
    records = data.order.records(np.arange(epoch * span, (epoch + 1) * span))
    assert len(set(records)) == span == 256
    np.testing.assert_array_equal(records, pipeline.epoch_indices(data.split, "uniform", 0, epoch, 0.15)[:span])
  config = _config(cache="host")
  config.num_epochs = 2
  data = pipeline.TrainData(config, mesh_lib.make_mesh())
  whole = [{key: np.asarray(value) for key, value in batch.items()} for batch in data.batches(0)]
  resumed = [{key: np.asarray(value) for key, value in batch.items()} for batch in data.batches(11)]
  assert len(whole) == 16 and len(resumed) == 5
  for key in ("image", "label", "position"):
    np.testing.assert_array_equal(np.stack([b[key] for b in whole[11:]]), np.stack([b[key] for b in resumed]))


def test_dropped_classes_are_excluded():
  split = _split([0, -1, 2, -1])
  assert list(pipeline.epoch_indices(split, "uniform", 0, 0, 0.15)) != []
  assert set(pipeline.epoch_indices(split, "uniform", 0, 0, 0.15)) == {0, 2}


def test_a_config_that_names_no_data_set_is_refused_not_trained_on_the_synthetic_faces():
  """base_config() named the synthetic set, so a config of yours that left dataset.name out trained on it."""
  assert config_lib.base_config().dataset.name == ""
  with pytest.raises(pipeline.DataError, match=r"^config\.dataset\.name is empty: name the data set, one of fer_jax's "
                     r"\(fer2013, ferplus, rafdb, affectnet, sfew, fedro, synthetic\) or one you prepared"):
    pipeline.load_split(_config(name=""), "train")


def test_clear_errors_for_missing_data_and_bad_settings(tmp_path):
  with pytest.raises(pipeline.DataError, match="python -m fer_jax.data.prepare --dataset=rafdb"):
    pipeline.load_split(_config(name="rafdb", data_dir=str(tmp_path), class_order="rafdb"), "train")
  with pytest.raises(pipeline.DataError, match="no split 'validation'; its splits: train, test \\(join several with '\\+'\\)"):
    pipeline.load_split(_config(), "validation")
  with pytest.raises(pipeline.DataError, match="no split 'valid'"):
    pipeline.load_split(_config(), "train+valid")
  with pytest.raises(pipeline.DataError, match="Unknown data set 'nosuchset'") as unknown:
    pipeline.load_split(_config(name="nosuchset"), "train")
  message = str(unknown.value)  # not TFDS's catalogue of every data set it knows (471 lines)
  assert message.startswith("Unknown data set 'nosuchset' (config.dataset.name): fer_jax's are fer2013, ferplus, "
                            f"rafdb, affectnet, sfew, fedro, synthetic; prepared in {_config().dataset.data_dir}: ")
  assert "synthetic. Check the spelling, or prepare the set first" in message and "\n" not in message
  with pytest.raises(pipeline.DataError, match=r"^Unknown data set 'synthetic_tiny' \(config.dataset.name\) \(did you "
                                               r"mean synthetic/tiny\?\): fer_jax's are"):
    pipeline.load_split(_config(name="synthetic_tiny"), "train")
  # A variant the set lacks was TFDS's ValueError, a traceback and exit 1.
  with pytest.raises(pipeline.DataError) as unknown:
    pipeline.load_split(_config(name="affectnet/classes9", data_dir=str(tmp_path)), "train")
  assert str(unknown.value) == ("Data set 'affectnet' has no variant 'classes9' (config.dataset.name='affectnet/"
                                "classes9') (did you mean affectnet/classes8?): its variants are affectnet/classes8, "
                                "affectnet/classes7, affectnet/classes8_facecrop, affectnet/classes7_facecrop.")
  config = _config()
  config.input.update(size=40, eval_pp="normalize('imagenet')")
  with pytest.raises(pipeline.DataError, match="eval_pp .* into float \\(32, 32, 3\\), but the model takes float \\(40, 40, 3\\)"):
    pipeline.EvalData(config, mesh_lib.make_mesh(), "test")
  config.input.update(size=32, train_pp="resize(32)|flip()")
  with pytest.raises(pipeline.DataError, match="train_pp .* into uint8 .* end it at config.input.size with normalize"):
    pipeline.TrainData(config, mesh_lib.make_mesh())
  config.input.train_pp = "resize(32)|jitter()"
  with pytest.raises(pipeline.DataError, match="Unknown preprocessing op 'jitter'.*the device pipeline knows: .*flip"):
    pipeline.TrainData(config, mesh_lib.make_mesh())


def test_a_channel_mismatch_names_the_channels_and_the_fix():
  config = _config()
  config.input.channels = 1
  with pytest.raises(pipeline.DataError, match=r"into 3-channel images, but the model takes config.input.channels=1: "
                                                r"set --config.input.channels=3\.$"):
    pipeline.TrainData(config, mesh_lib.make_mesh())
  config.input.channels = 3
  with pytest.raises(pipeline.DataError, match=r"into 1-channel images, but the model takes config.input.channels=3: "
                                                r"add gray_to_rgb\(\) to config.input.eval_pp, or set "
                                                r"--config.input.channels=1\.$"):
    pipeline.compile_pipeline(config, "resize({size})|to_float()", (48, 48, 1), "input.eval_pp")


def test_a_training_split_smaller_than_a_batch_names_the_batch_and_max_per_class_to_pass():
  with pytest.raises(pipeline.DataError, match=r"has 14 examples per epoch, fewer than config.batch_size 32: use "
                                                r"--config.batch_size=14 or --config.dataset.drop_last=False or a "
                                                r"config.dataset.max_per_class above 2 "
                                                r"\(0 = all\)\.$"):
    pipeline.TrainData(_config(max_per_class=2), mesh_lib.make_mesh())
  with pytest.raises(pipeline.DataError, match=r"use --config.batch_size=7 or --config.dataset.drop_last=False or more of "
                                                r"config.dataset.train_split='train\[:7\]'\.$"):
    pipeline.TrainData(_config(train_split="train[:7]"), mesh_lib.make_mesh())


def test_a_pipeline_that_fails_only_when_traced_fails_when_its_data_is_opened(monkeypatch):
  """Errors that parsing cannot see (here an op of one's own adding two channels' offsets to three) stop before
  any work, naming the evaluator's key, not in the final report's eval step."""
  offsets = augment.Op(apply=lambda image, params: image + jax.numpy.ones(2))
  monkeypatch.setitem(augment.OPS, "two_offsets_for_test", lambda: offsets)
  config = _config()
  config.input.eval_pp = "two_offsets_for_test()|to_float()"
  with pytest.raises(pipeline.DataError, match="^config.evals.mouth.pp: Incompatible shapes for broadcasting"):
    pipeline.EvalData(config, mesh_lib.make_mesh(), "test", "evals.mouth.pp")


def _first_batches(config, steps=3, start=0):
  data = pipeline.TrainData(config, mesh_lib.make_mesh())
  return data, [{k: np.asarray(v) for k, v in b.items()} for _, b in zip(range(steps), data.batches(start))]


def test_every_cache_mode_and_worker_processes_give_the_same_batches():
  reference = None
  for cache, workers in (("none", 0), ("none", 2), ("host", 0), ("device", 0)):
    config = _config(cache=cache)
    config.data_workers = workers
    data, batches = _first_batches(config)
    assert data.cache_mode == cache
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["image"].shape == (32, 32, 32, 3)
    np.testing.assert_array_equal(batches[1]["position"], np.arange(32, 64))
    if reference is None:
      reference = batches
    for batch, expected in zip(batches, reference):
      for key in ("image", "label", "position"):
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=f"{cache}, {workers} workers: {key}")


def test_cache_auto_chooses_by_size_and_a_cache_that_does_not_fit_is_refused():
  data = pipeline.TrainData(_config(cache="auto"), mesh_lib.make_mesh())
  assert data.cache_mode == "device"  # 280 × 32 × 32 × 3 bytes fit any budget
  data = pipeline.TrainData(_config(cache="auto", cache_budget_mb=0.5), mesh_lib.make_mesh())
  assert data.cache_mode == "host"
  with pytest.raises(pipeline.DataError, match=r"280 × \(32, 32, 3\) uint8 = 840 KiB\) exceeds the device cache budget "
                     r"of 102 KiB: use --config.dataset.cache=host"):
    pipeline.TrainData(_config(cache="device", cache_budget_mb=0.1), mesh_lib.make_mesh())
  with pytest.raises(pipeline.DataError, match="Unknown config.dataset.cache 'disk'; valid: auto, none, host, device"):
    pipeline.TrainData(_config(cache="disk"), mesh_lib.make_mesh())


def test_cpu_devices_share_the_host_budget_their_cached_copies_sit_in(monkeypatch, caplog):
  """On 8 fake CPU devices `auto` chose the device cache for a set of up to 2 GiB: 8 copies in host memory."""
  monkeypatch.setattr(pipeline, "_host_budget", lambda: 4 << 30)
  monkeypatch.setattr(pipeline.jax, "local_device_count", lambda: 8)
  with caplog.at_level(logging.INFO):
    assert pipeline.choose_cache(_config(cache="auto"), 30_000, (100, 100, 3), "training split") == "host"
  assert "device budget 512 MiB" in caplog.text
  monkeypatch.setattr(pipeline.jax, "local_device_count", lambda: 1)
  assert pipeline.choose_cache(_config(cache="auto"), 30_000, (100, 100, 3), "training split") == "device"


def test_the_cache_of_an_evaluated_split_is_logged_without_the_device_budget_it_never_uses(caplog):
  with caplog.at_level(logging.INFO):
    assert pipeline.choose_cache(_config(cache="auto"), 70, (32, 32, 3), "test split", on_device=False) == "host"
  assert "Decoded cache for the test split: host (210 KiB; evaluated splits stay on the host; half the free" in caplog.text
  assert "device budget" not in caplog.text


def test_images_are_decoded_at_the_configured_size():
  config = _config(image_size=20, cache="none")
  config.input.update(size=20)
  data, batches = _first_batches(config, steps=1)
  assert data.shape == (20, 20, 3) and batches[0]["image"].shape == (32, 20, 20, 3)
  for image, record in zip(batches[0]["image"], data.order.records(data.positions.of_step(0))):
    with Image.open(io.BytesIO(data.split.source[int(record)]["image"])) as stored:  # 32², PIL's antialiased bilinear
      np.testing.assert_array_equal(image, np.asarray(stored.convert("RGB").resize((20, 20), Image.BILINEAR)))


@pytest.mark.parametrize("cache", ["none", "host", "device"])
def test_two_processes_read_disjoint_halves_of_every_global_batch(cache, monkeypatch):
  """Each process's local slices, stacked in process order, are the one-process global batch."""
  reference = pipeline.TrainData(_config(cache=cache), mesh_lib.make_mesh())
  expected = [np.asarray(b["position"]) for _, b in zip(range(3), reference.batches(2))]
  expected_labels = [np.asarray(b["label"]) for _, b in zip(range(3), reference.batches(2))]
  slices = []
  for process in (0, 1):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    monkeypatch.setattr(pipeline.ocp.multihost, "sync_global_processes", lambda *_, **__: None)  # one real process
    data = pipeline.TrainData(_config(cache=cache), mesh_lib.make_mesh())
    assert data.local_batch == 16
    slices.append([batch for _, batch in zip(range(3), data.local_batches(2))])
  monkeypatch.undo()
  for step in range(3):
    positions = np.concatenate([slices[p][step]["position"] for p in (0, 1)])
    np.testing.assert_array_equal(positions, expected[step])
    np.testing.assert_array_equal(np.concatenate([slices[p][step]["label"] for p in (0, 1)]), expected_labels[step])
    images = [slices[p][step]["image"] if cache != "device" else
              np.asarray(reference.cache().images)[slices[p][step]["row"]] for p in (0, 1)]
    global_images = next(iter(zip(range(1), reference.batches(2 + step))))[1]["image"]
    np.testing.assert_array_equal(np.concatenate(images), np.asarray(global_images))


def test_process_0_failing_to_generate_a_built_in_set_passes_the_barrier_before_it_raises(monkeypatch, tmp_path):
  """Raised before the barrier, the error left the other processes waiting there for an hour."""
  events = []

  class FailingBuilder:
    data_path, data_dir = tmp_path / "synthetic" / "tiny", str(tmp_path)

    def download_and_prepare(self, **_):
      events.append("generate")
      raise OSError("No space left on device")

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(pipeline.ocp.multihost, "sync_global_processes", lambda *_, **__: events.append("barrier"))
  monkeypatch.setattr(pipeline.tfds, "builder", lambda *_, **__: FailingBuilder())
  with pytest.raises(OSError, match="No space left on device"):
    pipeline._generate_once("synthetic/tiny", str(tmp_path), FailingBuilder())
  assert events == ["generate", "barrier"]


def _labels_record_by_record(builder, split):
  """The reference: every record of the split read through TFDS, one at a time, and the records in annotation order:
  the parts of a join in turn, each by its annotation_index (by position where the set has none)."""
  labels, parts, indices = [], [], []
  for number, part in enumerate(split.split("+")):
    source = builder.as_data_source(part, decoders={"image": tfds.decode.SkipDecoding()})
    for record in (source[i] for i in range(len(source))):
      labels.append(record["label"])
      parts.append(number)
      indices.append(record.get("annotation_index", len(indices)))
  return np.array(labels, np.int32), np.lexsort((indices, parts))


def _assert_same_labels_and_order(builder, splits):
  for split in splits:
    labels, order = pipeline._read_labels_and_order(builder, split)
    expected_labels, expected_ranking = _labels_record_by_record(builder, split)
    np.testing.assert_array_equal(labels, expected_labels, err_msg=split)
    assert labels.dtype == expected_labels.dtype
    np.testing.assert_array_equal(np.argsort(order, kind="stable"), expected_ranking, err_msg=split)


def test_label_index_gives_the_labels_and_order_of_the_records(tmp_path, caplog):
  fx.write_affectnet_original(tmp_path / "affectnet")
  fx.write_rafdb(tmp_path / "rafdb")
  splits = ("train", "validation", "train+validation", "validation+train[2:7]")
  affectnet = prepare.prepare("affectnet", os.fspath(tmp_path / "affectnet"), os.fspath(tmp_path / "tfds"))
  rafdb = prepare.prepare("rafdb", os.fspath(tmp_path / "rafdb"), os.fspath(tmp_path / "tfds"))
  index = builder_utils.label_index_path(affectnet, "train")
  assert index.exists() and builder_utils.label_index_path(rafdb, "test").exists()
  _assert_same_labels_and_order(affectnet, splits)  # annotation_index from the index
  _assert_same_labels_and_order(rafdb, ("test", "train+test", "test[1:4]+train"))  # positions

  index.unlink()  # a set prepared before the index existed: read from the records, then added
  with caplog.at_level("INFO"):
    _assert_same_labels_and_order(affectnet, splits)
  assert f"has no label index {index}" in caplog.text
  prepare.prepare("affectnet", os.fspath(tmp_path / "affectnet"), os.fspath(tmp_path / "tfds"))
  assert index.exists()
  _assert_same_labels_and_order(affectnet, ("train",))

  with index.open("wb") as f:
    np.save(f, np.zeros(3, [("label", np.int64)]))
  with pytest.raises(pipeline.DataError, match=f"{index} has 3 rows but split 'train' has 9 records. Delete it"):
    pipeline._read_labels_and_order(affectnet, "train")


@pytest.mark.parametrize("name", ["fer2013", "ferplus/majority", "ferplus/plurality", "rafdb/basic", "rafdb/aligned224",
                                  "affectnet/classes8", "sfew/aligned", "fedro", "synthetic"])
def test_files_are_decoded_at_the_channels_the_data_sets_builder_stores(name, tmp_path):
  """Images given as files (predict, visualize, export) reach the eval pipeline as the set's own do."""
  stored = tfds.builder(name, data_dir=str(tmp_path)).info.features["image"].shape[-1]
  assert decode.stored_channels(name) == stored


@pytest.mark.parametrize("spec", ["configs/apvit.py:ferplus", "configs/scan_cci.py:ferplus", "configs/lhcnet.py:fer2013"])
def test_the_48_pixel_sets_configs_decode_files_at_the_stored_shape(spec, tmp_path):
  """FER2013's and FERPlus' files reach the eval pipeline at the set's 48×48×1, as its own images do
  (decoded at the model's input size, they skipped the pipeline's resize)."""
  config = get_config(spec)
  stored = tfds.builder(config.dataset.name, data_dir=str(tmp_path)).info.features["image"].shape
  assert inference.FilePreprocessor(config).shape == stored


def _damaged_tiny_copy(tmp_path, damage: str):
  """synthetic/tiny copied into `tmp_path`, and a function that damages its test split's one record file ("truncated"
  to half its size or "deleted"), which it returns."""
  shutil.copytree(helpers.tiny_data_dir(), tmp_path / "tfds")
  shard = tmp_path / "tfds" / "synthetic" / "tiny" / "1.1.0" / "synthetic-test.array_record-00000-of-00001"
  return lambda: shard.unlink() if damage == "deleted" else os.truncate(shard, os.path.getsize(shard) // 2), shard


def _tiny_copy_config(tmp_path, **dataset):
  config = _config(data_dir=str(tmp_path / "tfds"), **dataset)
  config.eval_batch_size = 16
  return config


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_or_missing_record_file_is_named_with_the_fix_as_its_split_opens(tmp_path, damage):
  """A data folder copied incompletely (to a cluster node) ended training in array_record's traceback, exit 1:
  "Invalid Riegeli/records file: chunk boundary …" or "open() failed: No such file or directory"."""
  damaged, shard = _damaged_tiny_copy(tmp_path, damage)
  damaged()
  with pytest.raises(pipeline.DataError) as error:
    pipeline.load_split(_tiny_copy_config(tmp_path), "test")
  assert f"{shard} {'is missing' if damage == 'deleted' else 'cannot be read (Invalid Riegeli'}" in str(error.value)
  assert f"Delete {shard.parent}: fer_jax generates its built-in sets again on first use" in str(error.value)
  assert len(pipeline.load_split(_tiny_copy_config(tmp_path), "train").labels) == 280  # the intact split reads


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
@pytest.mark.parametrize("reader", ["eval batches", "worker process", "examples", "decoded cache", "training batches"])
def test_a_record_file_damaged_after_its_split_opened_is_named_where_its_images_are_read(tmp_path, damage, reader):
  """A set with a label index reads no record as its split opens: damage found at the first image is named too."""
  damaged, shard = _damaged_tiny_copy(tmp_path, damage)
  config = _tiny_copy_config(tmp_path, cache="none", train_split="test")
  config.data_workers = 1 if reader == "worker process" else 0
  data = (pipeline.TrainData(config, mesh_lib.make_mesh()) if reader == "training batches" else
          pipeline.EvalData(config, mesh_lib.make_mesh(), "test"))
  damaged()
  read = {"eval batches": lambda: list(data.batches()), "worker process": lambda: list(data.batches()),
          "examples": lambda: data.examples(8), "training batches": lambda: next(iter(data.batches(0))),
          "decoded cache": lambda: pipeline.decode_all(data.decoder, data.records, workers=0)}[reader]
  with pytest.raises(pipeline.DataError, match=re.escape(f"{shard} {'is missing' if damage == 'deleted' else ''}")):
    read()


def test_another_error_while_records_are_read_passes_unchanged():
  source = pipeline.load_split(_config(), "test").source
  with pytest.raises(RuntimeError, match="^a bug$"):
    with builder_utils.record_files_checked(source):
      raise RuntimeError("a bug")


def test_the_examples_figure_shows_the_split_s_first_examples_whatever_the_batch_and_process_count(monkeypatch):
  """examples_<name>.png, "the first 8 inputs", showed this process's share of the first batch: with
  eval_batch_size=3, 3 images; on 2 processes, 2 of a batch of 4 (on a 16-host pod 4)."""
  config = _config()  # evaluated in batches of 32
  data = pipeline.EvalData(config, mesh_lib.make_mesh(), "test")
  first = np.asarray(next(iter(data.batches()))["image"])[:8]
  keys = augment.evaluation_keys(data.records[:8].astype(np.int32))
  expected = np.asarray(jax.jit(data.pipeline.visible_part)(first, keys)).astype(np.uint8)
  monkeypatch.setattr(pipeline.ocp.multihost, "sync_global_processes", lambda *_, **__: None)  # one real process
  for batch_size, processes in ((32, 1), (3, 1), (4, 2)):
    monkeypatch.setattr(jax, "process_count", lambda processes=processes: processes)
    monkeypatch.setattr(jax, "process_index", lambda processes=processes: processes - 1)
    config.eval_batch_size = batch_size
    examples = pipeline.EvalData(config, mesh_lib.make_mesh(), "test").examples(8)
    np.testing.assert_array_equal(examples, expected, err_msg=f"batches of {batch_size} on {processes} processes")
