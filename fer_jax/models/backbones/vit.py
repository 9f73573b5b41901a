"""Pre-norm ViT blocks in timm's original form (docs/methods/apvit.md §3.5), with the attention logits exposed.

Names follow timm so that converting a ViT checkpoint is a plain key map: `blocks.i.norm1` →
`blocks_i/norm1`, `blocks.i.attn.qkv` → `blocks_i/attn/qkv` (rows [q; k; v], each split
head-major), `blocks.i.attn.proj`, `blocks.i.norm2`, `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2`.
A block splits into `attend` and `feed_forward` so that a caller can drop tokens in between,
ranked by the CLS row of the pre-softmax logits that `attend` returns.
"""

import functools
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


class DenseParameters(nn.Module):
  """nn.Dense's parameters (kernel [in, features], bias [features]), same names and initialisers,
  for a caller that multiplies by them itself."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", dense_init, (in_features, self.features))
    return kernel, (self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None)


class Attention(nn.Module):
  """Multi-head self-attention, qkv without bias, logits (q·kᵀ)·head_dim^-0.5.

  Returns the projected output and the CLS query row of the pre-softmax logits, [B, heads, N].
  Parameters as two nn.Dense, `qkv` and `proj`. TPUs take q, k and v as products of their own, tokens
  before heads (`_attend_tokens_before_heads`: no head split for the compiler to copy); XLA's GPU
  compiler builds no GEMM for those products without autotuning (docs/performance.md).
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    qkv_kernel, _ = DenseParameters(3 * width, use_bias=False, name="qkv")(width)
    proj_kernel, proj_bias = DenseParameters(width, name="proj")(width)
    heads_first = functools.partial(_attend_heads_first, num_heads=self.num_heads, dtype=self.dtype)
    tokens_before_heads = functools.partial(_attend_tokens_before_heads, num_heads=self.num_heads, dtype=self.dtype)
    return lax.platform_dependent(x, qkv_kernel, proj_kernel, proj_bias, tpu=tokens_before_heads, default=heads_first)


def _linear(x, kernel, bias, dtype):
  """nn.Dense's product: x · kernel over x's last axis, in `dtype`, plus bias."""
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
  y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _softmax_attention(q, k, v, dtype, layout="bhnd"):
  """(softmax(q·kᵀ·d^-0.5)·v, logits [B, heads, N, N]); q, k, v and the result laid out as `layout`,
  "bhnd" or "bnhd"; the softmax in at least float32."""
  queries, keys = layout.replace("n", "q"), layout.replace("n", "k")
  logits = jnp.einsum(f"{queries},{keys}->bhqk", q, k) * q.shape[-1]**-0.5
  weights = jax.nn.softmax(logits.astype(layers.at_least_float32(dtype)), axis=-1).astype(dtype)
  return jnp.einsum(f"bhqk,{keys}->{queries}", weights, v), logits


def _attend_heads_first(x, qkv_kernel, proj_kernel, proj_bias, num_heads, dtype):
  """The qkv product [B, N, 3C] rearranged into heads, as timm splits it; the output merged back."""
  with jax.named_scope("qkv"):
    qkv = _linear(x, qkv_kernel, None, dtype)
  q, k, v = einops.rearrange(qkv, "b n (qkv h d) -> qkv b h n d", qkv=3, h=num_heads)
  y, logits = _softmax_attention(q, k, v, dtype)
  with jax.named_scope("proj"):
    return _linear(einops.rearrange(y, "b h n d -> b n (h d)"), proj_kernel, proj_bias, dtype), logits[:, :, 0, :]


def _attend_tokens_before_heads(x, qkv_kernel, proj_kernel, proj_bias, num_heads, dtype):
  """`_attend_heads_first` with q, k, v each a product of x with its third of the kernel viewed [C, heads, d], straight
  to [B, N, heads, d], the attention's products on those, and the output a product over (heads, d)."""
  width = x.shape[-1]
  x, qkv_kernel, proj_kernel, proj_bias = nn.dtypes.promote_dtype(x, qkv_kernel, proj_kernel, proj_bias, dtype=dtype)
  thirds = qkv_kernel.reshape(width, 3, num_heads, width // num_heads)
  with jax.named_scope("qkv"):
    q, k, v = (jnp.einsum("bnc,chd->bnhd", x, thirds[:, i]) for i in range(3))
  y, logits = _softmax_attention(q, k, v, dtype, layout="bnhd")
  with jax.named_scope("proj"):
    return jnp.einsum("bnhd,hdc->bnc", y, proj_kernel.reshape(num_heads, -1, width)) + proj_bias, logits[:, :, 0, :]


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
