"""Resuming a training state after an optimizer change, and reading only the weights for eval,
predict and init_from; tiny hand-made trees, and one real run on synthetic/tiny."""

import gc
import glob
import itertools
import json
import logging
import os
import re
import shlex
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import errors
from fer_jax import models
from fer_jax import optim
from fer_jax import selection as selection_lib
from fer_jax import summary
from fer_jax import train
from fer_jax import validation
from fer_jax.data.builders import synthetic
from fer_jax.errors import UserError
from helpers import get_config, random_variables, restore_state, short_dan_run, short_tiny_net_run, tiny_run

PARAMS = {"trunk": {"kernel": jnp.arange(6.0).reshape(3, 2)},
          "head": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
BATCH_STATS = {"bn": {"mean": jnp.full(2, 0.5), "var": jnp.full(2, 2.0)}}


def _config(**optimizer):
  config = config_lib.base_config()
  config.optimizer.update(optimizer)
  return config


def _trained_state(config, steps: int = 2) -> dict:
  """A state whose moments and step count are not their initial values."""
  tx = optim.make_optimizer(config.optimizer, 1, 1, PARAMS).tx
  params, opt_state = PARAMS, tx.init(PARAMS)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 10.0), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return {"step": jnp.int32(steps), "params": params, "batch_stats": BATCH_STATS, "opt_state": opt_state}


def _abstract_state(config) -> dict:
  tx = optim.make_optimizer(config.optimizer, 1, 1, PARAMS).tx
  return jax.eval_shape(lambda: {"step": jnp.int32(0), "params": PARAMS, "batch_stats": BATCH_STATS,
                                 "opt_state": tx.init(PARAMS)})


def _saved(tmp_path, state, config, step: int = 2):
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, step, state, config)
  checkpointing.wait_until_saved(checkpoints)
  return checkpoints


def _files(tmp_path) -> dict:
  return {path: os.path.getsize(path) for path in glob.glob(f"{tmp_path}/**/*", recursive=True) if os.path.isfile(path)}


def _assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("saved_clip, resumed_clip", [(0.0, 1.0), (1.0, 0.0), (1.0, 5.0)])
def test_resume_after_changing_grad_clip_norm(tmp_path, saved_clip, resumed_clip):
  """The NaN message advises setting grad_clip_norm and resuming: the state must restore as saved."""
  state = _trained_state(_config(grad_clip_norm=saved_clip))
  checkpoints = _saved(tmp_path, state, _config(grad_clip_norm=saved_clip))
  restored = restore_state(checkpoints, 2, _abstract_state(_config(grad_clip_norm=resumed_clip)))
  _assert_trees_equal(restored, state)


@pytest.mark.parametrize("changed", [{"name": "adam"}, {"lr_groups": (("^trunk/", 0.1),)}, {"trainable": "^head/"}])
def test_resume_with_another_optimizer_says_the_checkpoint_is_intact(tmp_path, changed):
  checkpoints = _saved(tmp_path, _trained_state(_config()), _config())
  before = _files(tmp_path)
  step_directory = str(tmp_path / "checkpoints" / "2")
  with pytest.raises(checkpointing.CheckpointError) as error:
    restore_state(checkpoints, 2, _abstract_state(_config(**changed)))
  message = str(error.value)
  for fragment in (step_directory, "is intact", "builds a different training state", "opt_state/",
                   "the config the run was started with", "--workdir", f"--config.init_from={step_directory}"):
    assert fragment in message, (fragment, message)
  assert "damaged" not in message and "delete" not in message, message
  assert _files(tmp_path) == before


def test_resume_at_another_batch_size_is_refused_with_the_batch_to_pass(tmp_path):
  """The step counter counts epochs of the saved batch: resumed at another, the run trained and reported
  epochs it had not seen, silently. A config at the saved batch resumes."""
  config = _config()
  checkpoints = _saved(tmp_path, _trained_state(config), config)
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"trained at a global batch of {config.batch_size}, this config's is "
                           rf"{2 * config.batch_size}: .* --config.batch_size={config.batch_size}, or start a new"):
    restore_state(checkpoints, 2, _abstract_state(config), _with(config, batch_size=2 * config.batch_size))
  _assert_trees_equal(restore_state(checkpoints, 2, _abstract_state(config), config),
                      _trained_state(config))


def _with(config, **values):
  changed = config.copy_and_resolve_references()
  changed.update(values)
  return changed


