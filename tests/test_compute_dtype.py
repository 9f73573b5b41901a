"""config.model.dtype: "auto" by backend, and what bfloat16 mode keeps in float32.

"auto" (the default) is bfloat16 on a GPU or TPU and float32 on the CPU, resolved once by
`validation.validate`, so that checkpoints record the dtype a run used. In bfloat16 mode the
convolutions and matmuls of the backbone run in bfloat16 while parameters, normalisation
statistics, softmaxes, logits, losses and the optimiser stay in float32: checked on the jaxpr
of the whole jitted train step (forward, backward, optimiser), traced at a tiny size.
"""

import re

import jax
import jax.numpy as jnp
from jax._src import core
import numpy as np
import pytest

from fer_jax import checkpointing
from fer_jax import config_lib
from fer_jax import models
from fer_jax import validation
from fer_jax.data import labels
from fer_jax.errors import ConfigError
from fer_jax.models.batch_norm import BatchNorm
from fer_jax.benchmark import abstract_train_step
from helpers import get_config

BF16, F32 = "bfloat16", "float32"
MATMULS = ("conv_general_dilated", "dot_general")


def test_the_default_is_auto_and_it_is_float32_on_the_cpu():
  config = get_config("configs/dan.py:rafdb")
  assert config.model.dtype == "auto" and jax.default_backend() == "cpu"
  validation.validate(config, training=False)
  assert config.model.dtype == "float32"
  assert models.build_model(config).dtype == jnp.float32


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_auto_is_bfloat16_on_a_gpu_or_tpu_and_checkpoints_record_it(backend, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  config = get_config("configs/dan.py:rafdb")
  assert models.build_model(config).dtype == jnp.bfloat16  # a model built straight from "auto"
  validation.validate(config, training=False)
  assert config.model.dtype == "bfloat16"
  assert checkpointing.metadata(config)["model"]["dtype"] == "bfloat16"
  for explicit in ("float32", "bfloat16"):
    config.model.dtype = explicit
    validation.validate(config, training=False)
    assert config.model.dtype == explicit


def test_records_written_before_auto_keep_their_dtype_and_records_without_one_resolve(monkeypatch):
  """A checkpoint's meta record as fer_jax.load reads it without a config (checkpointing.config_from_meta)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  record = {"name": "dan", "num_classes": 7, "num_heads": 4, "num_centres": 8}
  for saved, used in (("float32", "float32"), (None, "bfloat16")):
    model = record | ({"dtype": saved} if saved else {})
    meta = {"model": model, "class_names": labels.class_names("rafdb"), "input": {"size": 112}}
    config = checkpointing.config_from_meta(meta)
    validation.validate(config, training=False)
    assert config.model.dtype == used


def test_an_unknown_dtype_is_refused_with_the_choices():
  config = config_lib.base_config()
  config.model.update(name="dan", dtype="float16")
  with pytest.raises(ConfigError, match=r"model\.dtype='float16' is not one of: 'auto', 'float32', 'bfloat16'"):
    validation.validate(config, training=False)


def _equations(jaxpr, scope=""):
  """(equation, full module path) for every equation of `jaxpr` and of the jaxprs inside it
  (a path looks like "transpose(jvp(DAN))/trunk/layer1_0/conv1")."""
  for eqn in jaxpr.eqns:
    path = "/".join(part for part in (scope, str(eqn.source_info.name_stack)) if part)
    yield eqn, path
    for inner in core.jaxprs_in_params(eqn.params):
      yield from _equations(inner, path)


def _dtypes(eqn) -> set[str]:
  return {str(v.aval.dtype) for v in [*eqn.invars, *eqn.outvars] if hasattr(v.aval, "dtype")}


def _bfloat16_train_step(spec: str, size: int = 32, **model):
  """The equations of `spec`'s jitted train step with model.dtype="bfloat16" at `size` px, batch 2,
  and the step's output (state, metrics) as shapes and dtypes."""
  config = get_config(spec)
  config.model.update(dtype="bfloat16", **model)
  step, state = abstract_train_step(config)
  batch = {"image": jax.ShapeDtypeStruct((2, size, size, 3), np.float32), "label": jax.ShapeDtypeStruct((2,), np.int32)}
  return list(_equations(step.trace(state, batch).jaxpr.jaxpr)), jax.eval_shape(step, state, batch)


def _check_float32_outside(equations, output, model_name: str, low_precision_scopes: str,
                           float32_matmuls: str | None):
  """Matmuls in `low_precision_scopes` (a regex on the module path) take bfloat16 operands and
  those in `float32_matmuls` (None: there are none) float32; normalisation (every rsqrt), softmaxes (every exp but the
  GELU's), the loss, metrics and optimiser (every equation outside the model) are float32; the
  new state and the metrics are float32."""
  inside = lambda path: re.search(rf"\({model_name}\)+/({low_precision_scopes})", path)
  matmuls = [(eqn, path) for eqn, path in equations if eqn.primitive.name in MATMULS]
  low = [path for eqn, path in matmuls if inside(path)]
  # operands: the CPU's 1×1 kernel gradient sums its products in float32 (fast_ops.py)
  assert len(low) > 20 and all({str(v.aval.dtype) for v in eqn.invars} == {BF16}
                               for eqn, path in matmuls if inside(path))
  precise = [path for eqn, path in matmuls if not inside(path)]
  assert (precise and all(re.search(float32_matmuls, path) for path in precise)) if float32_matmuls else not precise, precise
  assert all(_dtypes(eqn) == {F32} for eqn, path in matmuls if not inside(path))
  for eqn, path in equations:
    if eqn.primitive.name == "rsqrt" or (eqn.primitive.name == "exp" and "mlp" not in path):
      assert _dtypes(eqn) == {F32}, (eqn, path)
    if f"({model_name})" not in path:  # the loss, metrics and optimiser
      assert BF16 not in _dtypes(eqn), (eqn, path)
  state, metrics = output
  assert {str(leaf.dtype) for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {F32}
  assert {str(leaf.dtype) for leaf in jax.tree.leaves(metrics)} == {F32}


@pytest.mark.integration  # traces a ResNet-18 DAN train step (~10 s on 2 loaded cores)
def test_bfloat16_dan_computes_its_trunk_and_heads_in_bfloat16_and_the_rest_in_float32():
  equations, output = _bfloat16_train_step("configs/dan.py:synthetic", num_heads=2)
  _check_float32_outside(equations, output, "DAN", r"trunk|head\d", float32_matmuls=r"DAN\)+/fc$|jvp\(\)+$")
  # The log-softmax across heads, the fused logits and their BatchNorm: float32 but for gathering the heads.
  top = {eqn.primitive.name for eqn, path in equations
         if re.search(r"\(DAN\)+(/fc|/bn)?$", path) and BF16 in _dtypes(eqn)}
  assert top <= {"convert_element_type", "stack", "unstack"}, top


@pytest.mark.integration  # traces an IR-50 + ViT APViT train step (~10 s on 2 loaded cores)
def test_bfloat16_apvit_computes_its_backbone_in_bfloat16_and_the_rest_in_float32():
  equations, output = _bfloat16_train_step("configs/apvit.py:synthetic")
  _check_float32_outside(equations, output, "APViT", r"extractor|vit", float32_matmuls=r"APViT\)+/head/fc$")


@pytest.mark.integration  # traces a ResNet-34v2 LHC-Net train step with its five LHC modules
def test_bfloat16_lhcnet_computes_its_attention_products_in_bfloat16_and_its_gates_and_softmaxes_in_float32():
  spec = "configs/lhcnet.py:synthetic,stage=B"
  equations, output = _bfloat16_train_step(spec, size=get_config(spec).input.size)  # its bands fix the size
  _check_float32_outside(equations, output, "LHCNet", r"backbone(?!.*scale_dense)|head",
                         float32_matmuls=r"lhc\d/scale_dense$")
  attention = [path for eqn, path in equations if eqn.primitive.name == "dot_general"
               and re.search(r"^jvp\(LHCNet\)/backbone/lhc\d/(bh...c,h...e->bhce|nce,nde->ncd|ncd,n...d->n...c)$", path)]
  assert len(attention) == 5 * 4  # each module's two projections, scores and product with the value


@pytest.mark.integration  # traces a ResNet-50 trunk SCAN-CCI train step
def test_bfloat16_scan_cci_computes_its_trunk_branches_and_heads_in_bfloat16_and_the_rest_in_float32():
  equations, output = _bfloat16_train_step("configs/scan_cci.py:synthetic")
  _check_float32_outside(equations, output, "SCANCCI", r"trunk|attention|cci", float32_matmuls=None)


def test_batch_norm_on_bfloat16_input_computes_in_float32():
  """Statistics, normalisation and their gradients in float32; bfloat16 only entering and leaving."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 8)), jnp.bfloat16)
  module = BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)

  def objective(params, x):
    y, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32)), stats
  jaxpr = jax.make_jaxpr(jax.grad(objective, argnums=(0, 1), has_aux=True))(variables["params"], x).jaxpr
  equations = list(_equations(jaxpr))
  assert {eqn.primitive.name for eqn, _ in equations if BF16 in _dtypes(eqn)} == {"convert_element_type"}
  assert all(_dtypes(eqn) == {F32} for eqn, _ in equations if eqn.primitive.name in ("reduce_sum", "rsqrt"))
