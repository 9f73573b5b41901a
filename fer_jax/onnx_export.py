"""Translates a JAX inference function into an ONNX model, one jaxpr primitive at a time.

Only the primitives the four methods' inference functions use are translated; any other stops
the export with a `UserError` that names it. The weights are embedded as initializers, and every
equation whose inputs are all known at export time (BatchNorm folding, index tables, masks) is
evaluated by JAX itself and stored as a constant, so the ONNX graph holds only the work that
depends on the images. The batch size may stay symbolic: it becomes the graph's "batch"
dimension, read at run time from the images' shape.

Needs the optional `onnx` package (`pip install fer_jax[onnx]`).
"""

import hashlib
import itertools

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from fer_jax.errors import UserError

OPSET = 18
_INT64_MAX = np.iinfo(np.int64).max


def _import_onnx():
  try:
    import onnx
  except ImportError as error:
    raise UserError(f"--format=onnx needs the onnx package ({error}): pip install 'fer_jax[onnx]'.") from None
  return onnx


class _Graph:
  """ONNX nodes and initializers under construction; values are NumPy arrays (known at export
  time) or the names of ONNX tensors."""

  def __init__(self, onnx, symbolic_batch: bool):
    self.onnx = onnx
    self.nodes, self.initializers = [], []
    self._stored = {}  # content → initializer name: a weight used in several places is stored once
    self._ids = itertools.count()
    self.batch_name = self.op("Shape", "images", start=0, end=1) if symbolic_batch else None  # int64[1]

  def fresh(self, prefix="t"):
    return f"{prefix}{next(self._ids)}"

  def tensor(self, value):
    """The name of an ONNX tensor for `value` (an initializer when it is an array)."""
    if isinstance(value, str):
      return value
    value = np.asarray(value)
    key = (value.dtype.str, value.shape, hashlib.sha1(value.tobytes()).digest())
    if key not in self._stored:
      self._stored[key] = self.fresh("c")
      self.initializers.append(self.onnx.numpy_helper.from_array(value, self._stored[key]))
    return self._stored[key]

  def op(self, op_type, *inputs, outputs=1, **attributes):
    names = [self.fresh() for _ in range(outputs)]
    # Named, each its own: ONNX Runtime 1.20 and 1.21 refuse a graph of nameless nodes in which their Gather/Slice
    # to Split fusion applies twice ("two nodes with same node name (/GatherSliceToSplitFusion/)": APViT's).
    self.nodes.append(self.onnx.helper.make_node(op_type, [self.tensor(x) for x in inputs], names,
                                                 name=f"{op_type}_{names[0]}", **attributes))
    return names[0] if outputs == 1 else names

  def shape(self, dims):
    """int64[len(dims)] tensor of a shape; symbolic dimensions must be the batch."""
    if all(isinstance(d, int) for d in dims):
      return np.asarray(dims, np.int64)
    if any(not isinstance(d, int) and str(d) != "batch" for d in dims):
      raise UserError(f"ONNX export: the shape {dims} depends on the batch size in a way that is not translated; "
                      "export with --batch_size=N.")
    return self.op("Concat", *[np.asarray([d], np.int64) if isinstance(d, int) else self.batch_name for d in dims],
                   axis=0)


def _ints(values):
  return np.asarray(values, np.int64)


def _unary(op_type):
  return lambda g, eqn, x: g.op(op_type, x)


def _binary(op_type):
  return lambda g, eqn, x, y: g.op(op_type, x, y)


def _rsqrt(g, eqn, x):
  return g.op("Reciprocal", g.op("Sqrt", x))


def _square(g, eqn, x):
  return g.op("Mul", x, x)


def _select_n(g, eqn, predicate, *cases):
  if len(cases) != 2 or eqn.invars[0].aval.dtype != np.bool_:
    raise UserError("ONNX export: select_n is translated for a boolean choice between two values only.")
  return g.op("Where", predicate, cases[1], cases[0])


