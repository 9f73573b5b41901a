"""fer_jax.benchmark's synthetic line and its parts (collectives from HLO text, peaks), and the
markdown tables of benchmarks/render_table.py. No timing is asserted: only that each figure is there
and agrees with what can be counted independently."""

import ast
import functools
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import benchmark
from fer_jax import cli
from fer_jax import models
from fer_jax.errors import UserError
from fer_jax.models import fast_ops, layers
import helpers
from tiny_methods.tiny_net import TinyNet

render_table = helpers.load_script("benchmarks/render_table.py")
profile_breakdown = helpers.load_script("benchmarks/profile_breakdown.py")
gpu_compile = helpers.load_script("benchmarks/gpu_compile.py")
tpu_compile = helpers.load_script("benchmarks/tpu_compile.py")
compile_candidates = helpers.load_script("benchmarks/compile_candidates.py")

SYNTHETIC_FIELDS = (
    "init_s", "train_img_per_s", "train_step_ms", "train_compile_s", "train_warmup_s", "train_flops_per_step",
    "train_tflops_per_s", "eval_img_per_s", "eval_step_ms", "eval_compile_s", "eval_warmup_s",
    "eval_flops_per_step", "eval_tflops_per_s", "mfu", "peak_tflops_per_device", "peak_memory_bytes",
    "peak_memory_source", "peak_memory_before_steps_bytes", "train_memory_analysis", "train_saved_for_backward_bytes",
    "train_collectives", "dtype",
    "remat", "batch_size", "input_size")
ENVIRONMENT_FIELDS = ("date", "platform", "device_kind", "devices", "jax", "jaxlib", "backend_version",
                      "host_cpus", "host_cpu_model", "load_average_1m", "compilation_cache_dir")


def tiny_config():
  config = helpers.get_config("configs/dan.py:synthetic")
  config.input.size, config.batch_size = 16, 4
  return config


def tiny_benchmark(steps: int = 1, warmup: int = 1, profile_dir: str = "", network=lambda model_config: TinyNet(),
                   remat: str = "none") -> dict:
  """fer_jax.benchmark's synthetic line for TinyNet (or `network(config.model)`) with DAN's synthetic
  optimizer and input."""
  original = models.get_method
  models.get_method = lambda name: models.Method(build=network)
  config = tiny_config()
  config.model.remat = remat
  try:
    return {**benchmark.environment(),
            **benchmark.benchmark(config, steps=steps, warmup=warmup, profile_dir=profile_dir)}
  finally:
    models.get_method = original


def undocumented(line: dict) -> list[str]:
  """The fields of a benchmark line that fer_jax.benchmark's docstring does not name."""
  return [key for key in line if not re.search(rf"`{key}`|^ *{key}\b|, {key}\b", benchmark.__doc__, re.MULTILINE)]


def _bytes(tree) -> int:
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def test_synthetic_line_holds_every_figure():
  line = tiny_benchmark()

  assert set(SYNTHETIC_FIELDS + ENVIRONMENT_FIELDS) <= set(line)
  assert (line["platform"], line["devices"], line["jax"]) == ("cpu", 1, jax.__version__)
  assert line["train_flops_per_step"] > line["eval_flops_per_step"] > 0  # the backward pass costs more
  assert line["init_s"] > 0 and line["train_compile_s"] > 0 and line["train_warmup_s"] > 0
  assert line["train_img_per_s"] > 0
  for step in ("train", "eval"):  # each figure from the same timing: a unit or a per-device batch slips here
    seconds = line[f"{step}_step_ms"] / 1e3
    assert line[f"{step}_img_per_s"] == pytest.approx(line["batch_size"] / seconds, rel=1e-2)
    assert line[f"{step}_tflops_per_s"] == pytest.approx(line[f"{step}_flops_per_step"] / seconds / 1e12, rel=1e-2,
                                                         abs=1e-4)
  if os.path.exists("/proc/cpuinfo"):  # CPU figures compare only between machines of one CPU model
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      named = re.search(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read(), re.MULTILINE)
    if named:
      assert line["host_cpu_model"] == named.group(1)
  assert line["mfu"] is None and line["peak_tflops_per_device"] is None  # no known peak for a CPU
  # The CPU reports no memory statistics: the planned peak holds at least the train state it is given.
  variables = models.abstract_variables(TinyNet(), tiny_config())
  assert line["peak_memory_source"] == "compiled.memory_analysis" and line["peak_memory_before_steps_bytes"] is None
  assert line["peak_memory_bytes"] >= line["train_memory_analysis"]["argument"] > _bytes(variables)
  assert line["train_collectives"] == {"ops": {}, "bytes": 0, "by_role": {}}  # one device
  assert line["train_saved_for_backward_bytes"] > _bytes(jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32))
  assert line["train_flops_per_step_with_remat"] == line["train_flops_per_step"]  # remat none
  assert not undocumented(line)
  json.dumps(line)


class RematBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(8, (3, 3), name="conv")(nn.relu(nn.Conv(8, (3, 3), name="conv0")(x))))


class RematNet(nn.Module):
  """A block of two convolutions that config.model.remat recomputes in the backward pass."""
  remat: str = "none"

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = layers.rematerialised(RematBlock, self.remat)(name="block")(images)
    return {"logits": nn.Dense(7, name="fc")(jnp.mean(x, (1, 2)))}


def test_mfu_is_the_train_steps_flops_a_second_over_the_devices_peak(monkeypatch):
  """A CPU has no known peak (above): a device with one, and a step timed at 1 µs, so that the figures are exact
  whatever the machine's speed."""
  time_stream = benchmark._time_stream  # pylint: disable=protected-access
  monkeypatch.setattr(benchmark, "_time_stream", lambda *args: (time_stream(*args)[0], 1e-6))
  monkeypatch.setattr(benchmark, "peak_tflops", lambda device_kind: 2.0)
  line = tiny_benchmark()
  tflops_per_s = line["train_flops_per_step"] / 1e-6 / 1e12
  assert line["train_tflops_per_s"] == pytest.approx(tflops_per_s, abs=1e-4) and tflops_per_s > 0.1
  assert line["peak_tflops_per_device"] == 2.0
  assert line["mfu"] == pytest.approx(tflops_per_s / (2.0 * line["devices"]), abs=1e-4)


def test_mfu_counts_the_steps_work_without_what_remat_computes_again():
  """With config.model.remat, the step as lowered computes the block's forward pass again: its FLOPs
  are reported apart (train_flops_per_step_with_remat); train_flops_per_step, TFLOP/s and MFU are of the
  work, the same count as without remat."""
  plain = tiny_benchmark(steps=1, warmup=0, network=lambda model_config: RematNet(model_config.remat))
  blocks = tiny_benchmark(steps=1, warmup=0, network=lambda model_config: RematNet(model_config.remat),
                          remat="blocks")
  assert blocks["remat"] == "blocks"
  assert blocks["train_flops_per_step"] == plain["train_flops_per_step"]
  assert plain["train_flops_per_step_with_remat"] == plain["train_flops_per_step"]
  conv_forward = 2 * 4 * 16 * 16 * 8 * 9 * 8  # the second convolution of the block, computed again
  assert blocks["train_flops_per_step_with_remat"] >= blocks["train_flops_per_step"] + conv_forward
  assert blocks["train_hardware_tflops_per_s"] is not None and not undocumented(blocks)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, images, train: bool):
    del train
    return {"logits": nn.Dense(7, use_bias=False, name="fc")(images.reshape(images.shape[0], -1))}


def test_a_device_peak_is_reported_beside_the_peak_before_the_train_steps(monkeypatch):
  """memory_stats() gives the process's peak since it started, which JAX offers no way to reset: the line's peak
  was the initialisation's or the compilation's (a GPU's autotuning) as much as the step's, and nothing told which.
  The peak read before the first train step is reported beside it; the table marks a peak the steps did not raise."""
  peaks = iter([5 * 2**30, 7 * 2**30])  # before the train steps, after them
  monkeypatch.setattr(benchmark, "_device_peak_bytes", lambda: next(peaks))
  line = tiny_benchmark(steps=1, warmup=0)
  assert (line["peak_memory_before_steps_bytes"], line["peak_memory_bytes"]) == (5 * 2**30, 7 * 2**30)
  assert line["peak_memory_source"] == "device.memory_stats" and not undocumented(line)
  assert render_table.paper_row(line)[-2] == "7.00"
  assert render_table.paper_row({**line, "peak_memory_bytes": 5 * 2**30})[-2] == "5.00 ‡"


def test_eval_flops_of_a_linear_model_are_its_product():
  """The eval step's FLOPs (`program_flops` of the confusion step, as for the train step): a linear model's are its
  product's, 2·B·D·K, and the few of the argmax and the confusion matrix."""
  line = tiny_benchmark(steps=1, warmup=0, network=lambda model_config: Linear())
  product = 2 * 4 * (16 * 16 * 3) * 7
  assert product <= line["eval_flops_per_step"] < 1.05 * product
  assert render_table.paper_row(line)[11] == f"{line['eval_flops_per_step'] / 4 / 1e9:,.2f}"  # eval GFLOP/img


def test_saved_for_backward_bytes_of_a_linear_model_are_its_input():
  """The gradient of x·W with respect to W needs x alone: the forward pass keeps the input images."""
  images = jax.ShapeDtypeStruct((5, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(lambda: Linear().init(jax.random.key(0), jnp.zeros(images.shape), train=False))
  saved = benchmark.saved_for_backward_bytes(Linear(), {"params": variables["params"], "batch_stats": {}}, images)
  assert saved == 5 * 8 * 8 * 3 * 4


class PlatformDependentLinear(nn.Module):
  """sin(x·W) on TPUs, elsewhere the sum of sin over [x·W, x·W] ([B, 14]): each keeps x and a cosine of
  its own shape, [B, 7] or [B, 14], for its gradient (JAX shares residual slots of one shape)."""
  @nn.compact
  def __call__(self, images, train: bool):
    del train
    kernel = self.param("kernel", nn.initializers.zeros, (8 * 8 * 3, 7))
    x = images.reshape(images.shape[0], -1)
    twice = lambda x, w: jnp.sin(jnp.concatenate([x @ w] * 2, axis=1)).reshape(-1, 2, 7).sum(1)
    return {"logits": lax.platform_dependent(x, kernel, tpu=lambda x, w: jnp.sin(x @ w), default=twice)}


def test_saved_for_backward_bytes_count_the_branch_of_a_platform_conditional_that_keeps_most():
  """Each branch of a lax.platform_dependent fills the other's residuals with empty arrays: those are not
  counted: x, the [B, 14] cosine and the platform index; not also the other branch's [B, 7]."""
  images = jax.ShapeDtypeStruct((5, 8, 8, 3), jnp.float32)
  model = PlatformDependentLinear()
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape), train=False))
  saved = benchmark.saved_for_backward_bytes(model, {"params": variables["params"], "batch_stats": {}}, images)
  assert saved == 5 * 8 * 8 * 3 * 4 + 5 * 14 * 4 + 4


