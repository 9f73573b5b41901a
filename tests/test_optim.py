import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from fer_jax import config_lib
from fer_jax import optim
from fer_jax.errors import ConfigError


def _opt(**overrides):
  config = config_lib.base_config().optimizer
  config.update(overrides)
  return config


def test_schedules_change_once_per_epoch():
  step = optim.lr_schedule(_opt(lr=0.1, schedule="step", step_epochs=10, gamma=0.1), steps_per_epoch=5, num_epochs=40)
  assert np.isclose(step(0), 0.1) and np.isclose(step(49), 0.1) and np.isclose(step(50), 0.01)
  exp = optim.lr_schedule(_opt(lr=1e-4, schedule="exponential", gamma=0.6), 3, 10)
  assert np.isclose(exp(2), 1e-4) and np.isclose(exp(3), 0.6e-4) and np.isclose(exp(7), 0.36e-4)
  cos = optim.lr_schedule(_opt(lr=1.0, schedule="cosine"), 2, 4)
  np.testing.assert_allclose([float(cos(s)) for s in (0, 1, 2, 4, 6)], [1, 1, 0.5 * (1 + np.cos(np.pi / 4)), 0.5,
                                                                      0.5 * (1 + np.cos(3 * np.pi / 4))], rtol=1e-6)


def test_sgd_matches_pytorch_update_with_coupled_weight_decay():
  # PyTorch SGD: buf = m·buf + (g + wd·p); p ← p − lr·buf.
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  tx = optim.make_optimizer(_opt(lr=0.1, momentum=0.9, weight_decay=0.01), 1, 1, params).tx
  state = tx.init(params)
  p, buf = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    buf = 0.9 * buf + (np.array([0.5, 0.25]) + 0.01 * p)
    p = p - 0.1 * buf
  np.testing.assert_allclose(params["w"], p, rtol=1e-6)