def test_the_settings_each_resume_changed_are_kept_from_step_to_step(tmp_path, monkeypatch):
  config = _config(lr=0.1)
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  first = [{"step": 2, "key": "optimizer.lr", "saved": 0.2, "now": 0.1}]
  checkpointing.save(checkpoints, 4, _trained_state(config), config, steps_per_epoch=3, changed_on_resume=first)
  checkpointing.wait_until_saved(checkpoints)
  assert checkpointing.changes_on_resume(checkpoints, 4, config) == first  # resumed again as it was
  config.optimizer.lr = 0.05
  config.update(eval_batch_size=7, init_from="/elsewhere")  # neither changes what the run trains or reports
  assert checkpointing.changes_on_resume(checkpoints, 4, config) == [
      *first, {"step": 4, "key": "optimizer.lr", "saved": 0.1, "now": 0.05}]
  # A record without the config (an older fer_jax's) listed every evaluator key as changed from None.
  monkeypatch.setattr(checkpointing, "_meta", lambda step_directory: {"changed_on_resume": first})
  assert checkpointing.changes_on_resume(checkpoints, 4, config) == first


def test_an_unfinished_save_is_named_as_it_is_deleted(tmp_path, caplog):
  """A run killed while saving step 4 resumed from step 2, its unfinished save deleted without a word."""
  config = _config()
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, 2, _trained_state(config), config, steps_per_epoch=3)
  checkpointing.wait_until_saved(checkpoints)
  (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1733356800" / "state").mkdir(parents=True)
  with caplog.at_level(logging.WARNING):
    reopened = checkpointing.manager(str(tmp_path / "checkpoints"))
  assert (f"Deleting the unfinished save of step 4 in {tmp_path / 'checkpoints'} (a run stopped while saving): the "
          "newest complete step stands.") in caplog.text
  assert reopened.latest_step() == 2


def test_a_resume_on_another_device_count_is_warned_of_and_a_refusal_names_the_saved_one(tmp_path, caplog):
  """A run saved on 1 device resumed on 8 (its epochs the same) without a word that its result is only close to an
  uninterrupted run's; refused for its epochs' last batch, the message named the new device count alone."""
  config = _config()
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, 2, _trained_state(config), config, steps_per_epoch=3, last_batch=5)
  checkpointing.wait_until_saved(checkpoints)
  saved_on = errors.counted(jax.device_count(), "device")
  with caplog.at_level(logging.WARNING):
    checkpointing.check_epoch_length(checkpoints, 2, 3, 5, devices=jax.device_count() + 7)
  assert (f"Step 2 was saved on {saved_on} and resumes on {jax.device_count() + 7} devices: the run's result will "
          "be close to an uninterrupted run's, not bit for bit the same") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    checkpointing.check_epoch_length(checkpoints, 2, 3, 5, devices=jax.device_count())
  assert "was saved on" not in caplog.text
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"trained, on {saved_on}, 3 steps an epoch, the last of 5 images; this config's training "
                           r"split gives, on 9 devices, 3 steps an epoch, the last of 6 images"):
    checkpointing.check_epoch_length(checkpoints, 2, 3, 6, devices=9)


def test_resume_with_another_epoch_length_or_class_order_is_refused(tmp_path):
  """Resumed on a training split of another length (max_per_class, train_split, sampler) the step counter
  counted epochs it had not trained; under another class order the head's rows stood for other classes:
  both resumed silently."""
  config, abstract = _config(), _abstract_state(_config())
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, 2, _trained_state(config), config, steps_per_epoch=3)
  checkpointing.wait_until_saved(checkpoints)
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"^The run in {tmp_path} trained, on 1 device, 3 steps an epoch; this config's "
                           r"training split gives, on 1 device, 2 steps an epoch: .* Resume with the "
                           r"dataset.train_split, max_per_class, sampler and drop_last it was trained with .*, or "
                           rf"start a new --workdir with --config.init_from={tmp_path}/checkpoints/2 \(a new training "
                           r"from those weights: its schedule and optimizer start afresh\)\.$"):
    checkpointing.check_epoch_length(checkpoints, 2, 2)  # a resumed TrainingRun's check, once the data is read
  checkpointing.check_epoch_length(checkpoints, 2, 3)
  other_classes = _with(config)
  other_classes.dataset.class_order = "rafdb"
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"predicts the classes \(anger, disgust, .*\) of class order 'fer2013' but the "
                           r"config's class order gives \(surprise, fear, .*\): pass the --config it was trained or "
                           r"converted with, or pass --config.dataset.class_order=fer2013\.$"):
    restore_state(checkpoints, 2, abstract, other_classes)
  _assert_trees_equal(restore_state(checkpoints, 2, abstract, config), _trained_state(config))


