"""MTCNN's three networks (Zhang et al. 2016) in JAX, with the weights the `mtcnn` wheel ships.

P-Net proposes faces on every level of an image pyramid, R-Net (24×24 crops) rejects and refines
the proposals, O-Net (48×48 crops) refines them again and places five landmarks. Inputs are
RGB scaled as (pixel − 127.5) / 128, NHWC. Outputs are softmax face probabilities, box offsets
as fractions of the box side, and (O-Net) landmarks as fractions of the box: x1…x5 then y1…y5,
in the order left eye, right eye, nose, left mouth corner, right mouth corner (image left/right).
"""

import hashlib
import importlib.util
import io
import os

import jax
import jax.numpy as jnp
import joblib
import numpy as np

from fer_jax.errors import UserError

# mtcnn 1.0.0 (MIT) stores each network as a joblib+lz4 pickle of a list of NumPy arrays in
# Keras layer order. Unpickling runs code, so only these exact files are read: each is checked
# against its SHA-256 before joblib sees it, and joblib unpickles the very bytes that were checked,
# which makes loading them as safe as importing the pinned package itself. Nothing of mtcnn is
# imported (its package imports TensorFlow).
WEIGHT_FILES = {
    "pnet": "ea6b0c3e685ebee3165326ad6484acc95f2ef78f1c94fbf40a55704fa989f7b5",
    "rnet": "cb00e6460f3c98b0bfafaba3c0a0ded4bdf6e62cee7174d969e8670d7e757fee",
    "onet": "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
}
# Per network, the names of the arrays in the order the file lists them.
LAYOUT = {
    "pnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "box", "face"),
    "rnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "box", "face"),
    "onet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5", "prelu5",
             "box", "landmarks", "face"),
}


class MissingWeightsError(UserError):
  """The `mtcnn` package with its weight files is not installed, or its files differ from 1.0.0's."""


def weights_folder() -> str:
  spec = importlib.util.find_spec("mtcnn")  # locates the package without running its TensorFlow imports
  if spec is None or not spec.submodule_search_locations:
    raise MissingWeightsError("Face detection needs the MTCNN weights of the `mtcnn` package: "
                              "pip install mtcnn==1.0.0 (it does not need TensorFlow here).")
  return os.path.join(spec.submodule_search_locations[0], "assets", "weights")


def load_network(name: str) -> dict:
  """{layer: {"kernel"/"bias"/"alpha": array}} of one network, from the pinned wheel's file."""
  path = os.path.join(weights_folder(), f"{name}.lz4")
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != WEIGHT_FILES[name]:
    raise MissingWeightsError(f"{path} is not the file mtcnn 1.0.0 ships (SHA-256 {digest}): "
                              "pip install --force-reinstall mtcnn==1.0.0.")
  arrays = iter(joblib.load(io.BytesIO(data)))
  layers = {}
  for layer in LAYOUT[name]:
    if layer.startswith("prelu"):
      layers[layer] = {"alpha": np.asarray(next(arrays)).reshape(-1)}
    else:
      layers[layer] = {"kernel": np.asarray(next(arrays)), "bias": np.asarray(next(arrays))}
  return layers


def load_weights() -> dict:
  return {name: load_network(name) for name in WEIGHT_FILES}


def _conv(x, layer):
  y = jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + layer["bias"]


def _dense(x, layer):
  return x @ layer["kernel"] + layer["bias"]


def _prelu(x, layer):
  return jnp.where(x > 0, x, x * layer["alpha"])


def _max_pool(x, size: int, padding: str):
  """Stride 2; "SAME" pads the bottom and right edges only (as TensorFlow does)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, 2, 2, 1), padding)


def _flatten(x):
  """Column-major over the spatial grid (width before height), the order the dense weights expect."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


def pnet(params, images, inside=None):
  """images [N, H, W, 3] → (face probability [N, H', W'], box offsets [N, H', W', 4]); one
  output cell per 12×12 window at stride 2. `inside` [N, H − 2, W − 2], for images packed on a canvas:
  where the first convolution's window lies inside one image; the pooling after it takes the others
  for padding, as at an image's own bottom and right edges."""
  x = _prelu(_conv(images, params["conv1"]), params["prelu1"])
  if inside is not None:
    x = jnp.where(inside[..., None], x, -jnp.inf)
  x = _max_pool(x, 2, "SAME")
  if inside is not None:
    x = jnp.where(jnp.isneginf(x), 0.0, x)  # pools wholly between images: no cell of an image sees them
  x = _prelu(_conv(x, params["conv2"]), params["prelu2"])
  x = _prelu(_conv(x, params["conv3"]), params["prelu3"])
  face = jax.nn.softmax(_conv(x, params["face"]), axis=-1)[..., 1]
  return face, _conv(x, params["box"])


def rnet(params, patches):
  """patches [N, 24, 24, 3] → (face probability [N], box offsets [N, 4])."""
  x = _max_pool(_prelu(_conv(patches, params["conv1"]), params["prelu1"]), 3, "SAME")
  x = _max_pool(_prelu(_conv(x, params["conv2"]), params["prelu2"]), 3, "VALID")
  x = _prelu(_conv(x, params["conv3"]), params["prelu3"])
  x = _prelu(_dense(_flatten(x), params["fc4"]), params["prelu4"])
  return jax.nn.softmax(_dense(x, params["face"]), axis=-1)[:, 1], _dense(x, params["box"])


def onet(params, patches):
  """patches [N, 48, 48, 3] → (face probability [N], box offsets [N, 4], landmarks [N, 10])."""
  x = _max_pool(_prelu(_conv(patches, params["conv1"]), params["prelu1"]), 3, "SAME")
  x = _max_pool(_prelu(_conv(x, params["conv2"]), params["prelu2"]), 3, "VALID")
  x = _max_pool(_prelu(_conv(x, params["conv3"]), params["prelu3"]), 2, "SAME")
  x = _prelu(_conv(x, params["conv4"]), params["prelu4"])
  x = _prelu(_dense(_flatten(x), params["fc5"]), params["prelu5"])
  return (jax.nn.softmax(_dense(x, params["face"]), axis=-1)[:, 1], _dense(x, params["box"]),
          _dense(x, params["landmarks"]))
