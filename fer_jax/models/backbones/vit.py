"""Pre-norm ViT blocks in timm's original form (docs/methods/apvit.md §3.5), with the attention logits exposed.

Names follow timm so that converting a ViT checkpoint is a plain key map: `blocks.i.norm1` →
`blocks_i/norm1`, `blocks.i.attn.qkv` → `blocks_i/attn/qkv` (rows [q; k; v], each split
head-major), `blocks.i.attn.proj`, `blocks.i.norm2`, `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2`.
A block splits into `attend` and `feed_forward` so that a caller can drop tokens in between,
ranked by the CLS row of the pre-softmax logits that `attend` returns.
"""

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fer_jax.models import layers

# timm's trunc_normal_(std=.02) truncates at ±2 (absolute), i.e. ±100 σ: a plain normal.
dense_init = nn.initializers.normal(0.02)
LAYER_NORM_EPSILON = 1e-6


def dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, dtype=dtype, name=name)


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=name)


def gelu(x):
  """GELU as PyTorch's nn.GELU computes it, x·½·(1 + erf(x/√2)); jax.nn.gelu's exact form goes
  through erfc, which XLA:CPU evaluates more slowly."""
  return x * 0.5 * (1 + lax.erf(x * 2**-0.5))


class Attention(nn.Module):
  """Multi-head self-attention, qkv without bias, logits (q·kᵀ)·head_dim^-0.5.

  Returns the projected output and the CLS query row of the pre-softmax logits, [B, heads, N].
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    qkv = dense(3 * width, self.dtype, "qkv", use_bias=False)(x)
    q, k, v = einops.rearrange(qkv, "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * head_dim**-0.5
    weights = jax.nn.softmax(logits.astype(layers.at_least_float32(self.dtype)), axis=-1).astype(self.dtype)
    y = einops.rearrange(jnp.einsum("bhqk,bhkd->bhqd", weights, v), "b h n d -> b n (h d)")
    return dense(width, self.dtype, "proj")(y), logits[:, :, 0, :]


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = dense(self.hidden_dim, self.dtype, "fc1")(x)
    y = gelu(y)
    return dense(x.shape[-1], self.dtype, "fc2")(y)


class Block(nn.Module):
  """x + MSA(LN₁(x)), then x + MLP(LN₂(x)); no dropout or drop-path."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    self.norm1 = layer_norm(self.dtype)
    self.attn = Attention(self.num_heads, self.dtype)
    self.norm2 = layer_norm(self.dtype)
    self.mlp = Mlp(self.mlp_dim, self.dtype)

  def attend(self, x):
    """The attention half: (x + MSA(LN₁(x)), CLS-row logits [B, heads, N])."""
    y, cls_logits = self.attn(self.norm1(x))
    return x + y, cls_logits

  def feed_forward(self, x):
    return x + self.mlp(self.norm2(x))

  def __call__(self, x):
    return self.feed_forward(self.attend(x)[0])
