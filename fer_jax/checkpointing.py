"""Orbax checkpoints of training state and of model variables, with shape-checked restore.

A training workdir holds `checkpoints/<step>/{state,meta}`; `state` is the dict
{step, params, batch_stats, opt_state} and `meta` a JSON record of the model config and the
class names. Converters and exports write the same layout with only params and batch_stats,
so every consumer (`--mode=eval`, predict, `init_from`) reads both through `restore_model`.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import sys

from absl import logging
from etils import epath
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fer_jax import config_lib
from fer_jax import errors
from fer_jax import files
from fer_jax import provenance
from fer_jax import stopping
from fer_jax.data import labels
from fer_jax.errors import UserError


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing or does not fit the configured model."""


CHECKPOINTS = "checkpoints"  # a training workdir's folder of steps
BEST = "best"  # ... and of its best epoch's step (config.select_metric)


def _reported_best(workdir: str) -> str | None:
  """best/STEP of a workdir whose eval_results.json reports that step's weights."""
  step = (files.json_object(os.path.join(workdir, files.REPORT)) or {}).get("step")
  folder = os.path.join(workdir, BEST, str(step))
  return folder if step is not None and os.path.isdir(os.path.join(folder, "state")) else None


MODEL_COLLECTIONS = ("params", "batch_stats")  # a model's variables: what eval, predict, init_from, fingerprints read


def model_variables(tree: Mapping) -> dict:
  """{params, batch_stats} of a training state or of a model's variables (batch_stats {} if it has none)."""
  return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}