def test_profile_breakdown_puts_the_traced_steps_ops_in_categories(tmp_path):
  tiny_benchmark(profile_dir=str(tmp_path))
  by_category, by_op = profile_breakdown.breakdown(str(tmp_path), benchmark.PROFILED_STEPS)
  assert by_category["conv forward"] > 0 and by_category["conv gradient (XLA's)"] > 0
  assert sum(by_op.values()) == pytest.approx(sum(by_category.values()))
  assert any("conv/conv_general_dilated" in op for op in by_op)
  # The train step's convolutions are XLA's own kernels, not YNNPACK fusions (mesh.CPU_COMPILER_OPTIONS).
  hlo = (tmp_path / "train_step.hlo.txt").read_text()
  assert " convolution(" in hlo and not helpers.ynn_convolutions(hlo)


def test_profile_breakdown_of_a_gpu_trace_counts_device_kernels_by_instruction(tmp_path):
  """An H200 trace's shape: cuDNN's kernels name their custom call in `hlo_op`; a kernel that a command
  buffer (CUDA graph) launched names only the command buffer, its own name the fusion's; the host's
  launch events carry instruction names too and are not kernels."""
  (tmp_path / "train_step.hlo.txt").write_text(
      '  %cudnn-conv.1 = (bf16[8,4,4,2]{3,2,1,0}, u8[0]{0}) custom-call(%p.1, %p.2), '
      'custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(Net)/conv/conv_general_dilated"}\n'
      '  %loop_maximum_fusion.3 = bf16[8,4,4,2]{3,2,1,0} fusion(%p.3), kind=kLoop, calls=%fused_maximum, '
      'metadata={op_name="jit(train_step)/jvp(Net)/jit(relu)/max"}\n')
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 701, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "X", "pid": 1, "tid": 14, "dur": 300.0, "name": "sm90_xmma_fprop_implicit_gemm_bf16",
             "args": {"hlo_op": "cudnn-conv.1"}},
            {"ph": "X", "pid": 1, "tid": 14, "dur": 60.0, "name": "loop_maximum_fusion_3",
             "args": {"hlo_op": "command_buffer_9"}},
            {"ph": "X", "pid": 1, "tid": 14, "dur": 9.0, "name": "memcpy32_post", "args": {"hlo_op": "command_buffer_9"}},
            {"ph": "X", "pid": 701, "tid": 2, "dur": 500.0, "name": "cudnn-conv.1"}]
  trace_dir = tmp_path / "plugins" / "profile" / "2026_12_04"
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as file:
    json.dump({"traceEvents": events}, file)
  by_category, by_op = profile_breakdown.breakdown(str(tmp_path), 3)
  assert by_category == {"conv forward": pytest.approx(0.1), "activation forward": pytest.approx(0.02),
                         profile_breakdown.UNATTRIBUTED: pytest.approx(0.003)}
  assert by_op == {"cudnn-conv.1 (jvp(Net)/conv/conv_general_dilated)": pytest.approx(0.1),
                   "loop_maximum_fusion.3 (jvp(Net)/jit(relu)/max)": pytest.approx(0.02)}


DEDUPLICATED_HLO = """HloModule jit_train_step, is_scheduled=true

ENTRY %main.1 (x.1: bf16[8,56,56,64], w.1: bf16[32,3,3,64]) -> (f32[32], f32[32]) {
  %x.1 = bf16[8,56,56,64]{3,2,1,0} parameter(0)
  %w.1 = bf16[32,3,3,64]{3,2,1,0} parameter(1)
  %conv.1 = (bf16[8,54,54,32]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %w.1), window={size=3x3}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(Net)/conv/conv_general_dilated"}
  %y.1 = bf16[8,54,54,32]{3,2,1,0} get-tuple-element(%conv.1), index=0
  %input_reduce_fusion.7 = f32[32]{0} fusion(%y.1), kind=kInput, calls=%sum_body, metadata={op_name="jit(train_step)/jvp(Net)/bn1/reduce_sum" deduplicated_name="input_reduce_fusion.4"}
  %input_reduce_fusion.4 = f32[32]{0} fusion(%y.1), kind=kInput, calls=%sum_body, metadata={op_name="jit(train_step)/jvp(Net)/bn2/reduce_sum" deduplicated_name="input_reduce_fusion.4"}
  ROOT %tuple.1 = (f32[32]{0}, f32[32]{0}) tuple(%input_reduce_fusion.7, %input_reduce_fusion.4)
}
"""


def test_profile_breakdown_gives_a_shared_gpu_kernels_launches_to_its_instructions_in_turn(tmp_path):
  """XLA's GPU compiler emits identical fusions once and a trace names every launch after one of them:
  the launches go to the instructions in the order the step runs them, and each kernel stands beside
  its roofline (benchmarks/gpu_compile.py's, from the same compiled step)."""
  (tmp_path / "train_step.hlo.txt").write_text(DEDUPLICATED_HLO)
  kernel = lambda ts, dur, name, hlo_op: {"ph": "X", "pid": 1, "tid": 7, "ts": ts, "dur": dur, "name": name,  # noqa: E731
                                          "args": {"hlo_op": hlo_op}}
  events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            kernel(0, 500.0, "sm90_xmma_fprop", "conv.1"), kernel(600, 10.0, "input_reduce_fusion_4", "command_buffer_1"),
            kernel(700, 20.0, "input_reduce_fusion_4", "command_buffer_1"), kernel(1000, 300.0, "sm90_xmma_fprop", "conv.1"),
            kernel(1400, 30.0, "input_reduce_fusion_4", "command_buffer_1"),
            kernel(1500, 40.0, "input_reduce_fusion_4", "command_buffer_1")]
  trace_dir = tmp_path / "plugins" / "profile" / "2026_12_04_evening"
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as file:
    json.dump({"traceEvents": events}, file)
  by_instruction, unattributed, _ = profile_breakdown.measured_instructions(str(tmp_path), 2)
  assert by_instruction == {"conv.1": pytest.approx(0.4), "input_reduce_fusion.7": pytest.approx(0.02),
                            "input_reduce_fusion.4": pytest.approx(0.03)} and unattributed == 0
  categories, rows = profile_breakdown.against_roofline(str(tmp_path), 2, bandwidth=1e12)
  x, w, y = 8 * 56 * 56 * 64 * 2, 32 * 9 * 64 * 2, 8 * 54 * 54 * 32 * 2
  conv_ms = 1e3 * max((x + w + y) / 1e12, 2 * (8 * 54 * 54 * 32) * 9 * 64 / gpu_compile.HOPPER_PEAK_FLOPS["bf16"])
  reduce_ms = 1e3 * (y + 32 * 4) / 1e12
  assert [(row["instruction"], row["measured_ms"], row["roofline_ms"], row["excess_ms"]) for row in rows] == [
      ("conv.1", pytest.approx(0.4), pytest.approx(conv_ms), pytest.approx(0.4 - conv_ms)),
      ("input_reduce_fusion.4", pytest.approx(0.03), pytest.approx(reduce_ms), pytest.approx(0.03 - reduce_ms)),
      ("input_reduce_fusion.7", pytest.approx(0.02), pytest.approx(reduce_ms), pytest.approx(0.02 - reduce_ms))]
  assert [(row["category"], row["measured_ms"]) for row in categories] == [
      ("conv forward", pytest.approx(0.4)), ("BatchNorm forward", pytest.approx(0.05))]


def test_program_flops_count_a_convolution_and_a_product_by_their_formulas():
  """2 × outputs × taps × input features, and 2 × M × K × N: what MFU divides by the device's peak."""
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  lowered = jax.jit(conv).lower(jax.ShapeDtypeStruct((8, 57, 57, 3), jnp.bfloat16),
                                jax.ShapeDtypeStruct((7, 7, 3, 64), jnp.bfloat16))
  assert benchmark.program_flops(lowered) == 2 * (8 * 26 * 26 * 64) * (7 * 7) * 3
  lowered = jax.jit(jnp.dot).lower(jax.ShapeDtypeStruct((32, 64), jnp.float32), jax.ShapeDtypeStruct((64, 16), jnp.float32))
  assert benchmark.program_flops(lowered) == 2 * 32 * 64 * 16


@pytest.mark.parametrize("variant, size, kernel_shape", [("conv_input_channels_padded", 17, "7x7x8x8"),
                                                         ("conv_stem_space_to_depth", 17, "4x4x16x8"),
                                                         ("conv_stem_space_to_depth", 18, "4x4x16x8"),
                                                         ("conv_stem_patches_product", 17, "147x8"),
                                                         ("conv_stem_patches_product", 18, "147x8")])
def test_stem_candidates_give_lax_convolution_and_its_gradients(variant, size, kernel_shape):
  """compile_candidates' RGB stem variants: a 7×7 stride-2 convolution of 3 channels on input and
  kernel zero-padded to 8 channels, on 2×2 space-to-depth blocks (odd and even sides), or as a product
  of the input's patches with the kernel as a matrix, gives lax's convolution, and the same gradients."""
  library_conv = fast_ops.Conv
  try:
    compile_candidates.VARIANTS[variant]()
    stem_conv = fast_ops.Conv.keywords["conv_general_dilated"]
  finally:
    fast_ops.Conv = library_conv
  keys = jax.random.split(jax.random.key(0))
  x, w = jax.random.normal(keys[0], (2, size, size, 3)), jax.random.normal(keys[1], (7, 7, 3, 8))
  arguments = dict(window_strides=(2, 2), padding=((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, **arguments)))  # noqa: E731
  # The convolution itself, not the loss: a sum of 1,296 sines cancels to a few units, where reordered float32 sums
  # (JAX 0.12.1) move it by 2e-5 of itself.
  reference = (jax.lax.conv_general_dilated(x, w, **arguments),
               *jax.grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w))
  candidate = (stem_conv(x, w, **arguments), *jax.grad(loss(stem_conv), argnums=(0, 1))(x, w))
  assert f"tensor<{kernel_shape}xf32>" in jax.jit(functools.partial(stem_conv, **arguments)).lower(x, w).as_text()
  for got, want in zip(candidate, reference):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())  # float32 sums reordered


