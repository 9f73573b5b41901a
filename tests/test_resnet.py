import jax
from jax import export
import jax.numpy as jnp

from fer_jax.models import fast_ops
from fer_jax.models.backbones import resnet
from fer_jax.summary import count_params


def _init(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def test_resnet18_trunk_matches_torchvision_count():
  # torchvision resnet18 has 11,689,512 parameters; its fc (512·1000 + 1000) is not in the trunk.
  assert count_params(_init(resnet.ResNet18(), 224)["params"]) == 11_689_512 - 513_000


def test_resnet50_to_layer3_count():
  # torchvision resnet50 conv1…layer3 (docs/methods/README.md §9: the SCAN-CCI trunk).
  assert count_params(_init(resnet.ResNet50(num_stages=3), 224)["params"]) == 8_543_296


def test_stage_shapes_and_strides():
  model = resnet.ResNet18()
  x = jnp.zeros((2, 224, 224, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  shapes = {k: v.shape for k, v in model.apply(variables, x, train=False).items()}
  assert shapes == {"layer1": (2, 56, 56, 64), "layer2": (2, 28, 28, 128),
                    "layer3": (2, 14, 14, 256), "layer4": (2, 7, 7, 512)}
  shapes50 = jax.eval_shape(lambda: resnet.ResNet50(num_stages=3).init_with_output(
      jax.random.key(0), x, train=False)[0])
  assert shapes50["layer2"].shape == (2, 28, 28, 512) and shapes50["layer3"].shape == (2, 14, 14, 1024)


def test_projection_shortcut_only_where_shape_changes():
  params = _init(resnet.ResNet18(), 64)["params"]
  with_projection = sorted(name for name, block in params.items() if "downsample_conv" in block)
  assert with_projection == ["layer2_0", "layer3_0", "layer4_0"]
  params50 = _init(resnet.ResNet50(num_stages=3), 64)["params"]
  assert sorted(n for n, b in params50.items() if "downsample_conv" in b) == ["layer1_0", "layer2_0", "layer3_0"]
  assert params50["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # stride sits on the 3×3


def _bottleneck_gradient(platform: str):
  """The lowered gradient of two ResNet-50 blocks in training mode, for `platform`."""
  blocks = [resnet.Bottleneck(16, name=f"block{index}") for index in range(2)]
  x = jnp.ones((2, 8, 8, 64))
  variables = [block.init(jax.random.key(index), x, train=False) for index, block in enumerate(blocks)]

  def loss(params, x):
    for block, block_params, block_variables in zip(blocks, params, variables):
      x, _ = block.apply({**block_variables, "params": block_params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(x))
  shapes = ([v["params"] for v in variables], x)
  return export.export(jax.jit(jax.grad(loss)), platforms=[platform])(*jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), shapes)).mlir_module()


def test_a_bottleneck_stores_its_input_for_its_readers_on_the_cpu_only(monkeypatch):
  """XLA:CPU recomputed a block's output in each reader of it (the next block's 1×1 convolutions and
  its shortcut) from the block's three operands; stored on the CPU, it is read. Each block's 3×3
  convolution stores its own input too; the first block's input, the data, needs no gradient, and
  lowered for CUDA nothing is stored."""
  cases = lambda platform: _bottleneck_gradient(platform).count("stablehlo.case")
  assert cases("cpu") == cases("cuda") + 3  # two 3×3 convolutions' inputs and the second block's
  monkeypatch.setattr(fast_ops, "stored", lambda x: x)
  assert cases("cpu") == cases("cuda")  # the three more are `stored`'s