def _reduce(op_type):
  return lambda g, eqn, x: g.op(op_type, x, _ints(eqn.params["axes"]), keepdims=0)


def _reshape(g, eqn, x):
  if eqn.params.get("dimensions") is not None:
    raise UserError("ONNX export: reshape with a dimension order is not translated.")
  sizes = eqn.params["new_sizes"]
  symbolic = [d for d in sizes if not isinstance(d, int)]
  if len(symbolic) > 1:
    raise UserError(f"ONNX export: reshape to {sizes} has several symbolic sizes; export with --batch_size=N.")
  return g.op("Reshape", x, _ints([d if isinstance(d, int) else -1 for d in sizes]))


def _squeeze(g, eqn, x):
  return g.op("Squeeze", x, _ints(eqn.params["dimensions"]))


def _broadcast_in_dim(g, eqn, x):
  shape, kept = eqn.params["shape"], eqn.params["broadcast_dimensions"]
  new_axes = [axis for axis in range(len(shape)) if axis not in kept]
  if new_axes:
    x = g.op("Unsqueeze", x, _ints(new_axes))
  operand = [eqn.invars[0].aval.shape[kept.index(a)] if a in kept else 1 for a in range(len(shape))]
  if list(shape) == operand:
    return x
  # Expand broadcasts both ways: a target of 1 keeps the operand's (possibly symbolic) size.
  return g.op("Expand", x, g.shape([1 if have == want else want for have, want in zip(operand, shape)]))


def _transpose(g, eqn, x):
  return g.op("Transpose", x, perm=list(eqn.params["permutation"]))


def _concatenate(g, eqn, *xs):
  return g.op("Concat", *xs, axis=eqn.params["dimension"])


def _stack(g, eqn, *xs):
  axis = eqn.params["axis"]
  return g.op("Concat", *[g.op("Unsqueeze", x, _ints([axis])) for x in xs], axis=axis)


def _unstack(g, eqn, x):
  """`a, b, c = x` along an axis (JAX 0.12 traces that as one primitive): Split, then Squeeze each."""
  axis, count = eqn.params["axis"], len(eqn.outvars)
  parts = g.op("Split", x, _ints([1] * count), axis=axis, outputs=count)
  return [g.op("Squeeze", part, _ints([axis])) for part in (parts if count > 1 else [parts])]


def _slice(g, eqn, x):
  starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
  strides = eqn.params["strides"] or (1,) * len(starts)
  limits = [d if isinstance(d, int) else _INT64_MAX for d in limits]
  return g.op("Slice", x, _ints(starts), _ints(limits), _ints(range(len(starts))), _ints(strides))


def _pad(g, eqn, x, value):
  config = eqn.params["padding_config"]
  if any(interior for _, _, interior in config):
    raise UserError("ONNX export: interior padding is not translated.")
  return g.op("Pad", x, _ints([lo for lo, _, _ in config] + [hi for _, hi, _ in config]), value)


def _dot_general(g, eqn, lhs, rhs):
  """Einsum with one letter per dimension: batch, then lhs free, then rhs free (lax's order)."""
  ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)) = eqn.params["dimension_numbers"]
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs_letters = [next(letters) for _ in eqn.invars[0].aval.shape]
  rhs_letters = [next(letters) for _ in eqn.invars[1].aval.shape]
  for left, right in zip(lhs_contract + lhs_batch, rhs_contract + rhs_batch):
    rhs_letters[right] = lhs_letters[left]
  output = ([lhs_letters[i] for i in lhs_batch]
            + [c for i, c in enumerate(lhs_letters) if i not in lhs_contract + lhs_batch]
            + [c for i, c in enumerate(rhs_letters) if i not in rhs_contract + rhs_batch])
  return g.op("Einsum", lhs, rhs, equation=f"{''.join(lhs_letters)},{''.join(rhs_letters)}->{''.join(output)}")


def _inverse(permutation):
  return [int(i) for i in np.argsort(permutation)]


