"""fer_jax.face.detector and networks: MTCNN's P/R/O-Net against a PyTorch re-implementation from
the same weight files, the whole cascade against the mtcnn package's own (TensorFlow) results,
and real photos: every face found where it is, nothing found where there is none.

Once, outside the suite (TensorFlow 2.21, mtcnn 1.0.0), our three networks matched the mtcnn
package's Keras models within 3e-7 on random inputs; the PyTorch model here pins that."""


import hashlib
import io
import os
import shutil

import jax
import joblib
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image
import skimage.data
import torch
import torchvision

from fer_jax.face import detector
from fer_jax.face import networks
import helpers

# The mtcnn 1.0.0 package's own detections (TensorFlow 2.21, its default settings, boxes as
# x1, y1, x2, y2 and landmarks left eye, right eye, nose, mouth left, mouth right, which it rounds to
# pixels), measured once outside the repository with `MTCNN().detect_faces(rgb_array, box_format="xyxy")`;
# the group's on `group_photo()` (Pillow 13.0.0), left to right. Unrounded, ours were the package's
# within 1e-3 px, and on 20 faces of other crops and sizes of these photos within 0.011 px.
TF_MTCNN = {
    "grace_hopper": ((178, 110, 351, 330), ((220, 190), (308, 186), (268, 237), (232, 277), (304, 273))),
    "astronaut": ((182, 64, 265, 171), ((204, 100), (245, 102), (224, 126), (202, 139), (244, 140))),
}
TF_MTCNN_GROUP = (
    ((116, 88, 221, 222), ((143, 135), (194, 132), (170, 162), (149, 186), (192, 184))),
    ((457, 96, 515, 171), ((472, 120), (502, 122), (487, 140), (470, 147), (501, 148))),
    ((751, 144, 819, 233), ((768, 176), (802, 174), (787, 195), (773, 211), (802, 209))),
)
ROUNDING = 0.55  # px: the package's rounding to pixels, and a margin (we reached 0.495)


def photo(name: str) -> np.ndarray:
  if name == "grace_hopper":
    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
  return getattr(skimage.data, name)()


@pytest.fixture(scope="module")
def detect():
  return detector.Detector()


@pytest.fixture(scope="module")
def weights():
  return networks.load_weights()


# --- the networks: a PyTorch re-implementation with TensorFlow's pooling, from the same files ---


def torch_conv(x, layer):
  kernel = torch.from_numpy(layer["kernel"]).permute(3, 2, 0, 1)  # HWIO → OIHW
  return torch.nn.functional.conv2d(x, kernel, torch.from_numpy(layer["bias"]))


def torch_prelu(x, layer):
  return torch.nn.functional.prelu(x, torch.from_numpy(layer["alpha"]))