@pytest.mark.parametrize("x_shape, window, strides, padding", [
    ((2, 12, 12, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
    ((2, 7, 7, 4), (3, 3), (1, 1), ((1, 1), (1, 1))),    # LHC-Net's key pool
    ((2, 8, 6, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 10, 10, 2), (5, 5), (3, 3), ((1, 2), (1, 2))),  # sides the strides do not divide: the library's form
])
def test_max_pool_gradient_by_input_phases_gives_lax_gradient_with_ties(x_shape, window, strides, padding):
  """compile_candidates' max_pool_gradient_input_phases: each window's gradient at its first maximum, as
  XLA's select-and-scatter puts it, on inputs where most windows hold equal maxima (float64: to rounding)."""
  with jax.enable_x64(True):
    x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(0), x_shape, jnp.float64)) * 2) / 2
    reduce_max = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),  # noqa: E731
                                             ((0, 0), *padding, (0, 0)))
    y, vjp = jax.vjp(reduce_max, x)
    arriving = jax.random.normal(jax.random.key(1), y.shape, jnp.float64)
    expected = vjp(arriving)[0]
    got = jax.jit(functools.partial(compile_candidates._max_pool_gradient_by_input_phases,  # pylint: disable=protected-access
                                    window=window, strides=strides, padding=padding))(x, arriving)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13 * np.abs(expected).max())


@pytest.mark.parametrize("variant", ["max_pool_forward_by_taps", "max_pool_winner_from_forward"])
@pytest.mark.parametrize("x_shape, window, strides, padding", [
    ((2, 12, 12, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
    ((2, 7, 7, 4), (3, 3), (1, 1), ((1, 1), (1, 1))),    # LHC-Net's key pool
    ((2, 8, 6, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
])
def test_max_pool_forward_candidates_give_lax_pool_and_gradient_with_ties_and_nan(variant, x_shape, window, strides,
                                                                                   padding, monkeypatch):
  """compile_candidates' pools whose forward pass compares taps: lax's maxima (a NaN carried as lax.max
  carries it) and each window's gradient at its first maximum, on inputs where most windows tie."""
  monkeypatch.setattr(fast_ops, "_max_pool", fast_ops._max_pool)  # pylint: disable=protected-access
  compile_candidates.swap_in(variant)
  pool = jax.jit(lambda x: fast_ops.max_pool(x, window, strides, padding))
  with jax.enable_x64(True):
    x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(0), x_shape, jnp.float64)) * 2) / 2
    reduce_max = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),  # noqa: E731
                                             ((0, 0), *padding, (0, 0)))
    expected, vjp = jax.vjp(reduce_max, x)
    got, candidate_vjp = jax.vjp(pool, x)
    arriving = jax.random.normal(jax.random.key(1), expected.shape, jnp.float64)
    expected_gradient, gradient = vjp(arriving)[0], candidate_vjp(arriving)[0]
    with_nan = x.at[0, 3, 3, 0].set(jnp.nan)
    np.testing.assert_array_equal(pool(with_nan), reduce_max(with_nan))
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_allclose(gradient, expected_gradient, rtol=0, atol=1e-13 * np.abs(expected_gradient).max())


def test_max_pool_winner_from_forward_refuses_sides_its_strides_do_not_divide(monkeypatch):
  monkeypatch.setattr(fast_ops, "_max_pool", fast_ops._max_pool)  # pylint: disable=protected-access
  compile_candidates.swap_in("max_pool_winner_from_forward")
  with pytest.raises(NotImplementedError, match=r"sides \(11, 12\) not divided by \(2, 2\)"):
    fast_ops.max_pool(jnp.zeros((1, 11, 12, 2)), (3, 3), (2, 2), ((1, 1), (1, 1)))


def test_every_variant_the_device_session_names_is_a_candidate():
  """A misspelt variant in one of device_session.sh's items would cost a lent GPU's minutes: each name there (the
  lists its items pass, variants joined by + and the script's line continuations included) is one
  compile_candidates knows."""
  with open(os.path.join(helpers.ROOT, "benchmarks", "device_session.sh")) as f:
    script = f.read().replace("\\\n", "")
  named = set(re.findall(r"\b(?:conv|max_pool|batch_norm|attention)_\w+(?:\+\w+)*", script))
  assert {"conv_input_channels_padded+max_pool_winner_from_forward", "batch_norm_shifted_one_pass",
          "attention_cudnn_flash", "max_pool_tap_gradient_stored"} <= named
  assert compile_candidates.unknown_variants(sorted(named)) == []


def test_candidates_joined_by_plus_are_swapped_in_together_and_checked_by_name():
  library_conv, library_gradients = fast_ops.Conv, fast_ops.MAX_POOL_GRADIENTS
  try:
    compile_candidates.swap_in("conv_input_channels_padded+max_pool_xla_gradient")
    assert fast_ops.Conv is not library_conv and fast_ops.MAX_POOL_GRADIENTS["cuda"] == "xla"
  finally:
    fast_ops.Conv, fast_ops.MAX_POOL_GRADIENTS = library_conv, library_gradients
  assert compile_candidates.unknown_variants(["none", "conv_input_channels_padded+max_pool_xla_gradient",
                                              "max_pool_xla_gradient+no_such_thing"]) == [
      "max_pool_xla_gradient+no_such_thing"]
  refused = subprocess.run([sys.executable, os.path.join(helpers.ROOT, "benchmarks", "run_candidates.py"),
                            "--variants=none+optimizer_state_sharded"], capture_output=True, text=True, timeout=120)
  assert refused.returncode == 2 and "compile-only variants ['none+optimizer_state_sharded']" in refused.stderr


def test_program_flops_of_a_step_split_over_devices_are_the_whole_steps():
  """MFU divides the count by the devices' summed peak: the count is of the whole batch on 4 devices."""
  code = ("import jax, jax.numpy as jnp; from jax.sharding import Mesh, NamedSharding, PartitionSpec as P; "
          "from fer_jax import benchmark; "
          "x = jax.ShapeDtypeStruct((8, 64), jnp.float32, sharding=NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))); "
          "w = jax.ShapeDtypeStruct((64, 16), jnp.float32); "
          "print(jax.device_count(), benchmark.program_flops(jax.jit(jnp.dot).lower(x, w)))")
  result = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.cpu_devices_env(4),
                          capture_output=True, text=True, timeout=300, check=True)
  assert result.stdout.split() == ["4", str(float(2 * 8 * 64 * 16))]


def test_an_output_the_line_cannot_be_appended_to_is_refused(tmp_path):
  """benchmark's --output check (cli.check_writable_file with folder_must_exist): the folder is not created."""
  (tmp_path / "file").write_text("")
  check = lambda path: cli.check_writable_file("--output", str(path), "a file to append the JSON line to",  # noqa: E731
                                               folder_must_exist=True)
  for output, message in [(tmp_path / "missing" / "x.jsonl", f"there is no folder {tmp_path / 'missing'}; create it"),
                          (tmp_path / "file" / "x.jsonl", f"there is no folder {tmp_path / 'file'}"),
                          (tmp_path, "is a folder: pass a file to append the JSON line to")]:
    with pytest.raises(UserError, match=re.escape(f"--output={output}") + ".*" + re.escape(message)):
      check(output)
  assert not (tmp_path / "missing").exists()
  check(tmp_path / "new.jsonl")
  check(tmp_path / "file")


def test_profile_dir_is_checked_before_any_work_and_refused_where_nothing_is_profiled(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=re.escape(f"--profile_dir={tmp_path / 'file' / 'trace'} cannot be created: "
                                                f"{tmp_path / 'file'} is a file")):
    benchmark.check_arguments("synthetic", "", str(tmp_path / "file" / "trace"))
  for mode in ("host", "augment", "end_to_end"):
    with pytest.raises(UserError, match=f"only --input=synthetic writes a trace.*--input={mode} has none"):
      benchmark.check_arguments(mode, "", str(tmp_path / "trace"))
  with pytest.raises(UserError, match="--output="):
    benchmark.check_arguments("synthetic", str(tmp_path / "file" / "x.jsonl"), str(tmp_path / "trace"))
  benchmark.check_arguments("synthetic", str(tmp_path / "x.jsonl"), str(tmp_path / "new" / "trace"))
  assert not (tmp_path / "new").exists()


@pytest.mark.integration
def test_benchmark_command_refuses_a_profile_dir_it_cannot_write_before_compiling(tmp_path):
  (tmp_path / "file").write_text("")
  result = helpers.run_command("fer_jax.benchmark", "--config=configs/dan.py:synthetic", "--config.batch_size=2",
                               "--steps=1", "--warmup=0", f"--profile_dir={tmp_path / 'file' / 'trace'}",
                               f"--output={tmp_path / 'line.jsonl'}", timeout=300)
  assert result.returncode == 2 and f"{tmp_path / 'file'} is a file" in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "line.jsonl").exists() and "compiled" not in result.stderr