def _conv_general_dilated(g, eqn, lhs, rhs):
  """ONNX Conv is channels-first: transpose in and out by lax's dimension numbers."""
  p = eqn.params
  if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
    raise UserError("ONNX export: transposed or batch-grouped convolutions are not translated.")
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  kernel = np.transpose(rhs, rhs_spec) if isinstance(rhs, np.ndarray) else g.op("Transpose", rhs, perm=list(rhs_spec))
  output = g.op("Conv", g.op("Transpose", lhs, perm=list(lhs_spec)), kernel,
                strides=list(p["window_strides"]), dilations=list(p["rhs_dilation"]), group=p["feature_group_count"],
                pads=[lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]])
  return g.op("Transpose", output, perm=_inverse(out_spec))


def _pooling_layout(eqn):
  """(perm to channels-first, kernel, strides, pads) of a reduce_window over the spatial axes."""
  p = eqn.params
  window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
  pooled = [axis for axis in range(len(window)) if (window[axis], strides[axis], padding[axis]) != (1, 1, (0, 0))]
  others = [axis for axis in range(len(window)) if axis not in pooled]
  if len(others) != 2 or any(d != 1 for d in p["base_dilation"] + p["window_dilation"]):
    raise UserError("ONNX export: a pooling window over other than the spatial axes of an NHWC or NCHW tensor, "
                    "or a dilated one, is not translated.")
  perm = others + pooled
  return perm, dict(kernel_shape=[window[a] for a in pooled], strides=[strides[a] for a in pooled],
                    pads=[padding[a][0] for a in pooled] + [padding[a][1] for a in pooled])


def _reduce_window_max(g, eqn, x):
  perm, attributes = _pooling_layout(eqn)
  pooled = g.op("MaxPool", g.op("Transpose", x, perm=perm), **attributes)
  return g.op("Transpose", pooled, perm=_inverse(perm))


def _reduce_window_sum(g, eqn, x):
  perm, attributes = _pooling_layout(eqn)
  mean = g.op("AveragePool", g.op("Transpose", x, perm=perm), count_include_pad=1, **attributes)
  count = np.asarray(np.prod(attributes["kernel_shape"]), eqn.invars[0].aval.dtype)
  return g.op("Transpose", g.op("Mul", mean, count), perm=_inverse(perm))


def _top_k(g, eqn, x):
  axis = eqn.params.get("axis", -1)
  values, indices = g.op("TopK", x, _ints([eqn.params["k"]]), axis=axis, largest=1, sorted=1, outputs=2)
  return values, _convert_index(g, indices, eqn.outvars[1].aval.dtype)