def test_resume_with_another_model_names_the_shape_difference(tmp_path):
  checkpoints = _saved(tmp_path, _trained_state(_config()), _config())
  abstract = _abstract_state(_config())
  abstract["batch_stats"] = {"bn": {"mean": jax.ShapeDtypeStruct((3,), jnp.float32),
                                    "var": jax.ShapeDtypeStruct((2,), jnp.float32)}}
  with pytest.raises(checkpointing.CheckpointError, match=r"batch_stats/bn/mean: checkpoint \(2,\) vs config \(3,\)"):
    restore_state(checkpoints, 2, abstract)


@pytest.mark.parametrize("resumed_clip", [0.0, 1.0])
def test_resume_of_a_state_saved_without_the_clip_stage(tmp_path, resumed_clip):
  """Before the clip stage was always there, grad_clip_norm=0 saved the inner state alone."""
  state = _trained_state(_config())
  _, inner = state["opt_state"]
  checkpoints = _saved(tmp_path, {**state, "opt_state": inner}, _config())
  restored = restore_state(checkpoints, 2, _abstract_state(_config(grad_clip_norm=resumed_clip)))
  _assert_trees_equal(restored, state)


# Orbax's failed read leaves a callback for its closed event loop, reported when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("earlier_step", [1, None], ids=["with_a_step_before", "only_step"])
def test_resume_from_damaged_files_names_the_step_to_delete(tmp_path, earlier_step):
  """With no step before the damaged one, the run starts over: it was told to delete it "to resume from the step
  before it"."""
  if earlier_step:
    _saved(tmp_path, _trained_state(_config()), _config(), step=earlier_step)
  checkpoints = _saved(tmp_path, _trained_state(_config()), _config())
  step_directory = tmp_path / "checkpoints" / "2"
  data = [path for path in glob.glob(f"{step_directory}/state/**/d/*", recursive=True) if os.path.isfile(path)]
  assert data
  for path in data:
    os.truncate(path, os.path.getsize(path) // 2)
  fix = (f"delete {step_directory} to resume from step 1, the one before it\\." if earlier_step else
         f"it is the run's only checkpoint, so start the run over: delete {tmp_path} or pass a new --workdir\\.")
  with pytest.raises(checkpointing.CheckpointError, match=f"damaged or incomplete; {fix}$"):
    restore_state(checkpoints, 2, _abstract_state(_config()))
  gc.collect()  # here, not during the next test


def test_resume_from_a_step_without_its_meta_record_names_the_step_to_delete(tmp_path):
  """Without meta/ every check of the config against the run's was skipped: a resume at another batch size and seed
  went on as if nothing had changed."""
  _saved(tmp_path, _trained_state(_config()), _config(), step=1)
  checkpoints = _saved(tmp_path, _trained_state(_config()), _config())
  shutil.rmtree(tmp_path / "checkpoints" / "2" / "meta")
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(
      f"{tmp_path}/checkpoints/2 has no meta record (meta/metadata), which a training saves with every step: the "
      f"checkpoint is incomplete and cannot be checked against this config; delete {tmp_path}/checkpoints/2 to resume "
      "from step 1, the one before it.")):
    restore_state(checkpoints, 2, _abstract_state(_config()), _config())


def test_a_file_where_the_checkpoints_folder_goes_is_named_before_training(tmp_path):
  """It was found by the first save, an epoch of training later."""
  (tmp_path / "checkpoints").write_text("notes")
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(
      f"{tmp_path}/checkpoints is a file, not a folder of checkpoints: move it away, or pass another --workdir.")):
    train.TrainingRun(tiny_run(get_config("configs/dan.py:synthetic")), str(tmp_path))


def test_restore_model_reads_only_params_and_batch_stats(tmp_path, monkeypatch):
  """eval, predict and init_from keep the weights: Adam's moments (2× the params) are not read."""
  config = _config(name="adam")
  state = _trained_state(config)
  _saved(tmp_path, state, config)
  read = []
  deserialize = ocp.type_handlers.ArrayHandler.deserialize

  def recording(self, infos, args=None):  # returns the coroutine Orbax awaits
    read.extend(info.name for info in infos)
    return deserialize(self, infos, args)

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", recording)
  abstract = jax.eval_shape(lambda: {"params": state["params"], "batch_stats": state["batch_stats"]})
  restored = checkpointing.restore_model(str(tmp_path), abstract)
  _assert_trees_equal(restored, {"params": state["params"], "batch_stats": state["batch_stats"]})
  assert read and sorted(read) == sorted(ocp.tree.to_flat_dict(abstract, sep=".")), read