def manager(directory: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
  """Steps are written to a temporary folder and renamed when complete, so a killed save never
  leaves a broken newest step; the leftovers of such saves are deleted when a manager opens.
  The processes' barriers are named after the folder: a run's two managers (checkpoints/, best/)
  save the same step at once, and with one name the second save's barrier fails on several hosts.
  The folder is made by the first save, so a run its config stops leaves none behind."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):  # else found only by the first save
    raise CheckpointError(f"{directory} is a file, not a folder of checkpoints: move it away, or pass another "
                          "--workdir.")
  _warn_of_unfinished_saves(directory)
  _write_arrays_whole()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=False, cleanup_tmp_directories=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=os.path.basename(directory)))
  return ocp.CheckpointManager(directory, options=options)


UNFINISHED_SAVE = ".orbax-checkpoint-tmp"  # in the name of the folder a save writes until it is complete


def _warn_of_unfinished_saves(directory: str) -> None:
  """Names the steps whose saves a stopped run left unfinished, which the manager deletes as it opens."""
  unfinished = sorted((name.split(".")[0] for name in (os.listdir(directory) if os.path.isdir(directory) else [])
                       if UNFINISHED_SAVE in name), key=lambda step: (len(step), step))
  if unfinished and jax.process_index() == 0:
    logging.warning("Deleting the unfinished save%s of step %s in %s (a run stopped while saving): the newest "
                    "complete step stands.", "s" if len(unfinished) > 1 else "", ", ".join(unfinished), directory)


@functools.cache
def _write_arrays_whole() -> None:
  """Each array is written whole from the devices of one replica. Orbax's default outside GPUs
  cuts a replicated array into a slice per replica, so that the hosts holding replicas share its
  writing: for these models (a few hundred MB of state at most) that is overhead, a slicing program
  compiled and run per array, shape and device before every save returns (a DAN save on 8 CPU
  devices held the loop 7.5 s the first time, 0.5–0.7 s after; whole 0.1–0.2 s,
  benchmarks/checkpoint_save.py). StandardSave reads the global registry, so
  this is set there; the array metadata store of orbax's default handler is left out: it serves
  only random keys, which the state holds none of."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def newest_step(checkpoints: ocp.CheckpointManager) -> int | None:
  """The newest complete step, which every process must see alike: each lists the folder itself, so
  processes that see different steps (a workdir not every process shares) stop here with an error,
  not later in a hung collective."""
  step = checkpoints.latest_step()
  if jax.process_count() > 1:
    steps = multihost_utils.process_allgather(np.int64(-1 if step is None else step)).tolist()
    if len(set(steps)) > 1:
      seen = ", ".join(f"process {index}: {'none' if s < 0 else s}" for index, s in enumerate(steps))
      raise CheckpointError(f"The processes see different newest checkpoints in {checkpoints.directory} ({seen}). "
                            "Put the workdir on storage that every process shares, then start again.")
  return step


def metadata(config, initialisation_only: bool = False, steps_per_epoch: int | None = None,
             stored_shape: Sequence[int] = (), stopped_early: bool = False, training_data: dict | None = None,
             last_batch: int = 0, changed_on_resume: Sequence[dict] = ()) -> dict:
  """The meta record: enough to rebuild the model and its inputs without the config (`fer_jax.load`),
  the data set's name and stored size and shape included (they pick the crop style and the decoding), the
  test-time augmentation inference uses by default, and the whole config (flat, `config_lib.flat`), which a
  resumed run must continue. `initialisation_only` (recorded only when true) marks weights that only start a
  training (an untrained head): inference refuses them. `steps_per_epoch` (a training run's) and `last_batch` (its
  epochs' last, short batch, 0 for none) are what a resumed run's epochs must have too, and `stopped_early` (recorded
  with them) whether early stopping ended the run at this step; `stored_shape` (a training run's, `dataset_record`)
  the shape its training split's images are decoded to, and `training_data` (a training run's,
  `pipeline.split_identity`) which training split it trains on (`check_training_data`), and `devices` (recorded with
  them) how many it trained on; `changed_on_resume` (recorded where a resume changed any) the settings the run's
  resumes changed (`changes_on_resume`). "software": the code and releases that wrote it
  (`fer_jax.provenance.software`)."""
  record = {"model": config.model.to_dict(), "class_names": list(labels.class_names(config.dataset.class_order)),
            "input": config.input.to_dict(), "dataset": dataset_record(config, stored_shape),
            "batch_size": config.batch_size, "tta": config.eval.tta, "config": config_lib.flat(config),
            "software": provenance.software()}
  if steps_per_epoch is not None:
    record.update(steps_per_epoch=steps_per_epoch, last_batch=last_batch, stopped_early=stopped_early,
                  devices=jax.device_count())
  if training_data:
    record["training_data"] = training_data
  if changed_on_resume:
    record[CHANGED_ON_RESUME] = list(changed_on_resume)
  return {**record, INITIALISATION_ONLY: True} if initialisation_only else record


INITIALISATION_ONLY = "initialisation_only"
CHANGED_ON_RESUME = "changed_on_resume"


def dataset_record(config, stored_shape: Sequence[int] = ()) -> dict:
  """The data set's name, the side its images are decoded to (0: their own) and, where a run read them, the
  (height, width, channels) they were decoded to (`pipeline.stored_shape`): a set of yours's grey images or
  own size; a model no data was read for (a conversion) leaves them to the name and `image_size`."""
  record = {"name": config.dataset.name, "image_size": config.dataset.image_size}
  return {**record, "stored_shape": list(stored_shape)} if stored_shape else record


def recorded_shape(meta: dict) -> tuple[int, ...]:
  """The (height, width, channels) a meta record's training decoded its images to; () where it does not say (a
  converted model, a record written before 2026-12-05): `inference.FilePreprocessor` then goes by the config."""
  return tuple((meta.get("dataset") or {}).get("stored_shape", ()))


def _class_order(names) -> str:
  for order, order_names in labels.CLASS_ORDERS.items():
    if tuple(order_names) == tuple(names):
      return order
  raise UserError(f"The model's classes ({', '.join(names)}) are in no order of fer_jax.data.labels.CLASS_ORDERS: "
                  "pass its config (fer_jax.load(path, config=...), or --config).")


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """A checkpoint's or export's config from its meta record (`checkpointing.metadata`): the model, its input
  and class names; the data set (absent from records written before 2026-12-03) gives the crop style and
  stored size it was trained on, "tta" (absent before 2026-12-05: none) the test-time augmentation, the recorded
  config (a checkpoint's; an export's model.json has none) its loss settings, which a method's `config_problems`
  may check. The shape its images were decoded to is no config key: `checkpointing.recorded_shape` reads it."""
  _check_recorded_method(meta)
  config = config_lib.base_config()
  try:
    config.model.update(meta["model"])
    config.loss.update(recorded_loss(meta))
    config.input.update(meta["input"])
    dataset = meta.get("dataset") or {}
    config.dataset.update({key: value for key, value in dataset.items() if key in config.dataset})
    names = meta["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
      raise TypeError(f"class_names is {names!r}, not a list of names")
    config.dataset.class_order = _class_order(names)
    config.eval.tta = meta.get("tta", "none")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if isinstance(e, UserError):
      raise
    raise CheckpointError(f"The model's meta record is damaged ({type(e).__name__}: {e}): pass its config "
                          "(fer_jax.load(path, config=...), or --config), or convert or export the model again.") from None
  return config


def recorded_loss(meta: dict) -> dict:
  """The loss settings of a meta record's whole config ("loss.KEY" in its flat "config"), lists as tuples."""
  flat = meta.get("config") or {}
  loss = {key.removeprefix("loss."): value for key, value in flat.items() if key.startswith("loss.")}
  loss = {key: tuple(value) if isinstance(value, list) else value for key, value in loss.items()}
  return traverse_util.unflatten_dict(loss, sep=".")


def _check_recorded_method(meta: dict) -> None:
  """A record naming a method of yours by module path ("my_methods.plain_resnet"): rebuilding the model would import
  that module, running its code, and a checkpoint from elsewhere may name a module it ships beside itself (a folder
  under the working folder is importable). Only a module already imported (by you) is used."""
  name = meta["model"].get("name") if isinstance(meta.get("model"), dict) else None
  if isinstance(name, str) and "." in name and name not in sys.modules:
    raise CheckpointError(f"The model's meta record names the method {name!r}, a module of yours: fer_jax does not "
                          "import a module a checkpoint names, as that runs its code. If you trust it, import it "
                          f"first (import {name}) or pass the config it was trained with (fer_jax.load(path, "
                          "config=...), or --config).")


def save(checkpoints: ocp.CheckpointManager, step: int, state: dict, config, initialisation_only: bool = False,
         steps_per_epoch: int | None = None, stored_shape: Sequence[int] = (), stopped_early: bool = False,
         training_data: dict | None = None, last_batch: int = 0, records: dict | None = None,
         changed_on_resume: Sequence[dict] = ()) -> None:
  """Starts an asynchronous save of `step` (after the previous save has finished): `state`, its meta record
  (`metadata`) and `records`, {item name: JSON record} saved beside them (the best epoch's "selection")."""
  meta = metadata(config, initialisation_only, steps_per_epoch, stored_shape, stopped_early, training_data, last_batch,
                  changed_on_resume)
  with save_errors(checkpoints):
    checkpoints.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
        **{name: ocp.args.JsonSave(record) for name, record in (records or {}).items()}))


def wait_until_saved(checkpoints: ocp.CheckpointManager) -> None:
  with save_errors(checkpoints):
    checkpoints.wait_until_finished()


@contextlib.contextmanager
def save_errors(checkpoints: ocp.CheckpointManager):
  """A failed save (a full disk, a lost mount) as a CheckpointError naming the intact step; then a stop signal held
  while Orbax's event loop ran raises StoppedOutsideSteps (`stopping.stop_if_held`)."""
  try:
    yield
  except (OSError, ValueError) as e:
    complete = checkpoints.all_steps(read=True)
    kept = (f"the newest complete checkpoint, {step_path(checkpoints, max(complete))}, is intact"
            if complete else "no complete checkpoint was written yet")
    reason = _root_cause(e)
    errors.quiet_closed_event_loops()
    raise CheckpointError(f"Saving a checkpoint in {checkpoints.directory} failed ({reason}); {kept}. Free space or "
                          "fix the folder, then run the same command again to resume.") from e
  stopping.stop_if_held()


