"""How each converter source recognises its files: by the tensor names they hold (core.Selector).

For each source, a minimal file of its kind is accepted with the tensors it holds, unwrapped from the
containers its checkpoints come in; a file that lacks one of the names the source needs, or holds one it
must not, is refused, so that `read_source` goes on to the next source.
"""

import numpy as np
import pytest
import torch

from fer_jax import convert
from fer_jax.convert import core


def named(*names: str) -> dict:
  return {name: np.zeros(1, np.float32) for name in names}


APVIT = ("extractor.input_layer.0.weight", "vit.cls_token")
IR50 = ("input_layer.0.weight", "body.0.res_layer.0.weight")
TIMM = ("pos_embed", "blocks.0.attn.qkv.weight")
NPZ = ("Transformer/posembed_input/pos_embedding", "cls")
RESNET18 = ("conv1.weight", "layer4.1.bn2.running_var")
RESNET50 = ("conv1.weight", "layer3.5.conv3.weight")
LHCNET = ("conv1/conv1/kernel", "fc3/kernel")
H5 = ("bn_data/moving_mean", "conv0/kernel")

# (source, file contents, the tensor names it gives; None: refused)
CASES = {
    "apvit: mmcv checkpoint": ("apvit", {"meta": {"CLASSES": ["a"]}, "state_dict": named(*APVIT)}, APVIT),
    "apvit: bare, any extractor key": ("apvit", named("extractor.body.0.0.weight", "vit.cls_token"),
                                       ("extractor.body.0.0.weight", "vit.cls_token")),
    "apvit: DataParallel": ("apvit", named(*(f"module.{name}" for name in APVIT)), APVIT),
    "apvit: without vit.cls_token": ("apvit", {"state_dict": named(APVIT[0])}, None),
    "apvit: without extractor.*": ("apvit", {"state_dict": named("extractor_input.weight", "vit.cls_token")}, None),
    "apvit: empty state dict": ("apvit", {"state_dict": {}}, None),
    "ir50: bare": ("ir50", named(*IR50), IR50),
    "ir50: in state_dict": ("ir50", {"state_dict": named(*IR50)}, IR50),
    "ir50: without the stem": ("ir50", named(IR50[1]), None),
    "ir50: without body.0": ("ir50", named(IR50[0]), None),
    "timm_vit: bare": ("timm_vit", named(*TIMM), TIMM),
    "timm_vit: in model": ("timm_vit", {"model": named(*TIMM)}, TIMM),
    "timm_vit: in model/state_dict": ("timm_vit", {"model": {"state_dict": named(*TIMM)}}, TIMM),
    "timm_vit: without pos_embed": ("timm_vit", {"model": named(TIMM[1])}, None),
    "timm_vit: without qkv": ("timm_vit", named(TIMM[0]), None),
    "vit_npz": ("vit_npz", named(*NPZ), NPZ),
    "vit_npz: without pos_embedding": ("vit_npz", named("cls"), None),
    "vit_npz: names taken as read": ("vit_npz", named(*(f"module.{name}" for name in NPZ)), None),
    "resnet18: in state_dict": ("resnet18", {"state_dict": named(*RESNET18)}, RESNET18),
    "resnet18: DataParallel": ("resnet18", named(*(f"module.{name}" for name in RESNET18)), RESNET18),
    "resnet18: a ResNet-50": ("resnet18", {"state_dict": named(*RESNET18, "layer1.0.conv3.weight")}, None),
    "resnet18: without layer4": ("resnet18", named("conv1.weight", "layer3.1.bn2.running_var"), None),
    "vggface2_resnet50: bare": ("vggface2_resnet50", named(*RESNET50), RESNET50),
    "vggface2_resnet50: in state_dict": ("vggface2_resnet50", {"state_dict": named(*RESNET50)}, RESNET50),
    "vggface2_resnet50: without conv1": ("vggface2_resnet50", named(RESNET50[1]), None),
    "vggface2_resnet50: without layer3.5": ("vggface2_resnet50", named(RESNET50[0]), None),
    "lhcnet": ("lhcnet", named(*LHCNET, "save_counter"), (*LHCNET, "save_counter")),
    "lhcnet: without fc3": ("lhcnet", named(LHCNET[0]), None),
    "lhcnet: without the stem": ("lhcnet", named(LHCNET[1]), None),
    "lhcnet: names taken as read": ("lhcnet", named(*(f"module.{name}" for name in LHCNET)), None),
    "resnet34v2_h5": ("resnet34v2_h5", named(*H5), H5),
    "resnet34v2_h5: without bn_data": ("resnet34v2_h5", named(H5[1]), None),
    "resnet34v2_h5: without conv0": ("resnet34v2_h5", named(H5[0]), None),
}