def test_model_variables_of_a_training_state_and_of_a_model_without_batch_norm():
  params, batch_stats = {"head": {"kernel": np.ones((2, 3))}}, {"bn": {"mean": np.zeros(2)}}
  state = {"step": 7, "params": params, "batch_stats": batch_stats, "opt_state": ({"mu": params},)}
  assert checkpointing.model_variables(state) == {"params": params, "batch_stats": batch_stats}
  assert checkpointing.model_variables({"params": params}) == {"params": params, "batch_stats": {}}
  assert checkpointing.fingerprint(state) == checkpointing.fingerprint(checkpointing.model_variables(state))


@pytest.mark.integration
def test_a_run_resumes_with_clipping_turned_on_and_refuses_another_optimizer(tmp_path, caplog):
  """The non-finite-loss advice end to end: set grad_clip_norm, start again, it resumes. Another optimiser is
  refused before the data is opened (it was once checked after the training data was read and decoded)."""
  config = short_tiny_net_run()  # 2 epochs of 4 steps
  config.checkpoint_every_steps = 4
  config.optimizer.grad_clip_norm = 0.0
  train.train_and_evaluate(config, str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints" / "8")  # as if stopped after step 4
  config.optimizer.grad_clip_norm = 1.0
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, str(tmp_path))
  assert "Resumed from step 4" in caplog.text
  assert (f"Resuming {tmp_path} with settings changed since step 4 was saved: config.optimizer.grad_clip_norm 1.0 "
          "(saved 0.0).") in caplog.text
  # Recorded: the report's config alone said the run trained with clipping from its first step.
  changed = [{"step": 4, "key": "optimizer.grad_clip_norm", "saved": 0.0, "now": 1.0}]
  assert json.loads((tmp_path / "eval_results.json").read_text())["changed_on_resume"] == changed
  assert checkpointing.read_meta(str(tmp_path / "checkpoints" / "8"))["changed_on_resume"] == changed
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  config.init_from = str(tmp_path / "other_run")  # resumed silently, and the report recorded it as the start
  with caplog.at_level(logging.INFO):
    caplog.clear()
    train.train_and_evaluate(config, str(tmp_path))
  assert (f"config.init_from* is not read: the run in {tmp_path} resumes from its step 4 (init_from starts new runs "
          "only)") in caplog.text
  config.init_from = ""
  shutil.rmtree(tmp_path / "checkpoints" / "8")
  before = _files(tmp_path / "checkpoints")
  config.optimizer.name = "adam" if config.optimizer.name != "adam" else "sgd"
  config.dataset.data_dir = str(tmp_path / "nonexistent")  # refused before the data is opened
  with pytest.raises(checkpointing.CheckpointError, match=f"was trained with other settings: "
                     f"config.optimizer.name '{config.optimizer.name}'.*its checkpoints are left as they are"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _files(tmp_path / "checkpoints") == before


@pytest.mark.parametrize("key, value, refused", [
    ("optimizer.momentum", 0.5, True),  # the optimiser state's layout is the same: it resumed silently
    ("optimizer.weight_decay", 5e-4, True),
    ("model.dtype", "bfloat16", True),  # the same variables, other numerics
    ("seed", 1, True),  # another data order
    ("input.train_pp", "flip_lr()", True),
    ("optimizer.lr", 0.001, False),  # what a non-finite loss calls for
    ("optimizer.grad_clip_norm", 1.0, False),
    ("num_epochs", 80, False),
    ("data_workers", 0, False),
    ("eval.tta", "flip", False),
    ("dataset.test_split", "train", False),  # the report's split
    ("model.remat", "blocks", False),  # the same gradients
])
def test_a_resume_may_change_how_long_and_how_it_steps_but_not_what_it_trains(key, value, refused):
  config = get_config("configs/dan.py:rafdb")
  saved = config_lib.flat(config)
  section, _, name = key.rpartition(".")
  (config[section] if section else config)[name] = value
  assert config_lib.resume_differences(saved, config) == ([(key, value, saved[key])] if refused else [])


def test_a_cosine_schedule_resumes_only_for_the_epochs_it_was_shaped_for():
  config = get_config("configs/dan.py:rafdb")
  config.optimizer.schedule = "cosine"
  saved = config_lib.flat(config)
  config.num_epochs += 10
  assert config_lib.resume_differences(saved, config) == [("num_epochs", config.num_epochs, saved["num_epochs"])]


def test_a_run_recorded_before_its_config_resumes_as_it_trained():
  """Checkpoints written before the config was recorded (2026-12-05) were compared on nothing: one resumed with today's
  defaults silently trained each epoch's last batch, which the run had dropped (a step more an epoch, the schedule
  and epochs moved). They trained as ADDED_SINCE's values say."""
  config = get_config("configs/dan.py:rafdb")
  assert config_lib.resume_differences({}, config) == [("dataset.drop_last", False, True)]
  config.dataset.drop_last = True
  assert config_lib.resume_differences({}, config) == []


@pytest.mark.parametrize("spec, key, default, before", [
    # LHC-Net's configs now round-trip their training images through JPEG: a run recorded before trained on the
    # float resize and would have switched images unseen (a key one record lacks is not compared).
    ("configs/lhcnet.py:fer2013,stage=B", "dataset.train_jpeg_round_trip", True, False),
    # Epochs now train their last, short batch: a run recorded before dropped it, and its steps would stand for
    # other examples.
    ("configs/dan.py:rafdb", "dataset.drop_last", False, True),
])
def test_a_run_recorded_before_a_key_was_added_resumes_only_as_it_trained(spec, key, default, before):
  config = get_config(spec)
  saved = config_lib.flat(config)
  del saved[key]
  assert config_lib.resume_differences(saved, config) == [(key, default, before)]
  section, _, name = key.rpartition(".")
  config[section][name] = before
  assert config_lib.resume_differences(saved, config) == []


def test_keys_of_another_fer_jax_version_are_not_compared_on_resume():
  """A key added or removed since the checkpoint was written could be set by no flag to what it recorded."""
  config = get_config("configs/dan.py:rafdb")
  saved = config_lib.flat(config)
  saved["loss.a_key_since_removed"] = 1
  del saved["model.remat"], saved["inference_mode_from_epoch"]
  config.inference_mode_from_epoch = 2
  assert config_lib.resume_differences(saved, config) == []


def test_resume_on_a_device_count_that_splits_the_last_batch_otherwise_is_refused(tmp_path):
  """An epoch's last, short batch trains the examples that split evenly over the devices: resumed on another count,
  a run trained other examples at the same steps (2 devices), or was refused for its training split (4 devices)."""
  config = _config()
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, 4, _trained_state(config), config, steps_per_epoch=4, last_batch=3)
  checkpointing.wait_until_saved(checkpoints)
  checkpointing.check_epoch_length(checkpoints, 4, 4, last_batch=3, devices=1)
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"^The run in {tmp_path} trained, on 1 device, 4 steps an epoch, the last of 3 "
                           r"images; this config's training split gives, on 2 devices, 4 steps an epoch, the last of 2 "
                           r"images: .* Resume with the dataset.train_split, max_per_class, sampler and drop_last it "
                           r"was trained with \(and, where its epochs end in a short batch, a device count that "
                           r"splits that batch as it did\)"):
    checkpointing.check_epoch_length(checkpoints, 4, 4, last_batch=2, devices=2)
  with pytest.raises(checkpointing.CheckpointError, match=r"gives, on 4 devices, 3 steps an epoch: "):
    checkpointing.check_epoch_length(checkpoints, 4, 3, last_batch=0, devices=4)
  assert checkpointing.read_meta(str(tmp_path / "checkpoints"))["last_batch"] == 3


