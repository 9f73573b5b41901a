"""Speed candidates swapped into the library for one compile for a GPU or a TPU, without either.

  python benchmarks/compile_candidates.py --variant=NAME --platform=tpu|gpu [CONFIG ...] [--devices=1]
      [--dtype=bfloat16] [--output=FILE.jsonl] [--hlo_dir=DIR]

Each variant replaces one piece of fer_jax in this process only, then the paper configs' train steps
are compiled and summarised as benchmarks/tpu_compile.py or gpu_compile.py do (their JSON lines, with
"variant" added); the same command with --variant=none gives the library's own figures beside them.
The variants (BENCHMARKS.md's "Compiled for a GPU" and "Compiled for a TPU v5e" say what each gave):
  none                           the library as it is
  max_pool_tap_gradient          fast_ops.max_pool's gradient by taps (CUDA's, without `stored`) on TPUs too
  batch_norm_shifted_one_pass    BatchNorm statistics in one pass shifted by each channel's first value
  batch_norm_one_pass            E[x²] − E[x]² (Flax's default; inaccurate when a mean is large)
  attention_tokens_before_heads  the ViT attention's products on [B, N, heads, d] sliced from one qkv product
  attention_cudnn_flash          the ViT attention as cuDNN's flash attention (GPUs, bf16 only)
  attention_tpu_form             the ViT attention as TPUs take it (q, k, v products of their own) everywhere
  batch_norm_one_round_on_tpu    BatchNorm's statistics in one collective round on TPUs too (GPUs' and
                                 CPUs' batch_norm.sharded_batch_moments; TPUs keep two rounds)
  optimizer_state_sharded        the optimiser's state split over the data axis (ZeRO stage 1), each leaf
                                 along its first axis that the device count divides; parameters replicated
  conv_input_channels_padded     the RGB stems' convolutions on their input and kernel zero-padded from 3
                                 to 8 input channels (exact: cuDNN runs 3 channels in a slow kernel)
  conv_stem_space_to_depth       the stride-2 RGB stems (ResNets' 7×7) as stride-1 convolutions on 2×2
                                 space-to-depth blocks, 16 channels with zeros (exact; the others padded)
  conv_stem_patches_product      the RGB stems' convolutions as one matrix product of their input's patches
                                 (slices concatenated) with the kernel
  max_pool_xla_gradient          fast_ops.max_pool's gradient as XLA's own (select-and-scatter) on CUDA too
  max_pool_tap_gradient_stored   the CPU's tap gradient, its tap map and arriving gradient `stored`, on
                                 CUDA too
  max_pool_gradient_input_phases the tap gradient built on the input's own phases, interleaved by a
                                 transpose (no padded grid to crop; CPUs and CUDA GPUs)
  max_pool_forward_by_taps       fast_ops.max_pool's forward pass as its taps' elementwise maximum
  max_pool_winner_from_forward   the forward pass keeps each window's winning tap (one byte an output)
                                 for the gradient on the input's phases instead of x, on every platform
Variants joined by "+" are swapped in together (conv_input_channels_padded+max_pool_xla_gradient).
benchmarks/run_candidates.py times the variants that change the library's train step on this
machine's devices.
"""

import contextlib
import functools
import json
import os
import sys

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
import einops  # noqa: E402  pylint: disable=wrong-import-position
import flax.linen as nn  # noqa: E402  pylint: disable=wrong-import-position
import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
from jax import lax  # noqa: E402  pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batch_norm_variance  # noqa: E402  pylint: disable=wrong-import-position
import gpu_compile  # noqa: E402  pylint: disable=wrong-import-position
import tpu_compile  # noqa: E402  pylint: disable=wrong-import-position
from common import compiled_train_steps, paper_configs_parser, write_rows  # noqa: E402  pylint: disable=wrong-import-position

from fer_jax import benchmark  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax.models import batch_norm, fast_ops, layers  # noqa: E402  pylint: disable=wrong-import-position
from fer_jax.models.backbones import vit  # noqa: E402  pylint: disable=wrong-import-position