@pytest.mark.parametrize("mode", ["augment", "end_to_end"])
def test_input_modes_compile_before_the_steps_they_time(mode, tiny_data_dir, monkeypatch):
  """--input=augment and end_to_end with --warmup=0: what consumes the batches is compiled (and timed as
  compile_s) before the timed steps, in which nothing is traced, lowered or compiled; the line carries
  its steps and warm-up steps, each field named in the docstring."""
  del tiny_data_dir
  config = helpers.tiny_run(helpers.get_config("configs/dan.py:synthetic"), size=16, batch_size=8)
  monkeypatch.setattr(models, "get_method", lambda name: models.Method(build=lambda model_config: TinyNet()))
  compiling, inside = [], []
  listener = lambda event, duration, **kwargs: compiling.append(event)  # noqa: E731
  timed = benchmark._time_stream  # pylint: disable=protected-access

  def watched(*args):
    before = len(compiling)
    try:
      return timed(*args)
    finally:
      inside.extend(event for event in compiling[before:] if event.startswith("/jax/core/compile/"))

  monkeypatch.setattr(benchmark, "_time_stream", watched)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    line = benchmark.benchmark_input(config, mode, steps=2, warmup=0)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not inside, inside
  assert any(event.startswith("/jax/core/compile/") for event in compiling)
  assert (line["input"], line["steps"], line["warmup_steps"], line["batch_size"]) == (mode, 2, 0, 8)
  assert line["compile_s"] > 0 and line["first_batch_s"] >= 0 and line["warmup_s"] == 0
  assert line["img_per_s"] == pytest.approx(8 / (line["step_ms"] / 1e3), rel=1e-2)
  assert not undocumented({**benchmark.environment(), "command": "", **line})


def test_peak_tflops_of_device_kinds():
  assert benchmark.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert benchmark.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert benchmark.peak_tflops("TPU v5 lite") == 197.0
  assert benchmark.peak_tflops("cpu") is None
  assert benchmark.peak_tflops("TPU v5") == 459.0  # a v5p, as JAX names it (it was None: no MFU on a v5p)
  assert benchmark.peak_tflops("TPU v4 lite") == 138.0
  assert benchmark.peak_tflops("TPU v6 lite") == 918.0
  assert benchmark.peak_tflops("NVIDIA H200") == 989.0
  assert benchmark.peak_tflops("NVIDIA H200 NVL") == benchmark.peak_tflops("NVIDIA H100 NVL") == 835.0
  assert benchmark.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0


# Two collectives as XLA prints them (shortened): a forward BatchNorm all-reduce, and one that XLA's
# combiner made of a conv kernel's gradient and a BatchNorm's backward sums; an async GPU pair, whose
# "-done" half must not count twice; and a gradient all-gather.
HLO = """\
  %all-reduce.1 = (f32[64]{0}, f32[64]{0}) all-reduce(%a, %b), channel_id=2, to_apply=%add, metadata={op_name="jit(step)/jvp(DAN)/trunk/bn1/reduce_sum" stack_frame_id=14}
  %all-reduce.2 = (f32[3,3,64,64]{3,2,1,0}, f32[64]{0}, f32[64]{0}) all-reduce(%c, %d, %e), channel_id=3, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(DAN))/trunk/layer1_0/(conv2/conv_general_dilated:bn1/reduce_sum:bn1/reduce_sum)" stack_frame_id=9}
  %all-reduce-start.3 = bf16[7,512]{1,0} all-reduce-start(%f), channel_id=4, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp(DAN))/fc/dot_general"}
  %all-reduce-done.3 = bf16[7,512]{1,0} all-reduce-done(%all-reduce-start.3)
  ROOT %all-reduce.4 = f32[] all-reduce(%g), channel_id=5, to_apply=%add, metadata={op_name="jit(step)/jvp()/reduce_sum"}
  %fusion.5 = f32[64]{0} fusion(%h), kind=kLoop, calls=%fused_computation
"""


def test_collectives_of_hlo_text_by_role():
  found = benchmark.collectives(HLO, {"trunk/bn1", "trunk/layer1_0/bn1"})
  assert found["ops"] == {"all-reduce": 4}
  assert found["by_role"] == {
      "batchnorm_statistics": {"ops": 1, "tensors": 2, "bytes": 2 * 64 * 4},
      "gradients": {"ops": 2, "tensors": 2, "bytes": 3 * 3 * 64 * 64 * 4 + 7 * 512 * 2},
      "batchnorm_backward": {"ops": 1, "tensors": 2, "bytes": 2 * 64 * 4},
      "loss_and_metrics": {"ops": 1, "tensors": 1, "bytes": 4}}
  assert found["bytes"] == sum(role["bytes"] for role in found["by_role"].values())


def test_collective_role_of_a_rematerialised_blocks_batch_norm():
  paths = {"trunk/layer1_0/bn1"}
  name = "jit(train_step)/transpose(jvp(DAN))/trunk/jvp(DAN)/trunk/checkpoint/layer1_0/bn1/reduce_sum"
  assert benchmark.collective_role(name, paths) == "batchnorm_backward"
  assert benchmark.collective_role("jit(train_step)/jvp(DAN)/trunk/layer1_0/bn1/reduce_sum", paths) \
      == "batchnorm_statistics"
  assert benchmark.collective_role("jit(train_step)/transpose(jvp(DAN))/trunk/jvp(DAN)/trunk/checkpoint/"
                                   "layer1_0/conv1/conv_general_dilated", paths) == "gradients"


def test_module_path_of_op_names():
  assert benchmark.module_path("jit(train_step)/jvp(DAN)/trunk/layer1_0/jit(relu)/max") == "trunk/layer1_0"
  assert benchmark.module_path("jit(train_step)/transpose(jvp(DAN))/trunk/cond/branch_0_fun/transpose(jvp())/"
                               "select_and_scatter") == "trunk"
  assert benchmark.module_path("jit(train_step)/jvp(TinyNet)/bn/platform/stack") == "bn"  # JAX 0.12.1's name
  assert benchmark.module_path("jit(train_step)/mul") == ""


# A GPU program's text as XLA prints it after optimisation (trimmed): a cuDNN convolution forward and
# its kernel gradient, a Triton GEMM whose dot sits in a nested computation, fusions (one a slice
# reading a quarter of its operand), a copy and a cuBLAS GEMM with its workspace.
GPU_HLO = """HloModule jit_step, is_scheduled=true

%dot_body (p0: bf16[32,64], p1: bf16[64,16]) -> bf16[32,16] {
  %p0 = bf16[32,64]{1,0} parameter(0)
  %p1 = bf16[64,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[32,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%gemm_body (q0: bf16[32,64], q1: bf16[64,16]) -> bf16[32,16] {
  %q0 = bf16[32,64]{1,0} parameter(0)
  %q1 = bf16[64,16]{1,0} parameter(1)
  ROOT %nested = bf16[32,16]{1,0} fusion(%q0, %q1), kind=kCustom, calls=%dot_body
}

ENTRY %main.9 (x.1: bf16[8,56,56,64], w.1: bf16[32,3,3,64], a.1: bf16[32,64], b.1: bf16[64,16]) -> f32[32] {
  %x.1 = bf16[8,56,56,64]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %w.1 = bf16[32,3,3,64]{3,2,1,0} parameter(1), metadata={op_name="w"}
  %a.1 = bf16[32,64]{1,0} parameter(2)
  %b.1 = bf16[64,16]{1,0} parameter(3)
  %conv.1 = (bf16[8,54,54,32]{3,2,1,0}, u8[4096]{0}) custom-call(%x.1, %w.1), window={size=3x3}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/jvp(Net)/conv/conv_general_dilated"}
  %y.1 = bf16[8,54,54,32]{3,2,1,0} get-tuple-element(%conv.1), index=0
  %filter.1 = (bf16[32,3,3,64]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %y.1), window={size=3x3}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(step)/transpose(jvp(Net))/conv/conv_general_dilated"}
  %relu.1 = bf16[8,54,54,32]{3,2,1,0} fusion(%y.1), kind=kLoop, calls=%relu_body, metadata={op_name="jit(step)/jvp(Net)/conv/jit(relu)/max"}
  %sum.1 = f32[32]{0} fusion(%relu.1), kind=kInput, calls=%sum_body, metadata={op_name="jit(step)/jvp(Net)/bn/reduce_sum"}
  %gemm.1 = bf16[32,16]{1,0} fusion(%a.1, %b.1), kind=kCustom, calls=%gemm_body, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %copy.1 = f32[32]{0} copy(%sum.1)
  %third.1 = bf16[8,54,54,8]{3,2,1,0} fusion(%relu.1), kind=kLoop, calls=%slice_body, metadata={op_name="jit(step)/jvp(Net)/attn/slice"}
  %cublas.1 = (bf16[32,16]{1,0}, s8[4194304]{0}) custom-call(%a.1, %b.1), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %tuple.1 = (f32[32]{0}, bf16[32,16]{1,0}, bf16[8,54,54,8]{3,2,1,0}) tuple(%copy.1, %gemm.1, %third.1)
}
"""


def test_gpu_kernels_of_compiled_hlo_text_with_xlas_flop_count_as_reference():
  """benchmarks/gpu_compile.py's kernels: bytes from the shapes (cuDNN's and cuBLAS' workspaces left
  out; a slice reads what it writes), and
  the FLOPs of the convolutions and the GEMM as XLA's own cost analysis counts the same products."""
  found = gpu_compile.kernels(GPU_HLO)
  assert [kernel["kind"] for kernel in found] == ["convolution", "convolution", "elementwise", "reduction", "gemm",
                                                 "copy", "elementwise", "gemm"]
  x, w, y = 8 * 56 * 56 * 64 * 2, 32 * 9 * 64 * 2, 8 * 54 * 54 * 32 * 2
  assert [kernel["bytes"] for kernel in found] == [x + w + y, x + y + w, 2 * y, y + 32 * 4,
                                                   (32 * 64 + 64 * 16 + 32 * 16) * 2, 2 * 32 * 4, 2 * y // 4,
                                                   (32 * 64 + 64 * 16 + 32 * 16) * 2]
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv_flops = jax.jit(conv).lower(jax.ShapeDtypeStruct((8, 56, 56, 64), jnp.float32),
                                   jax.ShapeDtypeStruct((3, 3, 64, 32), jnp.float32)).compile().cost_analysis()["flops"]
  dot_flops = jax.jit(jnp.dot).lower(jax.ShapeDtypeStruct((32, 64), jnp.float32),
                                     jax.ShapeDtypeStruct((64, 16), jnp.float32)).compile().cost_analysis()["flops"]
  assert [kernel["flops"] for kernel in found] == [conv_flops, conv_flops, 0, 0, dot_flops, 0, 0, dot_flops]
  assert found[0]["dtype"] == "bf16" and benchmark.module_path(found[2]["op_name"]) == "conv"
  timed = gpu_compile.roofline(found, bandwidth=1e12)
  assert timed[0]["seconds"] == max(found[0]["bytes"] / 1e12, conv_flops / gpu_compile.HOPPER_PEAK_FLOPS["bf16"])