TRAINING_DATA = {"prepared": "synthetic/tiny/1.1.0", "records": 280, "used": 35, "labels_sha256": "a" * 64}


def test_a_resume_on_other_training_data_names_what_differs(tmp_path):
  """data_dir may change on resume; the set found there must be the run's: its version, counts, labels and order.
  A step saved before the record existed resumes as before."""
  config = _config()
  checkpoints = checkpointing.manager(str(tmp_path / "checkpoints"))
  checkpointing.save(checkpoints, 1, _trained_state(config), config, steps_per_epoch=1)
  checkpointing.save(checkpoints, 2, _trained_state(config), config, steps_per_epoch=1, training_data=TRAINING_DATA)
  checkpointing.wait_until_saved(checkpoints)
  prepared_in = "/data/synthetic/tiny/1.1.0"

  def check(step: int, **changed):
    checkpointing.check_training_data(checkpoints, step, {**TRAINING_DATA, **changed}, prepared_in)

  check(2)  # the same set, wherever it is
  check(1, records=279, labels_sha256="b" * 64)  # nothing recorded
  for changed, difference in (
      ({"labels_sha256": "b" * 64}, "as many records, but other labels or another record order"),
      ({"records": 279, "labels_sha256": "b" * 64}, "279 records, 35 used (saved 280 records, 35 used)"),
      ({"prepared": "synthetic/tiny/1.2.0"}, "prepared as synthetic/tiny/1.2.0 (saved synthetic/tiny/1.1.0)")):
    with pytest.raises(checkpointing.CheckpointError, match=re.escape(
        f"The run in {tmp_path} was trained on another training split than the one prepared in {prepared_in}: "
        f"{difference}. Point --config.dataset.data_dir at the set the run started with, or start a new --workdir "
        f"with --config.init_from={tmp_path}/checkpoints/2 (a new training from those weights: its schedule and "
        "optimizer start afresh).")):
      check(2, **changed)


