"""APViT: IR-50 stages 1–3 + ViT with attentive patch and token pooling (docs/methods/apvit.md §3).

Follows the official code: APP scores each position of the projected 14×14 map by Σ_c |z_c|,
adds the patch positional embedding before keeping the top 160 positions in raster order;
ATP, between the attention and MLP halves of blocks 5–8, keeps ⌊0.9·(N−1)⌋ patch tokens ranked
by the sum over heads of the pre-softmax CLS-row logits. Token counts are static
(161 → 145 → 130 → 117 → 105), so the whole model is one jit. Ties keep the lower index
(`lax.top_k`). Unlike the official code, pruning does not depend on the batch size.

Names mirror the official checkpoint (`extractor.*`, `vit.projs.0`, `vit.cls_token`,
`vit.patch_pos_embed`, `vit.cls_pos_embed`, `vit.blocks.i.*`, `vit.norm`, `head.fc`), and the
embeddings keep its [1, N, C] shapes.
"""

import functools
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax import attention_maps
from fer_jax.errors import ConfigError
from fer_jax.models import Method, fast_ops, from_config, layers, module_fields
from fer_jax.models.backbones import irse
from fer_jax.models.backbones import vit

FEATURE_STRIDE = 8  # three stride-2 IR stages: a 112² face gives the 14×14 patch grid


def top_k_sorted(scores, k: int):
  """Indices of the k largest scores along the last axis, in ascending index order."""
  _, indices = jax.lax.top_k(scores, k)
  return jnp.sort(indices, axis=-1)


def gather_tokens(tokens, indices):
  """tokens [B, N, C], indices [B, K] → [B, K, C]."""
  return jnp.take_along_axis(tokens, indices[..., None], axis=1)


def num_kept(num_patch_tokens: int, keep_rate: float) -> int:
  """The official count: max(int(N·rate), 1) patch tokens."""
  return max(int(num_patch_tokens * keep_rate), 1)


def attentive_patch_pooling(projected, pos_embed, keep: int):
  """APP: tokens (+ positional embedding) at the `keep` positions of largest Σ_c |z_c|.

  projected [B, H, W, C], pos_embed [1, H·W, C] → (tokens [B, keep, C], positions [B, keep]).
  """
  tokens = einops.rearrange(projected, "b h w c -> b (h w) c")
  scores = jnp.sum(jnp.abs(tokens.astype(layers.at_least_float32(tokens.dtype))), axis=-1)
  positions = top_k_sorted(scores, keep)
  return gather_tokens(tokens + pos_embed.astype(tokens.dtype), positions), positions


def attentive_token_pooling(tokens, cls_logits, keep: int):
  """ATP: CLS plus the `keep` patch tokens with the largest Σ_heads of their CLS-row logits.

  tokens [B, N, C], cls_logits [B, heads, N] → (tokens [B, 1 + keep, C], kept [B, keep]), where
  `kept` indexes the N − 1 patch tokens.
  """
  scores = jnp.sum(cls_logits[:, :, 1:].astype(layers.at_least_float32(cls_logits.dtype)), axis=1)
  kept = top_k_sorted(scores, keep)
  return jnp.concatenate([tokens[:, :1], gather_tokens(tokens[:, 1:], kept)], axis=1), kept


class PoolingViTSettings(nn.Module):
  """The pooling ViT's fields, which APViT also takes (so `from_config` fills them from config.model)."""
  width: int = 768
  depth: int = 8
  num_heads: int = 8
  mlp_dim: int = 2304
  app_keep: int = 160
  atp_keep_rates: Sequence[float] = (1.0,) * 4 + (0.9,) * 4
  dtype: Any = jnp.float32
  remat: str = "none"