def _convert_index(g, indices, dtype):
  return g.op("Cast", indices, to=g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _sort(g, eqn, keys):
  """Ascending: TopK of the smallest, over the whole axis."""
  axis = eqn.params["dimension"]
  values, _ = g.op("TopK", keys, _ints([eqn.invars[0].aval.shape[axis]]), axis=axis, largest=0, sorted=1, outputs=2)
  return values


def _gather(g, eqn, operand, indices):
  """The gathers indexing produces: a batched take-along-axis (GatherND), a take along one axis
  or, with fixed indices, along several neighbouring axes (Gather on them merged), and a fixed
  slice (Slice + Squeeze)."""
  numbers, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  shape = eqn.invars[0].aval.shape
  index_rank = len(eqn.invars[1].aval.shape) - 1
  indexed, collapsed, batching = tuple(numbers.start_index_map), tuple(numbers.collapsed_slice_dims), \
      tuple(numbers.operand_batching_dims)
  full_elsewhere = all(sizes[a] == (1 if a in batching else shape[a]) for a in range(len(shape)) if a not in indexed)
  if not full_elsewhere or not indexed or (collapsed and collapsed != indexed):
    raise UserError(f"ONNX export: this gather is not translated ({numbers}, slice sizes {sizes}).")
  first, count = indexed[0], len(indexed)
  consecutive = indexed == tuple(range(first, first + count))
  if batching and consecutive and batching == tuple(numbers.start_indices_batching_dims) == tuple(range(first)):
    return g.op("GatherND", operand, _convert_index(g, indices, np.int64), batch_dims=len(batching))
  take_layout = tuple(range(first)) + tuple(range(first + index_rank, len(shape) - count + index_rank))
  if not batching and consecutive and collapsed and tuple(numbers.offset_dims) == take_layout:
    if count == 1:
      return g.op("Gather", operand, g.op("Squeeze", indices, _ints([-1])), axis=first)
    if isinstance(indices, np.ndarray):
      merged = [d if isinstance(d, int) else -1 for d in shape[:first]] + [-1 if first == 0 else int(
          np.prod(shape[first:first + count]))] + list(shape[first + count:])
      flat = np.ravel_multi_index(tuple(np.moveaxis(indices, -1, 0)), shape[first:first + count])
      return g.op("Gather", g.op("Reshape", operand, _ints(merged)), flat.astype(np.int64), axis=first)
  if not batching and index_rank == 0 and isinstance(indices, np.ndarray):
    starts = [int(np.clip(i, 0, shape[a] - sizes[a])) for a, i in zip(indexed, indices)]
    sliced = g.op("Slice", operand, _ints(starts), _ints([s + sizes[a] for a, s in zip(indexed, starts)]),
                  _ints(indexed))
    return g.op("Squeeze", sliced, _ints(collapsed)) if collapsed else sliced
  raise UserError(f"ONNX export: this gather is not translated ({numbers}, slice sizes {sizes}).")


def _scatter(g, eqn, operand, indices, updates):
  """x.at[..., idx, ...].set(u) along one axis: ScatterND on that axis moved to the front."""
  numbers = eqn.params["dimension_numbers"]
  axes = numbers.scatter_dims_to_operand_dims
  if (len(axes) != 1 or tuple(numbers.inserted_window_dims) != tuple(axes) or numbers.operand_batching_dims
      or len(eqn.invars[1].aval.shape) != 2):
    raise UserError(f"ONNX export: this scatter is not translated ({numbers}).")
  axis = axes[0]
  operand_perm = [axis] + [a for a in range(len(eqn.invars[0].aval.shape)) if a != axis]
  updates_rank = len(eqn.invars[2].aval.shape)
  scattered = [a for a in range(updates_rank) if a not in numbers.update_window_dims]
  updates_perm = scattered + list(numbers.update_window_dims)
  result = g.op("ScatterND", g.op("Transpose", operand, perm=operand_perm), _convert_index(g, indices, np.int64),
                g.op("Transpose", updates, perm=updates_perm))
  return g.op("Transpose", result, perm=_inverse(operand_perm))


_TRANSLATIONS = {
    "add": _binary("Add"), "sub": _binary("Sub"), "mul": _binary("Mul"), "div": _binary("Div"),
    "max": _binary("Max"), "pow": _binary("Pow"), "ge": _binary("GreaterOrEqual"), "lt": _binary("Less"),
    "exp": _unary("Exp"), "log": _unary("Log"), "logistic": _unary("Sigmoid"),
    "neg": _unary("Neg"), "abs": _unary("Abs"), "sqrt": _unary("Sqrt"),
    "stop_gradient": _unary("Identity"), "copy": _unary("Identity"),
    "name": _unary("Identity"),  # checkpoint_name: a label for config.model.remat, no computation
    "rsqrt": _rsqrt, "square": _square, "erf": _unary("Erf"), "select_n": _select_n,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reshape": _reshape, "squeeze": _squeeze, "broadcast_in_dim": _broadcast_in_dim, "transpose": _transpose,
    "concatenate": _concatenate, "stack": _stack, "unstack": _unstack, "slice": _slice, "pad": _pad,
    "dot_general": _dot_general, "conv_general_dilated": _conv_general_dilated,
    "reduce_window_max": _reduce_window_max, "reduce_window_sum": _reduce_window_sum,
    "top_k": _top_k, "sort": _sort, "gather": _gather, "scatter": _scatter,
}


def _inner_jaxpr(eqn, values):
  """What a call-like equation (jit, custom_jvp_call, …) runs, or lax.platform_dependent's default branch
  (the same on any exporting machine), as (jaxpr, consts, args); or None."""
  platforms = eqn.params.get("branches_platforms") if eqn.primitive.name == "cond" else None
  if platforms and None in platforms:
    branch = eqn.params["branches"][platforms.index(None)]
    return branch.jaxpr, branch.consts, values[1:]
  for key in ("jaxpr", "call_jaxpr"):
    body = eqn.params.get(key)
    if isinstance(body, jex.core.ClosedJaxpr):
      return body.jaxpr, body.consts, values
    if isinstance(body, jex.core.Jaxpr):
      return body, (), values
  return None


def _is_static(aval):
  return all(isinstance(d, int) for d in aval.shape)


def _evaluate(eqn, values):
  outputs = eqn.primitive.bind(*[jnp.asarray(v) for v in values], **eqn.params)
  return [np.asarray(x) for x in (outputs if eqn.primitive.multiple_results else [outputs])]


def _translate_equation(g, eqn, values):
  if all(isinstance(v, np.ndarray) for v in values) and all(_is_static(v.aval) for v in eqn.outvars):
    return _evaluate(eqn, values)
  translation = _TRANSLATIONS.get(eqn.primitive.name)
  if translation is None:
    raise UserError(f"ONNX export: the JAX primitive `{eqn.primitive.name}` has no ONNX translation in "
                    "fer_jax.onnx_export; export with --format=stablehlo instead.")
  outputs = translation(g, eqn, *values)
  return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _translate(g, jaxpr, consts, args):
  env = {}

  def read(var):
    return np.asarray(var.val, var.aval.dtype) if isinstance(var, jex.core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, [np.asarray(c) for c in consts]))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    inner = _inner_jaxpr(eqn, values)
    outputs = _translate(g, *inner) if inner else _translate_equation(g, eqn, values)
    env.update(zip(eqn.outvars, outputs))
  return [read(v) for v in jaxpr.outvars]