def _batch_norm_form(name: str):
  def swap():
    form = batch_norm_variance.FORMS[name]
    batch_norm.batch_statistics = lambda x, axes: tuple(
        batch_norm.checkpoint_name(value, batch_norm.BATCH_STATISTICS) for value in form(x, axes))
  return swap


class _TokensBeforeHeads(vit.Attention):
  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    qkv = vit.dense(3 * width, self.dtype, "qkv", use_bias=False)(x)
    q, k, v = einops.rearrange(qkv, "b n (qkv h d) -> qkv b n h d", qkv=3, h=self.num_heads)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (width // self.num_heads)**-0.5
    weights = jax.nn.softmax(logits.astype(layers.at_least_float32(self.dtype)), axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, width)
    return vit.dense(width, self.dtype, "proj")(y), logits[:, :, 0, :]


def _attention_tokens_before_heads():
  vit.Attention = _TokensBeforeHeads


def _attention_tpu_form():
  """TPUs' attention form on every platform; XLA's GPU compiler (without autotuning) fails on it
  ("Couldn't find output tile sizes")."""
  vit._attend_heads_first = vit._attend_tokens_before_heads  # pylint: disable=protected-access


class _CudnnFlashAttention(vit.Attention):
  """Softmax(q·kᵀ)·v in one cuDNN flash-attention call a direction, the tokens padded to an even count
  (JAX 0.10's cuDNN path takes no odd one) and masked by length; the CLS row of the logits, which
  attentive token pooling ranks by, as a product of its own."""
  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = vit.dense(3 * width, self.dtype, "qkv", use_bias=False)(x)
    q, k, v = einops.rearrange(qkv, "b n (qkv h d) -> qkv b n h d", qkv=3, h=self.num_heads)
    padded = [jnp.pad(t, ((0, 0), (0, tokens % 2), (0, 0), (0, 0))) for t in (q, k, v)]
    y = jax.nn.dot_product_attention(*padded, scale=head_dim**-0.5, implementation="cudnn",
                                     key_value_seq_lengths=jnp.full((batch,), tokens, jnp.int32))[:, :tokens]
    cls_logits = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k) * head_dim**-0.5
    return vit.dense(width, self.dtype, "proj")(y.reshape(batch, tokens, width)), cls_logits


def _attention_cudnn_flash():
  vit.Attention = _CudnnFlashAttention


def _batch_norm_one_round_on_tpu():
  batch_norm.TWO_ROUND_PLATFORMS = ()


def _split_over_data(leaf, mesh) -> NamedSharding:
  for axis, size in enumerate(leaf.shape):
    if size % mesh.shape["data"] == 0:
      return NamedSharding(mesh, P(*[None] * axis, "data"))
  return NamedSharding(mesh, P())


