"""LHC-Net: ResNet34v2 with five local multi-head channel self-attention modules (docs/methods/lhcnet.md §1).

Follows the official Keras code:
  * an LHC module adds channel-to-channel attention to the residual stream X (B×R×R×C):
    query = 3×3 average pool (padding not counted), key = 3×3 max pool, value = 3×3 average pool
    of a 3×3 convolution (with bias); the R² positions, row-major, split into h contiguous
    bands (the heads); one Dense P→E per head projects both query and key; the C×C scores
    S = q kᵀ are divided by E^(c + sigmoid(mean_l S · W_p + b_p)), W_p one C×C Dense per module
    shared by the heads; softmax over key channels; output X + A·V, without projection;
  * the modules sit after the stem's max-pool and after the last unit of each stage;
  * LHC-NetC multiplies each module's attention by 1 + tanh(w), one scalar w per module;
  * head: GAP → Dense 4096 → ReLU → Dropout 0.4 → Dense 1024 → ReLU → Dropout 0.4 → Dense 7,
    Keras initialisation (Glorot-uniform kernels, zero biases);
  * loss: cross-entropy of the softmax.

Parameter tree (a converter from the official TF checkpoint is a key map plus one stacking
rule): `backbone` (resnet_v2.ResNetV2 names), `lhc1`…`lhc5` with `qk_kernel` (h, P, E) and
`qk_bias` (h, E) = the per-head `Wqk/j` kernels and biases stacked over j, `scale_dense` = `Wp`,
`value_conv` = `Wv`, `controller` = `controllerN/w`; `head/fc1…fc3` = `fc1…fc3`. With
`use_lhc=False` the tree is `backbone` + `head` only (the official step-A model), a subset of the
LHC-Net tree, so LHC-Net can start from its checkpoint.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.errors import ConfigError
from fer_jax.models import Method, fast_ops, from_config, layers
from fer_jax.models.backbones import resnet_v2


# Keras Dense/Conv2D default.
glorot_uniform = nn.initializers.glorot_uniform()
# One Glorot-uniform P×E kernel per head, stacked on axis 0.
head_glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1,
                                                       batch_axis=(0,))


def band_shape(height: int, width: int, num_heads: int) -> tuple[int, ...]:
  """The shape of one of h contiguous row-major bands of the positions: (rows, width) where h divides the
  height, else (positions,)."""
  if height % num_heads == 0:
    return (height // num_heads, width)
  return (height * width // num_heads,)


def to_bands(x, num_heads: int):
  """B×H×W×C → B×h×(band)×C, the positions cut into h contiguous row-major bands (a reshape)."""
  batch, height, width, channels = x.shape
  return x.reshape(batch, num_heads, *band_shape(height, width, num_heads), channels)


class LHCModule(nn.Module):
  """Local multi-head channel self-attention, added to its input."""
  num_heads: int
  embed_dim: int
  pool_size: int = 3
  kernel_size: int = 3
  norm_c: float = 1.0
  controller_init: Optional[float] = None   # LHC-NetC: gain 1 + tanh(w), w starts here
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, height, width, channels = x.shape
    if (height * width) % self.num_heads:
      raise ConfigError(f"An LHC module with {self.num_heads} heads needs its {height}×{width} map's positions to "
                        "split into equal bands: choose config.model.lhc_heads dividing them, or another "
                        "config.input.size (the paper's 224 fits every stage).")
    band = height * width // self.num_heads
    window = (self.pool_size, self.pool_size)
    query = nn.avg_pool(x, window, padding="SAME", count_include_pad=False)
    key = fast_ops.max_pool(x, window, padding="SAME")
    value = fast_ops.Conv(channels, (self.kernel_size, self.kernel_size), padding="SAME", kernel_init=glorot_uniform,
                    dtype=self.dtype, name="value_conv")(x)
    value = nn.avg_pool(value, (3, 3), padding="SAME", count_include_pad=False)

    kernel = self.param("qk_kernel", head_glorot_uniform, (self.num_heads, band, self.embed_dim))
    bias = self.param("qk_bias", nn.initializers.zeros, (self.num_heads, self.embed_dim))
    precise = layers.at_least_float32(self.dtype)
    # Channels stay last and the bands are whole rows where they can be: the products contract each
    # band where it lies, so nothing moves the channels before the positions (on a TPU such moves are
    # copies; docs/performance.md, "LHC-Net's bands, channels last"). Heads are folded into the batch
    # once projected: XLA:CPU reduces an array with a size-1 axis (a module with one head) up to 50×
    # slower (docs/performance.md, "A head axis of size 1"). The products run in the compute dtype, the
    # gate and the softmax in at least float32, as every attention here.
    band_dims = band_shape(height, width, self.num_heads)
    band_kernel = kernel.reshape(self.num_heads, *band_dims, self.embed_dim).astype(self.dtype)
    project = lambda t: (jnp.einsum("bh...c,h...e->bhce", to_bands(t.astype(self.dtype), self.num_heads), band_kernel)
                         + bias.astype(self.dtype)[:, None, :]).reshape(-1, channels, self.embed_dim)
    scores = jnp.einsum("nce,nde->ncd", project(query), project(key)).astype(precise)
    gate = nn.sigmoid(nn.Dense(channels, kernel_init=glorot_uniform, name="scale_dense")(
        jnp.mean(scores, axis=-1)))
    attention = nn.softmax(scores / jnp.power(float(self.embed_dim), self.norm_c + gate[..., None]), axis=-1)
    # XLA:CPU would fuse the softmax into the product with the value, one YNNPACK fusion twice as slow.
    attention = fast_ops.stored_on_cpu(attention.astype(self.dtype))
    value_bands = to_bands(value.astype(self.dtype), self.num_heads).reshape(-1, *band_dims, channels)
    out = jnp.einsum("ncd,n...d->n...c", attention, value_bands).reshape(x.shape)
    if self.controller_init is not None:
      w = self.param("controller", nn.initializers.constant(self.controller_init), ())
      out = out * (1.0 + jnp.tanh(w))
    return x + out.astype(x.dtype)


class Head(nn.Module):
  """GAP → (Dense → ReLU → Dropout) per hidden width → Dense to the classes."""
  num_classes: int
  widths: Sequence[int] = (4096, 1024)
  dropout_rate: float = 0.4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = jnp.mean(x, axis=(1, 2))
    for index, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, kernel_init=glorot_uniform, dtype=self.dtype, name=f"fc{index + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=self.dtype,
                    name=f"fc{len(self.widths) + 1}")(x)


class LHCNet(nn.Module):
  """ResNet34v2 + LHC modules at the five tap points + MLP head.

  `use_lhc=False` gives the plain ResNet34v2 classifier of the official step A;
  `controller` adds LHC-NetC's gains, one per module, starting at `controller_init`; `freeze_batch_norm` runs every
  BatchNorm on its moving statistics even in training (Keras frozen layers, step C).
  """
  num_classes: int = 7
  use_lhc: bool = True
  lhc_heads: Sequence[int] = (8, 8, 7, 7, 1)
  lhc_embed_dims: Sequence[int] = (196, 196, 56, 14, 25)
  pool_size: int = 3
  kernel_size: int = 3
  norm_c: float = 1.0
  controller: bool = False
  controller_init: Sequence[float] = (0.0, 0.0, 0.0, -1.0, -0.5)
  freeze_batch_norm: bool = False
  head_widths: Sequence[int] = (4096, 1024)
  dropout_rate: float = 0.4
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    insertions = {}
    if self.use_lhc:  # the per-module lists have one entry per tap point (config_problems)
      controller_init = self.controller_init if self.controller else (None,) * len(resnet_v2.TAP_POINTS)
      for index, point in enumerate(resnet_v2.TAP_POINTS):
        insertions[point] = LHCModule(self.lhc_heads[index], self.lhc_embed_dims[index], self.pool_size,
                                      self.kernel_size, self.norm_c, controller_init[index], self.dtype,
                                      name=f"lhc{index + 1}")
    features = resnet_v2.ResNet34V2(dtype=self.dtype, remat=self.remat, name="backbone")(
        images, train and not self.freeze_batch_norm, insertions)["output"]
    logits = Head(self.num_classes, self.head_widths, self.dropout_rate, self.dtype, name="head")(features, train)
    return {"logits": logits.astype(layers.at_least_float32(self.dtype))}


def config_problems(config) -> list[str]:
  """The per-module lists of config.model, checked before any work (fer_jax.validation)."""
  modules = len(resnet_v2.TAP_POINTS)
  lists = {key: tuple(config.model.get(key, getattr(LHCNet, key)))
           for key in ("lhc_heads", "lhc_embed_dims", "controller_init")}
  problems = [f"config.model.{key}={values} needs one entry per LHC module: give {modules} (after the stem and "
              "after each of the 4 stages)." for key, values in lists.items() if len(values) != modules]
  problems += [f"config.model.{key}={lists[key]}: every entry must be at least 1."
               for key in ("lhc_heads", "lhc_embed_dims") if any(value < 1 for value in lists[key])]
  return problems


METHOD = Method(build=functools.partial(from_config, LHCNet), loss_keys=(), config_problems=config_problems)
