"""SCAN-CCI: ResNet-50 to layer3, SCAN attention over 25 local regions, CCI quadrant heads.

Follows the official code (docs/methods/scan_cci.md §4): the SCAN unit is conv3×3 → per-channel PReLU → BN
→ sigmoid, applied to every region on its own (zero padding at region borders); the local
features are max-pooled across regions, joined with the globally attended feature,
L2-normalised and classified; the CCI branch gates layer3 channels with ECA and classifies each
7×7 quadrant with one shared MLP. The prediction is the plain mean of the 5 logit vectors.

By default the bottom strips of the region split reproduce the official unfold/permute slip
(region j is row 24 + j folded into 4×6); `bottom_strip_quirk=False` cuts true 4×6 blocks.
"""

import functools
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fer_jax import attention_maps
from fer_jax.errors import ConfigError
from fer_jax.models import Method, batch_norm, cross_entropy, fast_ops, from_config, layers
from fer_jax.models.backbones import resnet

REGION_SIZE = 6

def region_index_grids(map_size: int, region_size: int = REGION_SIZE,
                       bottom_strip_quirk: bool = True) -> list[np.ndarray]:
  """Flat positions (row·map_size + col) of each local region, as (height, width) grids.

  Official order: region_size² tiles in raster order, then the right strips top to bottom,
  the bottom strips left to right, and the corner. At map_size 28 that is 16 × 6×6, 4 × 6×4,
  4 × 4×6 and 1 × 4×4. With the quirk, bottom strip j is instead row `tiled + j` folded into
  (tiles, region_size), as the official unfold/permute does.
  """
  positions = np.arange(map_size * map_size).reshape(map_size, map_size)
  tiled = (map_size // region_size) * region_size
  starts = range(0, tiled, region_size)
  grids = [positions[r:r + region_size, c:c + region_size] for r in starts for c in starts]
  if tiled < map_size:
    grids += [positions[r:r + region_size, tiled:] for r in starts]
    bottom = positions[tiled:, :tiled]
    if bottom_strip_quirk:
      grids += [row.reshape(-1, region_size) for row in bottom if row.size]
    else:
      grids += [bottom[:, c:c + region_size] for c in starts]
    grids.append(positions[tiled:, tiled:])
  return grids


def region_groups(grids: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
  """The regions of each shape stacked: (their indices in `grids`, their grids [n, height, width])."""
  shapes = list(dict.fromkeys(grid.shape for grid in grids))
  return [(np.array([i for i, grid in enumerate(grids) if grid.shape == shape]),
           np.stack([grid for grid in grids if grid.shape == shape])) for shape in shapes]


class ConvKernel(nn.Module):
  """The kernel that nn.Conv(channels, (3, 3), use_bias=False) named as this module creates."""
  channels: int

  @nn.compact
  def __call__(self):
    return self.param("kernel", layers.torch_kernel_init, (3, 3, self.channels, self.channels), jnp.float32)


class PReLUSlope(nn.Module):
  """The slope that layers.PReLU named as this module creates."""
  channels: int

  @nn.compact
  def __call__(self):
    return layers.prelu_slope(self, self.channels)


class RegionBatchNorm(nn.Module):
  """BatchNorm (batch_norm.py's variables and formulas, PyTorch's momentum 0.1 and eps
  1e-5) of a unit called once on each of `regions` regions in turn, given their batch statistics.

  `statistics` holds, per group of regions, (their places in the call order, mean and biased
  variance [n, C], elements per region); returns per group what normalises its regions, [n, C]
  each: the mean, the multiplier rsqrt(var + eps)·scale and the bias, from each region's own
  statistics in training and the running ones in inference. Training moves the running statistics
  as the calls in order would, r ← m·r + (1 − m)·s_i, that is to mⁿ·r + Σ_i (1 − m)·m^(n−1−i)·s_i.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, statistics, regions: int, train: bool):
    features = statistics[0][1].shape[-1]
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if train and not self.is_initializing():
      def folded(values):
        weights = [(1 - self.momentum) * self.momentum**(regions - 1.0 - places) for places, _ in values]
        return sum(jnp.sum(jnp.asarray(weight, value.dtype)[:, None] * value, axis=0)
                   for weight, (_, value) in zip(weights, values))
      decay = self.momentum**regions
      running_mean.value = decay * running_mean.value + folded(
          [(places, mean) for places, mean, _, _ in statistics])
      running_var.value = decay * running_var.value + folded(
          [(places, batch_norm.unbiased_variance(var, count)) for places, _, var, count in statistics])
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    normalisations = []
    for _, mean, var, _ in statistics:
      if not train:
        mean, var = (jnp.broadcast_to(running.value, mean.shape) for running in (running_mean, running_var))
      normalisations.append((mean, lax.rsqrt(var + self.epsilon) * scale, jnp.broadcast_to(bias, mean.shape)))
    return normalisations


class SCANUnit(nn.Module):
  """One SCAN unit's variables under the names of its layers: conv (3×3 kernel), prelu, bn.

  `scan` applies units: M = sigmoid(BN(PReLU(conv3×3(x)))), a mask per channel and position.
  """
  channels: int

  def setup(self):
    self.conv = ConvKernel(self.channels)
    self.prelu = PReLUSlope(self.channels)
    self.bn = RegionBatchNorm()

  def weights(self):
    return self.conv(), self.prelu()

  def normalisation(self, statistics, regions: int, train: bool):
    return self.bn(statistics, regions, train)


def region_conv(x, unit_kernels, dtype):
  """3×3 convolution with zero padding at each region's border of stacked regions [b, n, h, w, C],
  by one kernel (the regions folded into the batch) or one per region.

  Separate kernels take one convolution per region: XLA:CPU runs the grouped convolution that
  vmap makes of them ~10× slower (docs/performance.md).
  """
  conv = functools.partial(fast_ops.conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if len(unit_kernels) == 1:
    x, kernel = nn.dtypes.promote_dtype(x, unit_kernels[0], dtype=dtype)
    return conv(x.reshape(-1, *x.shape[2:]), kernel).reshape(x.shape[:-1] + kernel.shape[-1:])
  return jnp.stack([conv(*nn.dtypes.promote_dtype(x[:, index], kernel, dtype=dtype))
                    for index, kernel in enumerate(unit_kernels)], axis=1)


def regionwise(values):
  """[n, C] per-region values shaped to broadcast over stacked regions [b, n, h, w, C]."""
  return values[:, None, None]


def scan(units: Sequence[SCANUnit], groups, train: bool, dtype) -> list[tuple[Any, Any]]:
  """(x ⊙ M, M) for each group (region indices, stacked regions x [b, n, h, w, C]).

  `units` is one unit for every region or one per region, in region order. Each region is
  convolved on its own and batch-normalised with its own statistics, as a call per region would.
  """
  precise = layers.at_least_float32(dtype)
  unit_kernels, slopes = zip(*(unit.weights() for unit in units))
  shared = len(units) == 1
  activations, statistics = [], []
  for indices, x in groups:
    slope = slopes[0] if shared else regionwise(jnp.stack([slopes[i] for i in indices]))
    y = region_conv(x, unit_kernels if shared else [unit_kernels[i] for i in indices], dtype)
    y = layers.prelu(y, slope)
    if train:
      mean, var = batch_norm.batch_moments(y.astype(precise), (0, 2, 3))  # autodiff differentiates these
    else:  # normalised by the running statistics: these only carry the shape
      mean = var = jnp.zeros((y.shape[1], y.shape[-1]), precise)
    activations.append(y)
    statistics.append((indices, mean, var, y.shape[0] * y.shape[2] * y.shape[3]))
  if shared:
    normalisations = units[0].normalisation(statistics, sum(len(indices) for indices, _ in groups), train)
  else:
    normalisations = []
    for indices, mean, var, count in statistics:
      parts = [units[i].normalisation([(np.zeros(1), mean[k:k + 1], var[k:k + 1], count)], 1, train)[0]
               for k, i in enumerate(indices)]
      normalisations.append([jnp.concatenate(column) for column in zip(*parts)])
  outputs = []
  for (_, x), y, (mean, multiplier, bias) in zip(groups, activations, normalisations):
    mask = nn.sigmoid(((y - regionwise(mean)) * regionwise(multiplier) + regionwise(bias)).astype(dtype))
    outputs.append((x * mask, mask))
  return outputs


def permute_positions(x, order: np.ndarray):
  """x[:, order] for a permutation `order`; its gradient is a gather by the inverse, not a scatter."""
  inverse = np.argsort(order)

  @jax.custom_vjp
  def permute(x):
    return x[:, order]

  permute.defvjp(lambda x: (x[:, order], None), lambda _, gradient: (gradient[:, inverse],))
  return permute(x)


class AttentionBranch(nn.Module):
  """Local SCAN over the regions of the layer2 map (max-pooled), global SCAN, L2-norm, linear.

  Regions of one shape go through the units together (one convolution per shape).
  Returns the logits and, for visualisation, the channel-mean of the global mask and of the
  local masks put back at their positions, both [batch, height, width].
  """
  num_classes: int
  shared_local_units: bool = True
  bottom_strip_quirk: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, train: bool):
    batch, size, _, channels = features.shape
    grids = region_index_grids(size, REGION_SIZE, self.bottom_strip_quirk)
    groups = region_groups(grids)
    # The regions cover every position once: one permutation lays them out group after group.
    stacked_positions = np.concatenate([stacked.ravel() for _, stacked in groups])
    permuted = permute_positions(einops.rearrange(features, "b h w c -> b (h w) c"), stacked_positions)
    starts = np.cumsum([0] + [stacked.size for _, stacked in groups])
    units = ([SCANUnit(channels, name="local_scan")] if self.shared_local_units else
             [SCANUnit(channels, name=f"local_scan_{index}") for index in range(len(grids))])
    stacks = [(indices, permuted[:, start:start + stacked.size].reshape(batch, *stacked.shape, -1))
              for (indices, stacked), start in zip(groups, starts)]
    local_outputs = scan(units, stacks, train, self.dtype)
    precise = layers.at_least_float32(self.dtype)
    pooled = [jnp.mean(masked.astype(precise), axis=(2, 3)) for masked, _ in local_outputs]
    local = jnp.max(jnp.concatenate(pooled, axis=1), axis=1)
    local_mask = jnp.concatenate([jnp.mean(mask.astype(precise), axis=-1).reshape(batch, -1)
                                  for _, mask in local_outputs], axis=1)[:, np.argsort(stacked_positions)]

    global_unit = SCANUnit(channels, name="global_scan")
    (global_masked, global_mask), = scan([global_unit], [(np.zeros(1), features[:, None])], train, self.dtype)
    combined = jnp.concatenate([local, jnp.mean(global_masked[:, 0].astype(precise), axis=(1, 2))], -1)
    combined = combined / jnp.maximum(jnp.linalg.norm(combined, axis=-1, keepdims=True), 1e-12)
    logits = layers.torch_dense(self.num_classes, 2 * channels, "fc", self.dtype)(combined)
    masks = {"global_mask": jnp.mean(global_mask[:, 0].astype(precise), axis=-1),
             "local_mask": local_mask.reshape(batch, size, size)}
    return logits.astype(precise), masks


class ECA(nn.Module):
  """Channel gate: sigmoid of a bias-free 1-D conv (kernel 5, zero pad 2) over the GAP vector."""
  kernel_size: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pooled = jnp.mean(x.astype(layers.at_least_float32(self.dtype)), axis=(1, 2))[..., None]
    pad = (self.kernel_size - 1) // 2
    gate = fast_ops.Conv(1, (self.kernel_size,), padding=((pad, pad),), use_bias=False,
                   kernel_init=layers.torch_kernel_init, dtype=self.dtype, name="conv")(pooled)
    return x * nn.sigmoid(gate[..., 0]).astype(x.dtype)[:, None, None, :]


class CCIBranch(nn.Module):
  """ECA on the layer3 map, then one shared MLP (C → C/4 → K) on each quadrant's GAP vector.

  Quadrants are top-left, top-right, bottom-left, bottom-right; returns [batch, 4, K].
  """
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    features = ECA(dtype=self.dtype, name="eca")(features)
    channels = features.shape[-1]
    hidden = channels // 4
    fc1 = layers.torch_dense(hidden, channels, "fc1", self.dtype)
    fc2 = layers.torch_dense(self.num_classes, hidden, "fc2", self.dtype)
    half_h, half_w = features.shape[1] // 2, features.shape[2] // 2
    precise = layers.at_least_float32(self.dtype)
    logits = []
    for row in range(2):
      for col in range(2):
        quadrant = features[:, row * half_h:(row + 1) * half_h, col * half_w:(col + 1) * half_w]
        logits.append(fc2(nn.relu(fc1(jnp.mean(quadrant.astype(precise), axis=(1, 2))))))
    return jnp.stack(logits, axis=1).astype(precise)


class SCANCCI(nn.Module):
  """Trunk → attention branch on layer2 and CCI branch on layer3; "logits" = mean of the 5 heads."""
  num_classes: int = 7
  shared_local_units: bool = True
  bottom_strip_quirk: bool = True
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    maps = resnet.ResNet50(num_stages=3, dtype=self.dtype, remat=self.remat, name="trunk")(images, train)
    attention_logits, masks = AttentionBranch(
        self.num_classes, self.shared_local_units, self.bottom_strip_quirk, self.dtype,
        name="attention")(maps["layer2"], train)
    region_logits = CCIBranch(self.num_classes, self.dtype, name="cci")(maps["layer3"])
    every_logits = jnp.concatenate([attention_logits[:, None], region_logits], axis=1)
    return {
        "logits": jnp.mean(every_logits, axis=1),
        "attention_logits": attention_logits,
        "region_logits": region_logits,
        **masks,
    }




def effective_number_weights(counts: Sequence[int], beta: float) -> np.ndarray:
  """Class-balanced weights (1 − β) / (1 − β^n_c) of positive counts, scaled to sum to the number of classes."""
  counts = np.asarray(counts, np.float64)
  weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
  return weights / weights.sum() * len(counts)


def config_problems(config) -> list[str]:
  """config.loss's weighting and the class counts given to it, checked before any work (fer_jax.validation), and
  in the config rebuilt from a checkpoint's record (the settings it was trained with; an export's record has
  none: nothing to check)."""
  loss_config, num_classes = config.loss, config.model.num_classes
  problems = []
  weighting = loss_config.get("class_weights", "")
  if weighting not in ("", "effective_number"):
    problems.append(f"config.loss.class_weights={weighting!r} is not one of: '', 'effective_number'.")
  beta = loss_config.get("effective_number_beta", 0.0)
  if weighting == "effective_number" and not 0 <= beta < 1:
    problems.append(f"config.loss.effective_number_beta={beta} must be in [0, 1) (at 1 every class weight is 0/0; "
                    "the official SFEW script's is 0.9999).")
  counts = tuple(loss_config.get("class_counts", ()))
  if counts and (len(counts) != num_classes or min(counts) < 1):
    problems.append(f"config.loss.class_counts={counts} needs {num_classes} positive counts "
                    f"(config.model.num_classes), one per class in the model's class order: give them, or leave it "
                    "() to count the training split.")
  return problems


def class_weights(loss_config, num_classes: int):
  """None, or the weights that loss_config.class_weights names. `config_problems` checks that name and the counts
  a config gives before any work; the counts it cannot see, the training split's (which may lack a class) or none
  where nothing counted them (a benchmark's synthetic batches), are checked here."""
  if not loss_config.class_weights:
    return None
  counts = tuple(loss_config.class_counts)
  if len(counts) != num_classes or min(counts, default=0) < 1:
    raise ConfigError(f"config.loss.class_weights='effective_number' needs {num_classes} positive class counts, got "
                      f"config.loss.class_counts={counts} (the training split's where the config gives none): train on "
                      "a split with images of every class, or give the counts.")
  return effective_number_weights(counts, loss_config.effective_number_beta)


def loss(outputs, labels, loss_config):
  """w·CE(attention) + (1 − w)·Σ_regions CE(region), w = loss_config.attention_weight (0.2), each CE weighted
  by class as PyTorch's CrossEntropyLoss(weight) where config.loss.class_weights says."""
  weights = class_weights(loss_config, outputs["attention_logits"].shape[-1])
  attention = cross_entropy(outputs["attention_logits"], labels, weights)
  region_logits = outputs["region_logits"]
  region = sum(cross_entropy(region_logits[:, index], labels, weights)
               for index in range(region_logits.shape[1]))
  total = loss_config.attention_weight * attention + (1.0 - loss_config.attention_weight) * region
  return total, {"attention_loss": attention, "region_loss": region}


METHOD = Method(build=functools.partial(from_config, SCANCCI), loss=loss,
                loss_keys=("attention_weight", "class_weights", "effective_number_beta", "class_counts"),
                save_attention_maps=attention_maps.save_scan_cci_maps, config_problems=config_problems)