def _optimizer_state_sharded():
  replicated_step = benchmark.abstract_train_step

  def abstract_train_step(config, mesh=None):
    step, state = replicated_step(config, mesh)
    mesh = state["step"].sharding.mesh
    shardings = {**jax.tree.map(lambda leaf: leaf.sharding, state),
                 "opt_state": jax.tree.map(lambda leaf: _split_over_data(leaf, mesh), state["opt_state"])}
    state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                         state, shardings)
    step = jax.jit(step.__wrapped__, in_shardings=(shardings, NamedSharding(mesh, P("data"))),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
    return step, state
  benchmark.abstract_train_step = abstract_train_step


def _channels_padded(lhs, rhs, channels: int):
  """NHWC input and HWIO kernel with zero input channels added up to `channels`."""
  extra = channels - rhs.shape[2]
  return jnp.pad(lhs, ((0, 0),) * 3 + ((0, extra),)), jnp.pad(rhs, ((0, 0),) * 2 + ((0, extra), (0, 0)))


def _space_to_depth_convolution(lhs, rhs, padding, conv, channels: int, precision=None):
  """A stride-2 convolution as a stride-1 one on 2×2 blocks of the padded input (4× the channels,
  zero-padded to `channels`) with the kernel regrouped the same way: the same products."""
  (top, bottom), (left, right) = padding
  height, width = lhs.shape[1] + top + bottom, lhs.shape[2] + left + right
  out_height, out_width = (height - rhs.shape[0]) // 2 + 1, (width - rhs.shape[1]) // 2 + 1
  lhs = jnp.pad(lhs, ((0, 0), (top, bottom + height % 2), (left, right + width % 2), (0, 0)))
  rhs = jnp.pad(rhs, ((0, rhs.shape[0] % 2), (0, rhs.shape[1] % 2), (0, 0), (0, 0)))
  lhs = einops.rearrange(lhs, "n (h a) (w b) c -> n h w (a b c)", a=2, b=2)
  rhs = einops.rearrange(rhs, "(h a) (w b) i o -> h w (a b i) o", a=2, b=2)
  output = conv(*_channels_padded(lhs, rhs, channels), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=precision)
  return output[:, :out_height, :out_width]


def _patches_product(lhs, rhs, window_strides, padding, precision=None):
  """A convolution as one matrix product of the input's patches (each output position's window, taps
  in the kernel's (row, column, channel) order, built from strided slices) with the kernel as a matrix."""
  rows, columns, channels, features = rhs.shape
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out_height, out_width = ((size - window) // stride + 1 for size, window, stride
                           in zip(padded.shape[1:3], (rows, columns), window_strides))
  taps = [lax.slice(padded, (0, i, j, 0), (padded.shape[0], i + window_strides[0] * (out_height - 1) + 1,
                                           j + window_strides[1] * (out_width - 1) + 1, channels), (1, *window_strides, 1))
          for i in range(rows) for j in range(columns)]
  return jnp.dot(jnp.concatenate(taps, axis=-1), rhs.reshape(rows * columns * channels, features), precision=precision)


def _rgb_stems(form: str):
  """The RGB stems' convolutions (3 input channels): on input and kernel zero-padded to 8 channels
  ("padded"); strided by 2, `_space_to_depth_convolution` on 16 ("space_to_depth", the others padded);
  or as `_patches_product` ("patches"): cuDNN runs 3 channels in a slow kernel."""
  def swap():
    library_conv = fast_ops.conv_general_dilated

    def conv_general_dilated(lhs, rhs, window_strides, padding, **options):
      if rhs.ndim != 4 or rhs.shape[2] != 3:  # HWIO: not an RGB stem
        return library_conv(lhs, rhs, window_strides, padding, **options)
      plain = (options.get("feature_group_count", 1) == 1 and not isinstance(padding, str)
               and all(options.get(name) in (None, (1, 1)) for name in ("lhs_dilation", "rhs_dilation")))
      if form == "patches" and plain:
        return _patches_product(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), options.get("precision"))
      if form == "space_to_depth" and plain and tuple(window_strides) == (2, 2):
        return _space_to_depth_convolution(lhs, rhs, padding, library_conv, 16, options.get("precision"))
      return library_conv(*_channels_padded(lhs, rhs, 8), window_strides, padding, **options)
    fast_ops.Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
  return swap


def _max_pool_gradient(cuda: str, default: str):
  """fast_ops.max_pool's gradient on CUDA and on the other non-CPU platforms (fast_ops.MAX_POOL_GRADIENTS)."""
  def swap():
    fast_ops.MAX_POOL_GRADIENTS = {**fast_ops.MAX_POOL_GRADIENTS, "cuda": cuda, "default": default}
  return swap


def _max_pool_gradient_by_input_phases(x, output_gradient, window, strides, padding, materialise=lambda value: value):
  """fast_ops.max_pool's gradient by taps, each phase of the input itself (rows s·m + a, columns s·n + b)
  a sum of its taps' shares shifted, then the phases interleaved by a transpose: no padded grid to crop,
  fewer instructions a thread in XLA's GPU kernels. Sides that the strides do not divide: the library's."""
  if x.shape[1] % strides[0] or x.shape[2] % strides[1]:
    return library_max_pool_gradient(x, output_gradient, window, strides, padding, materialise)
  taps, winner = fast_ops.tap_winners(fast_ops.padded_for_pool(x, padding), output_gradient.shape, window, strides)
  return _gradient_on_input_phases(taps, materialise(winner), materialise(output_gradient), x.shape[1:3],
                                   strides, padding)