@pytest.mark.parametrize("source, contents, expected", CASES.values(), ids=CASES.keys())
def test_source_accepts_its_files_and_refuses_others(source, contents, expected):
  selected = convert.SOURCES_BY_NAME[source].select(contents)
  assert (None if selected is None else tuple(selected)) == expected


def test_every_source_but_dan_and_scan_cci_states_its_names_as_data():
  """DAN's and SCAN-CCI's files are told by their containers, the rest by their tensor names."""
  by_function = {source.name for source in convert.SOURCES if not isinstance(source.select, core.Selector)}
  assert by_function == {"dan", "scan_cci"}
  assert {case[0] for case in CASES.values()} == set(convert.SOURCES_BY_NAME) - by_function


def test_selector_reads_a_trailing_star_as_any_name_so_begun():
  select = core.Selector(present=("stem.*",), absent=("head.*",))
  assert select(named("stem.conv.weight")) == named("stem.conv.weight")
  assert select(named("stem")) is None and select(named("stemless.weight")) is None
  assert select(named("stem.conv.weight", "head.fc.weight")) is None


def test_selector_unwraps_its_containers_only():
  flat, wrapped = core.Selector(present=("w",)), core.Selector(present=("w",), containers=("state_dict",))
  assert flat({"state_dict": named("w")}) is None and flat(named("module.w")) is None and flat(None) is None
  assert wrapped({"state_dict": named("module.w")}) == named("w") and wrapped(["w"]) is None


def test_unknown_file_names_what_each_source_expects(tmp_path):
  path = tmp_path / "weights.npz"
  np.savez(path, kernel=np.zeros(2, np.float32))
  with pytest.raises(convert.ConversionError) as caught:
    convert.read_source(str(path), "apvit")
  assert str(caught.value) == (
      f"{path} (npz, keys kernel) is not a checkpoint format fer_jax converts for apvit. Known sources: "
      "apvit (APViT_RAF-3eeecf7d.pth: keys extractor.*, vit.cls_token); "
      "ir50 (backbone_ir50_ms1m_epoch120.pth: keys input_layer.0.weight, body.0.res_layer.0.weight); "
      "timm_vit (vit_small_p16_224-15ec54c9.pth: keys pos_embed, blocks.0.attn.qkv.weight); "
      "vit_npz (a ViT .npz with the same shapes: keys Transformer/posembed_input/pos_embedding).")


def test_unknown_file_names_the_keys_a_source_must_not_hold(tmp_path):
  path = tmp_path / "weights.pth"
  torch.save({"weights": torch.zeros(2)}, path)
  with pytest.raises(convert.ConversionError) as caught:
    convert.read_source(str(path), "dan")
  assert str(caught.value).endswith(
      "; resnet18 (resnet18_msceleb.pth: keys layer4.1.bn2.running_var, and no layer1.0.conv3.weight).")


def test_tensors_of_another_rank_and_keys_that_are_not_names_are_named_not_a_traceback():
  """A kernel of another rank failed the layout change (numpy's "axes don't match array"), a scalar classifier the
  class count's check (IndexError), an integer key the drop of BatchNorm counters (TypeError): tracebacks, exit 1."""
  from helpers import get_config  # pylint: disable=import-outside-toplevel
  from reference.dan import ReferenceDAN  # pylint: disable=import-outside-toplevel
  tensors = {name: value.numpy() for name, value in ReferenceDAN().state_dict().items()}
  tensors.update({"features.0.weight": np.zeros((64, 147), np.float32), "fc.weight": np.float32(1), 3: np.zeros(2)})
  with pytest.raises(convert.ConversionError) as refused:
    convert.convert_tensors(get_config("configs/dan.py:rafdb"), [(convert.SOURCES_BY_NAME["dan"], tensors, "x.pth")])
  assert str(refused.value).splitlines()[1:4] == [
      "  x.pth [dan]: unknown to this model: 3 (2,)", "  fc.weight () does not fit params/fc/kernel (512, 7)",
      "  features.0.weight (64, 147) does not fit params/trunk/conv1/kernel (7, 7, 3, 64)"]