def test_groups_frozen_and_decay_exemptions():
  params = {"trunk": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
  grads = {"trunk": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
  config = _opt(lr=1.0, momentum=0.0, weight_decay=0.5, lr_groups=(("^trunk/", 0.01),), weight_decay_exclude="bias$")
  updates, _ = optim.make_optimizer(config, 1, 1, params).tx.update(grads, optim.make_optimizer(
      config, 1, 1, params).tx.init(params), params)
  np.testing.assert_allclose(updates["trunk"]["kernel"], -0.01 * 1.5)
  np.testing.assert_allclose(updates["head"]["kernel"], -1.5)
  np.testing.assert_allclose(updates["head"]["bias"], -1.0)
  frozen = _opt(lr=1.0, momentum=0.0, trainable="^head/")
  tx = optim.make_optimizer(frozen, 1, 1, params).tx
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["trunk"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["head"]["bias"], -1.0)


GROUPED_PARAMS = {"trunk": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}


@pytest.mark.parametrize("key, value, named", [
    ("trainable", "^nothing_matches", "config.optimizer.trainable='^nothing_matches'"),
    ("lr_groups", (("^head/", 1.0), ("^body/", 0.1)), "config.optimizer.lr_groups[1]='^body/'")])
def test_a_trainable_or_lr_groups_regex_matching_no_parameter_is_refused(key, value, named):
  """Such a trainable regex froze every parameter, such a group set no rate, without a word."""
  with pytest.raises(ConfigError) as error:
    optim.check_patterns(_opt(**{key: value}), GROUPED_PARAMS)
  assert str(error.value) == (f"{named} matches none of the model's 3 parameters (paths such as head/bias, "
                              "head/kernel, trunk/kernel): correct the regex.")


def test_the_parameters_each_regex_matches_are_logged(caplog):
  config = _opt(trainable="kernel$", lr_groups=(("^trunk/", 0.1),), weight_decay_exclude="^nothing")
  with caplog.at_level("INFO"):
    optim.check_patterns(config, GROUPED_PARAMS)
  assert "config.optimizer.trainable='kernel$' matches 2 of the 3 parameters" in caplog.text
  # The logged lr is the base rate: a group's own rate was shown nowhere (SCAN-CCI's trunk trains at 1e-4).
  assert ("config.optimizer.lr_groups[0]='^trunk/' matches 1 of the 3 parameters (their learning rate, where this is "
          "the first group a parameter matches: the logged lr × 0.1)") in caplog.text
  assert "config.optimizer.weight_decay_exclude='^nothing' matches 0 of the 3 parameters" in caplog.text  # not refused


def test_gradient_clipping_uses_global_norm():
  params = {"a": jnp.zeros(2)}
  tx = optim.make_optimizer(_opt(lr=1.0, momentum=0.0, grad_clip_norm=1.0), 1, 1, params).tx
  updates, _ = tx.update({"a": jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-0.6, -0.8], rtol=1e-6)


def test_the_logged_gradient_norm_leaves_frozen_parameters_out():
  """Torch gives a frozen parameter no gradient; here the logged norm read every gradient, so XLA computed the frozen
  trunk's (LHC-Net stage C: 406 GFLOP a step of 16 instead of 263)."""
  params = {"trunk": {"kernel": jnp.ones((3, 3))}, "head": {"bias": jnp.zeros(2)}}
  optimizer = optim.make_optimizer(_opt(lr=1.0, trainable="^head/"), 1, 1, params)
  grads = {"trunk": {"kernel": jnp.full((3, 3), 10.0)}, "head": {"bias": jnp.array([3.0, 4.0])}}
  assert float(optim.trained_norm(grads, optimizer.trained)) == 5.0
  assert float(optim.trained_norm(grads)) == pytest.approx(np.sqrt(900 + 25))


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_state_structure_does_not_depend_on_gradient_clipping(name):
  """A checkpoint saved without clipping resumes with it (the non-finite-loss message's advice)."""
  params = {"w": jnp.ones(3)}
  states = [optim.make_optimizer(_opt(name=name, grad_clip_norm=clip), 1, 1, params).tx.init(params)
            for clip in (0.0, 1.0)]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  unclipped, _ = optim.make_optimizer(_opt(name=name, lr=1.0), 1, 1, params).tx.update(
      {"w": jnp.array([30.0, 40.0, 0.0])}, states[0], params)
  assert float(optax.tree.norm(unclipped)) > 1.0  # max_norm 0 means no clipping


def test_gradient_clipping_scales_as_torch_clip_grad_norm():
  """torch adds 1e-6 to the norm: at a norm of 1e-3 that is a 1e-3 relative difference."""
  rng = np.random.default_rng(0)
  grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
  for norm, max_norm in ((1e-3, 1e-4), (20.0, 10.0), (5.0, 10.0)):
    scaled = {k: v * norm / np.sqrt(sum(np.sum(g**2) for g in grads.values())) for k, v in grads.items()}
    tensors = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in scaled.values()]
    for tensor, value in zip(tensors, scaled.values()):
      tensor.grad = torch.from_numpy(value.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    with jax.enable_x64(True):
      clipped, _ = optim.clip_grad_norm(max_norm).update(jax.tree.map(jnp.asarray, scaled), optax.EmptyState())
    for tensor, value in zip(tensors, clipped.values()):
      np.testing.assert_allclose(np.asarray(value), tensor.grad.numpy(), rtol=1e-12)


def test_bad_names_fail_early():
  with pytest.raises(ValueError, match=r"^Unknown config\.optimizer\.schedule 'linear'; valid: constant, step, "
                     r"exponential, cosine\.$"):
    optim.lr_schedule(_opt(schedule="linear"), 1, 1)
  with pytest.raises(ValueError, match=r"^Unknown config\.optimizer\.name 'lamb'; valid: sgd, adam, adamw, "
                     r"keras_adam\.$"):
    optim.make_optimizer(_opt(name="lamb"), 1, 1, {"a": jnp.zeros(1)}).tx


def test_keras_adam_adds_epsilon_to_the_uncorrected_root_as_keras_does():
  config = _opt(name="keras_adam", lr=0.01, eps=1e-3)
  params = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
  tx = optim.make_optimizer(config, 1, 1, params).tx
  state, w = tx.init(params), params["w"].astype(np.float64)
  m = v = np.zeros(3)
  for t, grad in enumerate(([0.1, -0.3, 2.0], [0.2, 0.1, -1.0], [-0.05, 0.4, 0.3]), start=1):
    grad = np.asarray(grad)
    updates, state = tx.update({"w": grad.astype(np.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    # tf.keras.optimizers.Adam (TF 2.x): lr_t = lr·√(1−b2ᵗ)/(1−b1ᵗ); w −= lr_t·m/(√v + ε)
    m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
    w = w - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(params["w"], w, rtol=1e-5)
  # Optax's placement (ε on the corrected root) gives another first step.
  keras_step, _ = optim.make_optimizer(config, 1, 1, params).tx.update({"w": np.float32([0.1] * 3)}, tx.init(params))
  adam = optim.make_optimizer(_opt(name="adam", lr=0.01, eps=1e-3), 1, 1, params).tx
  optax_step, _ = adam.update({"w": np.float32([0.1] * 3)}, adam.init(params))
  assert abs(float(keras_step["w"][0]) / float(optax_step["w"][0]) - 1) > 0.1


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("grad_dtype", [jnp.float32, jnp.bfloat16])
def test_moments_stay_float32_beside_float32_params(name, grad_dtype):
  """bf16 mode keeps float32 params (their gradients are float32 too); the moments must stay float32
  even were a gradient to arrive in bfloat16."""
  params = {"kernel": jnp.ones((3, 2), jnp.float32), "bias": jnp.zeros(2, jnp.float32)}
  config = _opt(name=name, lr=0.1, momentum=0.9, weight_decay=1e-4, grad_clip_norm=1.0)
  tx = optim.make_optimizer(config, 1, 1, params).tx
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, grad_dtype), params)
  state = tx.init(params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  moments = [leaf for leaf in jax.tree.leaves(state) if leaf.shape in ((3, 2), (2,))]
  assert len(moments) == {"sgd": 2, "adam": 4, "adamw": 4, "keras_adam": 4}[name]  # momentum; first and second
  float32 = {jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in moments} == {params["kernel"].dtype, params["bias"].dtype} == float32


def test_path_of_names_sequence_and_field_keys_plainly():
  """Paths into an optimiser state (tuples, NamedTuple fields) read as the parameters' do: "1/mu/w",
  not "[1]/.mu/w"."""
  state = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3)).init({"w": jnp.zeros(2)})
  paths = [optim.path_of(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert "1/0/mu/w" in paths and all("[" not in path and "." not in path for path in paths)