def _gradient_on_input_phases(taps, winner, output_gradient, input_size, strides, padding):
  """∂L/∂x of a max pool from each window's winning tap (`winner`, an index into `taps`): each phase of
  x a sum of its taps' shares shifted, the phases interleaved."""
  batch, out_height, out_width, channels = output_gradient.shape
  rows, columns = input_size[0] // strides[0], input_size[1] // strides[1]
  zero = jnp.zeros((), output_gradient.dtype)
  phases = [[jnp.zeros((batch, rows, columns, channels), output_gradient.dtype)] * strides[1]
            for _ in range(strides[0])]
  for index, (i, j) in enumerate(taps):
    a, b = (i - padding[0][0]) % strides[0], (j - padding[1][0]) % strides[1]
    down, right = (a + padding[0][0] - i) // strides[0], (b + padding[1][0] - j) // strides[1]  # share row m + down
    share = jnp.where(winner == index, output_gradient, zero)
    phases[a][b] = phases[a][b] + lax.pad(share, zero, [(0, 0, 0), (-down, rows - out_height + down, 0),
                                                        (-right, columns - out_width + right, 0), (0, 0, 0)])
  interleaved = jnp.stack([jnp.stack(row) for row in phases]).transpose(2, 3, 0, 4, 1, 5)
  return interleaved.reshape(batch, *input_size, channels)


def _tap_windows_and_winner(x, window, strides, padding):
  """A max pool's taps, its output (the taps' elementwise maximum, NaN as lax.max carries it) and
  each window's first winning tap."""
  padded = fast_ops.padded_for_pool(x, padding)
  output_shape = jax.eval_shape(lambda x: fast_ops._reduce_window_max(x, window, strides, padding), x).shape  # pylint: disable=protected-access
  windows = [fast_ops._tap_window(padded, i, j, *output_shape[1:3], strides)  # pylint: disable=protected-access
             for i in range(window[0]) for j in range(window[1])]
  taps, winner = fast_ops.tap_winners(padded, output_shape, window, strides)
  return taps, functools.reduce(jnp.maximum, windows), winner


def _max_pool_forward_by_taps():
  """The max pool's forward pass as the taps' elementwise maximum (no reduce-window); gradient the library's."""
  pool = jax.custom_vjp(lambda x, window, strides, padding: _tap_windows_and_winner(x, window, strides, padding)[1],
                        nondiff_argnums=(1, 2, 3))
  pool.defvjp(lambda x, *static: (pool(x, *static), x), fast_ops._max_pool_backward)  # pylint: disable=protected-access
  fast_ops._max_pool = pool  # pylint: disable=protected-access


def _pool_with_winner(x, window, strides, padding, input_size):
  del input_size
  return _tap_windows_and_winner(x, window, strides, padding)[1]


def _pool_with_winner_forward(x, window, strides, padding, input_size):
  del input_size
  _, maxima, winner = _tap_windows_and_winner(x, window, strides, padding)
  return maxima, winner


def _pool_with_winner_backward(window, strides, padding, input_size, winner, output_gradient):
  taps = [(i, j) for i in range(window[0]) for j in range(window[1])]
  return _gradient_on_input_phases(taps, winner, output_gradient, input_size, strides, padding),


_pool_keeping_winner = jax.custom_vjp(_pool_with_winner, nondiff_argnums=(1, 2, 3, 4))
_pool_keeping_winner.defvjp(_pool_with_winner_forward, _pool_with_winner_backward)


