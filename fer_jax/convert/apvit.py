"""APViT's released checkpoint and the two backbones its training starts from (docs/methods/apvit.md §3).

Sources:
  apvit     `APViT_RAF-3eeecf7d.pth`, an mmcv checkpoint {meta, state_dict}; meta.CLASSES names
            the classes in the order of the outputs, which the config's must be. Keys:
            extractor.input_layer.{0 conv, 1 BN, 2 PReLU},
            extractor.body.{stage}.{unit}.{res_layer.{0 BN, 1 conv, 2 PReLU, 3 conv, 4 BN},
            shortcut_layer.{0 conv, 1 BN}}, vit.projs.0, vit.cls_token, vit.patch_pos_embed,
            vit.cls_pos_embed, vit.blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
            mlp.fc2}, vit.norm, head.fc. Dropped: BatchNorm `num_batches_tracked` counters.
  ir50      face.evoLVe's `backbone_ir50_ms1m_epoch120.pth`: flat keys input_layer.*,
            body.N.* with N counting units over all four stages (the official loader renumbers
            them per stage; fer_jax's IR trunk counts the same way as the file), output_layer.*.
            Dropped as the official non-strict load ignores them: the units past the
            configured stages (stage 4, body.21–23) and output_layer.*.
  timm_vit  timm's original `vit_small_p16_224-15ec54c9.pth` (width 768, 8 blocks, 8 heads,
            MLP 2304, qkv without bias): blocks.*, norm and cls_token are copied; pos_embed
            is split into its CLS row (→ vit/cls_pos_embed) and its patch rows
            (→ vit/patch_pos_embed, which must have the same number of patches: no
            interpolation). Dropped as the official loader deletes them: patch_embed.* and
            head.*; blocks past the configured depth (ignored by the non-strict load).
  vit_npz   the same ViT in Google's `.npz` layout (Transformer/encoderblock_{i}/…, cls,
            Transformer/posembed_input/pos_embedding): query/key/value kernels (D, heads,
            head_dim) are joined into the qkv kernel and out/kernel (heads, head_dim, D)
            flattened. Dropped: embedding/*, head/*, pre_logits/*, and the query/key/value
            biases if they are all zero (APViT's qkv has none; non-zero biases are an error).
With ir50, timm_vit or vit_npz the rest of the model is freshly initialised (seeded); pass
both backbones at once (`--checkpoint=IR50 --checkpoint=VIT`) for the paper's starting point.
"""

import re

import numpy as np

from fer_jax.convert import classes
from fer_jax.convert import core

RULES: tuple[core.Rule, ...] = (
    (r"extractor/input_layer_(\d)", r"extractor.input_layer.\1"),
    (r"vit/projs_0", "vit.projs.0"),
    (r"vit/blocks_(\d+)/(.+)", lambda m: f"vit.blocks.{m[1]}.{m[2].replace('/', '.')}"),
    (r"vit/norm", "vit.norm"),
    (r"head/fc", "head.fc"),
)
VIT_PARAMETERS = ("cls_token", "patch_pos_embed", "cls_pos_embed")


def _ir_unit_names(stage_sizes) -> dict[int, str]:
  """fer_jax's flat unit index → the official per-stage "stage.unit"."""
  names, index = {}, 0
  for stage, size in enumerate(stage_sizes):
    for unit in range(size):
      names[index] = f"{stage}.{unit}"
      index += 1
  return names


def _ir_module(module: str, unit_name) -> str | None:
  match = re.fullmatch(r"extractor/body_(\d+)/(res_layer|shortcut_layer)_(\d)", module)
  return f"extractor.body.{unit_name(int(match[1]))}.{match[2]}.{match[3]}" if match else None


CHECKPOINT_KEYS = core.Selector(present=("extractor.*", "vit.cls_token"), containers=("state_dict",))


def recorded_classes(loaded) -> tuple[str, ...] | None:
  """mmcv's `meta.CLASSES`: the class names, in the order of the model's outputs."""
  meta = loaded.get("meta") if isinstance(loaded, dict) else None
  names = meta.get("CLASSES") if isinstance(meta, dict) else None
  return tuple(names) if isinstance(names, (list, tuple)) and names else None


def mismatch(tensors, config) -> str | None:
  return classes.classes_mismatch(tensors, config, "head.fc.weight", axis=0)


def map_checkpoint(tensors: core.Tensors, target: core.Target, config) -> None:
  unit_names = _ir_unit_names(config.model.ir_stage_sizes)
  for module in target.modules():
    if module == "vit":
      for leaf in VIT_PARAMETERS:
        core.copy_leaf(tensors, target, module, leaf, f"vit.{leaf}")
      continue
    source = _ir_module(module, unit_names.__getitem__) or core.rename(module, RULES)
    core.copy_module(tensors, target, module, source, core.TORCH)


IR50_KEYS = core.Selector(present=("input_layer.0.weight", "body.0.res_layer.0.weight"), containers=("state_dict",))