PTX = """
.visible .entry loop_relu_fusion(
\t.param .u64 loop_relu_fusion_param_0
)
.reqntid 128, 1, 1
{
\t.reg .pred \t%p<2>;
\tmov.u32 \t%r1, %tid.x;
\tsetp.gt.u32 \t%p1, %r1, 9;
\t@%p1 bra \t$L__BB0_2;
\tld.global.nc.v2.b16 \t{%rs1, %rs2}, [%rd1];
\tst.global.v4.b16 \t[%rd2], {%rs1, %rs2, %rs1, %rs2};
$L__BB0_2:
\tret;

}
"""


def test_issue_estimate_counts_a_loop_fusions_ptx_instructions_for_its_warps():
  """benchmarks/gpu_compile.py's issue estimate: a loop fusion's threads each run its PTX instructions
  once (labels and directives are not instructions) and write its widest vector store's elements; the
  H200 issues 132 SMs × 4 schedulers × 1.98 GHz warp instructions a second."""
  assert gpu_compile.ptx_kernels(PTX) == {"loop_relu_fusion": (6, 4)}
  rate = gpu_compile.issue_rate(gpu_compile.DEFAULT_TARGET)
  assert rate == pytest.approx(132 * 4 * 1.98e9)
  relu = {"instruction": "relu.1", "kernel": "loop_relu_fusion.1", "kind": "elementwise",
          "written": "bf16[8,54,54,32]{3,2,1,0}", "bytes": 0, "flops": 0.0, "dtype": "bf16"}
  reduction = {**relu, "kind": "reduction", "kernel": "loop_relu_fusion"}
  estimated = gpu_compile.with_issue([relu, reduction], {"loop_relu_fusion_1": (6, 4)}, rate)
  assert estimated[0]["issue_seconds"] == pytest.approx(math.ceil(8 * 54 * 54 * 32 / 4 / 32) * 6 / rate)
  assert "issue_seconds" not in estimated[1]  # a reduction's threads loop: no count from its code
  assert [kernel["kernel"] for kernel in gpu_compile.kernels(DEDUPLICATED_HLO)][1:] == [
      "input_reduce_fusion.4", "input_reduce_fusion.4"]


# cuDNN's fused attention in a GPU program's text (trimmed): B 2, T = S = 6, 4 heads of 8; the forward
# call returns the output, the softmax statistics and a workspace, the backward (q, k, v, statistics,
# output and its gradient, here the output again) dq, dk, dv and one.
_ATTENTION_CONFIG = ('"cudnn_fmha_backend_config": {"intermediate_tensor_shape": {"element_type": "BF16", '
                     '"dimensions": ["2", "4", "6", "6"], "tuple_shapes": []}, "is_flash_attention": true}')
ATTENTION_HLO = f"""HloModule jit_step, is_scheduled=true

ENTRY %main.2 (q.1: bf16[2,6,4,8], k.1: bf16[2,6,4,8], v.1: bf16[2,6,4,8]) -> bf16[2,4,6,8] {{
  %q.1 = bf16[2,6,4,8]{{3,2,1,0}} parameter(0)
  %k.1 = bf16[2,6,4,8]{{3,2,1,0}} parameter(1)
  %v.1 = bf16[2,6,4,8]{{3,2,1,0}} parameter(2)
  %fwd.1 = (bf16[2,4,6,8]{{3,1,2,0}}, f32[2,4,6]{{2,1,0}}, u8[1024]{{0}}) custom-call(%q.1, %k.1, %v.1), custom_call_target="__cudnn$fmhaSoftmax", metadata={{op_name="jit(step)/jvp(Net)/attn/dot_product_attention_fwd"}}, backend_config={{{_ATTENTION_CONFIG}}}
  %out.1 = bf16[2,4,6,8]{{3,1,2,0}} get-tuple-element(%fwd.1), index=0
  %stats.1 = f32[2,4,6]{{2,1,0}} get-tuple-element(%fwd.1), index=1
  %bwd.1 = (bf16[2,4,6,8]{{3,1,2,0}}, bf16[2,4,6,8]{{3,1,2,0}}, bf16[2,4,6,8]{{3,1,2,0}}, u8[1024]{{0}}) custom-call(%q.1, %k.1, %v.1, %stats.1, %out.1, %out.1), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={{op_name="jit(step)/transpose(jvp(Net))/attn/dot_product_attention_bwd"}}, backend_config={{{_ATTENTION_CONFIG}}}
  ROOT %dq.1 = bf16[2,4,6,8]{{3,1,2,0}} get-tuple-element(%bwd.1), index=0
}}
"""


def test_gpu_fused_attention_kernels_with_xlas_flop_count_of_the_same_products_as_reference():
  """cuDNN's flash attention is counted with the GEMMs: its forward pass does the FLOPs of q·kᵀ and p·v as
  XLA counts them, its backward those of five such products (q·kᵀ again, dv, dp, dq, dk); its bytes are its
  operands and its outputs, the workspace left out."""
  forward, backward = gpu_compile.kernels(ATTENTION_HLO)
  q = jax.ShapeDtypeStruct((2, 4, 6, 8), jnp.float32)
  logits = jax.ShapeDtypeStruct((2, 4, 6, 6), jnp.float32)
  products = lambda q, k, p: (jnp.einsum("bhtd,bhsd->bhts", q, k), jnp.einsum("bhts,bhsd->bhtd", p, k))
  two_products = jax.jit(products).lower(q, q, logits).compile().cost_analysis()["flops"]
  assert (forward["kind"], backward["kind"]) == ("gemm", "gemm")
  assert (forward["flops"], backward["flops"]) == (two_products, 2.5 * two_products)
  tensor = 2 * 6 * 4 * 8 * 2
  assert forward["bytes"] == 3 * tensor + tensor + 2 * 4 * 6 * 4
  assert backward["bytes"] == 3 * tensor + 2 * 4 * 6 * 4 + 2 * tensor + 3 * tensor


# A TPU program's text as XLA prints it after optimisation (trimmed): tiled layouts, a convolution fused
# with a reduction, a window reduction without an op name of its own, an elementwise op and a copy, each
# with the compiler's cycle estimate; a select-and-scatter and an all-reduce without one; an async copy
# pair, a parameter and tuples, which are no kernels.
_TPU_CONFIG = ('backend_config={{"flag_configs":[],"window_config":{{"kernel_window_bounds":[],'
               '"estimated_cycles":"{}","iteration_bounds":["1"],"cost_model_type":"COST_MODEL_TYPE_{}"}}}}')
TPU_HLO = f"""HloModule jit_train_step, is_scheduled=true

%conv_body (c0: bf16[8,56,56,64], c1: bf16[3,3,64,64]) -> (f32[64], bf16[8,56,56,64]) {{
  %c0 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} parameter(0)
  %c1 = bf16[3,3,64,64]{{3,2,1,0:T(8,128)(2,1)}} parameter(1)
  %convolution.3 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} convolution(%c0, %c1), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f
  %zero = f32[] constant(0)
  %reduce.3 = f32[64]{{0:T(128)}} reduce(%convolution.3, %zero), dimensions={{0,1,2}}, to_apply=%add_body
  ROOT %tuple.3 = (f32[64]{{0:T(128)}}, bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}}) tuple(%reduce.3, %convolution.3)
}}

%pool_body (w0: bf16[8,56,56,64]) -> bf16[8,28,28,64] {{
  %w0 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} parameter(0)
  %ninf = bf16[] constant(-inf)
  ROOT %reduce-window.1 = bf16[8,28,28,64]{{0,3,2,1:T(8,128)(2,1)}} reduce-window(%w0, %ninf), window={{size=1x3x3x1 stride=1x2x2x1 pad=0_0x1_1x1_1x0_0}}, to_apply=%max_body, metadata={{op_name="jit(train_step)/jvp(DAN)/trunk/reduce_window_max"}}
}}

ENTRY %main.7 (x.1: bf16[8,56,56,64], w.1: bf16[3,3,64,64]) -> (f32[64], bf16[8,28,28,64], bf16[8,56,56,64]) {{
  %x.1 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} parameter(0), metadata={{op_name="x"}}
  %w.1 = bf16[3,3,64,64]{{3,2,1,0:T(8,128)(2,1)}} parameter(1)
  %convert_reduce_fusion.1 = (f32[64]{{0:T(128)S(1)}}, bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}}) fusion(%x.1, %w.1), kind=kOutput, calls=%conv_body, metadata={{op_name="jit(train_step)/jvp(DAN)/trunk/conv1/conv_general_dilated" stack_frame_id=3}}, {_TPU_CONFIG.format(2831464, "CLASSIC")}
  %gte.1 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} get-tuple-element(%convert_reduce_fusion.1), index=1
  %fusion.7 = bf16[8,28,28,64]{{0,3,2,1:T(8,128)(2,1)}} fusion(%gte.1), kind=kLoop, calls=%pool_body, {_TPU_CONFIG.format(2215531, "INVALID")}
  %max.2 = bf16[8,28,28,64]{{0,3,2,1:T(8,128)(2,1)}} maximum(%fusion.7, %fusion.7), metadata={{op_name="jit(train_step)/jvp(DAN)/trunk/jit(relu)/max"}}, {_TPU_CONFIG.format(90000, "INVALID")}
  %select-and-scatter.1 = bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}} select-and-scatter(%gte.1, %max.2, %ninf.2), window={{size=1x3x3x1 stride=1x2x2x1}}, select=%ge_body, scatter=%add_body, metadata={{op_name="jit(train_step)/transpose(jvp(DAN))/trunk/select_and_scatter"}}
  %gte.2 = f32[64]{{0:T(128)S(1)}} get-tuple-element(%convert_reduce_fusion.1), index=0
  %copy.9 = f32[64]{{0:T(128)}} copy(%gte.2), {_TPU_CONFIG.format(1825, "INVALID")}
  %copy-start.3 = (f32[64]{{0:T(128)S(1)}}, f32[64]{{0:T(128)}}, u32[]{{:S(2)}}) copy-start(%copy.9)
  %copy-done.3 = f32[64]{{0:T(128)}} copy-done(%copy-start.3)
  %custom-call.6 = f32[64]{{0:T(128)}} custom-call(%copy-done.3), custom_call_target="ConcatBitcast"
  %all-reduce.4 = f32[64]{{0:T(128)}} all-reduce(%copy-done.3), replica_groups={{{{0,1}}}}, to_apply=%add_body, metadata={{op_name="jit(train_step)/transpose(jvp(DAN))/trunk/bn1/reduce_sum"}}
  ROOT %tuple.9 = (f32[64]{{0:T(128)}}, bf16[8,28,28,64]{{0,3,2,1:T(8,128)(2,1)}}, bf16[8,56,56,64]{{0,3,2,1:T(8,128)(2,1)}}) tuple(%all-reduce.4, %max.2, %select-and-scatter.1)
}}
"""


