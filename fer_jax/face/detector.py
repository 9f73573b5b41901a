"""MTCNN face detection: boxes, five landmarks and a score per face, on the host and the device.

The cascade (Zhang et al. 2016): P-Net scans an image pyramid whose first level makes a face of
`min_face_size` pixels 12 pixels wide; its proposals over `thresholds[0]` are merged by
non-maximum suppression, squared, cropped at 24×24 for R-Net, then at 48×48 for O-Net, each
stage keeping the boxes over its threshold and moving them by the predicted offsets.

The networks run jitted (fer_jax.face.networks), with shapes that do not depend on the photo, so
that photos of every size and every frame of a video reuse the same compiled programs: all pyramid
levels are packed on one canvas (`pack_levels`) that P-Net scans in overlapping tiles of a fixed
size (`TILE`; the map of one pass over the whole canvas, to float rounding), `TILES_PER_CALL` a call, and the crops
of a stage are padded to 64, 256, 1024, … Resizing, cropping and suppression run on the host.
"""

import dataclasses
import functools

import cv2
import jax
import numpy as np

from fer_jax import mesh as mesh_lib
from fer_jax.face import networks

CELL, STRIDE = 12, 2  # P-Net's window and step in pyramid pixels
# P-Net's tiles start TILE_STRIDE pixels apart and overlap by CELL − STRIDE, so that every window on
# its stride-2 grid is one of exactly one tile's TILE_STRIDE / STRIDE × TILE_STRIDE / STRIDE cells.
TILE_STRIDE = 128
TILE = TILE_STRIDE + CELL - STRIDE
TILES_PER_CALL = 4  # a few: fewer calls, little padding in the last


@dataclasses.dataclass(frozen=True)
class Face:
  box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the photo (the photo spans 0…width)
  landmarks: tuple[tuple[float, float], ...]  # (x, y): left eye, right eye, nose, left and right mouth corner
  score: float  # O-Net's face probability

  @property
  def size(self) -> float:
    """The shorter side of the box, in pixels."""
    return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
  scale, smallest, scales = CELL / min_face_size, min(height, width), []
  while smallest * scale >= CELL:
    scales.append(scale)
    scale *= factor
  return scales


def iou_matrix(boxes: np.ndarray, others: np.ndarray, over_smaller: bool = False) -> np.ndarray:
  """[N, M] intersection over union (or over the smaller box) of x1, y1, x2, y2 boxes."""
  top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
  bottom_right = np.minimum(boxes[:, None, 2:4], others[None, :, 2:4])
  intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
  area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  first, second = area(boxes)[:, None], area(others)[None, :]
  denominator = np.minimum(first, second) if over_smaller else first + second - intersection
  return intersection / np.maximum(denominator, 1e-9)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float,
                        over_smaller: bool = False) -> np.ndarray:
  """Indices of the boxes kept, best first: each suppresses the lower-scored ones overlapping it
  more than `threshold`."""
  order = np.argsort(-scores, kind="stable")
  overlaps = iou_matrix(boxes[order], boxes[order], over_smaller)
  kept, suppressed = [], np.zeros(len(order), bool)
  for i in range(len(order)):
    if not suppressed[i]:
      kept.append(order[i])
      suppressed |= overlaps[i] > threshold
  return np.array(kept, int)


def squared(boxes: np.ndarray) -> np.ndarray:
  """Each box grown to a square of its longer side about its centre."""
  centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
  half = np.max(boxes[:, 2:4] - boxes[:, :2], axis=1, keepdims=True) / 2
  return np.concatenate([centre - half, centre + half], axis=1)