def _root_cause(error: BaseException) -> str:
  """The innermost error's message, short: "No space left on device", "Requested byte range … is not valid"."""
  while error.__cause__ is not None:
    error = error.__cause__
  message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  code = re.search(r"os_error_code='(\d+)'", message)
  if code:
    return os.strerror(int(code.group(1)))
  return message if len(message) <= 240 else message[:240] + " …"


def restore_checked(checkpoints: ocp.CheckpointManager, step: int, resumable: tuple) -> dict:
  """The saved training state, read into the (restore target, its rewrapping) `check_resumable` returned."""
  target, rewrap = resumable
  with _newest_step_read_errors(checkpoints, step):
    restored = checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return rewrap(restored["state"])


def check_resumable(checkpoints: ocp.CheckpointManager, step: int, abstract_state: dict, config=None):
  """Checks, reading no array, that the saved state has the structure and shapes `abstract_state` (what this run's
  config builds) has and (with `config`) that `config` continues the run: a changed config is told apart from
  damaged files, which alone call for deleting. Returns (restore target, its rewrapping). The epoch's length is
  checked apart (`check_epoch_length`), once the run has read its data."""
  step_directory, damaged_fix = step_path(checkpoints, step), _newest_step_fix(checkpoints, step)
  if config is not None:
    _check_continues(step_directory, config, damaged_fix)
  with read_errors(f"the checkpoint {step_directory}", damaged_fix):
    saved = _saved_tree(os.path.join(step_directory, "state"))
    target, rewrap = _unclipped_target(saved, abstract_state)
    _check_same_state(saved, target, step_directory)
  return target, rewrap


def recorded_early_stop(checkpoints: ocp.CheckpointManager, step: int) -> bool | None:
  """Whether early stopping ended the run at its saved `step`; None where the step's meta record does not say
  (saved before 2026-12-06)."""
  return _meta(step_path(checkpoints, step)).get("stopped_early")


def check_epoch_length(checkpoints: ocp.CheckpointManager, step: int, steps_per_epoch: int, last_batch: int = 0,
                       devices: int = 1) -> None:
  """The run saved at `step` must have trained `steps_per_epoch` steps an epoch, the last of `last_batch` images
  where it is short (which a run knows only once its data is read; the last batch also depends on the `devices`
  it splits over). Resumed on other `devices` than the step records, the result is close, not the same: warned."""
  step_directory = step_path(checkpoints, step)
  meta = _meta(step_directory)
  saved_steps = meta.get("steps_per_epoch", steps_per_epoch)  # not recorded before 2026-12-05
  saved_last = meta.get("last_batch", last_batch)  # not recorded before 2026-12-06
  saved_devices = meta.get("devices")  # not recorded before 2026-12-07
  on_devices = f", on {errors.counted(saved_devices, 'device')}," if saved_devices else ""
  if (saved_steps, saved_last) != (steps_per_epoch, last_batch):
    raise CheckpointError(f"The run in {os.path.dirname(checkpoints.directory)} trained{on_devices} "
                          f"{_epoch(saved_steps, saved_last)}; this config's training split gives, on "
                          f"{errors.counted(devices, 'device')}, "
                          f"{_epoch(steps_per_epoch, last_batch)}: its steps would stand for other epochs, examples "
                          "and schedule. Resume with the dataset.train_split, max_per_class, sampler and drop_last it "
                          "was trained with (and, where its epochs end in a short batch, a device count that splits "
                          f"that batch as it did), {_new_run_fix(step_directory)}")
  if saved_devices and saved_devices != devices:
    logging.warning("Step %d was saved on %s and resumes on %s: the run's result will be close to an uninterrupted "
                    "run's, not bit for bit the same (docs/running_at_scale.md, \"What is identical across device "
                    "counts, and what is only close\").", step, errors.counted(saved_devices, "device"),
                    errors.counted(devices, "device"))


def _epoch(steps: int, last_batch: int) -> str:
  """"48 steps an epoch, the last of 239 images"; "47 steps an epoch"."""
  return f"{steps} steps an epoch" + (f", the last of {last_batch} images" if last_batch else "")


def check_training_data(checkpoints: ocp.CheckpointManager, step: int, identity: dict, prepared_in: str) -> None:
  """The run saved at `step` must go on with the training split it started on (`identity`,
  `pipeline.split_identity` of the set prepared in `prepared_in`): data_dir may change on resume, but a set
  prepared again (an image skipped, another copy of the files, another builder version) would change the epochs'
  examples and order unseen, even at as many steps an epoch. Steps saved before 2026-12-06 recorded none."""
  step_directory = step_path(checkpoints, step)
  saved = _meta(step_directory).get("training_data")
  differences = _training_data_differences(saved, identity) if isinstance(saved, dict) else []
  if differences:
    raise CheckpointError(f"The run in {os.path.dirname(checkpoints.directory)} was trained on another training split "
                          f"than the one prepared in {prepared_in}: {'; '.join(differences)}. Point "
                          "--config.dataset.data_dir at the set the run started with, "
                          + _new_run_fix(step_directory))


def of_this_run(step_directory: str, config, identity: dict) -> bool:
  """Whether the step saved in `step_directory` records this run's config (`config_lib.resume_differences`) and
  training split (`identity`): saved by a run of the same command, whose steps are this run's."""
  meta = _meta(step_directory)
  saved_data = meta.get("training_data")
  return ("config" in meta and isinstance(saved_data, dict) and not config_lib.resume_differences(meta["config"], config)
          and not _training_data_differences(saved_data, identity))


