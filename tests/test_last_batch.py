"""An epoch's last, short batch: trained on as the official loaders do (PyTorch's DataLoader with drop_last=False,
Keras' flow_from_directory), unless config.dataset.drop_last."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest
import torch

from fer_jax import checkpointing
from fer_jax import mesh as mesh_lib
from fer_jax import models
from fer_jax import train
from fer_jax.data import pipeline
from helpers import TINY_NET, short_dan_run

BATCH = 8  # short_dan_run's 35 images (5 of each class): 4 whole batches of 8 and a last of 3


def _config(drop_last=False, **dataset):
  config = short_dan_run()
  config.dataset.update(drop_last=drop_last, **dataset)
  return config


def _records_by_batch(data: pipeline.TrainData) -> list[list[int]]:
  return [data.order.records(np.asarray(batch["position"])).tolist() for batch in data.batches(0)]


def test_each_epoch_trains_its_draw_in_the_batches_of_pytorchs_data_loader():
  """The reference: torch.utils.data.DataLoader over each epoch's draw, batch 8, drop_last=False."""
  data = pipeline.TrainData(_config(), mesh_lib.make_mesh())
  assert (data.steps_per_epoch, data.last_batch, data.num_steps) == (5, 3, 10)
  draws = [pipeline.epoch_indices(data.split, "uniform", data.config.seed, epoch, 0.15) for epoch in (0, 1)]
  expected = [batch.tolist() for draw in draws
              for batch in torch.utils.data.DataLoader(torch.as_tensor(draw), batch_size=BATCH, drop_last=False)]
  assert _records_by_batch(data) == expected
  dropped = pipeline.TrainData(_config(drop_last=True), mesh_lib.make_mesh())
  assert (dropped.steps_per_epoch, dropped.last_batch, dropped.num_steps) == (4, 0, 8)
  assert _records_by_batch(dropped) == [batch for batch in expected if len(batch) == BATCH]


@pytest.mark.parametrize("cache", ["host", "device"])
def test_the_streamed_batches_equal_the_cached_ones_short_last_batch_included(cache):
  """Streamed, a short batch is read as a whole one whose padding slots are then cut off."""
  streamed = list(pipeline.TrainData(_config(cache="none"), mesh_lib.make_mesh()).batches(3))
  cached = list(pipeline.TrainData(_config(cache=cache), mesh_lib.make_mesh()).batches(3))
  assert [len(batch["label"]) for batch in streamed] == [8, 3, 8, 8, 8, 8, 3]  # steps 4–10
  for one, other in zip(streamed, cached, strict=True):
    assert one.keys() == other.keys()
    for key in one:
      np.testing.assert_array_equal(np.asarray(one[key]), np.asarray(other[key]))


def test_each_process_reads_an_equal_share_of_the_last_batch():
  """Two processes, a global batch of 8 (4 each) and a last batch of 6: 3 each, together the step's first 6
  positions; a streamed slot past a process's share is padding."""
  shares = [pipeline.Positions(8, 4, index, steps_per_epoch=3, last_batch=6) for index in (0, 1)]
  for step in range(6):
    read = np.concatenate([share.of_step(step) for share in shares])
    size = 6 if step % 3 == 2 else 8
    np.testing.assert_array_equal(read, np.arange(step * 8, step * 8 + size))
    for share in shares:
      slots = [share.of_local_index(step * 4 + offset) for offset in range(4)]
      assert slots == share.of_step(step).tolist() + [None] * (4 - size // 2)


def test_a_last_batch_that_does_not_split_over_the_devices_trains_the_part_that_does(caplog):
  data = pipeline.TrainData(_config(), mesh_lib.make_mesh())
  with caplog.at_level(logging.WARNING):
    assert data._batches_of_an_epoch(data.config, devices=2) == (4, 2)
    assert data._batches_of_an_epoch(data.config, devices=4) == (4, 0)
  assert [record.getMessage() for record in caplog.records] == [
      "Each epoch trains 2 of the 3 examples left after its 4 whole batches of 8 as a last batch; the other 1 are left "
      "out: a batch splits evenly over the 2 devices (the official loaders train them all).",
      "Each epoch trains 0 of the 3 examples left after its 4 whole batches of 8 as a last batch; the other 3 are left "
      "out: a batch splits evenly over the 4 devices (the official loaders train them all)."]


def test_a_last_batch_of_one_example_is_warned_of(caplog):
  """DAN's BatchNorm on its logits: PyTorch raises for a training batch of one; ours normalises it to the bias."""
  with caplog.at_level(logging.WARNING):
    data = pipeline.TrainData(_config(max_per_class=7), mesh_lib.make_mesh())  # 49 images: 6 batches of 8 and 1
  assert (data.steps_per_epoch, data.last_batch) == (7, 1)
  [record] = [record for record in caplog.records if record.levelno == logging.WARNING]
  assert record.getMessage().startswith("Each epoch's last batch holds 1 example: a BatchNorm over features alone")


def _saved_variables(workdir, step: int, config) -> dict:
  model = models.build_model(config)
  return checkpointing.restore_model(os.path.join(workdir, "checkpoints", str(step)),
                                     models.abstract_variables(model, config))


@pytest.mark.integration
def test_a_run_trains_the_last_batch_compiles_its_step_once_and_resumes_across_it_exactly(tmp_path, caplog):
  """An epoch of 5 steps, the 5th on 3 images; resumed from step 4 (before the last batch), the run ends on the very
  variables of the uninterrupted one."""
  config = _config()
  config.model.name = TINY_NET
  config.update(num_epochs=1, checkpoint_every_steps=4)  # steps 4 and the last, 5
  straight = tmp_path / "straight"
  run = train.TrainingRun(config, str(straight))
  with caplog.at_level(logging.INFO):
    report = run.run()
  assert ("Training tiny_methods.tiny_net on synthetic/tiny: 5 steps (5 per epoch, the last of 3 images), "
          "global batch 8") in caplog.text
  assert report["trained_steps"] == 5
  assert run.compilations() == {"train step (train mode)": 1, "train step (train mode, last batch of 3)": 1,
                                "train step (inference mode)": 0, "train step (inference mode, last batch of 3)": 0,
                                "eval step (eval)": 1}
  assert "compiled again" not in caplog.text
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("5", "best", "eval_results.*"))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, str(resumed))
  assert "Resumed from step 4" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, _saved_variables(straight, 5, config),
               _saved_variables(resumed, 5, config))