def torch_pool(x, size, same):
  """TensorFlow's max pooling, stride 2: "same" pads −∞ after the last row and column as needed."""
  if same:
    pad = [max((-(-n // 2) - 1) * 2 + size - n, 0) for n in x.shape[2:]]
    x = torch.nn.functional.pad(x, (pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2),
                                value=-float("inf"))
  return torch.nn.functional.max_pool2d(x, size, 2)


def torch_dense(x, layer):
  return x @ torch.from_numpy(layer["kernel"]) + torch.from_numpy(layer["bias"])


def torch_flatten(x):
  """NCHW → the (W, H, C) flattening order of the Keras model's Permute((2, 1, 3)) + Flatten."""
  return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


def torch_networks(w, name, images):
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  blocks = {"pnet": [(2, True)], "rnet": [(3, True), (3, False)], "onet": [(3, True), (3, False), (2, True)]}[name]
  convs = {"pnet": 3, "rnet": 3, "onet": 4}[name]
  for i in range(1, convs + 1):
    x = torch_prelu(torch_conv(x, w[f"conv{i}"]), w[f"prelu{i}"])
    if i <= len(blocks):
      x = torch_pool(x, *blocks[i - 1])
  if name == "pnet":
    face = torch.softmax(torch_conv(x, w["face"]), dim=1)[:, 1]
    return face.numpy(), torch_conv(x, w["box"]).permute(0, 2, 3, 1).numpy()
  dense = "fc4" if name == "rnet" else "fc5"
  x = torch_dense(torch_flatten(x), w[dense])
  x = torch_prelu(x, w["prelu" + dense[-1]])
  outputs = [torch.softmax(torch_dense(x, w["face"]), dim=1)[:, 1], torch_dense(x, w["box"])]
  if name == "onet":
    outputs.append(torch_dense(x, w["landmarks"]))
  return [o.numpy() for o in outputs]


@pytest.mark.parametrize("name, shape", [("pnet", (2, 37, 53, 3)), ("rnet", (5, 24, 24, 3)), ("onet", (5, 48, 48, 3))])
def test_networks_match_a_pytorch_reimplementation(weights, name, shape):
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  ours = jax.jit(getattr(networks, name))(weights[name], images)
  with torch.no_grad():
    reference = torch_networks(weights[name], name, images)
  for got, want in zip(ours, reference):
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


@pytest.mark.parametrize("name, shape, in_ynnpack", [("pnet", (1, 64, 64, 3), 0), ("rnet", (1, 24, 24, 3), 0),
                                                  ("onet", (1, 48, 48, 3), 1)])
def test_networks_compile_with_xla_s_own_convolutions_on_the_cpu(weights, name, shape, in_ynnpack):
  """As the train and predict steps: with JAX's default options every convolution is YNNPACK's,
  which ran detection at half the speed here (BENCHMARKS.md, prediction). YNNPACK still takes O-Net's
  last pool and the 2×2 convolution after it, 3×3 outputs, as one fusion."""
  images = np.zeros(shape, np.float32)
  ours = detector._jitted_networks()[("pnet", "rnet", "onet").index(name)].lower(weights[name], images).compile()
  default = jax.jit(getattr(networks, name)).lower(weights[name], images).compile()
  assert len(helpers.ynn_convolutions(ours.as_text())) == in_ynnpack
  assert len(helpers.ynn_convolutions(default.as_text())) == ours.as_text().count(" convolution(") > in_ynnpack
  flat = lambda outputs: np.concatenate([np.ravel(output) for output in outputs])
  np.testing.assert_allclose(flat(ours(weights[name], images)), flat(default(weights[name], images)), rtol=1e-5, atol=1e-5)


def test_a_weight_file_other_than_mtcnn_1_0_0s_is_refused(monkeypatch, tmp_path):
  (tmp_path / "pnet.lz4").write_bytes(b"not the pinned file")
  monkeypatch.setattr(networks, "weights_folder", lambda: str(tmp_path))
  with pytest.raises(networks.MissingWeightsError, match="pip install --force-reinstall mtcnn==1.0.0"):
    networks.load_network("pnet")


def test_the_weights_are_read_from_the_bytes_whose_hash_was_checked(monkeypatch, tmp_path, weights):
  """A file replaced between the hash check and the unpickling is not read: the check and the
  load see one read of the file."""
  original = os.path.join(networks.weights_folder(), "pnet.lz4")
  shutil.copy(original, tmp_path / "pnet.lz4")
  monkeypatch.setattr(networks, "weights_folder", lambda: str(tmp_path))
  sha256 = hashlib.sha256
  with open(original, "rb") as f:  # joblib.load(path) leaves an lz4 reader that fails when collected on 3.13
    zeros = [np.zeros_like(a) for a in joblib.load(io.BytesIO(f.read()))]

  def hash_then_swap(data):
    digest = sha256(data)
    joblib.dump(zeros, tmp_path / "pnet.lz4", compress="lz4")
    return digest

  monkeypatch.setattr(networks.hashlib, "sha256", hash_then_swap)
  loaded = networks.load_network("pnet")
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded, weights["pnet"]))


# --- the cascade's box arithmetic against torchvision ------------------------------------------


def random_boxes(seed: int, count: int = 200):
  rng = np.random.default_rng(seed)
  corners = rng.uniform(0, 100, (count, 2))
  return np.concatenate([corners, corners + rng.uniform(5, 40, (count, 2))], axis=1), rng.uniform(0, 1, count)


def test_overlap_matches_torchvision():
  boxes, _ = random_boxes(0)
  np.testing.assert_allclose(detector.iou_matrix(boxes, boxes[:7]),
                             torchvision.ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes[:7])).numpy(),
                             atol=1e-9)