class PoolingViT(PoolingViTSettings):
  """Projection, APP, CLS token, ViT blocks with ATP, final LayerNorm; returns the CLS feature.

  Also returns the grid positions (row-major, over H·W) of the tokens APP kept and of the
  patch tokens left after each block that pooled.
  """

  @nn.compact
  def __call__(self, features):
    batch, height, width, channels = features.shape
    if self.app_keep > height * width:
      raise ConfigError(f"config.model.app_keep={self.app_keep} tokens cannot be kept from the {height}×{width} "
                        f"patch grid (the input's side over {FEATURE_STRIDE}, rounded up): use a larger "
                        f"config.input.size (the paper's 112) or config.model.app_keep ≤ {height * width}.")
    # The official init leaves the projection at PyTorch's default.
    projected = fast_ops.Conv(self.width, (1, 1), kernel_init=layers.torch_kernel_init,
                        bias_init=layers.torch_bias_init(channels), dtype=self.dtype,
                        name="projs_0")(features)
    patch_pos_embed = self.param("patch_pos_embed", vit.dense_init, (1, height * width, self.width))
    cls_token = self.param("cls_token", vit.dense_init, (1, 1, self.width))
    cls_pos_embed = self.param("cls_pos_embed", nn.initializers.zeros, (1, 1, self.width))

    x, positions = attentive_patch_pooling(projected, patch_pos_embed, self.app_keep)
    cls = jnp.broadcast_to((cls_token + cls_pos_embed).astype(x.dtype), (batch, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    app_positions, atp_positions = positions, []
    block_class = layers.rematerialised(vit.Block, self.remat, methods=["attend", "feed_forward"])
    for index in range(self.depth):
      block = block_class(self.num_heads, self.mlp_dim, self.dtype, name=f"blocks_{index}")
      x, cls_logits = block.attend(x)
      keep = num_kept(x.shape[1] - 1, self.atp_keep_rates[index])
      if keep < x.shape[1] - 1:
        x, kept = attentive_token_pooling(x, cls_logits, keep)
        positions = jnp.take_along_axis(positions, kept, axis=1)
        atp_positions.append(positions)
      x = block.feed_forward(x)
    x = vit.layer_norm(self.dtype, "norm")(x)
    return x[:, 0], app_positions, tuple(atp_positions)


class ClassifierHead(nn.Module):
  """The official LinearClsHead: one zero-initialised Linear."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="fc")(x)


class APViT(PoolingViTSettings):
  """IR-50 stages 1–3 (`extractor`), the pooling ViT on their map (`vit`), a linear `head`."""
  num_classes: int = 7
  ir_stage_sizes: Sequence[int] = irse.IR50_STAGE_SIZES[:3]

  @nn.compact
  def __call__(self, images, train: bool) -> dict:
    features = irse.IRSE(self.ir_stage_sizes, num_stages=3, dtype=self.dtype, remat=self.remat,
                         name="extractor")(images.astype(self.dtype), train)["stage3"]
    settings = {name: getattr(self, name) for name in module_fields(PoolingViTSettings)}
    cls, app_positions, atp_positions = PoolingViT(**settings, name="vit")(features)
    logits = ClassifierHead(self.num_classes, name="head")(cls.astype(layers.at_least_float32(self.dtype)))
    return {"logits": logits, "app_positions": app_positions, "atp_positions": atp_positions}


def config_problems(config) -> list[str]:
  """The per-block lists and head count of config.model, checked before any work (fer_jax.validation)."""
  depth, width, heads, rates, stages = (config.model.get(name, getattr(APViT, name)) for name in
                                        ("depth", "width", "num_heads", "atp_keep_rates", "ir_stage_sizes"))
  problems = []
  if len(rates) != depth or not all(0 < rate <= 1 for rate in rates):
    problems.append(f"config.model.atp_keep_rates={tuple(rates)} needs one keep rate in (0, 1] per block, "
                    f"config.model.depth={depth}: give {depth} rates or change the depth.")
  if heads < 1 or width % heads:
    problems.append(f"config.model.num_heads={heads} must divide config.model.width={width}: choose a head count "
                    "that does (the paper's 8 for 768).")
  if len(stages) != 3:
    problems.append(f"config.model.ir_stage_sizes={tuple(stages)} needs the unit counts of the 3 IR stages APViT uses "
                    f"(the paper's {irse.IR50_STAGE_SIZES[:3]}).")
  return problems


METHOD = Method(build=functools.partial(from_config, APViT), loss_keys=(),
                save_attention_maps=functools.partial(attention_maps.save_apvit_maps, patch_size=FEATURE_STRIDE),
                config_problems=config_problems)
