"""Drawing what a method attends to, over the faces it saw: the `save_attention_maps` of APViT,
SCAN-CCI and DAN, and the Grad-CAM++ maps DAN's are (computed in JAX, inside visualize's compiled
program). `images` are the faces as the eval pipeline made them (0–255), or its normalised inputs
stretched back to 0–255. matplotlib and OpenCV are imported only when a map is drawn, so that
importing a model does not.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
  """`image` stretched linearly from its minimum and maximum to 0–255."""
  low, high = image.min(), image.max()
  return np.uint8(np.round(255 * (image - low) / max(high - low, 1e-12)))


def _faces(images):
  """Each image as an RGB uint8 face: 0-255 images as they are, others (a model's normalised input) stretched."""
  images = np.asarray(images)
  for image in images:
    face = image if images.dtype == np.uint8 else to_uint8(np.float32(image))
    yield np.repeat(face, 3, axis=-1) if face.shape[-1] == 1 else face


def _kept_patches_panel(face: np.ndarray, positions: np.ndarray, patch_size: int,
                        dim: float = 0.25) -> np.ndarray:
  """The face with every patch not in `positions` (row-major over the model's grid: the side over `patch_size`,
  rounded up, the last row and column of patches cut by the face's edge) dimmed."""
  grid = -(-face.shape[0] // patch_size)
  kept = np.zeros(grid * grid, np.float32)
  kept[np.asarray(positions)] = 1.0
  mask = np.kron(kept.reshape(grid, grid), np.ones((patch_size, patch_size), np.float32))
  mask = mask[:face.shape[0], :face.shape[1]]
  return np.uint8(np.round(face * (dim + (1 - dim) * mask[..., None])))


def _save_panels(panels, path: str, min_side: int = 224) -> str:
  strip = np.concatenate(panels, axis=1)
  scale = max(1, math.ceil(min_side / strip.shape[0]))
  Image.fromarray(np.kron(strip, np.ones((scale, scale, 1), np.uint8))).save(path)
  return path


def save_apvit_maps(images, outputs, out_dir: str, patch_size: int) -> list[str]:
  """Writes <i>_app_patches.png and, where blocks pooled tokens, <i>_atp_tokens.png over each face; returns the paths.

  The first shows the face beside the patches APP kept; the second, the patch tokens left after
  each ATP block (blocks 5–8, left to right). Dropped patches are dimmed; a patch is
  `patch_size` input pixels square. With every keep rate 1 (APP alone) no block pools: there is no second.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for index, face in enumerate(_faces(images)):
    app = _kept_patches_panel(face, outputs["app_positions"][index], patch_size)
    paths.append(_save_panels([face, app], os.path.join(out_dir, f"{index:04d}_app_patches.png")))
    atp = [_kept_patches_panel(face, stage[index], patch_size) for stage in outputs["atp_positions"]]
    if atp:
      paths.append(_save_panels(atp, os.path.join(out_dir, f"{index:04d}_atp_tokens.png")))
  return paths


def _overlay(face: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
  """Mask stretched to [0, 1], resized bilinearly to the face, coloured with 'jet', blended."""
  import matplotlib
  height, width = face.shape[:2]
  spread = np.float32(to_uint8(mask)) / 255.0
  resized = np.asarray(Image.fromarray(spread).resize((width, height), Image.BILINEAR))
  heat = matplotlib.colormaps["jet"](np.clip(resized, 0.0, 1.0))[..., :3] * 255.0
  return Image.fromarray(np.uint8(np.round((1 - alpha) * face + alpha * heat)))


def save_scan_cci_maps(images, outputs, out_dir: str) -> list[str]:
  """Writes <i>_global_mask.png and <i>_region_masks.png: channel-mean SCAN masks over each face.

  Returns the written paths.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for index, face in enumerate(_faces(images)):
    for key, suffix in (("global_mask", "global_mask"), ("local_mask", "region_masks")):
      path = os.path.join(out_dir, f"{index:04d}_{suffix}.png")
      _overlay(np.float32(face), np.asarray(outputs[key][index], np.float32)).save(path)
      paths.append(path)
  return paths


def grad_cam_plus_plus(activations, gradients):
  """Grad-CAM++ maps [batch, height, width] of a layer's `activations` [batch, height, width, channels] from the
  `gradients` of the explained score with respect to them, as grad-cam 1.3.1 (DAN's run_grad_cam.py) computes
  them: each channel weighted by Σ_ij relu(g) · α, α = g² / (2g² + Σ_ij a · g³ + 1e-6) where g ≠ 0 (0
  elsewhere), the weighted channels summed, negative values set to 0."""
  activations, gradients = jnp.float32(activations), jnp.float32(gradients)
  squared = gradients**2
  spatial_sum = jnp.sum(activations, axis=(1, 2), keepdims=True)
  alpha = jnp.where(gradients != 0, squared / (2 * squared + spatial_sum * squared * gradients + 1e-6), 0.0)
  weights = jnp.sum(jax.nn.relu(gradients) * alpha, axis=(1, 2), keepdims=True)
  return jax.nn.relu(jnp.sum(weights * activations, axis=-1))


def stretched_to_input(cams, height: int, width: int):
  """Each map resized bilinearly (half-pixel centres, as OpenCV's INTER_LINEAR) to height × width, less its minimum,
  over its maximum: 0–1. A map with no positive value (grad-cam's would be NaN) is all 0."""
  resized = jax.image.resize(cams, (cams.shape[0], height, width), "linear", antialias=False)
  shifted = resized - jnp.min(resized, axis=(1, 2), keepdims=True)
  peak = jnp.max(shifted, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, shifted / jnp.where(peak > 0, peak, 1.0), 0.0)


def cam_over_face(face: np.ndarray, cam: np.ndarray) -> np.ndarray:
  """As grad-cam's show_cam_on_image(face / 255, cam, use_rgb=True): OpenCV's jet of the map truncated to 0–255,
  added to the face in 0–1, the sum over its maximum, truncated to uint8."""
  import cv2
  heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[..., ::-1]
  blended = np.float32(heat) / 255 + np.float32(face) / 255
  return np.uint8(255 * (blended / np.max(blended)))


def save_dan_maps(images, outputs, out_dir: str) -> list[str]:
  """Writes <i>_head<k>_cam.png: the Grad-CAM++ map of the predicted class at head k's spatial attention over
  each face (`outputs["head_cams"]`, [batch, heads, height, width] in 0–1); returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for index, face in enumerate(_faces(images)):
    for head, cam in enumerate(np.asarray(outputs["head_cams"][index], np.float32)):
      path = os.path.join(out_dir, f"{index:04d}_head{head}_cam.png")
      Image.fromarray(cam_over_face(face, cam)).save(path)
      paths.append(path)
  return paths
