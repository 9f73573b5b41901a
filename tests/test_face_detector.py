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
# x1, y1, x2, y2 and landmarks left eye, right eye, nose, mouth left, mouth right), measured once
# outside the repository with `MTCNN().detect_faces(rgb_array, box_format="xyxy")`.
TF_MTCNN = {
    "grace_hopper": ((178, 110, 351, 330), ((220, 190), (308, 186), (268, 237), (232, 277), (304, 273))),
    "astronaut": ((182, 64, 265, 171), ((204, 100), (245, 102), (224, 126), (202, 139), (244, 140))),
}


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


def test_suppression_and_overlap_match_torchvision():
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 100, (200, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (200, 2))], axis=1)
  scores = rng.uniform(0, 1, 200)
  np.testing.assert_allclose(detector.iou_matrix(boxes, boxes[:7]),
                             torchvision.ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes[:7])).numpy(),
                             atol=1e-9)
  np.testing.assert_array_equal(detector.non_max_suppression(boxes, scores, 0.5),
                                torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy())


# --- real photos -------------------------------------------------------------------------------


def iou(a, b) -> float:
  return float(detector.iou_matrix(np.asarray([a], float), np.asarray([b], float))[0, 0])


def confident(faces, min_score=0.9):
  return [face for face in faces if face.score >= min_score]


@pytest.mark.parametrize("name", sorted(TF_MTCNN))
def test_each_face_matches_the_mtcnn_package(detect, name):
  box, landmarks = TF_MTCNN[name]
  faces = confident(detect(photo(name)))
  assert len(faces) == 1
  face = faces[0]
  assert iou(face.box, box) > 0.75, face.box
  side = box[2] - box[0]
  assert np.max(np.linalg.norm(np.subtract(face.landmarks, landmarks), axis=1)) < 0.08 * side, face.landmarks


def test_every_face_of_a_group_photo_is_found(detect):
  """Three photos side by side at known places and scales: each face where its photo's face went."""
  canvas = np.full((420, 900, 3), 200, np.uint8)
  expected = []
  placements = (("grace_hopper", 10, 20, 0.6), ("astronaut", 330, 50, 0.7), ("grace_hopper", 680, 100, 0.4))
  for name, left, top, scale in placements:
    image = photo(name)
    small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)),
                                                     Image.BILINEAR))
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    x1, y1, x2, y2 = TF_MTCNN[name][0]
    expected.append((left + x1 * scale, top + y1 * scale, left + x2 * scale, top + y2 * scale))
  faces = confident(detect(canvas))
  assert len(faces) == 3
  for face, box in zip(faces, expected):  # both left to right
    assert iou(face.box, box) > 0.7, (face.box, box)


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
  whole = detector._jitted_networks()[0](weights["pnet"], canvas[None])
  for tiled, one_pass in zip(detect._scan(canvas, grid), whole):
    np.testing.assert_allclose(tiled, np.asarray(one_pass)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("height, width", [(120, 90), (600, 512), (420, 900), (1080, 1920), (3000, 400)])
def test_pyramid_levels_lie_apart_on_the_stride_grid_inside_the_canvas(height, width):
  scales = detector.pyramid_scales(height, width, 20.0, 0.709)
  shapes = [(int(np.ceil(height * scale)), int(np.ceil(width * scale))) for scale in scales]
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