def test_suppression_keeps_the_boxes_no_better_box_overlaps():
  """As the mtcnn package: a box overlapped only by a box that was itself suppressed goes too, which
  torchvision's greedy suppression keeps; every other box it keeps, in the same order."""
  chain = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], float)  # each overlaps the next by 3/7
  chain_scores = np.array([0.9, 0.8, 0.7])
  assert detector.non_max_suppression(chain, chain_scores, 0.4).tolist() == [0]
  assert torchvision.ops.nms(torch.from_numpy(chain), torch.from_numpy(chain_scores), 0.4).tolist() == [0, 2]
  boxes, scores = random_boxes(0)
  ours = detector.non_max_suppression(boxes, scores, 0.5)
  greedy = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
  assert 0 < len(ours) < len(greedy)
  np.testing.assert_array_equal(ours, [i for i in greedy if i in ours])
  overlapped_by_a_better_box = (detector.iou_matrix(boxes, boxes) > 0.5) & (scores[:, None] > scores[None, :])
  np.testing.assert_array_equal(np.sort(ours), np.flatnonzero(~overlapped_by_a_better_box.any(axis=0)))


def test_crops_sample_the_box_bilinearly_and_are_zero_off_the_photo():
  """As tf.image.crop_and_resize (the package's crops): size × size points from x1·(W − 1)/W to
  x2·(W − 1)/W, the corners of torch's grid_sample with align_corners."""
  image = np.random.default_rng(0).uniform(-1, 1, (50, 70, 3)).astype(np.float32)
  boxes = np.array([[3.3, 5.1, 40.8, 44.2], [0.0, 0.0, 70.0, 50.0], [20.5, 10.2, 26.1, 13.9]])
  height, width = image.shape[:2]
  corners = boxes * np.tile([(width - 1) / width, (height - 1) / height], 2)
  ramp = torch.linspace(0, 1, 24, dtype=torch.float64)
  grids = []
  for x1, y1, x2, y2 in torch.from_numpy(corners):
    xs, ys = (x1 + (x2 - x1) * ramp) / (width - 1) * 2 - 1, (y1 + (y2 - y1) * ramp) / (height - 1) * 2 - 1
    grids.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1))
  images = torch.from_numpy(image).permute(2, 0, 1)[None].double().expand(len(boxes), -1, -1, -1)
  sampled = torch.nn.functional.grid_sample(images, torch.stack(grids), align_corners=True).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(detector.sampled_crops(image, boxes, 24), sampled, atol=1e-5)
  beyond = detector.sampled_crops(image, np.array([[-12.0, 38.0, 12.0, 62.0]]), 24)[0]  # left and bottom halves off
  assert np.all(beyond[12:] == 0) and np.all(beyond[:, :12] == 0) and np.all(beyond[:12, 12:] != 0)


# --- real photos -------------------------------------------------------------------------------


def iou(a, b) -> float:
  return float(detector.iou_matrix(np.asarray([a], float), np.asarray([b], float))[0, 0])


def confident(faces, min_score=0.9):
  return [face for face in faces if face.score >= min_score]


def assert_is_the_packages(face, box, landmarks):
  """Box and landmarks within the package's rounding of them (IoU > 0.98 on these photos)."""
  assert np.max(np.abs(np.subtract(face.box, box))) < ROUNDING, face.box
  assert np.max(np.abs(np.subtract(face.landmarks, landmarks))) < ROUNDING, face.landmarks


@pytest.mark.parametrize("name", sorted(TF_MTCNN))
def test_each_face_matches_the_mtcnn_package(detect, name):
  faces = confident(detect(photo(name)))
  assert len(faces) == 1
  assert_is_the_packages(faces[0], *TF_MTCNN[name])


PLACEMENTS = (("grace_hopper", 10, 20, 0.6), ("astronaut", 330, 50, 0.7), ("grace_hopper", 680, 100, 0.4))


def group_photo() -> tuple[np.ndarray, list[tuple[float, ...]]]:
  """Three photos side by side at known places and scales, and where each photo's face went."""
  canvas = np.full((420, 900, 3), 200, np.uint8)
  moved_boxes = []
  for name, left, top, scale in PLACEMENTS:
    image = photo(name)
    small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)),
                                                     Image.BILINEAR))
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    x1, y1, x2, y2 = TF_MTCNN[name][0]
    moved_boxes.append((left + x1 * scale, top + y1 * scale, left + x2 * scale, top + y2 * scale))
  return canvas, moved_boxes


def test_every_face_of_a_group_photo_is_found_where_the_mtcnn_package_finds_it(detect):
  canvas, moved_boxes = group_photo()
  faces = confident(detect(canvas))
  assert len(faces) == 3
  for face, (box, landmarks), moved_box in zip(faces, TF_MTCNN_GROUP, moved_boxes):  # all left to right
    assert_is_the_packages(face, box, landmarks)
    assert iou(face.box, moved_box) > 0.7, (face.box, moved_box)


