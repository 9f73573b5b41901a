"""checkpointing.fingerprint: the documented canonical form, its sensitivity, and `summary --checkpoint`."""

import gc
import hashlib
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from fer_jax import checkpointing
from fer_jax import export
from fer_jax import models
from fer_jax import summary
from fer_jax.errors import UserError
from helpers import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_variables():
  rng = np.random.default_rng(0)
  return {
      "params": {
          "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                   "bias": rng.normal(size=(4,)).astype(np.float32)},
          "head": {"kernel": rng.normal(size=(4, 7)).astype(np.float32)},
          "scale": np.float32(0.5),
      },
      "batch_stats": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32),
                             "var": rng.uniform(0.5, 1.5, size=(4,)).astype(np.float32)}},
  }


def spec_digest(leaves):
  """The docstring's recipe, written out independently: `leaves` is [(name, array)]."""
  h = hashlib.sha256()
  for name, array in sorted(leaves, key=lambda item: item[0]):
    array = np.asarray(array)
    fields = [name.encode(), ",".join(map(str, array.shape)).encode(), array.dtype.name.encode(),
              array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")]
    for field in fields:
      h.update(str(len(field)).encode() + b":" + field + b",")
  return h.hexdigest()


def test_matches_an_independent_recomputation_of_the_documented_form():
  v = small_variables()
  leaves = [("params/conv/kernel", v["params"]["conv"]["kernel"]), ("params/conv/bias", v["params"]["conv"]["bias"]),
            ("params/head/kernel", v["params"]["head"]["kernel"]), ("params/scale", v["params"]["scale"]),
            ("batch_stats/bn/mean", v["batch_stats"]["bn"]["mean"]),
            ("batch_stats/bn/var", v["batch_stats"]["bn"]["var"])]
  assert checkpointing.fingerprint(v) == spec_digest(leaves)
  # The docstring's worked example, byte for byte.
  example = hashlib.sha256(b"8:params/w,1:2,7:float32,8:\x00\x00\x80?\x00\x00\x00@,").hexdigest()
  assert checkpointing.fingerprint({"params": {"w": np.array([1.0, 2.0], np.float32)}}) == example


def test_c_order_little_endian_bytes_and_bfloat16():
  values = np.arange(12, dtype=np.float32).reshape(3, 4)
  base = checkpointing.fingerprint({"params": {"w": values}})
  assert checkpointing.fingerprint({"params": {"w": np.asfortranarray(values)}}) == base
  assert checkpointing.fingerprint({"params": {"w": values.astype(">f4")}}) == base
  bf16 = values.astype(ml_dtypes.bfloat16)
  assert checkpointing.fingerprint({"params": {"w": bf16}}) == spec_digest([("params/w", bf16)])


def test_changes_with_one_ulp_a_renamed_leaf_a_dtype_or_a_shape():
  v = small_variables()
  base = checkpointing.fingerprint(v)

  ulp = small_variables()
  kernel = ulp["params"]["head"]["kernel"]
  kernel[2, 3] = np.nextafter(kernel[2, 3], np.float32(np.inf))
  assert checkpointing.fingerprint(ulp) != base

  renamed = small_variables()
  renamed["params"]["head"]["weight"] = renamed["params"]["head"].pop("kernel")
  assert checkpointing.fingerprint(renamed) != base

  moved = small_variables()  # the same leaf under the other collection
  moved["batch_stats"]["scale"] = moved["params"].pop("scale")
  assert checkpointing.fingerprint(moved) != base

  cast = small_variables()  # the same values in another dtype
  cast["batch_stats"]["bn"]["mean"] = cast["batch_stats"]["bn"]["mean"].astype(np.float64)
  assert checkpointing.fingerprint(cast) != base
  bits = small_variables()  # the same bytes reinterpreted as another dtype of the same size
  bits["params"]["conv"]["bias"] = bits["params"]["conv"]["bias"].view(np.int32)
  assert checkpointing.fingerprint(bits) != base

  reshaped = small_variables()
  reshaped["params"]["head"]["kernel"] = reshaped["params"]["head"]["kernel"].reshape(7, 4)
  assert checkpointing.fingerprint(reshaped) != base


def test_independent_of_insertion_order_and_other_collections():
  v = small_variables()
  reordered = {"batch_stats": {"bn": dict(reversed(list(v["batch_stats"]["bn"].items())))},
               "params": {k: (dict(reversed(list(s.items()))) if isinstance(s, dict) else s)
                          for k, s in reversed(list(v["params"].items()))}}
  assert list(reordered) != list(v)
  assert checkpointing.fingerprint(reordered) == checkpointing.fingerprint(v)
  # A training state's other entries do not count; an empty batch_stats is the same as none.
  state = {"step": 7, "opt_state": {"mu": np.ones(3)}, **v}
  assert checkpointing.fingerprint(state) == checkpointing.fingerprint(v)
  assert (checkpointing.fingerprint({"params": v["params"], "batch_stats": {}})
          == checkpointing.fingerprint({"params": v["params"]}))


@pytest.mark.integration
def test_summary_prints_the_fingerprint_of_a_saved_model(tmp_path):
  from helpers import random_variables
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  variables = random_variables(config, seed=3)
  workdir = tmp_path / "workdir"  # laid out as a training run: workdir/checkpoints/0
  checkpointing.save_model(str(workdir / "checkpoints"), variables, config)
  expected = checkpointing.fingerprint(variables)

  command = [sys.executable, "-m", "fer_jax.summary", "--config=configs/dan.py:synthetic", "--config.input.size=32"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  export.export(config, variables, str(tmp_path / "exported"), platforms=("cpu",))
  with_checkpoint, without, exported = (
      subprocess.run(command + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
      for extra in ([f"--checkpoint={workdir}"], [], [f"--checkpoint={tmp_path / 'exported'}"]))
  assert with_checkpoint.returncode == 0, with_checkpoint.stderr[-3000:]
  assert without.returncode == 0, without.stderr[-3000:]
  lines = with_checkpoint.stdout.strip().splitlines()
  assert re.fullmatch(r"params: \d+", lines[-1])  # still the last line
  assert lines[-2] == f"params_sha256: {expected}"
  # Without --checkpoint, the same report less that line; an export of the weights, the same digest.
  assert without.stdout.strip().splitlines() == lines[:-2] + lines[-1:]
  assert exported.returncode == 0 and exported.stdout.strip().splitlines() == lines, exported.stderr[-3000:]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's failed read, collected late
def test_summary_names_an_onnx_export_and_a_damaged_one_with_what_to_do(tmp_path):
  from helpers import random_variables
  config = get_config("configs/dan.py:synthetic")
  config.input.size = 32
  variables = random_variables(config)
  model = models.build_model(config)
  abstract = models.abstract_variables(model, config)
  for name in (export.METADATA, export.ONNX):
    (tmp_path / "onnx" / name).parent.mkdir(exist_ok=True)
    (tmp_path / "onnx" / name).write_text("{}")
  with pytest.raises(UserError, match=r"is an ONNX export \(model\.onnx\), whose weights summary does not read: pass "
                                      r"the checkpoint it was exported from, or a StableHLO export folder"):
    summary.trained_variables(config, model, abstract, str(tmp_path / "onnx"))
  export.export(config, variables, str(tmp_path / "exported"), platforms=("cpu",))
  assert checkpointing.fingerprint(summary.trained_variables(config, model, abstract, str(tmp_path / "exported"))) == \
      checkpointing.fingerprint(variables)
  for path in (tmp_path / "exported" / export.VARIABLES).glob("**/d/*"):
    os.truncate(path, path.stat().st_size // 2)
  with pytest.raises(checkpointing.CheckpointError, match=rf"Cannot read {tmp_path}/exported/variables \(.*\): it is "
                                                          r"damaged or incomplete; export the model again"):
    summary.trained_variables(config, model, abstract, str(tmp_path / "exported"))
  gc.collect()  # here, not during the next test


def test_pinned_digest_of_a_nested_tree_is_kept_plain_or_frozen():
  """A fixed tree's fingerprint as the library computed it before its walk became flax's flatten_dict
  (nested names, a bfloat16 leaf, an empty mapping, a collection left out): saved fingerprints stay valid."""
  from flax.core import FrozenDict  # pylint: disable=import-outside-toplevel
  tree = {"params": {"trunk": {"layer1_0": {"conv1": {"kernel": np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)}},
                               "bn1": {"scale": np.ones(4, ml_dtypes.bfloat16), "bias": np.zeros(4, np.float32)}},
                     "fc": {"kernel": np.full((4, 7), 0.5, np.float32)}, "empty": {}},
          "batch_stats": {"trunk": {"bn1": {"mean": np.arange(4, dtype=np.float32), "var": np.ones(4, np.float32)}}},
          "opt_state": [1, 2]}
  pinned = "b5417ba4b025bc51a1ad9ffed0b74a9a18eff086aa50d857744c30a68c05c709"
  assert checkpointing.fingerprint(tree) == checkpointing.fingerprint(FrozenDict(tree)) == pinned
