"""DAN checkpoints and the MS-Celeb ResNet-18: torchvision + the DAN heads in PyTorch vs fer_jax.

The reference (tests/reference/dan.py) is torchvision's ResNet-18 with the DAN heads written from
docs/methods/dan.md §2.3 and §2.4 with the official module names.
"""

import cv2
import jax
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fer_jax import checkpointing
from fer_jax import convert
from fer_jax import evaluate
from fer_jax import models
from fer_jax.models import dan
from fer_jax.models.backbones import resnet as resnet_lib
from helpers import small_config, tiny_run
from reference.common import randomise
from reference.dan import ReferenceDAN

pytestmark = pytest.mark.integration  # each test converts a full-size ResNet-18 DAN and runs it in PyTorch and JAX

SIZE = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A reference DAN saved like the released files."""
  torch.manual_seed(0)
  reference = randomise(ReferenceDAN(), seed=1)
  path = tmp_path_factory.mktemp("dan") / "rafdb_epoch21_acc0.897_bacc0.8275.pth"
  torch.save({"iter": 21, "model_state_dict": reference.state_dict(), "optimizer_state_dict": {}}, path)
  return reference, str(path)


@pytest.fixture(scope="module")
def converted(released):
  return convert.convert(small_config("configs/dan.py:synthetic", SIZE), [released[1]])


def test_released_checkpoint_gives_the_reference_logits(released, converted, images):
  reference, _ = released
  config = small_config("configs/dan.py:synthetic", SIZE)
  variables, report = converted
  logits = jax.jit(lambda v, x: models.build_model(config).apply(v, x, train=False)["logits"])(variables, images)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert np.max(np.abs(np.asarray(logits) - expected)) <= TOLERANCE
  state = reference.state_dict()
  counters = [name for name in state if name.endswith("num_batches_tracked")]
  assert report.converted == {"rafdb_epoch21_acc0.897_bacc0.8275.pth [dan]": len(state) - len(counters)}
  assert report.fresh == ["params/affinity/centres"]
  assert all(name.endswith("num_batches_tracked") for dropped in report.dropped.values() for name in dropped)


def test_the_log_counts_the_step_counters_and_names_a_drop_that_may_matter(released, converted, tmp_path):
  """The step counters were listed by name ("bn.num_batches_tracked, cat_head0.ca…"), one fresh variable was
  "1 variables"; a classifier left out is still named."""
  counters = sum(name.endswith("num_batches_tracked") for name in released[0].state_dict())
  reason = "BatchNorm step counter; fer_jax's BatchNorm keeps none, as its running averages use a fixed momentum"
  lines = converted[1].lines()
  assert lines[1:] == [f"rafdb_epoch21_acc0.897_bacc0.8275.pth [dan]: dropped {counters} tensors ({reason})",
                       "freshly initialised (seed 0, not in the source): 1 variable in affinity"]
  path = tmp_path / "resnet18_msceleb.pth"
  torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
  lines = convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(path)])[1].lines()
  assert ("resnet18_msceleb.pth [resnet18]: dropped 2 tensors (ImageNet/MS-Celeb classifier; DAN's trunk stops before "
          "it, as the official code does): fc.weight, fc.bias") in lines
  assert any(line.endswith(f"dropped 20 tensors ({reason})") for line in lines), lines


def test_converted_checkpoint_restores_and_evaluates(converted, tmp_path):
  config = tiny_run(small_config("configs/dan.py:synthetic", SIZE), size=SIZE, batch_size=16)
  variables, _ = converted
  checkpointing.save_model(str(tmp_path / "converted"), variables, config)
  model = models.build_model(config)
  restored = checkpointing.restore_model(str(tmp_path / "converted"), models.abstract_variables(model, config))
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), restored, variables))
  results = evaluate.evaluate_checkpoint(config, str(tmp_path / "converted"), str(tmp_path / "report"))
  assert results["num_examples"] == 70
  assert (tmp_path / "report" / "eval_results.json").exists()


def test_wrong_number_of_classes_is_reported_by_name_and_shape(released):
  _, path = released
  with pytest.raises(convert.ConversionError, match=r"fc\.weight \(7, 512\) does not fit params/fc/kernel \(512, 8\)"):
    convert.convert(small_config("configs/dan.py:affectnet8", SIZE), [path])


def test_unknown_and_missing_keys_are_named(released, tmp_path):
  _, path = released
  checkpoint = torch.load(path, weights_only=True)
  state = checkpoint["model_state_dict"]
  state["cat_head4.sa.conv1x1.0.weight"] = torch.zeros(256, 512, 1, 1)
  del state["cat_head2.ca.attention.3.bias"]
  edited = tmp_path / "edited.pth"
  torch.save(checkpoint, edited)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(edited)])
  assert "cat_head2.ca.attention.3.bias is missing" in str(error.value)
  assert "cat_head4.sa.conv1x1.0.weight (256, 512, 1, 1)" in str(error.value)
  assert "params/head2/ca/fc2/bias (512,)" in str(error.value)


def test_msceleb_resnet18_fills_the_trunk_and_initialises_the_rest(tmp_path, images):
  torch.manual_seed(0)
  resnet = randomise(torchvision.models.resnet18(), seed=2)
  path = tmp_path / "resnet18_msceleb.pth"
  torch.save({"epoch": 40, "arch": "resnet18", "state_dict": resnet.state_dict()}, path)
  config = small_config("configs/dan.py:synthetic", SIZE)
  variables, report = convert.convert(config, [str(path)])

  trunk = {c: variables[c]["trunk"] for c in variables}
  layer4 = jax.jit(lambda v, x: resnet_lib.ResNet18().apply(v, x, train=False)["layer4"])(trunk, images)
  with torch.no_grad():
    trunk_reference = nn.Sequential(*list(resnet.children())[:-2])
    expected = trunk_reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  assert np.max(np.abs(np.asarray(layer4) - expected)) <= TOLERANCE

  (dropped,) = report.dropped.values()
  assert {name for name, reason in dropped.items() if "classifier" in reason} == {"fc.weight", "fc.bias"}
  assert {path.split("/")[1] for path in report.fresh} == {"head0", "head1", "head2", "head3", "fc", "bn",
                                                           "affinity"}
  # DAN's own initialisation (Linear weights N(0, 0.001²)), seeded by config.seed.
  kernel = variables["params"]["head3"]["ca"]["fc1"]["kernel"]
  assert 0.0009 < np.std(kernel) < 0.0011
  config.seed = 1
  reseeded, _ = convert.convert(config, [str(path)])
  np.testing.assert_array_equal(reseeded["params"]["trunk"]["conv1"]["kernel"], variables["params"]["trunk"]["conv1"]["kernel"])
  assert not np.array_equal(reseeded["params"]["head3"]["ca"]["fc1"]["kernel"], kernel)


@pytest.mark.parametrize("layout", ["DataParallel keys", "bare state dict", "bare DataParallel state dict",
                                    "torch.compile keys", "under state_dict", "under model"])
def test_data_parallel_keys_and_bare_state_dicts_convert_as_the_release(released, converted, tmp_path, layout):
  state = torch.load(released[1], weights_only=True)["model_state_dict"]
  if "DataParallel" in layout:
    state = {f"module.{name}": value for name, value in state.items()}
  if "torch.compile" in layout:
    state = {f"_orig_mod.{name}": value for name, value in state.items()}
  path = tmp_path / "dan.pth"
  container = layout.split()[-1] if layout.startswith("under") else "model_state_dict"
  torch.save(state if layout.startswith("bare") else {"iter": 21, container: state}, path)
  variables, _ = convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(path)])
  jax.tree.map(np.testing.assert_array_equal, variables, converted[0])


def test_keys_that_do_not_match_are_listed_unknown_first_in_a_short_message(released, tmp_path):
  state = torch.load(released[1], weights_only=True)["model_state_dict"]
  path = tmp_path / "renamed.pth"
  torch.save({"model_state_dict": {f"net.{name}": value for name, value in state.items()}}, path)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(path)])
  lines = str(error.value).splitlines()
  assert "renamed.pth [dan]: unknown to this model: net.features.0.weight (64, 3, 7, 7)" in lines[1]
  assert lines[2].startswith("  renamed.pth [dan]: bn.running_mean, ") and lines[2].endswith("(234 in all) are missing")
  assert len(lines) == 5 and lines[-1].startswith("Pass the --config")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float16_bfloat16_and_float64_weights_convert_to_their_float32_values(released, tmp_path, dtype):
  state = torch.load(released[1], weights_only=True)["model_state_dict"]
  paths = {kind: tmp_path / f"{kind}.pth" for kind in ("saved", "float32")}
  for kind, cast in (("saved", lambda v: v.to(dtype)), ("float32", lambda v: v.to(dtype).float())):
    torch.save({"model_state_dict": {name: cast(v) if v.is_floating_point() else v for name, v in state.items()}},
               paths[kind])
  saved, _ = convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(paths["saved"])])
  expected, _ = convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(paths["float32"])])
  jax.tree.map(np.testing.assert_array_equal, saved, expected)


def test_a_source_that_does_not_fit_names_the_one_that_does(released):
  with pytest.raises(convert.ConversionError, match=r"is no resnet18 file \(--source=resnet18\) but a dan one: "
                                                   r"pass --source=dan, or no --source"):
    convert.convert(small_config("configs/dan.py:synthetic", SIZE), [released[1]], ["resnet18"])


def test_only_a_backbone_makes_an_initialisation(converted, tmp_path):
  assert not converted[1].initialisation_only  # only the affinity centres, a training-only parameter, are fresh
  path = tmp_path / "resnet18_msceleb.pth"
  torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, path)
  assert convert.convert(small_config("configs/dan.py:synthetic", SIZE), [str(path)])[1].initialisation_only


def reference_grad_cam_plus_plus(reference, images, head: int) -> np.ndarray:
  """grad-cam 1.3.1's Grad-CAM++ (the formula of fer_jax.attention_maps.grad_cam_plus_plus) written again in
  PyTorch and NumPy: the predicted class's logit differentiated at `cat_head<head>.sa`'s output, each map resized
  with OpenCV (INTER_LINEAR) and stretched to 0–1."""
  outputs = []
  hook = getattr(reference, f"cat_head{head}").sa.register_forward_hook(lambda module, args, out: outputs.append(out))
  logits = reference(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  hook.remove()
  (gradient,) = torch.autograd.grad(logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum(), outputs[0])
  a, g = outputs[0].detach().numpy(), gradient.numpy()  # [batch, channels, height, width]
  alpha = np.where(g != 0, g**2 / (2 * g**2 + a.sum(axis=(2, 3), keepdims=True) * g**3 + 1e-6), 0)
  weights = np.sum(np.maximum(g, 0) * alpha, axis=(2, 3), keepdims=True)
  cams = [cv2.resize(cam, images.shape[2:0:-1]) for cam in np.maximum(np.sum(weights * a, axis=1), 0)]
  shifted = np.stack([cam - cam.min() for cam in cams])
  return shifted / shifted.max(axis=(1, 2), keepdims=True)


def test_grad_cam_maps_are_the_official_scripts_at_each_heads_spatial_attention(released, converted):
  """fer_jax.visualize draws DAN as the official run_grad_cam.py does: grad-cam 1.3.1's GradCAMPlusPlus of the
  predicted class with `cat_head<i>.sa` as target layer, at the 100² of RAF-DB's aligned faces (4×4 maps).

  Once, outside the suite (torch 2.14.1, grad-cam 1.3.1 with ttach 0.0.3, OpenCV 5.1.0, JAX 0.10.2), on three
  crops of grace_hopper.jpg at 100² and 112² through this reference DAN's 4 heads: our maps were within 7.4e-6 of
  the package's, and visualize's PNGs its show_cam_on_image(use_rgb=True) images but for at most 16 pixels of
  12,544 two levels apart (a map value on the other side of a uint8 step)."""
  reference, _ = released
  images = np.random.default_rng(1).normal(size=(2, 100, 100, 3)).astype(np.float32)
  model = models.build_model(small_config("configs/dan.py:synthetic", SIZE))
  outputs = jax.jit(lambda v, x: dan.grad_cam_outputs(model, v, x))(converted[0], images)
  assert outputs["head_cams"].shape == (2, 4, 100, 100)
  for head in range(4):
    expected = reference_grad_cam_plus_plus(reference, images, head)
    assert np.max(np.abs(np.asarray(outputs["head_cams"][:, head]) - expected)) <= TOLERANCE
