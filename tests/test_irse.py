"""IR-50 trunk: unit strides and shortcuts, stage shapes, parameter count, face.evoLVe key names."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.models.backbones import irse
from fer_jax.summary import count_params


def _init(module, shape, **kwargs):
  return module.init(jax.random.key(0), jnp.ones(shape, jnp.float32), **kwargs)


@pytest.mark.integration
def test_same_width_unit_subsamples_the_shortcut_and_strides_the_second_conv():
  unit = irse.BottleneckIR(8, stride=2)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  variables = _init(unit, x.shape, train=False)
  assert "shortcut_layer_0" not in variables["params"]
  _, state = unit.apply(variables, x, train=False, capture_intermediates=True)
  stages = state["intermediates"]
  assert stages["res_layer_1"]["__call__"][0].shape == (2, 6, 6, 8)
  assert stages["res_layer_3"]["__call__"][0].shape == (2, 3, 3, 8)
  # With the last BN's scale at zero the residual branch vanishes: the output is x[::2, ::2].
  params = jax.tree.map(lambda a: a, variables["params"])
  params["res_layer_4"]["scale"] = jnp.zeros(8)
  y = unit.apply({**variables, "params": params}, x, train=False)
  np.testing.assert_array_equal(y, x[:, ::2, ::2])


@pytest.mark.integration
def test_width_change_unit_has_a_strided_conv_shortcut():
  unit = irse.BottleneckIR(16, stride=2)
  variables = _init(unit, (1, 8, 8, 8), train=False)
  params = variables["params"]
  assert params["shortcut_layer_0"]["kernel"].shape == (1, 1, 8, 16)
  assert set(params["shortcut_layer_1"]) == {"scale", "bias"}
  assert params["res_layer_1"]["kernel"].shape == (3, 3, 8, 16)
  assert params["res_layer_3"]["kernel"].shape == (3, 3, 16, 16)
  assert params["res_layer_0"]["scale"].shape == (8,)      # BN on the input width
  y = unit.apply(variables, jnp.ones((1, 8, 8, 8)), train=False)
  assert y.shape == (1, 4, 4, 16)


def test_ir50_stages_1_to_3_map_112_to_14x14x256_with_the_official_parameter_count():
  trunk = irse.IRSE(irse.IR50_STAGE_SIZES, num_stages=3)
  x = jax.ShapeDtypeStruct((2, 112, 112, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: trunk.init(jax.random.key(0), x, train=False), x)
  features = jax.eval_shape(lambda v, x: trunk.apply(v, x, train=False), variables, x)
  assert {k: v.shape for k, v in features.items()} == {
      "stage1": (2, 56, 56, 64), "stage2": (2, 28, 28, 128), "stage3": (2, 14, 14, 256)}
  assert count_params(variables["params"]) == 17_611_968
  assert len([k for k in variables["params"] if k.startswith("body_")]) == 21


def test_full_ir50_ends_at_7x7x512():
  trunk = irse.IRSE(irse.IR50_STAGE_SIZES)
  x = jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: trunk.init(jax.random.key(0), x, train=False), x)
  features = jax.eval_shape(lambda v, x: trunk.apply(v, x, train=False), variables, x)
  assert features["stage4"].shape == (1, 7, 7, 512)


def _face_evolve_keys(stage_sizes=irse.IR50_STAGE_SIZES[:3]) -> set[str]:
  """face.evoLVe IR-50 state-dict keys for the first stages (BN running stats left out)."""
  bn = ("weight", "bias")
  keys = {"input_layer.0.weight", "input_layer.2.weight"} | {f"input_layer.1.{p}" for p in bn}
  first_units = np.cumsum((0,) + tuple(stage_sizes))[1:-1]   # units that change width
  for unit in range(sum(stage_sizes)):
    prefix = f"body.{unit}"
    keys |= {f"{prefix}.res_layer.{i}.{p}" for i in (0, 4) for p in bn}
    keys |= {f"{prefix}.res_layer.{i}.weight" for i in (1, 2, 3)}
    if unit in first_units:
      keys |= {f"{prefix}.shortcut_layer.0.weight"} | {f"{prefix}.shortcut_layer.1.{p}" for p in bn}
  return keys


def test_parameter_names_are_a_plain_map_of_face_evolve_keys():
  trunk = irse.IRSE(irse.IR50_STAGE_SIZES, num_stages=3)
  x = jax.ShapeDtypeStruct((1, 112, 112, 3), jnp.float32)
  params = jax.eval_shape(lambda x: trunk.init(jax.random.key(0), x, train=False), x)["params"]
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "slope": "weight"}

  def torch_key(path) -> str:
    *modules, leaf = [k.key for k in path]
    return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in modules] + [leaf_names[leaf]])

  mapped = {torch_key(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert mapped == _face_evolve_keys()