def test_tpu_kernels_of_compiled_hlo_text():
  """benchmarks/tpu_compile.py's kernels: every entry instruction that computes, with the compiler's
  cycle estimate where it gives one, its kind from its op or its fusion's computation, its bytes, and the
  module it belongs to (a fusion without an op name of its own: its computation's)."""
  found = tpu_compile.kernels(TPU_HLO)
  assert [(kernel["kind"], kernel["cycles"], kernel["cost_model"], benchmark.module_path(kernel["op_name"]))
          for kernel in found] == [
      ("convolution", 2831464, "CLASSIC", "trunk/conv1"), ("reduction", 2215531, "INVALID", "trunk"),
      ("elementwise", 90000, "INVALID", "trunk"), ("reduction", None, "", "trunk"), ("copy", 1825, "INVALID", ""),
      ("collective", None, "", "trunk/bn1")]
  stem, pooled = 8 * 56 * 56 * 64 * 2, 8 * 28 * 28 * 64 * 2
  assert found[0]["bytes"] == 64 * 4 + stem + stem + 3 * 3 * 64 * 64 * 2
  assert found[3]["bytes"] == stem + stem + pooled  # select-and-scatter: result, input, arriving gradient
  assert tpu_compile.cycles_outside_entry(TPU_HLO) == 0
  assert tpu_compile.cycles_outside_entry(TPU_HLO.replace(
      "dim_labels=b01f_01io->b01f", "dim_labels=b01f_01io->b01f, " + _TPU_CONFIG.format(5, "CLASSIC"))) == 5


def test_batch_norm_paths_of_batch_stats():
  stats = {"trunk": {"bn1": {"mean": 0, "var": 0}, "layer1_0": {"downsample_bn": {"mean": 0, "var": 0}}}}
  assert benchmark.batch_norm_paths(stats) == {"trunk/bn1", "trunk/layer1_0/downsample_bn"}


LINE = {
    "command": "--config=configs/dan.py:rafdb --input=synthetic --config.model.dtype=bfloat16",
    "date": "2026-12-01T10:00:00+00:00", "platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "devices": 1,
    "host_cpus": 26, "host_cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "jax": "0.11.2", "jaxlib": "0.11.2",
    "backend_version": "cuda 12080", "cuda_runtime": 12080,
    "nvidia_driver": "570.86", "load_average_1m": 0.5, "input": "synthetic", "model": "dan", "input_size": 224,
    "dtype": "bfloat16", "batch_size": 256, "train_img_per_s": 9876.54, "train_step_ms": 25.92,
    "eval_img_per_s": 30123.4, "train_compile_s": 41.26, "eval_compile_s": 9.04, "train_warmup_s": 0.912,
    "train_flops_per_step": 3.087e12, "eval_flops_per_step": 1.029e12, "train_tflops_per_s": 123.4567, "mfu": 0.1248,
    "peak_memory_bytes": 3 * 2**30,
    "peak_memory_source": "device.memory_stats", "train_saved_for_backward_bytes": 2**30 + 2**29, "remat": "none",
    "train_collectives": {"ops": {"all-reduce": 58}, "bytes": 79056604, "by_role": {
        "batchnorm_statistics": {"ops": 25, "tensors": 82, "bytes": 96824},
        "gradients": {"ops": 31, "tensors": 73, "bytes": 78814528}}}}


def test_paper_table_renders_a_line():
  table = render_table.paper_table([LINE, {"input": "host"}], reference=True)
  header, rule, row = table.split("\n")[2:5]
  assert header.count("|") == rule.count("|") == row.count("|") == len(render_table.PAPER_HEADER) + 4
  assert row == ("| `configs/dan.py:rafdb` | 224² | 256 | bfloat16 | 1 | 9,876.54 | 25.9 | 30,123.40 | 41.3 / 9.0 "
                 "| 0.91 | 12.06 | 4.02 | 123.457 | 12.5% | 3.00 | 1.50 | 4,179 | 8,275–9,399 | 7,121 |")
  rematerialised = render_table.paper_row({**LINE, "remat": "blocks"})
  assert rematerialised[3] == "bfloat16, remat blocks"
  small = render_table.paper_row({**LINE, "input_size": 72}, reference=True)
  assert small[-3:] == ["–"] * 3  # the official figures are of the paper's input size only
  assert table.startswith("1 × NVIDIA H100 80GB HBM3 (gpu, 26 host CPUs (Intel(R) Xeon(R) Platinum 8480+)), "
                          "jax 0.11.2 / jaxlib 0.11.2, backend cuda 12080, cuda_runtime 12080, nvidia_driver 570.86; 2026-12-01")


def test_official_table_sets_each_official_step_beside_fer_jax_at_the_same_method_size_and_batch():
  official = {"code": "official", "method": "dan", "variant": "tuned", "dtype": "bfloat16 autocast",
              "device_kind": "NVIDIA H200", "input_size": 224, "batch_size": 256, "train_img_per_s": 4000.0,
              "train_step_ms": 64.0, "warmup_s": 3.5, "torch": "2.11.0"}
  rows = [LINE, {**LINE, "dtype": "float32", "train_img_per_s": 5000.0}, official,
          {**official, "variant": "fp32", "dtype": "float32", "batch_size": 128},
          {**official, "method": "scan_cci"},
          {**{k: v for k, v in official.items() if k != "torch"}, "method": "lhcnet", "variant": "fp32",
           "framework": "tensorflow 2.21.0"}]
  table = render_table.official_table(rows)
  lines = [line for line in table.split("\n") if line.startswith("| ")]
  assert lines[0].endswith("| fer_jax bfloat16 ÷ this | fer_jax float32 ÷ this |")
  assert lines[1] == ("| dan | tuned (bfloat16 autocast) | NVIDIA H200 | 224² | 256 | 4,000.00 | 64.0 | 3.50 | "
                      f"torch 2.11.0 | {9876.54 / 4000:.2f}× | 1.25× |")
  assert lines[2].endswith("| 128 | 4,000.00 | 64.0 | 3.50 | torch 2.11.0 | – | – |")  # no fer_jax line at batch 128
  assert lines[3].startswith("| scan_cci |") and lines[3].endswith("| – | – |")  # nor of SCAN-CCI
  assert "| tensorflow 2.21.0 |" in lines[4]  # LHC-Net's official code (official_lhcnet_keras.py time_step)
  assert render_table.official_table([LINE]) == ""


def test_paper_table_tells_candidates_apart_by_their_variant_and_round():
  """benchmarks/run_candidates.py's lines (device_session.sh's candidates.jsonl): no command, their config
  and variant; each row names its variant, and its round where there are several."""
  candidate = {k: v for k, v in LINE.items() if k != "command"}
  rows = [{**candidate, "config": "configs/dan.py:rafdb", "variant": variant, "round": round_index}
          for round_index in (0, 1) for variant in ("none", "conv_stem_space_to_depth")]
  lines = [line for line in render_table.paper_table(rows).split("\n") if line.startswith("| ")]
  assert lines[0].startswith("| config | variant | size | batch |")
  assert [line.split(" | ")[:3] for line in lines[1:]] == [
      ["| `configs/dan.py:rafdb`", f"{variant}, round {round_index}", "224²"]
      for round_index in (0, 1) for variant in ("none", "conv_stem_space_to_depth")]
  one_round = [line for line in render_table.paper_table(rows[:2]).split("\n") if line.startswith("| ")]
  assert [line.split(" | ")[1] for line in one_round[1:]] == ["none", "conv_stem_space_to_depth"]
  assert all(line.count("|") == len(render_table.PAPER_HEADER) + 2 for line in lines)


def test_render_table_of_missing_or_truncated_results(tmp_path, capsys, monkeypatch):
  """accelerator.sh renders whatever its runs wrote: a missing file (every run failed) gives a
  "(no results: …)" table, and a line cut short is skipped with a warning naming its file and line."""
  missing = tmp_path / "results.jsonl"
  monkeypatch.setattr(sys, "argv", ["render_table.py", str(missing)])
  render_table.main()
  assert capsys.readouterr().out.startswith(f"(no results: {missing} does not exist")
  missing.write_text(json.dumps(LINE) + "\n\n" + json.dumps({**LINE, "dtype": "float32"})[:-40] + "\n[1]\n")
  monkeypatch.setattr(sys, "argv", ["render_table.py", str(missing), "--reference"])
  render_table.main()
  printed = capsys.readouterr()
  assert printed.out.count("| `configs/dan.py:rafdb` |") == 1
  assert f"{missing}:3: skipped, not a JSON object" in printed.err and f"{missing}:4: skipped" in printed.err
  monkeypatch.setattr(sys, "argv", ["render_table.py", str(tmp_path)])
  render_table.main()
  assert capsys.readouterr().out.startswith(f"(no results: {tmp_path} is not a file")


def test_h100_target_describes_the_lent_h100():
  """benchmarks/gpu_targets/h100.txtpb: the H100 80GB HBM3 that a lease's first call gets (its rooflines'
  bandwidth, 3.35 TB/s, not the H200's 4.8), named as JAX names its device kind."""
  path = os.path.join(helpers.ROOT, "benchmarks", "gpu_targets", "h100.txtpb")
  assert gpu_compile.memory_bandwidth(path) == 3.35e12
  with open(path, encoding="utf-8") as file:
    text = file.read()
  assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text.splitlines()
  assert re.search(r"device_memory_size: 85520809984\b", text) and re.search(r"core_count: 132\b", text)
  assert re.search(r"l2_cache_size: 52428800\b", text) and "cuda_compute_capability { major: 9 minor: 0 }" in text
  with open(os.path.join(helpers.ROOT, "benchmarks", "gpu_targets", "h200.txtpb"), encoding="utf-8") as file:
    keys = lambda text: re.findall(r"^\s*(\w+)[: {]", text, re.MULTILINE)  # noqa: E731
    assert keys(text) == keys(file.read())  # the same fields as the H200's


