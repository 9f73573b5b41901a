"""DAN: ResNet-18 trunk + K cross-attention heads + attention fusion (docs/methods/dan.md §2).

Follows the official code: unnormalised spatial attention (a channel sum of ReLU outputs),
log-softmax across heads, BatchNorm on the logits, the affinity loss on the pooled trunk
features with learnable centres, and the partition loss as log(1 + K / mean variance).
Its attention maps (`fer_jax.visualize`) are those of the official run_grad_cam.py: Grad-CAM++
of the predicted class at each head's spatial attention (`grad_cam_outputs`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax import attention_maps
from fer_jax.models import Method, cross_entropy, fast_ops, from_config, layers
from fer_jax.models.backbones import resnet


head_dense_init = nn.initializers.normal(0.001)


class SpatialGate(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    def conv_bn(y, features, kernel, name):
      y = fast_ops.centred_conv(features, kernel, kernel_init=resnet.conv_init, dtype=self.dtype,
                                name=f"{name}_conv", use_bias=True)(y)
      return layers.torch_batch_norm(train, self.dtype, f"{name}_bn")(y)

    u = conv_bn(x, 256, (1, 1), "conv1x1")
    z = nn.relu(conv_bn(u, 512, (3, 3), "conv_3x3") + conv_bn(u, 512, (1, 3), "conv_1x3")
                + conv_bn(u, 512, (3, 1), "conv_3x1"))
    return x * jnp.sum(z, axis=-1, keepdims=True)


class ChannelGate(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    z = jnp.mean(x, axis=(1, 2))
    a = nn.Dense(32, kernel_init=head_dense_init, dtype=self.dtype, name="fc1")(z)
    a = nn.relu(layers.torch_batch_norm(train, self.dtype, "bn")(a))
    a = nn.Dense(z.shape[-1], kernel_init=head_dense_init, dtype=self.dtype, name="fc2")(a)
    return z * nn.sigmoid(a)


class AttentionHead(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = SpatialGate(self.dtype, name="sa")(x, train)
    return ChannelGate(self.dtype, name="ca")(x, train)


class AffinityCentres(nn.Module):
  num_centres: int
  features: int

  @nn.compact
  def __call__(self):
    return self.param("centres", nn.initializers.normal(1.0), (self.num_centres, self.features))


class DAN(nn.Module):
  num_classes: int = 7
  num_heads: int = 4
  num_centres: int = 8
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    features = resnet.ResNet18(dtype=self.dtype, remat=self.remat, name="trunk")(images, train)["layer4"]
    heads = jnp.stack([AttentionHead(self.dtype, name=f"head{i}")(features, train)
                       for i in range(self.num_heads)], axis=1).astype(layers.at_least_float32(self.dtype))
    if self.num_heads > 1:
      heads = jax.nn.log_softmax(heads, axis=1)
    fused = jnp.sum(heads, axis=1)
    logits = layers.torch_dense(self.num_classes, fused.shape[-1], "fc")(fused)
    logits = layers.torch_batch_norm(train, None, "bn")(logits)
    return {
        "logits": logits,
        "pooled_features": jnp.mean(features.astype(heads.dtype), axis=(1, 2)),
        "heads": heads,
        "centres": AffinityCentres(self.num_centres, features.shape[-1], name="affinity")(),
    }




def affinity_loss(features, centres, labels):
  """Σ_b ‖x_b − c_{y_b}‖² / Σ_d Var_m(c_md) / B, with the official clamp on every matrix entry."""
  distances = (jnp.sum(features**2, axis=1, keepdims=True) + jnp.sum(centres**2, axis=1)[None, :]
               - 2.0 * features @ centres.T)
  mask = jax.nn.one_hot(labels, centres.shape[0], dtype=distances.dtype)
  spread = jnp.sum(jnp.var(centres, axis=0, ddof=1))
  return jnp.sum(jnp.clip(distances * mask / spread, 1e-12, 1e12)) / features.shape[0]


def partition_loss(heads):
  """log(1 + K / (mean over samples and channels of the unbiased variance across K heads))."""
  num_heads = heads.shape[1]
  if num_heads == 1:
    return jnp.zeros((), heads.dtype)
  variance = jnp.mean(jnp.var(heads, axis=1, ddof=1))
  return jnp.log1p(num_heads / (variance + jnp.finfo(jnp.float64).eps))


def loss(outputs, labels, loss_config):
  ce = cross_entropy(outputs["logits"], labels)
  affinity = affinity_loss(outputs["pooled_features"], outputs["centres"], labels)
  partition = partition_loss(outputs["heads"])
  total = ce + loss_config.affinity_weight * affinity + loss_config.partition_weight * partition
  return total, {"ce_loss": ce, "affinity_loss": affinity, "partition_loss": partition}


def grad_cam_outputs(model, variables, images) -> dict:
  """The eval outputs and "head_cams" [batch, heads, height, width]: for each head, the Grad-CAM++ map (0–1, of the
  input's size) of each image's predicted class at the output of its spatial attention (`sa`, the official
  run_grad_cam.py's target layers). One backward pass gives every head's gradient. The score is the logits' (the
  official DAN returns (logits, features, heads), a tuple grad-cam 1.3.1 cannot take: its script ran on logits)."""
  def logits_with_offsets(offsets):
    # Each head's `sa` output, plus a zero offset whose gradient is the gradient with respect to that output.
    spatial = {}

    def add_offset(call, args, kwargs, context):
      output = call(*args, **kwargs)
      if isinstance(context.module, SpatialGate) and context.method_name == "__call__":
        head = context.module.scope.path[-2]
        spatial[head] = output
        output = output + offsets[head].astype(output.dtype) if head in offsets else output
      return output

    with nn.intercept_methods(add_offset):
      outputs = model.apply(variables, images, train=False)
    return outputs["logits"], (outputs, spatial)

  shapes = jax.eval_shape(logits_with_offsets, {})[1][1]
  zeros = {head: jnp.zeros(shape.shape, jnp.float32) for head, shape in shapes.items()}
  logits, pullback, (outputs, spatial) = jax.vjp(logits_with_offsets, zeros, has_aux=True)
  predicted = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
  (gradients,) = pullback(predicted)  # of Σ_b logits[b, predicted_b]
  heads = [f"head{i}" for i in range(len(spatial))]
  cams = [attention_maps.stretched_to_input(attention_maps.grad_cam_plus_plus(spatial[head], gradients[head]),
                                            *images.shape[1:3]) for head in heads]
  return {**outputs, "head_cams": jnp.stack(cams, axis=1)}


def config_problems(config) -> list[str]:
  """The head and centre counts of config.model, checked before any work (fer_jax.validation)."""
  heads, centres = (config.model.get(name, getattr(DAN, name)) for name in ("num_heads", "num_centres"))
  problems = []
  if heads < 1:
    problems.append(f"config.model.num_heads={heads} must be at least 1 (the paper's 4).")
  if centres < config.model.num_classes:
    problems.append(f"config.model.num_centres={centres} must be at least config.model.num_classes="
                    f"{config.model.num_classes}: the affinity loss keeps a centre per class (the official 8).")
  return problems


METHOD = Method(build=functools.partial(from_config, DAN), loss=loss, loss_keys=("affinity_weight", "partition_weight"),
                auxiliary_params=("affinity",), attention_outputs=grad_cam_outputs,
                save_attention_maps=attention_maps.save_dan_maps, config_problems=config_problems)
