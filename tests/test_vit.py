"""ViT blocks against a NumPy transcription of timm's original ViT (pre-norm, qkv without bias)."""

import math

import jax
from jax import export
import jax.numpy as jnp
import numpy as np

from fer_jax.models.backbones import vit

WIDTH, HEADS, MLP, TOKENS = 12, 3, 20, 5


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _attention(x, p):
  """timm: qkv reshaped (B, N, 3, heads, d), logits (q @ kᵀ) * d^-0.5, softmax, proj."""
  batch, tokens, width = x.shape
  head_dim = width // HEADS
  qkv = (x @ p["qkv"]["kernel"]).reshape(batch, tokens, 3, HEADS, head_dim).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv
  logits = (q @ k.transpose(0, 1, 3, 2)) * head_dim**-0.5
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  y = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, width)
  return y @ p["proj"]["kernel"] + p["proj"]["bias"], logits


def _mlp(x, p):
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def _random_block_params(block, x):
  params = block.init(jax.random.key(0), x)["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def test_attention_matches_reference_and_returns_the_cls_row_of_pre_softmax_logits():
  attention = vit.Attention(HEADS)
  x = jax.random.normal(jax.random.key(2), (2, TOKENS, WIDTH))
  params = attention.init(jax.random.key(0), x)["params"]
  assert set(params["qkv"]) == {"kernel"}   # no qkv bias
  y, cls_logits = attention.apply({"params": params}, x)
  ref_y, ref_logits = _attention(np.asarray(x, np.float64), _np(params))
  np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
  assert cls_logits.shape == (2, HEADS, TOKENS)
  np.testing.assert_allclose(cls_logits, ref_logits[:, :, 0, :], rtol=1e-5, atol=1e-5)


def test_tpu_attention_with_tokens_before_heads_matches_reference():
  """The form TPUs compile (q, k, v and the output each a product with its kernel viewed per head)."""
  attention = vit.Attention(HEADS)
  x = jax.random.normal(jax.random.key(5), (2, TOKENS, WIDTH))
  params = _random_block_params(attention, x)
  y, cls_logits = vit._attend_tokens_before_heads(x, params["qkv"]["kernel"], params["proj"]["kernel"],
                                                 params["proj"]["bias"], num_heads=HEADS, dtype=jnp.float32)
  ref_y, ref_logits = _attention(np.asarray(x, np.float64), _np(params))
  np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cls_logits, ref_logits[:, :, 0, :], rtol=1e-5, atol=1e-5)


def test_attention_takes_q_k_v_as_products_of_their_own_on_tpus_only():
  """TPUs: three q, k, v products, two of attention, one output; elsewhere one qkv product."""
  attention = vit.Attention(HEADS)
  x = jax.ShapeDtypeStruct((2, TOKENS, WIDTH), jnp.float32)
  variables = jax.eval_shape(lambda x: attention.init(jax.random.key(0), x), x)
  forward = jax.jit(attention.apply)
  products = {platform: export.export(forward, platforms=[platform])(variables, x).mlir_module()
              .count("stablehlo.dot_general") for platform in ("tpu", "cuda", "cpu")}
  assert products == {"tpu": 6, "cuda": 4, "cpu": 4}


def test_block_matches_reference_with_exact_gelu_and_epsilon_1e6():
  block = vit.Block(HEADS, MLP)
  x = jax.random.normal(jax.random.key(3), (2, TOKENS, WIDTH))
  params = _random_block_params(block, x)
  p, x64 = _np(params), np.asarray(x, np.float64)
  h = x64 + _attention(_layer_norm(x64, p["norm1"]), p["attn"])[0]
  expected = h + _mlp(_layer_norm(h, p["norm2"]), p["mlp"])
  np.testing.assert_allclose(block.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-4)


def test_attend_then_feed_forward_is_the_block():
  block = vit.Block(HEADS, MLP)
  x = jax.random.normal(jax.random.key(4), (1, TOKENS, WIDTH))
  params = _random_block_params(block, x)
  h, cls_logits = block.apply({"params": params}, x, method=vit.Block.attend)
  y = block.apply({"params": params}, h, method=vit.Block.feed_forward)
  np.testing.assert_allclose(y, block.apply({"params": params}, x), rtol=1e-6)
  assert cls_logits.shape == (1, HEADS, TOKENS)


def test_parameter_names_and_shapes_follow_timm():
  block = vit.Block(8, 2304)
  x = jax.ShapeDtypeStruct((1, 4, 768), jnp.float32)
  params = jax.eval_shape(lambda x: block.init(jax.random.key(0), x), x)["params"]
  shapes = {"/".join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert shapes == {
      "norm1/scale": (768,), "norm1/bias": (768,),
      "attn/qkv/kernel": (768, 2304),
      "attn/proj/kernel": (768, 768), "attn/proj/bias": (768,),
      "norm2/scale": (768,), "norm2/bias": (768,),
      "mlp/fc1/kernel": (768, 2304), "mlp/fc1/bias": (2304,),
      "mlp/fc2/kernel": (2304, 768), "mlp/fc2/bias": (768,)}
  assert sum(math.prod(s) for s in shapes.values()) == 5_905_152


def test_bfloat16_compute_keeps_float32_params():
  block = vit.Block(HEADS, MLP, dtype=jnp.bfloat16)
  x = jnp.ones((1, TOKENS, WIDTH), jnp.bfloat16)
  variables = block.init(jax.random.key(0), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  h, cls_logits = block.apply(variables, x, method=vit.Block.attend)
  assert h.dtype == jnp.bfloat16 and cls_logits.dtype == jnp.bfloat16