def moved(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Boxes moved by offsets given as fractions of their width and height."""
  sides = np.tile(boxes[:, 2:4] - boxes[:, :2], 2)
  return boxes + offsets * sides


def crop(image: np.ndarray, box, size: int) -> np.ndarray:
  """The box (rounded to pixels) cut out of `image` at size×size; outside the image is 0."""
  x1, y1, x2, y2 = (int(round(v)) for v in box)
  x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
  height, width = image.shape[:2]
  canvas = np.zeros((y2 - y1, x2 - x1, *image.shape[2:]), image.dtype)
  top, left, bottom, right = max(y1, 0), max(x1, 0), min(y2, height), min(x2, width)
  if bottom > top and right > left:
    canvas[top - y1:bottom - y1, left - x1:right - x1] = image[top:bottom, left:right]
  shrinking = canvas.shape[0] > size
  return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


@functools.cache
def _jitted_networks():
  """P-, R- and O-Net, jitted once per process (compiled once per input shape, whichever Detector
  calls them), with XLA's own convolution kernels on the CPU (twice as fast as YNNPACK's here,
  BENCHMARKS.md)."""
  options = mesh_lib.default_device_compiler_options()
  return tuple(jax.jit(network, compiler_options=options) for network in (networks.pnet, networks.rnet, networks.onet))


@functools.cache
def _device_weights() -> dict:
  """MTCNN's weights, read and put on the device once per process, whichever Detector (of whichever
  minimum face size) runs them."""
  return jax.device_put(networks.load_weights())


def _bucket(count: int) -> int:
  """64, 256, 1024, …: crops per R-Net or O-Net call."""
  bucket = 64
  while bucket < count:
    bucket *= 4
  return bucket


def _even(n: int) -> int:
  return n + n % 2


def canvas_side(tiles: int) -> int:
  """The pixels `tiles` tiles in a row scan."""
  return tiles * TILE_STRIDE + TILE - TILE_STRIDE


def tiles_spanning(pixels: int) -> int:
  """The fewest tiles in a row that scan `pixels` (at least one)."""
  return max(-(-(pixels - canvas_side(0)) // TILE_STRIDE), 1)


def _columns(shapes: list[tuple[int, int]], height: int) -> tuple[list[tuple[int, int]], int]:
  """(top, left) of each level, largest first, in columns at most `height` tall (each level in the
  first column with room, else in a new one on the right), and the columns' total width."""
  columns, offsets = [], []  # columns: [left, width, filled height]
  for level_height, level_width in shapes:
    column = next((c for c in columns if c[2] + _even(level_height) <= height), None)
    if column is None:
      column = [sum(c[1] for c in columns), _even(level_width), 0]
      columns.append(column)
    offsets.append((column[2], column[0]))
    column[2] += _even(level_height)
  return offsets, sum(c[1] for c in columns)