def map_ir50(tensors: core.Tensors, target: core.Target, config) -> None:
  for module in target.modules("extractor"):
    source = _ir_module(module, str) or core.rename(module, RULES)
    core.copy_module(tensors, target, module, source.removeprefix("extractor."), core.TORCH)
  num_units = sum(config.model.ir_stage_sizes)
  for name in tensors.names():
    match = re.match(r"body\.(\d+)\.", name)
    if match and int(match[1]) >= num_units:
      tensors.drop(re.escape(name), "IR units past the configured stages (stage 4 is unused by APViT)")
  tensors.drop(r"output_layer\..*", "IR-50's embedding head, unused by APViT")


TIMM_KEYS = core.Selector(present=("pos_embed", "blocks.0.attn.qkv.weight"), containers=("model", "state_dict"))


def _split_pos_embed(tensors: core.Tensors, target: core.Target, name: str) -> None:
  """pos_embed [1, 1 + N, D] → cls_pos_embed [1, 1, D] and patch_pos_embed [1, N, D]."""
  core.copy_leaf(tensors, target, "vit", "cls_pos_embed", name, lambda w: w.reshape(1, -1, w.shape[-1])[:, :1])
  core.copy_leaf(tensors, target, "vit", "patch_pos_embed", name, lambda w: w.reshape(1, -1, w.shape[-1])[:, 1:])


def _drop_deeper_blocks(tensors: core.Tensors, pattern: str, depth: int) -> None:
  for name in tensors.names():
    match = re.match(pattern, name)
    if match and int(match[1]) >= depth:
      tensors.drop(re.escape(name), "ViT blocks past the configured depth (ignored by the official non-strict load)")


def map_timm(tensors: core.Tensors, target: core.Target, config) -> None:
  for module in target.modules("vit"):
    if module == "vit":
      core.copy_leaf(tensors, target, "vit", "cls_token", "cls_token")
      _split_pos_embed(tensors, target, "pos_embed")
    elif module != "vit/projs_0":
      core.copy_module(tensors, target, module, core.rename(module, RULES).removeprefix("vit."), core.TORCH)
  tensors.drop(r"(patch_embed|head)\..*", "patch embedding and ImageNet head; the official loader deletes them")
  _drop_deeper_blocks(tensors, r"blocks\.(\d+)\.", config.model.depth)


NPZ_BLOCK = {"norm1": "LayerNorm_0", "norm2": "LayerNorm_2", "mlp/fc1": "MlpBlock_3/Dense_0",
             "mlp/fc2": "MlpBlock_3/Dense_1"}


NPZ_KEYS = core.Selector(present=("Transformer/posembed_input/pos_embedding",))


def _join_qkv(tensors: core.Tensors, target: core.Target, module: str, block: str) -> None:
  attention = f"{block}/MultiHeadDotProductAttention_1"
  kernels = [tensors.get(f"{attention}/{part}/kernel") for part in ("query", "key", "value")]
  if all(k is not None for k in kernels):
    target.put_transformed(module, "kernel", kernels,
                           lambda parts: np.concatenate([k.reshape(k.shape[0], -1) for k in parts], axis=1),
                           f"{attention}/{{query,key,value}}/kernel")
  for part in ("query", "key", "value"):
    name = f"{attention}/{part}/bias"
    if name in tensors and np.any(tensors.tensors[name]):
      target.problems.append(f"{name} is non-zero, but APViT's qkv projection has no bias")
    tensors.drop(re.escape(name), "all-zero qkv biases (APViT's qkv has no bias)")


def map_npz(tensors: core.Tensors, target: core.Target, config) -> None:
  for module in target.modules("vit"):
    match = re.fullmatch(r"vit/blocks_(\d+)/(.+)", module)
    if module == "vit":
      core.copy_leaf(tensors, target, "vit", "cls_token", "cls")
      _split_pos_embed(tensors, target, "Transformer/posembed_input/pos_embedding")
    elif module == "vit/norm":
      core.copy_module(tensors, target, module, "Transformer/encoder_norm", core.FLAX)
    elif match and match[2] == "attn/qkv":
      _join_qkv(tensors, target, module, f"Transformer/encoderblock_{match[1]}")
    elif match and match[2] == "attn/proj":
      out = f"Transformer/encoderblock_{match[1]}/MultiHeadDotProductAttention_1/out"
      core.copy_leaf(tensors, target, module, "kernel", f"{out}/kernel", lambda w: w.reshape(-1, w.shape[-1]))
      core.copy_leaf(tensors, target, module, "bias", f"{out}/bias")
    elif match:
      core.copy_module(tensors, target, module, f"Transformer/encoderblock_{match[1]}/{NPZ_BLOCK[match[2]]}",
                       core.FLAX)
  tensors.drop(r"(embedding|head|pre_logits)/.*", "patch embedding and ImageNet head; the official loader deletes them")
  _drop_deeper_blocks(tensors, r"Transformer/encoderblock_(\d+)/", config.model.depth)
