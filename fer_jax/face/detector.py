"""MTCNN face detection: boxes, five landmarks and a score per face, on the host and the device.

The cascade (Zhang et al. 2016): P-Net scans an image pyramid whose first level makes a face of
`min_face_size` pixels 12 pixels wide; its proposals over `thresholds[0]` are merged by
non-maximum suppression, squared, cropped at 24×24 for R-Net, then at 48×48 for O-Net, each
stage keeping the boxes over its threshold and moving them by the predicted offsets.

The weights are those of the `mtcnn` 1.0.0 package, and so is every step's arithmetic (its pyramid's
truncated sides, P-Net's windows, its suppression, its bilinear crops, its box and landmark offsets and
its thresholds): our boxes and landmarks are its own to float rounding (tests/test_face_detector.py),
though it clips the boxes to the photo and rounds them to pixels, and we do not. The pyramid's levels are
ours (`pyramid_scales`): the package's count leaves out levels that ours scans.

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

  def scaled(self, x: float, y: float) -> "Face":
    """The face in a picture `x` times as wide and `y` times as high."""
    x1, y1, x2, y2 = self.box
    return Face((x1 * x, y1 * y, x2 * x, y2 * y), tuple((px * x, py * y) for px, py in self.landmarks), self.score)


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
  """Each level's scale, CELL / min_face_size × factor^level (a power, as the package computes it, so that
  the truncated sides agree), down to the last level whose shorter side spans a cell. The package counts
  its levels as if the first scale were 1: for other minimum sizes than 20 px it scans levels too small or
  leaves out those of the largest faces, and for 20 px it leaves out a last level of 12 px on 1.6 % of photo sizes."""
  first, smallest, scales = CELL / min_face_size, min(height, width), []
  while smallest * first * factor**len(scales) >= CELL:
    scales.append(first * factor**len(scales))
  return scales


def level_shape(height: int, width: int, scale: float) -> tuple[int, int]:
  """A pyramid level's sides: the photo's times the scale, truncated (the package's resize)."""
  return int(height * scale), int(width * scale)


def cells_along(pixels: int) -> int:
  """P-Net's cells along a level's side: one every STRIDE pixels while the window starts within
  `pixels` − CELL + 1, so that the last one overhangs an odd side by a pixel, as with TensorFlow's
  padded pooling over the level alone (`networks.pnet`'s `inside`)."""
  return -(-(pixels - CELL) // STRIDE) + 1


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
  """Indices of the boxes kept, best first: those that no higher-scored box overlaps more than
  `threshold`, kept or not. This is the package's suppression; the greedy kind (torchvision's) would
  also keep a box whose only such neighbour was itself suppressed."""
  order = np.argsort(-scores, kind="stable")
  overlaps = iou_matrix(boxes[order], boxes[order], over_smaller)
  return order[~np.triu(overlaps > threshold, k=1).any(axis=0)]


def squared(boxes: np.ndarray) -> np.ndarray:
  """Each box grown to a square of its longer side about its centre."""
  centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
  half = np.max(boxes[:, 2:4] - boxes[:, :2], axis=1, keepdims=True) / 2
  return np.concatenate([centre - half, centre + half], axis=1)


def inclusive_sides(boxes: np.ndarray) -> np.ndarray:
  """Width and height plus one: the package counts x1 and x2 as pixels of an R- or O-Net box."""
  return boxes[:, 2:4] - boxes[:, :2] + 1


def moved(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """R- or O-Net's boxes moved by offsets given as fractions of their inclusive sides."""
  return boxes + offsets * np.tile(inclusive_sides(boxes), 2)


def pnet_boxes(rows: np.ndarray, columns: np.ndarray, offsets: np.ndarray, scale: float) -> np.ndarray:
  """The boxes of P-Net's cells in the photo: as the package places them, the window of cell (row, column)
  spans 2·column + 1 … 2·column + CELL (a 1-based origin kept from the original code), CELL − 1 wide, and
  the offsets are fractions of that width."""
  windows = np.stack([columns, rows, columns, rows], axis=1) * STRIDE + np.array([1, 1, CELL, CELL])
  return (windows + offsets * (CELL - 1)) / scale


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


def sampled_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """[N, size, size, C] float32: each box sampled at size × size points, bilinearly, 0 off the image, the
  way the package crops for R- and O-Net (tf.image.crop_and_resize of the box as fractions of the
  image): from x1·(W − 1)/W to x2·(W − 1)/W across, likewise down."""
  height, width = image.shape[:2]
  steps = np.arange(size) / (size - 1)
  ys = (boxes[:, 1, None] + (boxes[:, 3] - boxes[:, 1])[:, None] * steps) * (height - 1) / height
  xs = (boxes[:, 0, None] + (boxes[:, 2] - boxes[:, 0])[:, None] * steps) * (width - 1) / width
  (top, bottom, down), (left, right, across) = _neighbours(ys, height), _neighbours(xs, width)
  pixels = image.reshape(height * width, -1).astype(np.float32, copy=False)
  pixel = lambda rows, columns: pixels.take(rows[:, :, None] * width + columns[:, None, :], axis=0)
  top_left, bottom_left = pixel(top, left), pixel(bottom, left)
  crops = top_left + (pixel(top, right) - top_left) * across[:, None, :, None]
  lower = bottom_left + (pixel(bottom, right) - bottom_left) * across[:, None, :, None]
  crops += (lower - crops) * down[:, :, None, None]
  crops[~(((ys >= 0) & (ys <= height - 1))[:, :, None] & ((xs >= 0) & (xs <= width - 1))[:, None, :])] = 0
  return crops


def _neighbours(positions: np.ndarray, pixels: int):
  """The pixels before and after each position (clipped to the image) and its fraction of the way."""
  before = np.floor(positions)
  fraction = (positions - before).astype(np.float32)
  return np.clip(before, 0, pixels - 1).astype(int), np.clip(np.ceil(positions), 0, pixels - 1).astype(int), fraction


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


def packed(levels: list[np.ndarray]):
  """The levels [height, width, channels] on one canvas (`pack_levels`): the canvas, where on it P-Net's
  first convolution sees one level alone ([canvas sides − 2]), each level's (top, left) and the grid."""
  offsets, grid = pack_levels([level.shape[:2] for level in levels])
  canvas = np.zeros((*map(canvas_side, grid), levels[0].shape[-1]), np.float32)
  inside = np.zeros([canvas_side(n) - 2 for n in grid], bool)
  for (top, left), level in zip(offsets, levels):
    height, width = level.shape[:2]
    canvas[top:top + height, left:left + width] = level
    inside[top:top + height - 2, left:left + width - 2] = True
  return canvas, inside, offsets, grid


def level_cells(offset: tuple[int, int], shape: tuple[int, int]) -> tuple[slice, slice]:
  """The cells of the level at `offset` on the canvas, in P-Net's map of the canvas."""
  return tuple(slice(start // STRIDE, start // STRIDE + cells_along(pixels)) for start, pixels in zip(offset, shape))


def _stitched(tiles: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """P-Net's outputs [rows × columns, cells, cells, …] of a canvas's tiles as one map of the canvas."""
  rows, columns = grid
  cells = tiles.shape[1]
  by_tile = tiles.reshape(rows, columns, cells, cells, *tiles.shape[3:])
  return by_tile.swapaxes(1, 2).reshape(rows * cells, columns * cells, *tiles.shape[3:])


class Detector:
  """`detector(rgb_uint8_image)` → the faces found, left to right."""

  def __init__(self, min_face_size: float = 20.0, thresholds=(0.6, 0.7, 0.8), scale_factor: float = 0.709,
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
    levels = [cv2.resize(normalized, level_shape(height, width, scale)[::-1], interpolation=cv2.INTER_AREA)
              for scale in scales]
    canvas, inside, offsets, grid = packed(levels)
    probability, offsets_predicted = self._scan(canvas, inside, grid)
    found = []
    for scale, offset, level in zip(scales, offsets, levels):
      cells = level_cells(offset, level.shape[:2])
      rows, columns = np.nonzero(probability[cells] > self.thresholds[0])
      if not len(rows):
        continue
      boxes = pnet_boxes(rows, columns, offsets_predicted[cells][rows, columns], scale)
      scores = probability[cells][rows, columns]
      kept = non_max_suppression(boxes, scores, self.nms_level)
      found.append(np.concatenate([boxes[kept], scores[kept, None]], axis=1))
    if not found:
      return np.zeros((0, 5), np.float32)
    proposals = np.concatenate(found)
    return proposals[non_max_suppression(proposals[:, :4], proposals[:, 4], self.nms_proposals)]

  def _scan(self, canvas: np.ndarray, inside: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """P-Net's face probability [cells down, cells across] and box offsets [.., .., 4] over the canvas,
    from its tiles in calls of TILES_PER_CALL (the last one padded); `inside` [canvas sides − 2]: where
    its first convolution sees one level alone."""
    count = grid[0] * grid[1]
    tiles = np.zeros((-(-count // TILES_PER_CALL) * TILES_PER_CALL, TILE, TILE, 3), np.float32)
    tiles_inside = np.zeros((len(tiles), TILE - 2, TILE - 2), bool)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (TILE, TILE, 3))[::TILE_STRIDE, ::TILE_STRIDE, 0]
    tiles[:count] = windows.reshape(count, TILE, TILE, 3)
    windows = np.lib.stride_tricks.sliding_window_view(inside, (TILE - 2, TILE - 2))[::TILE_STRIDE, ::TILE_STRIDE]
    tiles_inside[:count] = windows.reshape(count, TILE - 2, TILE - 2)
    calls = jax.device_get([self._pnet(tiles[i:i + TILES_PER_CALL], tiles_inside[i:i + TILES_PER_CALL])
                            for i in range(0, len(tiles), TILES_PER_CALL)])
    return tuple(_stitched(np.concatenate(parts)[:count], grid) for parts in zip(*calls))

  def _crops(self, normalized: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    patches = np.zeros((_bucket(len(boxes)), size, size, 3), np.float32)
    patches[:len(boxes)] = sampled_crops(normalized, boxes, size)
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
    sides = inclusive_sides(boxes)
    landmarks = np.stack([boxes[:, None, 0] - 1 + points[:, :5] * sides[:, None, 0],
                          boxes[:, None, 1] - 1 + points[:, 5:] * sides[:, None, 1]], axis=-1)
    boxes = moved(boxes, offsets)
    kept = non_max_suppression(boxes, probability, self.nms_final, over_smaller=True)
    return boxes[kept], probability[kept], landmarks[kept]