@pytest.mark.parametrize("name", ["coffee", "flat"])
def test_no_face_is_found_where_there_is_none(detect, name):
  image = np.full((300, 400, 3), 128, np.uint8) if name == "flat" else photo(name)
  assert detect(image) == []


def test_detections_are_the_same_on_every_run(detect):
  image = photo("astronaut")
  assert detect(image) == detect(image) == detector.Detector()(image)


# --- compiled programs -------------------------------------------------------------------------


def test_photos_of_every_size_share_one_pnet_program(detect):
  """Each new photo size compiled P-Net again (sizes were bucketed to 64 px) and two eager ops that took
  its outputs apart; now P-Net scans fixed tiles and its outputs are taken apart on the host."""
  astronaut = Image.fromarray(photo("astronaut"))
  sizes = [(512, 512), (401, 383), (450, 600), (900, 700), (777, 450), (610, 530)]
  found = []
  names = helpers.compiled_during(
      lambda: found.extend(confident(detect(np.asarray(astronaut.resize(size)))) for size in sizes))
  assert set(names) <= {"jit(pnet)", "jit(rnet)", "jit(onet)"} and names["jit(pnet)"] <= 1, names
  assert [len(faces) for faces in found] == [1] * len(sizes)


def test_pnet_over_tiles_is_one_pass_over_the_canvas(detect, weights):
  grid = (2, 3)
  canvas = np.random.default_rng(0).uniform(-1, 1, (*map(detector.canvas_side, grid), 3)).astype(np.float32)
  inside = np.ones([detector.canvas_side(n) - 2 for n in grid], bool)
  whole = detector._jitted_networks()[0](weights["pnet"], canvas[None])
  for tiled, one_pass in zip(detect._scan(canvas, inside, grid), whole):
    np.testing.assert_allclose(tiled, np.asarray(one_pass)[0], rtol=0, atol=1e-6)


def test_each_level_s_cells_on_the_canvas_are_pnet_s_over_that_level_alone(detect, weights):
  """Edge cells too: on a side of odd length the last window overhangs the level by a pixel, and
  P-Net's pooling pads it as TensorFlow's does at an image's edge (the package scans each level
  alone), whatever lies next to the level on the canvas."""
  rng = np.random.default_rng(0)
  shapes = [(151, 133), (107, 94), (75, 67), (53, 47)]
  levels = [rng.uniform(-1, 1, (height, width, 3)).astype(np.float32) for height, width in shapes]
  canvas, inside, offsets, grid = detector.packed(levels)
  canvas[canvas == 0] = 5.0  # what lies between the levels must not matter
  maps = detect._scan(canvas, inside, grid)
  for level, offset in zip(levels, offsets):
    alone = detector._jitted_networks()[0](weights["pnet"], level[None])
    cells = detector.level_cells(offset, level.shape[:2])
    assert maps[0][cells].shape == alone[0].shape[1:] == ((level.shape[0] - 9) // 2, (level.shape[1] - 9) // 2)
    for on_canvas, by_itself in zip(maps, alone):
      np.testing.assert_allclose(on_canvas[cells], np.asarray(by_itself)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(120, 90), (600, 512), (420, 900), (1080, 1920), (3000, 400)])
def test_pyramid_levels_lie_apart_on_the_stride_grid_inside_the_canvas(height, width):
  scales = detector.pyramid_scales(height, width, 20.0, 0.709)
  shapes = [detector.level_shape(height, width, scale) for scale in scales]
  offsets, grid = detector.pack_levels(shapes)
  taken = np.zeros(list(map(detector.canvas_side, grid)), int)
  for (top, left), (level_height, level_width) in zip(offsets, shapes):
    assert top % 2 == left % 2 == 0
    taken[top:top + level_height, left:left + level_width] += 1
  assert taken.max() == 1 and taken.sum() == sum(h * w for h, w in shapes)  # no overlap, nothing cut off


def test_detectors_of_every_minimum_face_size_share_one_copy_of_the_weights():
  """Each Detector read MTCNN's weights and put them on the device again (one a --min_face_size)."""
  small, large = detector.Detector(min_face_size=12.0), detector.Detector(min_face_size=200.0)
  assert small._pnet.args[0] is large._pnet.args[0] and small._onet.args[0] is large._onet.args[0]