def test_scaling_table_renders_collectives_in_mib():
  eight = {**LINE, "devices": 8, "batch_size": 32, "train_img_per_s": 20.0}
  table = render_table.scaling_table([eight, {**LINE, "batch_size": 32, "train_img_per_s": 25.0}])
  rows = [line for line in table.split("\n") if line.startswith("| ")][1:]
  assert [row.split(" | ")[:5] for row in rows] == [["| 1", "32", "32", "25.00", "1.00"],
                                                   ["| 8", "32", "4", "20.00", "0.80"]]
  assert f"25 / 82 / {96824 / 2**20:.2f} MiB" in rows[1] and f"31 / 73 / {78814528 / 2**20:,.2f} MiB" in rows[1]


@pytest.mark.integration
def test_collectives_carry_each_gradient_once_and_three_statistics_per_batch_norm_channel_and_device():
  """On 2 devices (a subprocess), TinyNet's train step all-reduces each parameter gradient once (conv
  and dense kernels and biases; the BatchNorm's scale and bias with its backward sums) and all-gathers
  each device's three statistics of each BatchNorm channel (batch_norm.sharded_batch_moments)."""
  code = ("import json; from absl import flags; flags.FLAGS.mark_as_parsed(); "
          "import test_benchmark; print(json.dumps(test_benchmark.tiny_benchmark(steps=1, warmup=0)))")
  result = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.cpu_devices_env(2),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  params = models.abstract_variables(TinyNet(), tiny_config())["params"]
  roles = line["train_collectives"]["by_role"]
  assert line["devices"] == 2 and line["train_collectives"]["ops"]["all-reduce"] >= 1
  assert line["train_collectives"]["ops"]["all-gather"] == 1
  assert (roles["gradients"]["tensors"], roles["gradients"]["bytes"]) == (4, _bytes({k: params[k] for k in ("conv", "fc")}))
  assert (roles["batchnorm_statistics"]["tensors"], roles["batchnorm_statistics"]["bytes"]) == (1, 3 * 2 * 4 * 4)
  assert roles["batchnorm_backward"]["bytes"] >= _bytes(params["bn"])