def _max_pool_winner_from_forward():
  """The forward pass finds each window's winning tap beside its maximum and keeps that map (one byte
  an output) for the gradient, instead of x: no taps compared again, x's producers not recomputed
  there; the gradient on x's phases (`_gradient_on_input_phases`), on every platform."""
  def pool(x, window, strides, padding):
    if x.shape[1] % strides[0] or x.shape[2] % strides[1]:
      raise NotImplementedError(f"max_pool_winner_from_forward: sides {x.shape[1:3]} not divided by {strides}")
    return _pool_keeping_winner(x, window, strides, padding, x.shape[1:3])
  fast_ops._max_pool = pool  # pylint: disable=protected-access


library_max_pool_gradient = fast_ops._max_pool_gradient_by_taps  # pylint: disable=protected-access


def _max_pool_input_phases():
  fast_ops._max_pool_gradient_by_taps = _max_pool_gradient_by_input_phases  # pylint: disable=protected-access


VARIANTS = {"none": lambda: None, "max_pool_tap_gradient": _max_pool_gradient(cuda="taps", default="taps"),
            "batch_norm_shifted_one_pass": _batch_norm_form("shifted_one_pass"),
            "batch_norm_one_pass": _batch_norm_form("one_pass"),
            "attention_tokens_before_heads": _attention_tokens_before_heads,
            "attention_cudnn_flash": _attention_cudnn_flash,
            "attention_tpu_form": _attention_tpu_form,
            "batch_norm_one_round_on_tpu": _batch_norm_one_round_on_tpu,
            "optimizer_state_sharded": _optimizer_state_sharded,
            "conv_input_channels_padded": _rgb_stems("padded"),
            "conv_stem_space_to_depth": _rgb_stems("space_to_depth"),
            "conv_stem_patches_product": _rgb_stems("patches"),
            "max_pool_xla_gradient": _max_pool_gradient(cuda="xla", default="xla"),
            "max_pool_tap_gradient_stored": _max_pool_gradient(cuda="stored_taps", default="xla"),
            "max_pool_gradient_input_phases": _max_pool_input_phases,
            "max_pool_forward_by_taps": _max_pool_forward_by_taps,
            "max_pool_winner_from_forward": _max_pool_winner_from_forward}
COMPILE_ONLY = {"optimizer_state_sharded"}  # swaps the step benchmark.abstract_train_step builds, not training's


def swap_in(variant: str) -> None:
  """Swap in a variant, or several joined by "+"."""
  for name in variant.split("+"):
    VARIANTS[name]()


def unknown_variants(variants: list[str]) -> list[str]:
  return [variant for variant in variants if not all(name in VARIANTS for name in variant.split("+"))]


def main() -> None:
  parser = paper_configs_parser(__doc__.split("\n")[0])
  parser.add_argument("--variant", required=True, help=f"one of {sorted(VARIANTS)}, or several joined by +")
  parser.add_argument("--platform", required=True, choices=("gpu", "tpu"))
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--hlo_dir", default="", help="write each compiled step's HLO text here")
  args = parser.parse_args()
  if unknown_variants([args.variant]):
    parser.error(f"unknown variant {args.variant}; choose from {sorted(VARIANTS)}, or several joined by +")
  swap_in(args.variant)
  with contextlib.ExitStack() as stack:
    if args.platform == "tpu":
      devices = tpu_compile.tpu_devices("v5e:2x4" if args.devices > 4 else "v5e:2x2", args.devices)
      summarise = tpu_compile.summarise
    else:
      ptx_dir = stack.enter_context(gpu_compile.dumped_ptx())
      devices = gpu_compile.gpu_devices(gpu_compile.DEFAULT_TARGET, args.devices)
      bandwidth = gpu_compile.memory_bandwidth(gpu_compile.DEFAULT_TARGET)
      rate = gpu_compile.issue_rate(gpu_compile.DEFAULT_TARGET)
      summarise = lambda *summary_args: gpu_compile.summarise(  # noqa: E731
          *summary_args, bandwidth, gpu_compile.take_ptx(ptx_dir), rate)
    for compiled in compiled_train_steps(args.configs, args.dtype, args.batch_size, devices, args.hlo_dir,
                                         f"{args.platform}.{args.variant}"):
      row = {**summarise(*compiled, devices), "variant": args.variant}
      write_rows([row], args.output, json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
