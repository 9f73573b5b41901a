"""LHC-Net: the TensorFlow checkpoint reader, the checkpoint key map and the ResNet34v2 .h5.

No library has LHC-Net or qubvel's ResNet34v2 for PyTorch, so both are written in
tests/reference/lhcnet.py from docs/methods/lhcnet.md §1.3–1.7, with the checkpoint's attribute
paths and the .h5 layer names produced by the rules of docs/methods/lhcnet.md §1.12.

tests/fixtures/tf_checkpoint/bundle.* was written by TensorFlow 2.15
(`tf.train.Checkpoint(model=root).write("bundle")`): 120 variables
model/groups/{g}/items/{i}/value, index k = 10g + i, of dtype
(float32, float64, int32, int64, float16, bfloat16, uint8, bool)[k % 8], shape
((), (3,), (2, 5), (2, 1, 3))[k % 4] and values (arange(n)·(k + 1)) mod 11 − 5, cast by TF
(bool: value > 0).
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fer_jax import convert
from fer_jax import mesh
from fer_jax import models
from fer_jax import optim
from fer_jax import train
from fer_jax.convert import tf_checkpoint
from fer_jax.models.backbones import resnet_v2
from helpers import get_config
from reference.lhcnet import (EMBED, HEADS, keras_weights, reference_forward, reference_sgd_step,
                              tf_checkpoint_names, with_optimizer_state, write_keras_h5)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tf_checkpoint", "bundle")
SIZE = 80  # maps 20, 20, 10, 5, 3
TOLERANCE = 1e-4


def test_reader_matches_what_tensorflow_wrote():
  tensors = tf_checkpoint.load(FIXTURE)
  assert len(tensors) == 120
  dtypes = (np.float32, np.float64, np.int32, np.int64, np.float16, np.float32, np.uint8, np.bool_)
  for k in range(120):
    shape = ((), (3,), (2, 5), (2, 1, 3))[k % 4]
    values = ((np.arange(int(np.prod(shape))) * (k + 1)) % 11 - 5).reshape(shape)
    expected = values > 0 if dtypes[k % 8] is np.bool_ else values.astype(dtypes[k % 8])
    got = tensors[f"model/groups/{k // 10}/items/{k % 10}/value"]
    assert got.dtype == expected.dtype and got.shape == shape
    np.testing.assert_array_equal(got, expected)


def test_checkpoint_is_found_from_its_prefix_index_or_folder(tmp_path):
  assert tf_checkpoint.checkpoint_prefix(FIXTURE) == FIXTURE
  assert tf_checkpoint.checkpoint_prefix(FIXTURE + ".index") == FIXTURE
  folder = tmp_path / "LHC_Net"
  shutil.copytree(os.path.dirname(FIXTURE), folder)
  (folder / "checkpoint").write_text('model_checkpoint_path: "bundle"\nall_model_checkpoint_paths: "bundle"\n')
  assert tf_checkpoint.checkpoint_prefix(str(folder)) == str(folder / "bundle")
  assert convert.reader_for(str(folder)) == "tf_checkpoint"
  assert tf_checkpoint.checkpoint_prefix(str(tmp_path)) is None


@pytest.mark.parametrize("recorded", [
    None,  # a folder without its `checkpoint` file: its one .index file
    "/home/author/LHC-Net/Downloaded_Models/LHC_Net/bundle",  # the paths of the machine that saved it
    "C:\\\\Users\\\\author\\\\Downloaded_Models\\\\LHC_Net\\\\bundle",  # TensorFlow escapes the backslashes
    "Downloaded_Models/LHC_Net/bundle",
])
def test_checkpoint_is_found_beside_a_checkpoint_file_that_names_another_machines_path(tmp_path, recorded):
  folder = tmp_path / "LHC_Net"
  shutil.copytree(os.path.dirname(FIXTURE), folder)
  if recorded:
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{recorded}"\n')
  assert tf_checkpoint.checkpoint_prefix(str(folder)) == str(folder / "bundle")
  assert len(tf_checkpoint.load(str(folder))) == 120


def test_checkpoint_is_found_from_its_data_shard():
  shard = FIXTURE + ".data-00000-of-00001"
  assert tf_checkpoint.checkpoint_prefix(shard) == FIXTURE
  assert convert.reader_for(shard) == "tf_checkpoint"


def lhc_config(stage):
  config = get_config(f"configs/lhcnet.py:synthetic,stage={stage}")
  config.input.size = SIZE
  config.model.update(lhc_heads=HEADS, lhc_embed_dims=EMBED)
  return config


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.integration
def test_lhc_netc_checkpoint_gives_the_reference_logits(images):
  weights = keras_weights(lhc_config("C"), seed=0)
  source = convert.SOURCES_BY_NAME["lhcnet"]
  tensors = with_optimizer_state(tf_checkpoint_names(weights))
  config = lhc_config("C")
  variables, report = convert.convert_tensors(config, [(source, tensors, "LHC_Net_Controller")])
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference_forward(torch.from_numpy(images.transpose(0, 3, 1, 2)), weights, True, True).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  assert np.std(expected) > 0.1
  assert report.fresh == []
  assert set(report.dropped["LHC_Net_Controller [lhcnet]"]) == set(tensors) - set(tf_checkpoint_names(weights))


def test_plain_lhc_net_checkpoint_fills_every_variable_but_needs_stage_b():
  weights = {k: v for k, v in tf_checkpoint_names(keras_weights(lhc_config("B"), seed=1)).items()
             if not k.startswith("controller")}
  source = convert.SOURCES_BY_NAME["lhcnet"]
  variables, report = convert.convert_tensors(lhc_config("B"), [(source, weights, "LHC_Net")])
  assert report.fresh == [] and report.converted["LHC_Net [lhcnet]"] == len(weights)
  np.testing.assert_array_equal(variables["params"]["lhc4"]["qk_kernel"][2],
                                weights["conv4_6/LHC_Module/Wqk/2/kernel"])
  np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["stage3_unit1"]["bn1"]["var"],
                                weights["conv4_1/bn1/moving_variance"])
  with pytest.raises(convert.ConversionError, match=r"unknown to this model: conv1/LHC_Module/Wqk/0/kernel \(40, 20\)"):
    convert.convert_tensors(lhc_config("A3"), [(source, weights, "LHC_Net")])
  with pytest.raises(convert.ConversionError, match="controller1/w, .*controller5/w are missing"):
    convert.convert_tensors(lhc_config("C"), [(source, weights, "LHC_Net")])
  weights["conv4_6/LHC_Module/Wqk/2/kernel"] = weights["conv4_6/LHC_Module/Wqk/2/kernel"][:-1]  # heads unequal
  with pytest.raises(convert.ConversionError, match=r"\n  conv4_6/LHC_Module/Wqk/\{0…4\}/kernel \(5, 3\), \(5, 3\), "
                                                    r"\(4, 3\), \(5, 3\), \(5, 3\) does not fit params/lhc4/qk_kernel "
                                                    r"\(5, 5, 3\)\n"):
    convert.convert_tensors(lhc_config("B"), [(source, weights, "LHC_Net")])


@pytest.mark.integration
def test_imagenet_h5_fills_the_backbone_by_layer_name(images, tmp_path):
  weights = keras_weights(lhc_config("A1"), seed=2)
  path = tmp_path / "resnet34_imagenet_1000_no_top.h5"
  write_keras_h5(weights, path)
  config = lhc_config("A1")
  variables, report = convert.convert(config, [str(path)])
  backbone = {c: variables[c]["backbone"] for c in variables}
  features = jax.jit(lambda v, x: resnet_v2.ResNet34V2().apply(v, x, train=False)["output"])(backbone, images)
  with torch.no_grad():
    expected = reference_forward(torch.from_numpy(images.transpose(0, 3, 1, 2)), weights, False, False)
  assert np.max(np.abs(np.asarray(features) - expected.numpy().transpose(0, 2, 3, 1))) <= TOLERANCE
  assert {p.split("/")[1] for p in report.fresh} == {"head"}
  assert report.dropped == {}


def converted(config, weights):
  variables, _ = convert.convert_tensors(config, [(convert.SOURCES_BY_NAME["lhcnet"], tf_checkpoint_names(weights),
                                                   "LHC_Net")])
  return variables


@pytest.mark.integration
def test_a_stage_b_training_step_from_the_checkpoint_is_the_keras_step(images):
  """Our train step (stage B: SGD 0.01, BatchNorm in training) from a converted checkpoint against
  the reference's Keras step, both in float64: the loss, and what the step changes in every
  parameter and moving statistic (the changes, which the values themselves would dwarf)."""
  labels = np.array([2, 5])
  with jax.enable_x64(True):
    config = lhc_config("B")
    config.model.update(dtype="float64", dropout_rate=0.0)  # the reference has no dropout
    weights = {k: v for k, v in keras_weights(config, seed=3).items() if not k.startswith("controller")}
    before = converted(config, weights)
    model = models.build_model(config)
    optimizer = optim.make_optimizer(config.optimizer, 1, 1, before["params"])
    step = train.make_train_step(model, models.get_method("lhcnet").loss, config.loss, optimizer, mesh.make_mesh(),
                                 config.seed)
    opt_state = optimizer.tx.init(before["params"])
    state, metrics = step(jax.tree.map(jnp.array, {"step": np.int32(0), **before, "opt_state": opt_state}),
                          {"image": jnp.asarray(images, jnp.float64), "label": jnp.asarray(labels, jnp.int32)})
    loss, updated = reference_sgd_step(images, labels, weights, learning_rate=0.01)
    after = converted(config, updated)
  assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-12)
  for collection in ("params", "batch_stats"):
    changes = jax.tree.map(lambda ours, want, start: (np.asarray(ours) - start, want - start),
                           state[collection], after[collection], before[collection])
    for path, (ours, want) in jax.tree_util.tree_flatten_with_path(changes, is_leaf=lambda x: isinstance(x, tuple))[0]:
      assert np.max(np.abs(ours - want)) <= 1e-9 * np.max(np.abs(want)), optim.path_of(path)