@pytest.mark.integration
def test_accelerator_script_benchmarks_each_config_in_each_dtype_and_renders_the_table(tmp_path):
  """benchmarks/accelerator.sh, the one command a lent GPU's few minutes go to, end to end on the CPU
  with TinyNet's config (the script, not the model, is under test: DAN's own steps go through fer_jax.benchmark in the
  tests above): a JSON line per config and dtype, and the table of both."""
  config, path = tiny_method_config(tmp_path / "tiny")
  env = {**os.environ, **path, "PY": sys.executable, "CONFIGS": config, "BATCH": "2", "STEPS": "1", "WARMUP": "1"}
  result = subprocess.run(["bash", os.path.join(helpers.ROOT, "benchmarks", "accelerator.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0 and "failed" not in result.stderr, result.stderr
  lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
  assert [(line["model"], line["dtype"], line["batch_size"], line["input"]) for line in lines] == [
      ("tiny_methods.tiny_net", "bfloat16", 2, "synthetic"), ("tiny_methods.tiny_net", "float32", 2, "synthetic")]
  table = (tmp_path / "out" / "table.md").read_text()
  assert table.count(f"| `{config}` | 72² | 2 |") == 2 and "official fp32 (H100, batch 256)" in table


def tiny_method_config(folder) -> tuple[str, dict]:
  """(the spec of a config file in `folder`, the environment that finds its method): DAN's synthetic config on
  TinyNet (tests/tiny_methods/tiny_net.py), for the benchmark scripts' processes."""
  folder.mkdir(parents=True)
  (folder / "tiny_config.py").write_text(
      "from configs import dan\n\n\ndef get_config(arg):\n  config = dan.get_config(arg)\n"
      f"  config.model.name = {helpers.TINY_NET!r}\n  return config\n")
  path = os.pathsep.join(filter(None, (os.path.join(helpers.ROOT, "tests"), helpers.ROOT,
                                       os.environ.get("PYTHONPATH"))))
  return f"{folder / 'tiny_config.py'}:synthetic", {"PYTHONPATH": path}


@pytest.mark.integration
def test_device_session_runs_its_items_within_the_budget_and_goes_on_where_it_stopped(tmp_path):
  """benchmarks/device_session.sh, the next lent GPU's script, on the CPU with TinyNet's config in place
  of the paper ones (the script, not the model, is under test here; DAN's real steps go through
  accelerator.sh in the test above): a candidates item and a profiled item run, their lines, breakdown,
  logs and traces delivered; called again with the same state, a done item is not rerun and an item
  whose estimate does not fit in the budget is skipped, and everything done so far is delivered again."""
  config, path = tiny_method_config(tmp_path / "tiny")
  env = {**os.environ, **path, "PY": sys.executable, "STATE": str(tmp_path / "state"), "DAN": config,
         "SCAN_CCI": config, "BATCH": "2", "STEPS": "1", "WARMUP": "1"}
  script = os.path.join(helpers.ROOT, "benchmarks", "device_session.sh")
  first = subprocess.run(["bash", script, str(tmp_path / "first")], capture_output=True, text=True, timeout=600,
                         env={**env, "ITEMS": "dan_batch_norm scan_cci_256", "BUDGET": "600"})
  assert first.returncode == 0 and "failed" not in first.stdout, first.stdout + first.stderr
  out = tmp_path / "first"
  assert len(os.listdir(out)) <= 8  # the most the device tool brings back
  with tarfile.open(out / "logs.tgz") as archive:
    assert archive.extractfile("done.txt").read().decode().split() == ["dan_batch_norm", "scan_cci_256"]
  candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
  assert [(line["variant"], line["batch_size"]) for line in candidates] == [("batch_norm_shifted_one_pass", 2)]
  results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [(line["model"], line["dtype"], line["batch_size"]) for line in results] == [
      ("tiny_methods.tiny_net", "bfloat16", 2)]
  assert (out / "breakdowns.txt").read_text().startswith("==> scan_cci_256 <==\nms per step, summed over ops")
  with tarfile.open(out / "profiles.tgz") as archive:
    assert any(name.endswith("perfetto_trace.json.gz") for name in archive.getnames())
  with tarfile.open(out / "logs.tgz") as archive:
    assert {"logs/dan_batch_norm.log", "logs/scan_cci_256.log"} <= set(archive.getnames())
  again = subprocess.run(["bash", script, str(tmp_path / "again")], capture_output=True, text=True, timeout=300,
                         env={**env, "ITEMS": "dan_batch_norm dan_combined", "BUDGET": "20"})
  assert again.returncode == 0 and "skipped: dan_combined (190 s estimated" in again.stdout, again.stdout
  assert "dan_batch_norm" not in again.stdout
  assert (tmp_path / "again" / "candidates.jsonl").read_text() == (out / "candidates.jsonl").read_text()
  environment = (out / "env.txt").read_text()
  assert f"jax=={jax.__version__}" in environment and '"device_kind": "cpu"' in environment


def test_device_session_tells_what_the_machine_has_and_goes_on_when_its_wheels_do_not_resolve(tmp_path):
  """The first thing a lease needs to know for the next one: its packages, delivered before the install from WHEELS
  is tried. A machine's package older than a wheel's pin (protobuf below googleapis-common-protos's) made pip's
  resolver refuse the install and ended the call, and every later one, before any item: now the wheels of the
  packages the machine lacks go in without their pins, and importing fer_jax decides."""
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  (wheels / "requirements.txt").write_text("no-such-package-for-fer-jax==1.0\n")
  env = {**os.environ, "PY": sys.executable, "STATE": str(tmp_path / "state"), "WHEELS": str(wheels), "BUDGET": "60",
         "ITEMS": ""}
  result = subprocess.run(["bash", os.path.join(helpers.ROOT, "benchmarks", "device_session.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode == 0 and "no-such-package-for-fer-jax" in result.stdout, result.stdout + result.stderr
  assert "pip could not install the wheels beside this machine's packages: the missing ones alone" in result.stdout
  assert f"jax=={jax.__version__}" in (tmp_path / "out" / "env.txt").read_text()


def test_missing_wheels_are_those_of_packages_not_installed(tmp_path):
  names = ["numpy-2.0.0-cp311-cp311-manylinux_x86_64.whl", "no_such_package_for_fer_jax-1.0-py3-none-any.whl",
           "googleapis_common_protos-1.76.0-py3-none-any.whl"]  # installed, as its name's underscores say
  for name in names:
    (tmp_path / name).write_bytes(b"")
  missing_wheels = helpers.load_script(os.path.join(helpers.ROOT, "benchmarks", "missing_wheels.py"))
  assert missing_wheels.missing_wheels(str(tmp_path)) == [str(tmp_path / names[1])]


def test_candidates_refuse_a_config_the_benchmark_refuses_before_timing_any():
  """run_candidates.py ran its configs unvalidated: a dtype misspelt gave each variant's process a TypeError's
  traceback from deep in the model (and --dtype=auto timed an unresolved dtype); now one error line, exit 2, and no
  other variant started."""
  result = subprocess.run([sys.executable, os.path.join(helpers.ROOT, "benchmarks", "run_candidates.py"),
                           "configs/dan.py:synthetic", "--dtype=bfloat61", "--variants=none,max_pool_xla_gradient"],
                          cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "error: configs/dan.py:synthetic (--dtype=bfloat61, --batch_size=0): The config cannot run:" in result.stderr
  assert "config.model.dtype='bfloat61' is not one of" in result.stderr and "Traceback" not in result.stderr
  assert "round 0: max_pool_xla_gradient" not in result.stderr


def test_candidates_resumed_time_only_what_their_output_lacks(tmp_path):
  """A candidates item cut short or failing on one variant was run again whole by the next call: every variant's
  compile and steps again (370 s of a lease for DAN's)."""
  output = tmp_path / "candidates.jsonl"
  output.write_text(json.dumps({"config": "configs/dan.py:synthetic", "variant": "none", "round": 0}) + "\n")
  result = subprocess.run([sys.executable, os.path.join(helpers.ROOT, "benchmarks", "run_candidates.py"),
                           "configs/dan.py:synthetic", "--variants=none", f"--output={output}", "--resume"],
                          cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "round 0: none, timed before" in result.stderr, result.stderr[-3000:]
  assert len(output.read_text().splitlines()) == 1


# device_session.sh's PY for a pretend H100: the items' programs write at once what they would (candidates,
# official steps, accelerator.sh's benchmark runs with their trace folders, breakdowns), the session's own
# python calls (pip, fer_jax.benchmark.environment) go to the real python; DAN's stem and pool candidates
# wait for $STOP, after writing the command that started them (device_session.sh's `bounded`).
FAKE_PYTHON = r"""#!/usr/bin/env bash
value() {  # FLAG ARGUMENT...: the value of --FLAG=
  local flag=$1 argument
  shift
  for argument in "$@"; do case $argument in "--$flag="*) echo "${argument#*=}" ;; esac; done
}
case "$*" in
  *"jax.default_backend(), jax.devices()[0].device_kind"*) echo "gpu NVIDIA H100 80GB HBM3" ;;
  *run_candidates.py*--variants=none,max_pool*)
    tr '\0' ' ' < /proc/$PPID/cmdline > "$STOP.started_by"
    echo $$ > "$STOP.pid"
    while [ ! -e "$STOP" ]; do sleep 0.2; done
    exit 1 ;;
  *run_candidates.py*) echo '{"input": "synthetic", "variant": "'"$(value variants "$@")"'", "rounds": '"$(value rounds "$@")"'}' \
    >> "$(value output "$@")" ;;
  *official_step.py*) echo '{"code": "official", "variant": "'"$(value variant "$@")"'"}' >> "$(value output "$@")" ;;
  "-m fer_jax.benchmark "*)
    mkdir -p "$(value profile_dir "$@")/plugins" && touch "$(value profile_dir "$@")/plugins/trace.json.gz"
    echo '{"input": "synthetic", "config": "'"$(value config "$@")"'"}' >> "$(value output "$@")" ;;
  *render_table.py*) echo "a table" ;;
  *profile_breakdown.py*) echo "breakdown ${*:2}" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""


def _ended(pid_file, seconds: float = 5) -> None:
  """Waits for the process whose pid `pid_file` holds (if it was written) to end, killing it after `seconds`."""
  if not pid_file.exists():
    return
  pid = int(pid_file.read_text())
  for _ in range(int(seconds / 0.1)):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)
  os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
def test_device_session_delivers_each_item_as_it_ends_in_at_most_eight_files(tmp_path):
  """A call that the device tool kills at its time limit brings back what is under OUT_DIR by then:
  device_session.sh delivers after each item, every kind of output of every item in at most 8 files
  (the most the tool brings back), and on an H100 takes the H100's roofline target. Killed (SIGKILL,
  no exit trap) while its last item runs, it has delivered the four before."""
  python = tmp_path / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  state, out, stop = tmp_path / "state", tmp_path / "out", tmp_path / "stop"
  env = {**os.environ, "PY": str(python), "REAL_PYTHON": sys.executable, "STOP": str(stop), "STATE": str(state),
         "APVIT_CLONE": str(tmp_path), "OFFICIAL_PACKAGES": str(tmp_path), "BUDGET": "600",
         "ITEMS": "dan_batch_norm lhcnet_profile scan_cci_256 apvit_official dan_stem_and_pool"}
  with open(tmp_path / "printed", "w") as printed:
    session = subprocess.Popen(["bash", os.path.join(helpers.ROOT, "benchmarks", "device_session.sh"), str(out)],
                               env=env, stdout=printed, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    for _ in range(1500):  # the last item has started: the call is in it
      if (tmp_path / "stop.started_by").exists() or session.poll() is not None:
        break
      time.sleep(0.2)
    assert session.poll() is None, (tmp_path / "printed").read_text()[-3000:]
    os.killpg(session.pid, signal.SIGKILL)
    session.wait()
  finally:
    stop.write_text("")
    if session.poll() is None:
      os.killpg(session.pid, signal.SIGKILL)
    _ended(tmp_path / "stop.pid")  # the item's program, in the process group `timeout` made: not the session's
  assert sorted(os.listdir(out)) == ["breakdowns.txt", "candidates.jsonl", "env.txt", "logs.tgz", "official.jsonl",
                                     "profiles.tgz", "results.jsonl", "session.log"]
  assert [json.loads(line)["variant"] for line in (out / "candidates.jsonl").read_text().splitlines()] == [
      "batch_norm_shifted_one_pass"]
  assert [json.loads(line)["variant"] for line in (out / "official.jsonl").read_text().splitlines()] == ["fp32", "tuned"]
  assert [json.loads(line)["config"] for line in (out / "results.jsonl").read_text().splitlines()] == [
      "configs/lhcnet.py:fer2013,stage=B", "configs/scan_cci.py:rafdb"]
  breakdowns = (out / "breakdowns.txt").read_text()
  for item in ("lhcnet_profile", "scan_cci_256"):
    trace = next((state / "items" / item / "profile").iterdir())
    assert (f"==> {item} <==\nbreakdown {trace} --top 25\nbreakdown {trace} --roofline "
            f"benchmarks/gpu_targets/h100.txtpb --top 40\n") in breakdowns
  with tarfile.open(out / "logs.tgz") as archive:
    assert archive.extractfile("done.txt").read().decode().split() == [
        "dan_batch_norm", "lhcnet_profile", "scan_cci_256", "apvit_official"]
  with tarfile.open(out / "profiles.tgz") as archive:
    assert "items/scan_cci_256/profile" in archive.getnames()
  assert "gpu: NVIDIA H100 80GB HBM3, rooflines against benchmarks/gpu_targets/h100.txtpb" in (
      out / "session.log").read_text()
  assert "timeout -k 10 " in (tmp_path / "stop.started_by").read_text()  # a child that ignores TERM is killed


def test_the_device_sessions_second_reading_is_a_second_round_of_every_stem_and_pool_candidate(tmp_path):
  """dan_stem_and_pool_2 ran run_candidates --resume with the first reading's round, whose lines candidates.jsonl
  holds: it would have timed nothing. It asks for two rounds (the first's variants timed already are skipped), every
  candidate of dan_stem_and_pool and dan_stem_and_pool_rest in reverse order, then the library."""
  python = tmp_path / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  env = {**os.environ, "PY": str(python), "REAL_PYTHON": sys.executable, "STOP": str(tmp_path / "stop"),
         "STATE": str(tmp_path / "state"), "BUDGET": "600", "ITEMS": "dan_stem_and_pool_2"}
  result = subprocess.run(["bash", os.path.join(helpers.ROOT, "benchmarks", "device_session.sh"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "done: dan_stem_and_pool_2" in result.stdout, result.stdout + result.stderr
  [line] = [json.loads(line) for line in (tmp_path / "out" / "candidates.jsonl").read_text().splitlines()]
  with open(os.path.join(helpers.ROOT, "benchmarks", "device_session.sh")) as f:
    script = f.read().replace("\\\n", "")
  first, rest = (re.search(rf"^{name}=(\S+)$", script, re.MULTILINE).group(1).split(",")
                 for name in ("STEM_AND_POOL", "STEM_AND_POOL_REST"))
  assert line["variant"].split(",") == [*reversed(first + rest), "none"] and len(first + rest) == 7
  assert line["rounds"] == 2


def _source(path: str) -> str:
  with open(path, encoding="utf-8") as source:
    return source.read()


@pytest.mark.integration
def test_every_benchmark_script_starts_and_prints_its_usage(tmp_path):
  """Each script under benchmarks/ imports what it uses from today's fer_jax (and tests/) and prints
  its usage: argparse's, or absl's (its docstring; absl's --help exits 1). common.py is the scripts'
  shared module, no script. The absl scripts run in a process each (absl's flags are global: two
  scripts' --config would clash), the others one after another in one (tests/usages_check.py)."""
  folder = os.path.join(helpers.ROOT, "benchmarks")
  names = sorted(name for name in os.listdir(folder) if name.endswith(".py") and name != "common.py")
  sources = {name: _source(os.path.join(folder, name)) for name in names}
  absl = [name for name in names if re.search(r"^from absl import", sources[name], re.MULTILINE)]
  shared = subprocess.run([sys.executable, os.path.join(helpers.ROOT, "tests", "usages_check.py"), folder,
                           str(tmp_path / "usages.json"), *(name for name in names if name not in absl)],
                          cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
  assert shared.returncode == 0, shared.stderr[-3000:]
  usages = json.loads((tmp_path / "usages.json").read_text())
  for name in absl:
    run = subprocess.run([sys.executable, os.path.join(folder, name), "--help"], cwd=helpers.ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    usages[name] = [run.returncode, run.stdout]
  assert sorted(usages) == names
  for name, (status, output) in usages.items():
    summary = ast.get_docstring(ast.parse(sources[name])).splitlines()[0]
    assert status in (0, 1) and "Traceback" not in output, (name, output[-3000:])
    assert f"usage: {name}" in output or summary in output, (name, output[-3000:])


def test_benchmark_scripts_take_nothing_from_tests_but_the_official_reference_steps():
  """The scripts' shared code is benchmarks/common.py and fer_jax, not tests/helpers.py: only
  official_step.py (tests/reference's official training steps), bf16_loss_curve.py (tests/test_bf16.py's
  paired runs) and onnx_agreement.py (the ONNX tests' random weights) reach into tests/."""
  folder = os.path.join(helpers.ROOT, "benchmarks")
  reaching = set()
  for name in sorted(os.listdir(folder)):
    if name.endswith(".py") and re.search(r"import helpers|from helpers import|\"tests\"",
                                          _source(os.path.join(folder, name))):
      reaching.add(name)
  assert reaching == {"official_step.py", "bf16_loss_curve.py", "onnx_agreement.py"}