def _synthetic_tiny_without_its_first_image(data_dir) -> str:
  """synthetic/tiny prepared again in `data_dir` without its first training image (as prepare --skip_corrupt leaves
  out an unreadable one): 279 records, as many used by short_dan_run's max_per_class (5) and steps an epoch."""
  generate = synthetic.Synthetic._generate_examples
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(synthetic.Synthetic, "_generate_examples",
                  lambda self, split, count: itertools.islice(generate(self, split, count), split == "train", None))
    tfds.builder("synthetic/tiny", data_dir=str(data_dir)).download_and_prepare(file_format="array_record")
  return str(data_dir)


@pytest.mark.integration
def test_a_resume_refuses_a_training_set_prepared_again_and_resumes_on_a_moved_copy(tmp_path):
  """Nothing compared the set a resumed run found in its data_dir with the run's: one prepared again without an image
  gave as many steps an epoch, and the run trained on with other examples in another order."""
  config = short_dan_run()
  workdir = str(tmp_path / "run")
  run = train.TrainingRun(config, workdir)
  run.step = 1  # saved as after its first step: what is checked is the record, not the weights
  run.checkpoint(force=True)
  run.wait_for_saves()
  run.writer.close()
  moved = shutil.copytree(os.path.join(config.dataset.data_dir, "synthetic"), tmp_path / "moved" / "synthetic")
  config.dataset.data_dir = _synthetic_tiny_without_its_first_image(tmp_path / "skipped")
  before = _files(workdir)
  with pytest.raises(checkpointing.CheckpointError, match=(
      rf"^The run in {workdir} was trained on another training split than the one prepared in "
      rf"{tmp_path}/skipped/synthetic/tiny/[\d.]+: 279 records, 35 used \(saved 280 records, 35 used\)\. Point "
      rf"--config.dataset.data_dir at the set the run started with, or start a new --workdir with "
      rf"--config.init_from={workdir}/checkpoints/1 \(a new training from those weights: .*\)\.$")):
    train.TrainingRun(config, workdir)
  assert _files(workdir) == before

  def resumed_step(data_dir) -> int:
    config.dataset.data_dir = str(data_dir)
    resumed = train.TrainingRun(config, workdir)
    resumed.writer.close()
    return resumed.start_step

  assert resumed_step(moved.parent) == 1
  meta_file = tmp_path / "run" / "checkpoints" / "1" / checkpointing.META_FILE
  meta = json.loads(meta_file.read_text())
  del meta["training_data"]  # as saved before it was recorded
  meta_file.write_text(json.dumps(meta))
  assert resumed_step(tmp_path / "skipped") == 1


def test_a_refused_resume_names_each_key_with_the_flag_that_resumes(tmp_path):
  config = short_tiny_net_run()
  train.train_and_evaluate(config, str(tmp_path))
  config.optimizer.update(momentum=0.5, b1=0.8, b2=0.99, eps=1e-7)
  config.update(seed=3, num_epochs=config.num_epochs + 1)
  config.input.train_pp = "flip()"
  with pytest.raises(checkpointing.CheckpointError) as refused:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(refused.value)
  saved = checkpointing.read_meta(str(tmp_path))["config"]
  for key in ("optimizer.momentum", "optimizer.b1", "optimizer.b2", "optimizer.eps", "seed", "num_epochs",
              "input.train_pp"):
    assert f"config.{key} " in message and config_lib.override(key, saved[key]) in message
  assert "(it shapes the cosine schedule)" in message
  assert shlex.split(config_lib.override("input.train_pp", saved["input.train_pp"])) == [
      f"--config.input.train_pp={saved['input.train_pp']}"]  # one shell word, as the config holds it