def to_onnx(function, images: jax.ShapeDtypeStruct, output_names, name="fer_jax"):
  """ONNX ModelProto of `function(images)` (a pytree of arrays, flattened in `output_names`'
  order); `images.shape[0]` may be the symbolic dimension "batch"."""
  onnx = _import_onnx()
  closed = jax.make_jaxpr(function)(images)
  symbolic_batch = not isinstance(images.shape[0], int)
  g = _Graph(onnx, symbolic_batch)
  outputs = _translate(g, closed.jaxpr, closed.consts, ["images"])
  if len(outputs) != len(output_names):
    raise ValueError(f"{len(outputs)} outputs for the names {output_names}")
  tensor_dtype = onnx.helper.np_dtype_to_tensor_dtype
  graph_outputs = []
  for output_name, value, var in zip(output_names, outputs, closed.jaxpr.outvars):
    g.nodes.append(onnx.helper.make_node("Identity", [g.tensor(value)], [output_name], name=output_name))
    shape = ["batch" if not isinstance(d, int) else d for d in var.aval.shape]
    graph_outputs.append(onnx.helper.make_tensor_value_info(output_name, tensor_dtype(var.aval.dtype), shape))
  image_shape = ["batch" if symbolic_batch else images.shape[0], *images.shape[1:]]
  graph = onnx.helper.make_graph(
      g.nodes, name, [onnx.helper.make_tensor_value_info("images", tensor_dtype(images.dtype), image_shape)],
      graph_outputs, g.initializers)
  opsets = [onnx.helper.make_opsetid("", OPSET)]
  model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fer_jax")
  # make_model stamps the installed onnx's IR version, which older ONNX Runtimes refuse ("Unsupported model IR
  # version"); the opset's own IR version loads in every runtime that has the opset.
  model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
  onnx.checker.check_model(model, full_check=True)
  return model
