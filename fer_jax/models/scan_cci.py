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
import jax.numpy as jnp
import numpy as np
import optax

from fer_jax import attention_maps
from fer_jax.models import Method, from_config, layers
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


class SCANUnit(nn.Module):
  """Returns (x ⊙ M, M) with M = sigmoid(BN(PReLU(conv3×3(x)))), a mask per channel and position."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.Conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=layers.torch_kernel_init, dtype=self.dtype, name="conv")(x)
    y = layers.PReLU(name="prelu")(y)
    mask = nn.sigmoid(layers.torch_batch_norm(train, self.dtype, "bn")(y))
    return x * mask, mask


class AttentionBranch(nn.Module):
  """Local SCAN over the regions of the layer2 map (max-pooled), global SCAN, L2-norm, linear.

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
    flat = einops.rearrange(features, "b h w c -> b (h w) c")
    shared_unit = SCANUnit(self.dtype, name="local_scan") if self.shared_local_units else None
    precise = layers.at_least_float32(self.dtype)
    pooled = []
    local_mask = jnp.zeros((batch, size * size), precise)
    for index, grid in enumerate(grids):
      unit = shared_unit if shared_unit is not None else SCANUnit(self.dtype, name=f"local_scan_{index}")
      masked, mask = unit(flat[:, grid], train)
      pooled.append(jnp.mean(masked.astype(precise), axis=(1, 2)))
      local_mask = local_mask.at[:, grid.ravel()].set(
          jnp.mean(mask.astype(precise), axis=-1).reshape(batch, -1))
    local = jnp.max(jnp.stack(pooled, axis=1), axis=1)

    global_masked, global_mask = SCANUnit(self.dtype, name="global_scan")(features, train)
    combined = jnp.concatenate([local, jnp.mean(global_masked.astype(precise), axis=(1, 2))], -1)
    combined = combined / jnp.maximum(jnp.linalg.norm(combined, axis=-1, keepdims=True), 1e-12)
    logits = layers.torch_dense(self.num_classes, 2 * channels, "fc", self.dtype)(combined)
    masks = {"global_mask": jnp.mean(global_mask.astype(precise), axis=-1),
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
    gate = nn.Conv(1, (self.kernel_size,), padding=((pad, pad),), use_bias=False,
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

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    maps = resnet.ResNet50(num_stages=3, dtype=self.dtype, name="trunk")(images, train)
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
  """Class-balanced weights (1 − β) / (1 − β^n_c), scaled to sum to the number of classes."""
  counts = np.asarray(counts, np.float64)
  if np.any(counts <= 0):
    raise ValueError(f"Effective-number weights need a positive count for every class, "
                     f"got {counts.tolist()}.")
  weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
  return weights / weights.sum() * len(counts)


def class_weights(loss_config, num_classes: int):
  """None, or the per-class weights that loss_config.class_weights names."""
  if not loss_config.class_weights:
    return None
  if loss_config.class_weights != "effective_number":
    raise ValueError(f"Unknown class_weights {loss_config.class_weights!r}; valid: '', 'effective_number'.")
  if len(loss_config.class_counts) != num_classes:
    raise ValueError(
        "class_weights='effective_number' needs config.loss.class_counts: the training split's "
        f"{num_classes} per-class counts in the model's class order, got {tuple(loss_config.class_counts)}.")
  return effective_number_weights(loss_config.class_counts, loss_config.effective_number_beta)


def cross_entropy(logits, labels, weights=None):
  """PyTorch CrossEntropyLoss(weight): Σ w_y·CE / Σ w_y, the plain mean without weights."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return jnp.mean(losses)
  sample_weights = jnp.asarray(weights, losses.dtype)[labels]
  return jnp.sum(sample_weights * losses) / jnp.sum(sample_weights)


def loss(outputs, labels, loss_config):
  """w·CE(attention) + (1 − w)·Σ_regions CE(region), w = loss_config.attention_weight (0.2)."""
  weights = class_weights(loss_config, outputs["attention_logits"].shape[-1])
  attention = cross_entropy(outputs["attention_logits"], labels, weights)
  region_logits = outputs["region_logits"]
  region = sum(cross_entropy(region_logits[:, index], labels, weights)
               for index in range(region_logits.shape[1]))
  total = loss_config.attention_weight * attention + (1.0 - loss_config.attention_weight) * region
  return total, {"attention_loss": attention, "region_loss": region}


METHOD = Method(build=functools.partial(from_config, SCANCCI), loss=loss,
                save_attention_maps=attention_maps.save_scan_cci_maps)