def _training_data_differences(saved: dict, identity: dict) -> list[str]:
  """What differs between a run's recorded training split and this one's (`check_training_data`), in words; the
  keys one record lacks (another fer_jax version's) are not compared."""
  def differs(key: str) -> bool:
    return key in saved and saved[key] != identity.get(key)

  differences = [f"prepared as {identity['prepared']} (saved {saved['prepared']})"] if differs("prepared") else []
  if differs("records") or differs("used"):
    differences.append(f"{identity['records']} records, {identity['used']} used (saved {saved.get('records')} "
                       f"records, {saved.get('used')} used)")
  elif differs("labels_sha256"):
    differences.append("as many records, but other labels or another record order")
  return differences


def _new_run_fix(step_directory: str) -> str:
  return (f"or start a new --workdir with --config.init_from={step_directory} (a new training from those weights: its "
          "schedule and optimizer start afresh).")


def _newest_step_read_errors(checkpoints: ocp.CheckpointManager, step: int):
  """`read_errors` of the run's newest step, whose deletion resumes the run from the step before it. Without one
  the run starts over, in a workdir of its own: a best/ folder left by the old one would keep its best epoch."""
  return read_errors(f"the checkpoint {step_path(checkpoints, step)}",
                     _newest_step_fix(checkpoints, step))


def _newest_step_fix(checkpoints: ocp.CheckpointManager, step: int) -> str:
  step_directory = step_path(checkpoints, step)
  earlier = [saved for saved in checkpoints.all_steps() if saved < step]
  return (f"delete {step_directory} to resume from step {max(earlier)}, the one before it" if earlier
          else f"it is the run's only checkpoint, so start the run over: delete "
               f"{os.path.dirname(checkpoints.directory)} or pass a new --workdir")


def _check_continues(step_directory: str, config, damaged_fix: str) -> None:
  """The run saved in `step_directory` must be of the config's model, classes and inputs, and its step counter
  must count the config's epochs (its global batch) and train as it did
  (`config_lib.resume_differences`). A step without its meta record is incomplete: `damaged_fix`."""
  meta, run = _meta(step_directory), os.path.dirname(os.path.dirname(step_directory))
  if not meta:
    raise CheckpointError(f"{step_directory} has no meta record ({META_FILE}), which a training saves with every "
                          f"step: the checkpoint is incomplete and cannot be checked against this config; {damaged_fix}.")
  if "model" in meta:
    check_identity(meta, f"The run in {run}", config.model, labels.class_names(config.dataset.class_order),
                   config.input)
  new_run = _new_run_fix(step_directory)
  saved_batch = meta.get("batch_size", config.batch_size)  # not recorded before 2026-12-04
  if saved_batch != config.batch_size:
    raise CheckpointError(f"The run in {run} trained at a global batch of {saved_batch}, this config's is "
                          f"{config.batch_size}: its steps would stand for other epochs and schedule. Resume with "
                          f"--config.batch_size={saved_batch}, {new_run}")
  changed = config_lib.resume_differences(meta.get("config", {}), config)
  if changed:
    shaped = config_lib.num_epochs_shaped(config) if any(key == "num_epochs" for key, _, _ in changed) else ""
    raise CheckpointError(
        f"The run in {run} was trained with other settings: "
        + ", ".join(f"config.{key} {now!r} (saved {saved!r})" for key, now, saved in changed) + shaped
        + ". A resumed run continues the same training (its checkpoints are left as they are): resume with "
        + " ".join(config_lib.override(key, saved) for key, _, saved in changed) + f", {new_run}")
  allowed = config_lib.differences(meta.get("config", {}), config, config_lib.NOT_OF_THE_TRAINING, unshared="evals.")
  if allowed:
    logging.info("Resuming %s with settings changed since step %s was saved: %s.", run, os.path.basename(step_directory),
                 ", ".join(f"config.{key} {now!r} (saved {saved!r})" for key, now, saved in allowed))
  if any(config_lib.named_by(key, config_lib.INIT_FROM_KEYS) and now for key, now, _ in allowed):
    logging.warning("config.init_from* is not read: the run in %s resumes from its step %s (init_from starts new runs "
                    "only). To start from other weights, pass a new --workdir.", run, os.path.basename(step_directory))


def changes_on_resume(checkpoints: ocp.CheckpointManager, step: int, config) -> list[dict]:
  """[{step, key, saved, now}] of every setting the run's resumes changed, its earlier ones (the saved step's record)
  and this one's, from `step`: a run's record and report keep its last config alone, which no longer says that an
  earlier learning rate, say, trained its first steps."""
  meta = _meta(step_path(checkpoints, step))
  earlier = meta.get(CHANGED_ON_RESUME, [])
  if "config" not in meta:  # an older fer_jax's: nothing to compare with
    return earlier
  ignored = (*config_lib.NOT_OF_THE_RESULTS, *config_lib.INIT_FROM_KEYS)
  return earlier + [{"step": step, "key": key, "saved": saved, "now": now}
                    for key, now, saved in config_lib.differences(meta["config"], config, ignored, unshared="evals.")]


def _saved_tree(state_directory: str) -> dict:
  """The saved tree's metadata (paths, shapes, dtypes), read without reading any array. Read by the item's
  handler: a checkpointer would also look for a step's metadata file in the item's folder (it is in the
  step's) and warn that it is missing."""
  return ocp.StandardCheckpointHandler().metadata(epath.Path(state_directory)).tree


def _unclipped_target(saved: dict, abstract_state: dict):
  """(target, function giving a restored target the state's layout). Before optim.make_optimizer always
  chained its clip stage, a run with grad_clip_norm=0 saved the optimizer state without it: such a
  checkpoint restores into the inner state, and the clip stage's empty state is put back in front."""
  opt_state = abstract_state.get("opt_state")
  if (_differences(saved, abstract_state) and isinstance(opt_state, tuple) and len(opt_state) == 2
      and not jax.tree.leaves(opt_state[0])):
    clip_state, inner = opt_state
    unclipped = {**abstract_state, "opt_state": inner}
    if not _differences(saved, unclipped):
      return unclipped, lambda state: {**state, "opt_state": (clip_state, state["opt_state"])}
  return abstract_state, lambda state: state


