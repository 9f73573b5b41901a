"""Parameters per module and MACs of a configured model.

  python -m fer_jax.summary --config=configs/apvit.py:rafdb
  python -m fer_jax.summary [--config=configs/apvit.py:rafdb] --checkpoint=PATH

The last line is `params: N`: trainable parameters ("params" collection) without BatchNorm
statistics and without training-only state such as DAN's affinity centres.

With --checkpoint (a training workdir, its checkpoints/ folder, a step folder or a converted
model, restored and checked as for `--mode=eval`; or a StableHLO `fer_jax.export` folder, its model.json
and variables checked against the config), the line before it is `params_sha256: HEX`,
`checkpointing.fingerprint` of its params and batch_stats: equal digests mean equal weights.
--config may then be left out: the checkpoint's meta record (an export's model.json) gives the
model, its input and classes, as for `fer_jax.load`.
"""

from collections.abc import Mapping
import itertools
import re

from absl import flags
from clu import parameter_overview
import jax
import numpy as np

from fer_jax import checkpointing
from fer_jax import cli
from fer_jax import config_lib
from fer_jax import export
from fer_jax import models
from fer_jax import validation
from fer_jax.errors import UserError


def count_params(tree) -> int:
  """Scalars in a nested dict of arrays (or one array)."""
  return int(parameter_overview.count_parameters({"": tree}))


def module_table(params, depth: int, exclude=()) -> list[tuple[str, int]]:
  """(indented name, count) per module down to `depth`, numbered ones in their numbers' order (block_2 before
  block_10); a module's children are listed when at least one of them is a module."""
  rows = []

  def visit(tree, level):
    for name, subtree in sorted(tree.items(), key=lambda item: _in_number_order(item[0])):
      if level == 0 and name in exclude:
        continue
      rows.append(("  " * level + name, count_params(subtree)))
      if level + 1 < depth and isinstance(subtree, Mapping) and any(isinstance(v, Mapping) for v in subtree.values()):
        visit(subtree, level + 1)

  visit(params, 0)
  return rows


def _in_number_order(name: str) -> list:
  return [int(part) if odd else part for odd, part in zip(itertools.cycle((False, True)), re.split(r"(\d+)", name))]


def macs(model, config) -> int:
  """Multiply-accumulates of one eval forward pass on one image: convolutions and matmuls,
  counted from the traced program's shapes (the convention of the papers' MACs figures)."""
  variables = models.abstract_variables(model, config)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False)["logits"])(
      variables, models.dummy_images(config))
  return _jaxpr_macs(jaxpr.jaxpr)


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      lhs, rhs = (v.aval for v in eqn.invars)
      out = eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
      kernel_in = rhs.shape[spec[1]] * int(np.prod([rhs.shape[d] for d in spec[2:]]))
      total += int(np.prod(out.shape)) * kernel_in
    elif eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs.shape[d] for d in contracting]))
    if eqn.primitive.name == "cond":  # one branch runs (lax.platform_dependent's: one a platform); the largest
      total += max(_jaxpr_macs(branch.jaxpr) for branch in eqn.params["branches"])
    else:
      total += sum(_jaxpr_macs(sub) for sub in _subjaxprs(eqn.params))
  return total


def _subjaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, "jaxpr") and hasattr(item, "consts"):  # ClosedJaxpr
        yield item.jaxpr
      elif hasattr(item, "eqns"):
        yield item


def check_not_onnx(path: str) -> None:
  if export.is_onnx_export(path):
    raise UserError(f"--checkpoint={path} is an ONNX export (model.onnx), whose weights summary does not read: pass "
                    "the checkpoint it was exported from, or a StableHLO export folder (export without --format=onnx).")


def rebuilt_config(path: str):
  """The config the meta record of a checkpoint (or an export's model.json) at `path` rebuilds, as `fer_jax.load`'s."""
  check_not_onnx(path)
  return export.config_from_record(export.read_record(path), f"--checkpoint={path}",
                                   "pass its --config=configs/<method>.py:<dataset>")


def trained_variables(config, model, abstract_variables: dict, path: str) -> dict:
  """The variables of a checkpoint (checked as for inference, but an initialisation-only conversion's are
  read too: its fingerprint verifies a copy), or of a StableHLO export folder (checked likewise)."""
  check_not_onnx(path)
  if not export.is_export(path):
    return models.load_trained_variables(config, model, path, initialisation_ok=True)
  record = export.read_record(path)
  export.check_export_identity(path, record, config)
  variables = export.read_variables(path)
  checkpointing.check_matches(variables, abstract_variables, path,
                              f"an export folder; {checkpointing.describe_record(record, config.model)}")
  return variables


def main(argv):
  del argv  # cli.run refuses arguments that are not flags
  config = flags.FLAGS.config
  if config is None:
    if not flags.FLAGS.checkpoint:
      raise UserError("Pass --config=configs/<method>.py:<dataset>, or a --checkpoint whose meta record gives it.")
    config = rebuilt_config(flags.FLAGS.checkpoint)
  validation.validate(config, training=False)
  method = models.get_method(config.model.name)
  model = method.build(config.model)
  variables = models.abstract_variables(model, config)
  digest = None
  if flags.FLAGS.checkpoint:
    # Restored first, so a checkpoint that does not fit the config fails before any output.
    digest = checkpointing.fingerprint(jax.device_get(trained_variables(config, model, variables, flags.FLAGS.checkpoint)))
  auxiliary = method.auxiliary_params
  rows = module_table(variables["params"], flags.FLAGS.depth, auxiliary)
  width = max(len(name) for name, _ in rows) + 2
  print(f"{config.model.name} · {config.dataset.name} · input {config.input.size}² · {config.model.num_classes} classes")
  print(f"{'module':<{width}}{'params':>14}")
  for name, count in rows:
    print(f"{name:<{width}}{count:>14,}")
  if auxiliary:
    print(f"not counted (training-only): {', '.join(auxiliary)} "
          f"({count_params({k: variables['params'][k] for k in auxiliary if k in variables['params']}):,})")
  print(f"batch_stats (not counted): {count_params(variables['batch_stats']):,}")
  print(f"MACs: {macs(model, config) / 1e9:.3f} G per {config.input.size}² image")
  if digest is not None:
    print(f"params_sha256: {digest}")
  print(f"params: {models.parameter_count(method, variables['params'])}")


def define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no global flags."""
  config_lib.define_config_flag("configs/<method>.py:<dataset>; with --checkpoint, its meta record's by default.")
  flags.DEFINE_integer("depth", 2, "Module nesting depth of the table.", lower_bound=1)
  cli.define_path("checkpoint", "", "Training workdir, checkpoint folder, converted model or export folder: "
                  "also print `params_sha256: HEX`, the fingerprint of its params and batch_stats.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