def pack_levels(shapes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
  """(top, left) of each pyramid level (height, width), largest first, on a canvas of the fewest
  tiles, and the canvas's (rows, columns) of tiles. Offsets are even, so every level's cells lie
  on P-Net's stride-2 grid; as a cell sees exactly its 12×12 window, a cell whose window lies
  inside a level sees that level alone."""
  packings = []
  for rows in range(tiles_spanning(_even(shapes[0][0])), tiles_spanning(sum(_even(h) for h, _ in shapes)) + 1):
    offsets, width = _columns(shapes, canvas_side(rows))
    packings.append((rows * tiles_spanning(width), rows, tiles_spanning(width), offsets))
  _, rows, columns, offsets = min(packings, key=lambda packing: packing[:2])
  return offsets, (rows, columns)


def _stitched(tiles: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """P-Net's outputs [rows × columns, cells, cells, …] of a canvas's tiles as one map of the canvas."""
  rows, columns = grid
  cells = tiles.shape[1]
  by_tile = tiles.reshape(rows, columns, cells, cells, *tiles.shape[3:])
  return by_tile.swapaxes(1, 2).reshape(rows * cells, columns * cells, *tiles.shape[3:])


class Detector:
  """`detector(rgb_uint8_image)` → the faces found, left to right."""

  def __init__(self, min_face_size: float = 20.0, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709,
               nms=(0.5, 0.7, 0.7, 0.7)):
    self.min_face_size, self.thresholds, self.scale_factor = min_face_size, thresholds, scale_factor
    self.nms_level, self.nms_proposals, self.nms_refined, self.nms_final = nms
    weights = _device_weights()
    pnet, rnet, onet = _jitted_networks()
    self._pnet = functools.partial(pnet, weights["pnet"])
    self._rnet = functools.partial(rnet, weights["rnet"])
    self._onet = functools.partial(onet, weights["onet"])

  def __call__(self, image: np.ndarray) -> list[Face]:
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    normalized = (image.astype(np.float32) - 127.5) / 128.0
    boxes = self._propose(normalized)
    if len(boxes):
      boxes = self._refine(normalized, boxes)
    if not len(boxes):
      return []
    boxes, scores, landmarks = self._output(normalized, boxes)
    order = np.argsort(boxes[:, 0], kind="stable")
    return [Face(tuple(map(float, boxes[i])), tuple(map(tuple, landmarks[i].astype(float).tolist())), float(scores[i]))
            for i in order]

  def _propose(self, normalized: np.ndarray) -> np.ndarray:
    height, width = normalized.shape[:2]
    scales = pyramid_scales(height, width, self.min_face_size, self.scale_factor)
    if not scales:
      return np.zeros((0, 5), np.float32)
    shapes = [(int(np.ceil(height * scale)), int(np.ceil(width * scale))) for scale in scales]
    offsets, grid = pack_levels(shapes)
    canvas = np.zeros((*map(canvas_side, grid), 3), np.float32)
    for (top, left), (level_height, level_width) in zip(offsets, shapes):
      canvas[top:top + level_height, left:left + level_width] = cv2.resize(
          normalized, (level_width, level_height), interpolation=cv2.INTER_AREA)
    probability, offsets_predicted = self._scan(canvas, grid)
    found = []
    for scale, (top, left), (level_height, level_width) in zip(scales, offsets, shapes):
      cells = (slice(top // STRIDE, (top + level_height - CELL) // STRIDE + 1),
               slice(left // STRIDE, (left + level_width - CELL) // STRIDE + 1))
      rows, columns = np.nonzero(probability[cells] > self.thresholds[0])
      if not len(rows):
        continue
      windows = np.stack([columns, rows, columns, rows], axis=1) * STRIDE + np.array([0, 0, CELL, CELL])
      boxes = moved(windows / scale, offsets_predicted[cells][rows, columns])
      scores = probability[cells][rows, columns]
      kept = non_max_suppression(boxes, scores, self.nms_level)
      found.append(np.concatenate([boxes[kept], scores[kept, None]], axis=1))
    if not found:
      return np.zeros((0, 5), np.float32)
    proposals = np.concatenate(found)
    return proposals[non_max_suppression(proposals[:, :4], proposals[:, 4], self.nms_proposals)]

  def _scan(self, canvas: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """P-Net's face probability [cells down, cells across] and box offsets [.., .., 4] over the canvas,
    from its tiles in calls of TILES_PER_CALL (the last one padded)."""
    count = grid[0] * grid[1]
    tiles = np.zeros((-(-count // TILES_PER_CALL) * TILES_PER_CALL, TILE, TILE, 3), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (TILE, TILE, 3))[::TILE_STRIDE, ::TILE_STRIDE, 0]
    tiles[:count] = windows.reshape(count, TILE, TILE, 3)
    calls = jax.device_get([self._pnet(tiles[i:i + TILES_PER_CALL]) for i in range(0, len(tiles), TILES_PER_CALL)])
    return tuple(_stitched(np.concatenate(parts)[:count], grid) for parts in zip(*calls))

  def _crops(self, normalized: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    patches = np.zeros((_bucket(len(boxes)), size, size, 3), np.float32)
    for i, box in enumerate(boxes):
      patches[i] = crop(normalized, box, size)
    return patches

  def _refine(self, normalized: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    boxes = squared(proposals[:, :4])
    probability, offsets = (np.asarray(a)[:len(boxes)] for a in self._rnet(self._crops(normalized, boxes, 24)))
    keep = probability > self.thresholds[1]
    boxes, probability = moved(boxes[keep], offsets[keep]), probability[keep]
    return boxes[non_max_suppression(boxes, probability, self.nms_refined)]

  def _output(self, normalized: np.ndarray, refined: np.ndarray):
    boxes = squared(refined)
    probability, offsets, points = (np.asarray(a)[:len(boxes)] for a in self._onet(self._crops(normalized, boxes, 48)))
    keep = probability > self.thresholds[2]
    boxes, probability, offsets, points = boxes[keep], probability[keep], offsets[keep], points[keep]
    sides = boxes[:, 2:4] - boxes[:, :2]
    landmarks = np.stack([boxes[:, None, 0] + points[:, :5] * sides[:, None, 0],
                          boxes[:, None, 1] + points[:, 5:] * sides[:, None, 1]], axis=-1)
    boxes = moved(boxes, offsets)
    kept = non_max_suppression(boxes, probability, self.nms_final, over_smaller=True)
    return boxes[kept], probability[kept], landmarks[kept]