def _differences(saved: dict, target: dict) -> list[str]:
  """How the saved tree and the target differ: leaf paths only in one of them, and shapes."""
  return _shape_differences(_leaf_shapes(saved), _leaf_shapes(target), ("only in the config's", "only in the checkpoint"),
                           "config", count=3)


def _shape_differences(got: dict, want: dict, labels: tuple[str, str], wanted_by: str, count: int) -> list[str]:
  """"label: first paths" for the paths only in `want`, those only in `got` (`labels`, in that order),
  and the shapes that differ ("checkpoint S vs <wanted_by> S′"), each list cut to its first `count`."""
  mismatched = [f"{k}: checkpoint {got[k]} vs {wanted_by} {want[k]}" for k in sorted(set(got) & set(want))
                if got[k] != want[k]]
  return [f"{label}: {errors.first(items, count)}" for label, items in
          ((labels[0], sorted(set(want) - set(got))), (labels[1], sorted(set(got) - set(want))),
           ("shape mismatch", mismatched)) if items]


def _leaf_shapes(tree) -> dict:
  """{"opt_state/1/inner_states/default/…": shape} as Orbax names the leaves (a tuple's items by index,
  a NamedTuple's by field), for a saved tree's metadata and an abstract state alike."""
  return {"/".join(path): _shape(leaf) for path, leaf in ocp.tree.to_flat_dict(tree).items()}


def _check_same_state(saved: dict, target: dict, step_directory: str) -> None:
  differences = _differences(saved, target)
  if differences:
    raise CheckpointError(
        f"The checkpoint {step_directory} is intact, but this run's config builds a different training state than the "
        f"one saved there ({'; '.join(differences)}): the optimizer (name, momentum, weight_decay, lr_groups, "
        "trainable) or the model was changed since the run started. To resume, run the command with the config the "
        "run was started with (the same --config and overrides); to train with this config, start a new --workdir "
        f"with --config.init_from={step_directory} to start from its weights. Nothing needs deleting.")


@contextlib.contextmanager
def read_errors(what: str, fix: str):
  """Any failure to read `what` ("the checkpoint DIR") as a CheckpointError saying it is damaged, and `fix`; then a
  stop signal held while Orbax's event loop ran raises StoppedOutsideSteps (`stopping.stop_if_held`)."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (Orbax wraps TensorStore's errors in bare Exceptions)
    stopping.stop_if_held()
    reason = _root_cause(e)
    errors.quiet_closed_event_loops()
    raise CheckpointError(f"Cannot read {what} ({reason}): it is damaged or incomplete; {fix}.") from e
  stopping.stop_if_held()


def save_model(directory: str, variables: dict, config, initialisation_only: bool = False) -> str:
  """Writes params and batch_stats as step 0 of a fresh checkpoint directory; returns it.
  `initialisation_only`: the weights only start a training (e.g. a backbone-only conversion, whose
  head is untrained); `init_from` reads them, inference refuses them."""
  checkpoints = manager(directory)
  try:
    save(checkpoints, 0, model_variables(variables), config, initialisation_only)
  except stopping.StoppedOutsideSteps:  # a signal held while the save began: its write goes on in the background
    checkpoints.wait_until_finished()  # ended before the caller removes what it wrote
    raise
  checkpoints.wait_until_finished()
  return os.path.join(os.path.abspath(directory), "0")


def step_path(checkpoints: ocp.CheckpointManager, step: int) -> str:
  """The folder of `step` in a manager's directory (where Orbax writes it)."""
  return os.path.join(checkpoints.directory, str(step))


def newest_saved_step(folder: str) -> int | None:
  """The highest step of `folder` (a checkpoints/ folder) with its saved state, read from the file system alone
  (no manager, no other process asked); None where there is none."""
  if not os.path.isdir(folder):
    return None
  return max((int(name) for name in os.listdir(folder)
              if name.isdigit() and os.path.isdir(os.path.join(folder, name, "state"))), default=None)