def test_an_initialisation_only_model_starts_training_but_inference_and_its_summary_refuse_or_read_it(tmp_path):
  """A backbone-only conversion's head is untrained: its predictions would be noise, so every inference path
  (through models.load_trained_variables) refuses it and names init_from, which reads it; summary fingerprints it."""
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  variables = random_variables(config)
  model = models.build_model(config)
  checkpointing.save_model(str(tmp_path / "plain"), variables, config)
  step = checkpointing.save_model(str(tmp_path / "init"), variables, config, initialisation_only=True)
  assert checkpointing.read_meta(str(tmp_path / "init"))["initialisation_only"] is True
  assert "initialisation_only" not in checkpointing.read_meta(str(tmp_path / "plain"))
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf"{step} is only an initialisation .* starting point for training, .* "
                           rf"--config.init_from={step}\.$"):
    models.load_trained_variables(config, model, str(tmp_path / "init"))
  abstract = models.abstract_variables(model, config)
  _assert_trees_equal(checkpointing.restore_model(str(tmp_path / "init"), abstract), variables)  # as init_from reads
  _assert_trees_equal(summary.trained_variables(config, model, abstract, str(tmp_path / "init")), variables)
  _assert_trees_equal(models.load_trained_variables(config, model, str(tmp_path / "plain")), variables)


def test_the_meta_record_keeps_the_test_time_augmentation(tmp_path):
  config = get_config("configs/dan.py:synthetic")
  config.eval.tta = "lhc62"
  checkpointing.save_model(str(tmp_path), random_variables(config), config)
  assert checkpointing.read_meta(str(tmp_path))["tta"] == "lhc62"


def test_the_meta_record_keeps_the_shape_a_run_decoded_its_data_set_to(tmp_path):
  """A run records what its training split's images are decoded to; a conversion read no data and an older record
  has none (the config's size and the set's name decide)."""
  config = _config()
  checkpoints = checkpointing.manager(str(tmp_path / "run"))
  checkpointing.save(checkpoints, 1, {"params": PARAMS}, config, steps_per_epoch=1, stored_shape=(40, 40, 1))
  checkpointing.wait_until_saved(checkpoints)
  assert checkpointing.recorded_shape(checkpointing.read_meta(str(tmp_path / "run"))) == (40, 40, 1)
  checkpointing.save_model(str(tmp_path / "converted"), {"params": PARAMS}, config)
  assert checkpointing.recorded_shape(checkpointing.read_meta(str(tmp_path / "converted"))) == ()
  assert checkpointing.recorded_shape({"model": {}}) == ()


def test_a_recorded_auto_dtype_is_no_difference_from_the_resolved_one(tmp_path):
  """A conversion records dtype "auto"; the config's is resolved (validate): listing them as a difference
  beside the real one (use_lhc) was noise."""
  stage_b = get_config("configs/lhcnet.py:synthetic,stage=B")
  stage_b.input.size = 32
  assert stage_b.model.dtype == "auto"
  checkpointing.save_model(str(tmp_path), random_variables(stage_b), stage_b)
  stage_a = get_config("configs/lhcnet.py:synthetic")
  stage_a.input.size = 32
  validation.validate(stage_a, training=False)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"; differs from the config in use_lhc=True \(config False\)\) does not fit"):
    models.load_trained_variables(stage_a, models.build_model(stage_a), str(tmp_path))


def test_restoring_a_model_warns_of_no_missing_metadata_file(tmp_path, caplog):
  """The state/ folder of a step is an item: its metadata file is the step's, not the item's own."""
  config = _config()
  state = _trained_state(config)
  _saved(tmp_path, state, config)
  abstract = jax.eval_shape(lambda: {"params": state["params"], "batch_stats": state["batch_stats"]})
  with caplog.at_level(logging.WARNING):
    checkpointing.restore_model(str(tmp_path), abstract)
    restore_state(checkpointing.manager(str(tmp_path / "checkpoints")), 2, _abstract_state(config))
  assert caplog.records == [], caplog.text


def test_a_workdir_gives_the_weights_its_report_evaluated(tmp_path):
  """With restore_best the report evaluates best/STEP; --mode=eval, predict and fer_jax.load of the workdir read
  those weights (they read the newest checkpoint before, another model than the report's)."""
  config, variables = _config(), {"params": PARAMS, "batch_stats": BATCH_STATS}
  for folder, step in (("checkpoints", 8), ("best", 3)):
    checkpoints = checkpointing.manager(str(tmp_path / folder))
    checkpointing.save(checkpoints, step, variables, config)
    checkpointing.wait_until_saved(checkpoints)
  assert checkpointing.step_folder(str(tmp_path)) == str(tmp_path / "checkpoints" / "8")  # no report yet
  for reported, read in ((3, tmp_path / "best" / "3"), (8, tmp_path / "checkpoints" / "8")):
    (tmp_path / "eval_results.json").write_text(json.dumps({"step": reported}))
    assert checkpointing.step_folder(str(tmp_path)) == str(read)
  assert checkpointing.step_folder(str(tmp_path / "checkpoints")) == str(tmp_path / "checkpoints" / "8")


