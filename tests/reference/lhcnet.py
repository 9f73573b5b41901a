"""LHC-Net and qubvel's ResNet34v2 in PyTorch, with Keras weights, the official checkpoint's names and
the Keras .h5 layout.

No library has LHC-Net or qubvel's ResNet34v2 for PyTorch, so both are written below from
docs/methods/lhcnet.md §1.3–1.7 (Keras semantics: ε 2e-5, explicit zero padding, the centring-only
`bn_data`). They read weights by Keras layer name, so the checkpoint's attribute paths and the
.h5 layer names are produced from those names by the rules of docs/methods/lhcnet.md §1.12.
"""

import h5py
import numpy as np
import torch
import torch.nn.functional as F

HEADS, EMBED = (10, 10, 5, 5, 1), (20, 20, 10, 3, 5)
STAGES, WIDTHS = (3, 4, 6, 3), (64, 128, 256, 512)
EPSILON, MOMENTUM = 2e-5, 0.99


def keras_weights(config, seed):
  """Random weights under Keras layer names (qubvel's for the backbone), in Keras layouts."""
  rng = np.random.default_rng(seed)
  weights = {}

  def conv(name, k, cin, cout, bias=False):
    weights[f"{name}/kernel"] = rng.normal(0, (k * k * cin) ** -0.5, (k, k, cin, cout)).astype(np.float32)
    if bias:
      weights[f"{name}/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)

  def bn(name, c, scale=True):
    if scale:
      weights[f"{name}/gamma"] = rng.uniform(0.1, 0.4, c).astype(np.float32)
    weights[f"{name}/beta"] = rng.normal(0, 0.1, c).astype(np.float32)
    weights[f"{name}/moving_mean"] = rng.normal(0, 0.5, c).astype(np.float32)
    weights[f"{name}/moving_variance"] = rng.uniform(0.5, 2.0, c).astype(np.float32)

  bn("bn_data", 3, scale=False)
  weights["bn_data/moving_mean"] = rng.uniform(100, 150, 3).astype(np.float32)
  weights["bn_data/moving_variance"] = rng.uniform(3000, 5000, 3).astype(np.float32)
  conv("conv0", 7, 3, 64)
  bn("bn0", 64)
  channels = 64
  for stage, (units, width) in enumerate(zip(STAGES, WIDTHS), start=1):
    for unit in range(1, units + 1):
      name = f"stage{stage}_unit{unit}"
      bn(f"{name}_bn1", channels)
      conv(f"{name}_conv1", 3, channels, width)
      bn(f"{name}_bn2", width)
      conv(f"{name}_conv2", 3, width, width)
      if unit == 1:
        conv(f"{name}_sc", 1, channels, width)
      channels = width
  bn("bn1", 512)
  for index, (heads, embed) in enumerate(zip(HEADS, EMBED), start=1):
    channels, resolution = (64, 128, 256, 512)[max(index - 2, 0)], (20, 20, 10, 5, 3)[index - 1]
    band = resolution ** 2 // heads
    for head in range(heads):
      weights[f"lhc{index}/Wqk/{head}/kernel"] = rng.normal(0, 0.3, (band, embed)).astype(np.float32)
      weights[f"lhc{index}/Wqk/{head}/bias"] = rng.normal(0, 0.1, embed).astype(np.float32)
    conv(f"lhc{index}/Wv", 3, channels, channels, bias=True)
    weights[f"lhc{index}/Wp/kernel"] = rng.normal(0, 0.1, (channels, channels)).astype(np.float32)
    weights[f"lhc{index}/Wp/bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
    weights[f"controller{index}/w"] = np.float32(rng.uniform(-1, 1))
  for name, (cin, cout) in {"fc1": (512, 4096), "fc2": (4096, 1024), "fc3": (1024, 7)}.items():
    weights[f"{name}/kernel"] = rng.normal(0, cin ** -0.5, (cin, cout)).astype(np.float32)
    weights[f"{name}/bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
  return weights


def tf_checkpoint_names(weights):
  """Keras layer names → the attribute paths of the official subclassed model (§1.12)."""
  owners = {1: "conv1", 2: "conv2_3", 3: "conv3_4", 4: "conv4_6", 5: "conv5_3"}
  stem = {"bn_data": "conv1/bn1", "conv0": "conv1/conv1", "bn0": "conv1/bn2", "bn1": "bn"}
  renamed = {}
  for name, value in weights.items():
    layer, _, weight = name.partition("/")
    if layer in stem:
      layer = stem[layer]
    elif layer.startswith("stage"):
      stage, unit, part = layer[len("stage"):].split("_")
      layer = f"conv{int(stage) + 1}_{unit[len('unit'):]}/{'convId' if part == 'sc' else part}"
    elif layer.startswith("lhc"):
      layer = f"{owners[int(layer[3:])]}/LHC_Module"
    renamed[f"{layer}/{weight}"] = value
  return renamed


def torch_weights(weights, name):
  return {k.rpartition("/")[2]: v if torch.is_tensor(v) else torch.from_numpy(np.asarray(v))
          for k, v in weights.items() if k.rpartition("/")[0] == name}


def batch_norm(x, w, train=False):
  """Keras BatchNormalization; in training on the batch's statistics, the moving ones updated
  in place with momentum 0.99 and the unbiased batch variance (Keras' fused float32 kernel)."""
  scale = w.get("gamma", torch.ones_like(w["beta"]))
  return F.batch_norm(x, w["moving_mean"], w["moving_variance"], scale, w["beta"], train, 1 - MOMENTUM, EPSILON)


def keras_conv(x, w, stride=1, pad=0):
  return F.conv2d(F.pad(x, (pad,) * 4), w["kernel"].permute(3, 2, 0, 1), w.get("bias"), stride)


def lhc_module(x, w, heads, embed, gain):
  """docs/methods/lhcnet.md §1.4, channels-first."""
  batch, channels, height, width = x.shape
  band = height * width // heads

  def to_heads(t):
    return t.reshape(batch, channels, heads, band).permute(0, 2, 1, 3)

  query = to_heads(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
  key = to_heads(F.max_pool2d(x, 3, 1, 1))
  value = to_heads(F.avg_pool2d(keras_conv(x, w["Wv"], pad=1), 3, 1, 1, count_include_pad=False))
  kernels = torch.stack([w["Wqk"][j]["kernel"] for j in range(heads)])
  biases = torch.stack([w["Wqk"][j]["bias"] for j in range(heads)])
  q = torch.einsum("bhcp,hpe->bhce", query, kernels) + biases[:, None]
  k = torch.einsum("bhcp,hpe->bhce", key, kernels) + biases[:, None]
  scores = q @ k.transpose(-1, -2)
  gate = torch.sigmoid(scores.mean(dim=-1) @ w["Wp"]["kernel"] + w["Wp"]["bias"])
  attention = torch.softmax(scores / float(embed) ** (1.0 + gate[..., None]), dim=-1)
  out = (attention @ value).permute(0, 2, 1, 3).reshape(batch, channels, height, width)
  return x + gain * out


def reference_forward(x, weights, with_lhc, with_head, train=False):
  """Pre-activation ResNet34v2 (+ LHC modules, + head) on NCHW raw pixels; LHC-NetC's gains when
  `weights` has them. Weights may be NumPy arrays or tensors; `train`: BatchNorm in training."""
  def w(name):
    return torch_weights(weights, name)

  def norm(t, name):
    return batch_norm(t, w(name), train)

  def lhc(t, index):
    if not with_lhc:
      return t
    parts = {"Wv": w(f"lhc{index}/Wv"), "Wp": w(f"lhc{index}/Wp"),
             "Wqk": [w(f"lhc{index}/Wqk/{j}") for j in range(HEADS[index - 1])]}
    controller = weights.get(f"controller{index}/w")
    gain = 1.0 if controller is None else 1.0 + torch.tanh(torch.as_tensor(controller))
    return lhc_module(t, parts, HEADS[index - 1], EMBED[index - 1], gain)

  x = norm(x, "bn_data")
  x = F.relu(norm(keras_conv(x, w("conv0"), 2, 3), "bn0"))
  x = lhc(F.max_pool2d(F.pad(x, (1,) * 4), 3, 2), 1)
  for stage, units in enumerate(STAGES, start=1):
    for unit in range(1, units + 1):
      name = f"stage{stage}_unit{unit}"
      stride = 2 if stage > 1 and unit == 1 else 1
      activated = F.relu(norm(x, f"{name}_bn1"))
      shortcut = keras_conv(activated, w(f"{name}_sc"), stride) if unit == 1 else x
      y = F.relu(norm(keras_conv(activated, w(f"{name}_conv1"), stride, 1), f"{name}_bn2"))
      x = keras_conv(y, w(f"{name}_conv2"), 1, 1) + shortcut
    x = lhc(x, stage + 1)
  x = F.relu(norm(x, "bn1"))
  if not with_head:
    return x
  x = x.mean(dim=(2, 3))
  for name in ("fc1", "fc2"):
    x = F.relu(x @ w(name)["kernel"] + w(name)["bias"])
  return x @ w("fc3")["kernel"] + w("fc3")["bias"]


def reference_sgd_step(images, labels, weights, learning_rate):
  """One Keras SGD step of LHC-Net in float64: w ← w − lr · ∂L/∂w, L the batch mean of the
  softmax cross-entropy, BatchNorm in training (moving statistics updated). Returns (L, weights)."""
  statistic = lambda name: name.endswith(("moving_mean", "moving_variance"))
  tensors = {name: torch.tensor(np.asarray(value, np.float64), requires_grad=not statistic(name))
             for name, value in weights.items()}
  logits = reference_forward(torch.from_numpy(np.asarray(images, np.float64).transpose(0, 3, 1, 2)), tensors,
                             True, True, train=True)
  loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(labels, np.int64)))
  loss.backward()
  with torch.no_grad():
    updated = {name: (t - learning_rate * t.grad if t.requires_grad else t).numpy() for name, t in tensors.items()}
  return loss.item(), updated


def with_optimizer_state(weights):
  """What `save_weights` adds after training: optimizer variables and slots (TF 2.4 and 2.15 names)."""
  extra = {"optimizer/iter": np.int64(900), "optimizer/learning_rate": np.float32(0.01),
           "optimizer/_variables/3": np.zeros(64, np.float32),
           "conv2_1/bn1/gamma/.OPTIMIZER_SLOT/optimizer/m": np.zeros(64, np.float32)}
  return {**weights, **extra}


def write_keras_h5(weights, path):
  """Keras 2 `save_weights` layout: one group per layer, `weight_names` attributes, ':0' suffixes."""
  layers = {}
  for name in weights:
    if not name.startswith(("lhc", "controller", "fc")):
      layers.setdefault(name.rpartition("/")[0], []).append(name)
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [layer.encode() for layer in ["data", *layers]]
    f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.4.0"
    f.create_group("data").attrs["weight_names"] = []
    for layer, names in layers.items():
      group = f.create_group(layer)
      group.attrs["weight_names"] = [f"{name}:0".encode() for name in names]
      for name in names:
        group[f"{name}:0"] = weights[name]