def step_folder(path: str) -> str:
  """Accepts a workdir, its checkpoints/ folder or one step folder; returns a step folder: of a workdir, the
  weights its report evaluated (the best epoch's, best/STEP, with restore_best), else the newest step."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  reported = _reported_best(path)
  if reported:
    return reported
  for folder in (os.path.join(path, CHECKPOINTS), path):
    newest = newest_saved_step(folder)
    if newest is not None:
      return os.path.join(folder, str(newest))
  raise CheckpointError(_no_checkpoint(path))


def _no_checkpoint(path: str) -> str:
  """Why `path` gives no checkpoint, naming an export folder and a file of the official code as such."""
  # Imported here, for this message alone: fer_jax.export imports this module, fer_jax.convert through fer_jax.models.
  from fer_jax import convert  # pylint: disable=import-outside-toplevel
  from fer_jax import export  # pylint: disable=import-outside-toplevel
  if export.is_export(path) or export.is_onnx_export(path):
    return export.not_a_checkpoint(path)
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(path) and (export.is_export(folder) or export.is_onnx_export(folder)):
    return f"{path} is a file of the export folder {folder}: pass the folder."
  # SCAN-CCI's model_best.pth.tar: a .tar alone may be any archive.
  if ((os.path.isfile(path) and path.lower().endswith((*convert.READERS_BY_EXTENSION, ".pth.tar")))
      or convert.tf_checkpoint.checkpoint_prefix(path)):
    return (f"{path} is a checkpoint of the official code (or a pretrained backbone), not converted: run "
            f"`python -m fer_jax.convert --config=configs/<method>.py:<dataset> {shlex.quote('--checkpoint=' + path)} "
            "--workdir=OUT` with the config of the model it holds, then pass OUT instead.")
  return (f"No checkpoint found at {path}: pass a training workdir, its checkpoints/ folder, a step folder inside "
          "it, or the output of `python -m fer_jax.convert` (predict, summary and fer_jax.load also run a "
          "`python -m fer_jax.export` folder).")


def restore_model(path: str, abstract_variables: dict, fresh_variables: dict | None = None,
                  may_be_missing: str = "", expected_model=None, class_names: Sequence[str] = (),
                  expected_input=None, initialisation_ok: bool = False) -> dict:
  """Reads {params, batch_stats} and checks every name and shape against the model's.

  Variables whose path ("params/lhc1/…") matches `may_be_missing` may be absent from the
  checkpoint; they are taken from `fresh_variables` (e.g. modules a later stage adds).
  With `expected_model` (a config.model), `class_names` and `expected_input` (a config.input), as for
  inference, the checkpoint's meta record must exist and name the same method, number of classes,
  class order and input size and channels, and not mark the weights as only an initialisation
  (unless `initialisation_ok`: reading the weights, not running them).
  """
  step_directory = step_folder(path)
  logging.info("Reading the model in %s", step_directory)
  recorded_fix = ""
  if expected_model is not None:
    meta = _check_runnable(step_directory, expected_model, tuple(class_names), expected_input, initialisation_ok)
    recorded = {f"model.{key}": value for key, value, _ in _model_differences(meta, expected_model)}
    recorded_fix = f" Or {errors.config_change(recorded)}." if recorded else ""
  variables = _checked_fit(_read_model_variables(step_directory), abstract_variables, step_directory, expected_model,
                           may_be_missing, fresh_variables, recorded_fix)
  return jax.tree.map(lambda a, b: np.asarray(a).astype(b.dtype), variables, abstract_variables)


def _checked_fit(saved: dict, abstract_variables: dict, step_directory: str, model_config, may_be_missing: str,
                 fill_from: dict | None, other_fix: str = "") -> dict:
  """`saved` (a step's {params, batch_stats}, arrays or their metadata) with what `may_be_missing` names and it lacks
  taken from `fill_from`, checked to fit the model (`check_matches`)."""
  if may_be_missing:
    saved = _fill_missing(saved, fill_from, may_be_missing)
  check_matches(saved, abstract_variables, step_directory, describe_record(_meta(step_directory), model_config),
                other_fix)
  return saved


def restore_parts(path: str, fresh_variables: dict, parts: dict[str, str]) -> dict:
  """`fresh_variables` (a model's {params, batch_stats}) with, for each `parts` item SOURCE: TARGET, the variables
  under params/TARGET and batch_stats/TARGET read from the checkpoint's under SOURCE, names and shapes checked (a
  backbone of another method's checkpoint for a method of yours); the checkpoint's other variables are not used."""
  step_directory = step_folder(path)
  logging.info("Reading %s of the model in %s", ", ".join(parts), step_directory)
  saved, fresh = _flat(_read_model_variables(step_directory)), _flat(fresh_variables)
  taken = {target: np.asarray(saved[source]).astype(fresh[target].dtype)
           for target, source in _parts_taken(saved, fresh, parts, step_directory).items()}
  return traverse_util.unflatten_dict({**fresh, **taken}, sep="/")


def _parts_taken(saved: dict, model: dict, parts: dict[str, str], step_directory: str) -> dict[str, str]:
  """{model variable path: checkpoint variable path} of config.init_from_parts (`parts`, SOURCE: TARGET), `saved` and
  `model` flat {path: array or its shape's metadata}; a CheckpointError where a part is missing or does not fit."""
  taken = {}
  for source, target in parts.items():
    read = {f"{collection}/{target}/{path[len(collection) + len(source) + 2:]}": path
            for collection in MODEL_COLLECTIONS for path in saved if path.startswith(f"{collection}/{source}/")}
    wanted = {path for path in model if path.split("/", 1)[1].startswith(f"{target}/")}
    for tree, whole, where, name in ((read, saved, f"the checkpoint {step_directory}", source),
                                     (wanted, model, "the model", target)):
      if not tree:
        raise CheckpointError(f"config.init_from_parts: {where} has no params/{name} (its top-level names: "
                              f"{', '.join(_top_level_names(whole))}).")
    problems = _shape_differences({path: _shape(saved[read[path]]) for path in read},
                                  {path: _shape(model[path]) for path in wanted}, ("missing", "unexpected"), "model", 5)
    if problems:
      raise CheckpointError(f"config.init_from_parts: the checkpoint {step_directory}'s {source} does not fit the "
                            f"model's {target} ({'; '.join(problems)}).")
    taken.update(read)
  return taken


def _top_level_names(flat_variables: dict) -> list[str]:
  return sorted({path.split("/")[1] for path in flat_variables if path.startswith("params/")})


def _shape(leaf) -> tuple:
  return tuple(getattr(leaf, "shape", None) or ())


def check_initial_weights(path: str, abstract_variables: dict, parts: dict[str, str], may_be_missing: str,
                          model_config) -> None:
  """What config.init_from's read (`restore_parts` with `parts`, else `restore_model` with `may_be_missing`) would
  refuse, found from the checkpoint's saved shapes alone, no array read: a new run stops before it opens its data.
  A checkpoint that does not fit as a whole is told which of its parts would (a head of another class count)."""
  step_directory = step_folder(path)
  saved = _saved_model_tree(step_directory)
  if parts:
    _parts_taken(_flat(saved), _flat(abstract_variables), parts, step_directory)
    return
  fitting = _fitting_parts(_flat(saved), _flat(abstract_variables))  # of what the checkpoint holds itself
  _checked_fit(saved, abstract_variables, step_directory, model_config, may_be_missing, abstract_variables,
               f" Or start from the parts of it that fit: {parts_flags(fitting, may_be_missing)}." if fitting else "")


def parts_flags(parts: Sequence[str], may_be_missing: str) -> str:
  """The flags that start a run from `parts` of a checkpoint (dropping config.init_from_missing, which parts
  exclude)."""
  return f"--config.init_from_parts={','.join(parts)}" + (" --config.init_from_missing=" if may_be_missing else "")


def _saved_model_tree(step_directory: str) -> dict:
  """A step's saved {params, batch_stats} as metadata (paths, shapes), no array read."""
  with read_errors(f"the checkpoint {step_directory}",
                   "use another step of the run, or convert or export the model again"):
    return model_variables(_saved_tree(os.path.join(step_directory, "state")))


def fitting_parts(path: str, abstract_variables: dict) -> list[str]:
  """The model's top-level names whose variables the checkpoint at `path` holds with the same names and shapes."""
  return _fitting_parts(_flat(_saved_model_tree(step_folder(path))), _flat(abstract_variables))


def _fitting_parts(saved: dict, model: dict) -> list[str]:
  """The model's top-level names whose variables the checkpoint holds with the same names and shapes."""
  def leaves(tree: dict, name: str) -> dict:
    return {path: _shape(leaf) for path, leaf in tree.items() if path.split("/")[1] == name}
  return [name for name in _top_level_names(model) if leaves(saved, name) == leaves(model, name)]


def _read_model_variables(step_directory: str) -> dict:
  """A step folder's {params, batch_stats}, a failure to read them a CheckpointError saying it is damaged."""
  with read_errors(f"the checkpoint {step_directory}",
                   "use another step of the run, or convert or export the model again"):
    return model_variables(_restore_on_this_host(os.path.join(step_directory, "state")))


def _restore_on_this_host(state_directory: str) -> dict:
  """The saved params and batch_stats on this process's first device, whatever devices or processes
  wrote them (a pod's checkpoint restores on a laptop). A training state's step and optimizer state
  are not read: Adam's moments alone are twice the params (partial restore, Orbax ≥ 0.11.14). Read by the
  handler, without a checkpointer's closing barrier: on several processes a read that fails on one host alone left
  the others in that barrier, then failing with a lost collective that blamed their own intact copy; the callers
  share the error instead (`distributed.errors_together`)."""
  handler = ocp.PyTreeCheckpointHandler()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = _saved_tree(state_directory)
  target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                        {name: saved[name] for name in MODEL_COLLECTIONS if name in saved})
  try:
    return handler.restore(epath.Path(state_directory), args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  finally:
    handler.close()


def _fill_missing(variables: dict, fresh_variables: dict, pattern: str) -> dict:
  filled = _flat(variables)
  for path, value in _flat(fresh_variables).items():
    if path not in filled and re.search(pattern, path):
      filled[path] = value
  return traverse_util.unflatten_dict(filled, sep="/")


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


META_FILE = os.path.join("meta", "metadata")


def _meta(step_directory: str) -> dict:
  """The checkpoint's meta record; {} if it has none (checkpoints written outside fer_jax)."""
  return json_item(step_directory, "meta", "the meta record",
                   "Use another step of the run, or convert or export the model again.")


def json_item(step_directory: str, item: str, what: str, fix: str) -> dict:
  """A step's item saved by Orbax's JsonSave (read as a file: no manager or handler needed); {} if the step has
  none; a CheckpointError naming `what` it is and the `fix` when it cannot be read."""
  path = os.path.join(step_directory, item, "metadata")
  if not os.path.exists(path):
    return {}
  try:
    return files.strict_json_object(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"Cannot read {what} {path} ({e}): the checkpoint is damaged. {fix}") from None


def read_meta(path: str) -> dict:
  """The meta record (method, classes, input) of the checkpoint at `path` (a workdir, its
  checkpoints/ folder, a step folder or a converted model); {} if it has none."""
  return _meta(step_folder(path))


def _check_runnable(step_directory: str, model_config, class_names: tuple[str, ...], input_config=None,
                    initialisation_ok: bool = False) -> dict:
  """The checkpoint's meta record, which must exist, not mark the weights as only an initialisation (unless
  `initialisation_ok`), and match the config (check_identity)."""
  meta = _meta(step_directory)
  if meta.get(INITIALISATION_ONLY) and not initialisation_ok:
    raise CheckpointError(f"The checkpoint {step_directory} is only an initialisation (its classifier head is "
                          "untrained): it is a starting point for training, not a model to run. Train from it with "
                          f"--config.init_from={step_directory}.")
  if "model" not in meta or "class_names" not in meta:
    raise CheckpointError(f"The checkpoint {step_directory} has no meta record ({META_FILE}), so its method and "
                          "class order cannot be checked. Use a checkpoint written by `fer_jax.main`, "
                          "`fer_jax.convert` or `fer_jax.export`.")
  check_identity(meta, f"The checkpoint {step_directory}", model_config, class_names, input_config)
  return meta


def check_identity(record: dict, source: str, model_config, class_names: tuple[str, ...], input_config=None) -> None:
  """The model `source` ("The checkpoint DIR") holds must be of the configured method, class count, class order
  and (with `input_config`) input size and channels: the same weights on other inputs give confident nonsense.
  `record`: {"model": {name, num_classes}, "class_names", "input": {size, channels}}, a meta record or an
  export's model.json in its terms."""
  saved_model, saved_classes = record["model"], tuple(record["class_names"])
  if saved_model.get("name") != model_config.name or saved_model.get("num_classes") != model_config.num_classes:
    name = saved_model.get("name")
    shipped = f"configs/{name}.py:<dataset>" if "." not in str(name) else f"the one that sets model.name={name!r}"
    raise CheckpointError(f"{source} holds {errors.with_article(name)} model with "
                          f"{saved_model.get('num_classes')} classes ({', '.join(saved_classes)}), but the config builds "
                          f"{model_config.name} with {model_config.num_classes}: pass the {errors.config_key()} it was "
                          f"trained or converted with ({shipped}).")
  if saved_classes != class_names:
    raise CheckpointError(f"{source} predicts the classes ({', '.join(saved_classes)}){_trained_as(record)} but the "
                          f"config's class order gives ({', '.join(class_names)}): {_class_order_fix(record)}.")
  saved_input = record.get("input", {})
  differing = [key for key in ("size", "channels")
               if input_config is not None and key in saved_input and saved_input[key] != input_config[key]]
  if differing:
    raise CheckpointError(f"{source} was trained on inputs of "
                          + ", ".join(f"{key} {saved_input[key]}" for key in differing) + " but the config gives "
                          + ", ".join(f"{key} {input_config[key]}" for key in differing) + ": "
                          + errors.config_change({f"input.{key}": saved_input[key] for key in differing})
                          + " as it was trained or converted with.")


def _recorded_class_order(record: dict) -> str | None:
  """The named class order (`labels.CLASS_ORDERS`) of a record's class names: its config's, else one that gives them."""
  order = (record.get("config") or {}).get("dataset.class_order")
  if order in labels.CLASS_ORDERS:
    return order
  return next((name for name, names in labels.CLASS_ORDERS.items() if tuple(names) == tuple(record["class_names"])),
              None)


def _trained_as(record: dict) -> str:
  """" of class order 'fer2013', trained on synthetic/tiny,": what a record says of its classes and data, where it
  says."""
  order, dataset = _recorded_class_order(record), (record.get("config") or {}).get("dataset.name")
  return (f" of class order {order!r}" if order else "") + (f", trained on {dataset}," if dataset else "")


def _class_order_fix(record: dict) -> str:
  order = _recorded_class_order(record)
  if order is None:
    return f"set {errors.config_key('dataset.class_order')} to the order it was trained with"
  return (f"pass the {errors.config_key()} it was trained or converted with, or "
          f"{errors.config_change({'dataset.class_order': order})}")


def describe_record(record: dict, model_config=None) -> str:
  """"model lhcnet, 7 classes; differs from the config in use_lhc=True (config False)", of a checkpoint's meta
  record or an export's model.json."""
  model = record.get("model")
  if not model:
    return "no meta record"
  differences = [f"{key}={recorded!r} (config {configured!r})"
                 for key, recorded, configured in _model_differences(record, model_config)]
  return (f"model {model['name']}, {model['num_classes']} classes"
          + (f"; differs from the config in {', '.join(differences)}" if differences else ""))


def _model_differences(record: dict, model_config) -> list[tuple[str, object, object]]:
  """(key, recorded value, config's value) for each model setting a record (a meta record, an export's model.json)
  holds and the config sets otherwise."""
  model = record.get("model") or {}
  return [(key, model[key], model_config[key]) for key in sorted(model)
          if model_config is not None and key in model_config and _plain(model_config[key]) != model[key]
          and not (key == "dtype" and model[key] == "auto")]  # the config's is resolved (validate)


def _plain(value):
  """A config value as its JSON round trip reads it (tuples become lists)."""
  return json.loads(json.dumps(value))


def check_matches(variables: dict, abstract_variables: dict, source: str, description: str = "",
                  other_fix: str = "") -> None:
  problems = _shape_differences(_leaf_shapes(variables), _leaf_shapes(abstract_variables), ("missing", "unexpected"),
                               "model", count=5)
  if problems:
    raise CheckpointError(f"The checkpoint {source} ({description or 'no meta record'}) does not fit the configured model "
                          f"({'; '.join(problems)}). It was probably written for another model or number of classes: "
                          f"pass the {errors.config_key()} it was trained or converted with.{other_fix}")


def fingerprint(variables: Mapping) -> str:
  r"""SHA-256 (lowercase hex) of a model's params and batch_stats, in a canonical form.

  Equal for the same weights however they were stored, converted, exported or resumed, so
  `python -m fer_jax.summary --checkpoint=…` (`params_sha256: …`) verifies a copy. Only the
  top-level collections "params" and "batch_stats" count (others, such as a training state's
  "step" or "opt_state", are left out; a missing or empty batch_stats contributes nothing).

  Canonical form, recomputable with Python's hashlib and NumPy alone:

  1. Leaves and names: walk the nested mappings under "params" and "batch_stats"; every
     non-mapping value is a leaf, named by its keys from the top joined with "/"
     ("params/backbone/conv1/kernel", "batch_stats/bn1/mean"). Empty mappings have no leaves.
  2. Order: leaves sorted by name (Python string order, i.e. by Unicode code point, which is
     also the byte order of the names' UTF-8).
  3. Each leaf `a = numpy.asarray(leaf)` adds four netstrings (`<length in bytes, decimal
     ASCII>:<bytes>,`) to one SHA-256 stream, in this order:
       - the name, UTF-8;
       - the shape: dimensions in decimal joined by "," ("3,3,3,64"; "" for a scalar), ASCII;
       - the dtype's NumPy name (`a.dtype.name`: "float32", "bfloat16", "int32"), ASCII;
       - the values: `a.size * a.dtype.itemsize` raw bytes, C (row-major) order, little-endian.
  4. The result is the stream's `hexdigest()`.

  For example one leaf params/w = float32 [1.0, 2.0] hashes
  b"8:params/w,1:2,7:float32,8:" + b"\x00\x00\x80?\x00\x00\x00@" + b",".
  Values are hashed exactly: a one-ulp change, a renamed leaf, a reshape or a cast changes it.
  """
  leaves = _flat({collection: variables[collection] for collection in MODEL_COLLECTIONS
                  if collection in variables}).items()

  digest = hashlib.sha256()

  def netstring(data: bytes) -> None:
    digest.update(b"%d:" % len(data))
    digest.update(data)
    digest.update(b",")

  for name, leaf in sorted(leaves, key=lambda item: item[0]):
    array = np.asarray(leaf)
    big_endian = array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big")
    if big_endian and array.dtype.itemsize > 1:
      array = array.byteswap()  # the same numbers' bytes, little-endian
    netstring(name.encode("utf-8"))
    netstring(",".join(str(int(d)) for d in array.shape).encode("ascii"))
    netstring(array.dtype.name.encode("ascii"))
    netstring(np.ascontiguousarray(array).tobytes(order="C"))
  return digest.hexdigest()