def test_a_resumed_selection_by_another_metric_or_evaluator_is_refused(tmp_path):
  """The best epoch kept was chosen by one metric: resumed by another, its value was compared (and logged) as if
  it were the new metric's."""
  config = _config()
  config.update(select_metric="accuracy", select_on="eval")
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  selection.update(1, 8, {"accuracy": 0.5})
  selection.save_best({"params": PARAMS, "batch_stats": BATCH_STATS}, config, (8, 8, 3))
  selection.wait_until_finished()
  assert selection_lib.Selection(config, str(tmp_path), 8).best_value == 0.5  # the same selection resumes
  for key, value in (("select_metric", "mean_class_accuracy"), ("select_on", "occluded")):
    changed = _with(config, **{key: value})
    with pytest.raises(UserError, match=rf"best keeps the best epoch by accuracy on eval; this config selects by "
                                        rf"{changed.select_metric} on {changed.select_on}, .* Resume with "
                                        r"--config.select_metric=accuracy --config.select_on=eval, or start a new"):
      selection_lib.Selection(changed, str(tmp_path), 8)


def test_a_resume_selecting_by_another_metric_without_the_best_epoch_it_records_chooses_again(tmp_path):
  """A checkpoint recording a selection by accuracy, best/ deleted, resumed with select_metric=mean_class_accuracy
  (a resume may change it): refused, naming a best/ folder that held nothing, where the record was of the step
  resumed from; taken as the new metric's otherwise."""
  config = _config()
  config.update(select_metric="mean_class_accuracy", select_on="eval")
  for step in (8, 12):
    (tmp_path / "checkpoints" / str(step) / "selection").mkdir(parents=True)
    (tmp_path / "checkpoints" / str(step) / "selection" / "metadata").write_text(json.dumps(
        {"value": 0.5, "unrounded": 0.5, "epoch": 1, "gain_epoch": 1, "step": 8, "metric": "accuracy",
         "evaluator": "eval"}))
    resumed = selection_lib.Selection(config, str(tmp_path), step, str(tmp_path / "checkpoints" / str(step)))
    assert (resumed.best_epoch, resumed.best_value) == (0, -1.0)


@pytest.mark.parametrize("damage", ["truncated", "incomplete"])
def test_a_damaged_selection_record_of_the_checkpoint_a_run_resumes_from_is_named_with_the_fix(tmp_path, damage):
  config = _config()
  config.update(select_metric="accuracy", select_on="eval")
  step = tmp_path / "checkpoints" / "8"
  (step / "selection").mkdir(parents=True)
  (step / "selection" / "metadata").write_text('{"value": 0.5, "epo' if damage == "truncated" else
                                               '{"value": 0.5, "epoch": 1, "metric": "accuracy"}')
  with pytest.raises(checkpointing.CheckpointError, match=rf"{re.escape(str(step))}.* the checkpoint is damaged\. "
                                                          r"Delete that step to resume from the one before"):
    selection_lib.Selection(config, str(tmp_path), 8, str(step))
  (step / "selection" / "metadata").unlink()  # saved before 2026-12-07, or before a best epoch: none
  assert selection_lib.Selection(config, str(tmp_path), 8, str(step)).best_epoch == 0


@pytest.mark.parametrize("damage", ["truncated", "incomplete", "missing"])
def test_a_damaged_record_of_the_best_epoch_is_named_with_the_fix(tmp_path, damage):
  config = _config()
  config.update(select_metric="accuracy", select_on="eval")
  selection = selection_lib.Selection(config, str(tmp_path), 0)
  selection.update(1, 8, {"accuracy": 0.5})
  selection.save_best({"params": PARAMS, "batch_stats": BATCH_STATS}, config, (8, 8, 3))
  selection.wait_until_finished()
  record = tmp_path / "best" / "8" / "selection" / "metadata"
  if damage == "missing":
    record.unlink()
  else:
    record.write_text('{"value": 0.5, "epo' if damage == "truncated" else '{"value": 0.5}')
  fix = rf"the checkpoint is damaged\. Delete {re.escape(str(tmp_path / 'best'))} to resume without it .*, or start a new"
  with pytest.raises(checkpointing.CheckpointError, match=fix):
    selection_lib.Selection(config, str(tmp_path), 8)
