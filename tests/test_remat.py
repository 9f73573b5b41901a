"""config.model.remat: each method's blocks keep less for the backward pass, and compute the same.

XLA's CPU compiler drops the barriers that keep a recomputation apart before it merges common
subexpressions, so on the CPU a rematerialised step compiles to the same program as a plain one. The
gradients are therefore compared with that merge (the `cse` pass) switched off, which keeps the
recomputation in the program as a GPU or TPU runs it, in float64, where a wrong recomputation shows
and rounding does not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import benchmark
from fer_jax import models
from fer_jax import validation
from fer_jax.errors import ConfigError
from fer_jax.models import layers
from fer_jax.benchmark import PAPER_CONFIGS
from helpers import get_config, load_script, random_variables

# (config, remat) whose gradients are compared with the plain step's: each backbone's blocks once
# (SCAN-CCI's trunk is DAN's ResNet, resnet.py, with other blocks), each policy at least twice.
GRADIENT_CASES = (("configs/dan.py:synthetic", "elementwise"), ("configs/dan.py:synthetic", "blocks"),
                  ("configs/apvit.py:synthetic", "blocks"), ("configs/lhcnet.py:synthetic,stage=B", "elementwise"))
# Bytes kept for the backward pass with remat "blocks", as a fraction of none, at most (measured at the
# paper configs, batch 16, float32: DAN 0.53, APViT 0.24, SCAN-CCI 0.39, LHC-Net 0.61).
BLOCKS_KEEP_AT_MOST = 0.65
BATCH = 16


def _config(spec: str, remat: str, dtype: str = "float32"):
  config = get_config(spec)
  config.model.remat, config.model.dtype = remat, dtype
  return config


@pytest.mark.parametrize("spec", PAPER_CONFIGS)
def test_remat_keeps_the_variables_and_less_for_the_backward_pass(spec):
  """The same variable names and shapes (checkpoints and converters are unchanged), and less saved for
  the backward pass: "elementwise" less than none, "blocks" less again."""
  saved, trees = {}, {}
  for remat in layers.REMAT_POLICIES:
    config = _config(spec, remat)
    model = models.build_model(config)
    trees[remat] = models.abstract_variables(model, config)
    images = jax.ShapeDtypeStruct(models.dummy_images(config, BATCH).shape, jnp.float32)
    saved[remat] = benchmark.saved_for_backward_bytes(model, trees[remat], images)
  assert trees["elementwise"] == trees["blocks"] == trees["none"]
  assert saved["blocks"] < saved["elementwise"] < saved["none"]
  assert saved["blocks"] <= BLOCKS_KEEP_AT_MOST * saved["none"], saved


def _gradient_step(config, variables, images, labels, disabled_passes: str):
  method = models.get_method(config.model.name)
  model = method.build(config.model)

  def loss(params, batch_stats):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return method.loss(outputs, labels, config.loss)[0], updates

  lowered = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables["params"], variables["batch_stats"])
  return lowered.compile(compiler_options={"xla_disable_hlo_passes": disabled_passes})


@pytest.mark.integration
@pytest.mark.parametrize("spec, remat", GRADIENT_CASES)
def test_rematerialised_gradients_and_statistics_equal_the_plain_ones(spec, remat):
  with jax.enable_x64(True):
    plain_config = _config(spec, "none", "float64")
    variables = jax.tree.map(lambda leaf: leaf.astype(np.float64), random_variables(plain_config))
    images = jax.random.normal(jax.random.key(1), models.dummy_images(plain_config, 2).shape, jnp.float64)
    labels = jnp.array([1, 3])
    steps = {name: _gradient_step(_config(spec, name, "float64"), variables, images, labels, "cse")
             for name in ("none", remat)}
    results = {name: step(variables["params"], variables["batch_stats"]) for name, step in steps.items()}
  # The recomputation is in the program: whole blocks (more convolutions), or their BatchNorms only.
  plain, rematerialised = steps["none"].as_text(), steps[remat].as_text()
  if remat == "blocks":
    assert rematerialised.count(" convolution(") > plain.count(" convolution(")
  else:
    assert rematerialised.count(" convolution(") == plain.count(" convolution(")
    assert rematerialised.count(" rsqrt(") > plain.count(" rsqrt(")
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12),
               results[remat], results["none"])


def test_an_unknown_remat_is_a_config_error():
  config = get_config("configs/dan.py:synthetic")
  config.model.remat = "everything"
  with pytest.raises(ConfigError,
                     match="config.model.remat='everything' is not one of: 'none', 'elementwise', 'blocks'"):
    validation.validate(config, training=True)


def test_remat_table_gives_ratios_to_the_plain_step_and_a_dash_where_no_flops_were_counted():
  """benchmarks/remat.py's table: memory and FLOPs per image beside the plain step's, "–" for a FLOP
  count that this JAX could not give (benchmark.program_flops returns None)."""
  remat_script = load_script("benchmarks/remat.py")
  row = lambda remat, saved, flops: {"config": "c", "model": "dan", "input_size": 224, "batch_size": 2,  # noqa: E731
                                     "dtype": "float32", "remat": remat, "saved_for_backward_bytes": saved,
                                     "lowered_train_flops_per_step": flops}
  lines = remat_script.table([row("none", 2**30, 4e9), row("blocks", 2**29, 5e9), row("elementwise", 2**29, None)])
  assert lines.splitlines()[2:] == ["| `c` | 224² | 2 | float32 | none | 1.00 | 1.00 | 2.00 | 1.00 |",
                                    "| `c` | 224² | 2 | float32 | blocks | 0.50 | 0.50 | 2.50 | 1.25 |",
                                    "| `c` | 224² | 2 | float32 | elementwise | 0.50 | 0.50 | – | – |"]
