"""neural-tangents 0.6.5 on current JAX, through robust_dd._nt_compat."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import _nt_compat

nt = _nt_compat.import_neural_tangents()
stax = nt.stax
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arccos_fc_kernels(x1, x2, *, depth, w_std, b_std, xp=np):
  """Independent closed form: NNGP and NTK of depth × [Dense → ReLU] → Dense (NTK param.)."""
  d = x1.shape[1]
  k12 = w_std ** 2 * (x1 @ x2.T) / d + b_std ** 2
  k11 = w_std ** 2 * xp.sum(x1 * x1, 1) / d + b_std ** 2
  k22 = w_std ** 2 * xp.sum(x2 * x2, 1) / d + b_std ** 2
  ntk = k12
  for _ in range(depth):
    norms = xp.sqrt(k11[:, None] * k22[None, :])
    cos = xp.clip(k12 / norms, -1.0, 1.0)
    theta = xp.arccos(cos)
    e_relu = norms / (2 * np.pi) * (xp.sqrt(1 - cos ** 2) + (np.pi - theta) * cos)
    e_drelu = (np.pi - theta) / (2 * np.pi)
    k12_next = w_std ** 2 * e_relu + b_std ** 2
    ntk = k12_next + w_std ** 2 * e_drelu * ntk
    k11 = w_std ** 2 * k11 / 2 + b_std ** 2  # E[relu(u)²] = k/2.
    k22 = w_std ** 2 * k22 / 2 + b_std ** 2
    k12 = k12_next
  return k12, ntk


def fc(depth, w_std, b_std):
  layers = [stax.Flatten()]
  for _ in range(depth):
    layers += [stax.Dense(256, W_std=w_std, b_std=b_std), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1, W_std=w_std, b_std=b_std))


@pytest.mark.parametrize("depth,w_std,b_std", [(1, 1.5, 0.1), (3, np.sqrt(2.0), 0.3)])
def test_fc_relu_kernels_match_arccos_recursion(depth, w_std, b_std):
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
  _, _, kernel_fn = fc(depth, w_std, b_std)
  k = kernel_fn(jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32), ("nngp", "ntk"))
  nngp, ntk = arccos_fc_kernels(x1, x2, depth=depth, w_std=w_std, b_std=b_std)
  np.testing.assert_allclose(k.nngp, nngp, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(k.ntk, ntk, rtol=2e-5, atol=1e-6)


def test_fc_kernel_gradient_matches_closed_form_gradient():
  rng = np.random.default_rng(1)
  x1 = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  _, _, kernel_fn = fc(2, 1.4, 0.2)

  def nt_objective(x):
    return jnp.sum(weights * kernel_fn(x, x2, "ntk"))

  def reference_objective(x):
    return jnp.sum(weights * arccos_fc_kernels(x, x2, depth=2, w_std=1.4, b_std=0.2, xp=jnp)[1])

  np.testing.assert_allclose(jax.grad(nt_objective)(x1), jax.grad(reference_objective)(x1),
                             rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(jax.grad(nt_objective)(x1)).max()) > 1e-3


def test_nt_batch_equals_unbatched_kernel():
  rng = np.random.default_rng(2)
  x1 = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(12, 6)), jnp.float32)
  _, _, kernel_fn = fc(2, 1.5, 0.1)
  batched = nt.batch(kernel_fn, batch_size=4)
  np.testing.assert_allclose(batched(x1, x2, "ntk"), kernel_fn(x1, x2, "ntk"), rtol=1e-5,
                             atol=1e-6)


def test_nt_predict_gp_inference_is_regularised_krr():
  rng = np.random.default_rng(3)
  x_train = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
  x_test = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  y_train = jnp.asarray(rng.normal(size=(10, 2)), jnp.float32)
  _, _, kernel_fn = fc(1, 1.5, 0.1)
  k_tt = np.asarray(kernel_fn(x_train, None, "nngp"), np.float64)
  k_st = np.asarray(kernel_fn(x_test, x_train, "nngp"), np.float64)
  predict = nt.predict.gp_inference(k_tt, y_train, diag_reg=1e-2)
  got = predict("nngp", k_st)
  reg = k_tt + 1e-2 * np.trace(k_tt) / 10 * np.eye(10)
  np.testing.assert_allclose(got, k_st @ np.linalg.solve(reg, np.asarray(y_train, np.float64)),
                             rtol=1e-4, atol=1e-5)


def test_max_learning_rate_uses_largest_eigenvalue():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(6, 6))
  ntk = a @ a.T + np.eye(6)
  lr = nt.predict.max_learning_rate(ntk, momentum=0.5)
  np.testing.assert_allclose(lr, 2 * 1.5 * 6 / np.linalg.eigvalsh(ntk)[-1], rtol=1e-6)


NETS = {
    "dense": lambda: stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(2)),
    "conv_pool": lambda: stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(),
                                     stax.AvgPool((2, 2), strides=(2, 2), padding="SAME"),
                                     stax.Flatten(), stax.Dense(3)),
    "conv_gap": lambda: stax.serial(stax.Conv(3, (2, 2)), stax.Erf(), stax.GlobalAvgPool(),
                                    stax.Dense(2)),
}
INPUT_SHAPES = {"dense": (4,), "conv_pool": (6, 6, 2), "conv_gap": (5, 5, 1)}


def explicit_ntk(apply_fn, params, x1, x2):
  """Independent: the (n1, n2, out, out) Jacobian contraction from `jax.jacobian`."""

  def flat_jacobian(x):
    jac = jax.jacobian(apply_fn)(params, x)  # leaves (n, out, *param_shape)
    return jnp.concatenate([j.reshape(j.shape[0], j.shape[1], -1)
                            for j in jax.tree_util.tree_leaves(jac)], axis=-1)

  return jnp.einsum("iap,jbp->ijab", flat_jacobian(x1), flat_jacobian(x2))


# AUTO compiles all three implementations to pick one (the slowest to test): on the dense net only.
# Global pooling with the Jacobian and NTK-vector products: extended tier (conv + pooling covers
# their convolutions; structured derivatives, the port, on every net in the default tier).
@pytest.mark.parametrize("implementation,net", [(0, "dense")] + [
    pytest.param(i, net, marks=[pytest.mark.slow, pytest.mark.extended])
    if net == "conv_gap" and i in (1, 2) else (i, net)
    for i in (1, 2, 3) for net in sorted(NETS)])  # Jacobian, NTK-VP, structured
def test_empirical_ntk_equals_explicit_jacobian_product(implementation, net):
  rng = np.random.default_rng(5)
  shape = INPUT_SHAPES[net]
  x1 = jnp.asarray(rng.normal(size=(3, *shape)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(2, *shape)), jnp.float32)
  init_fn, apply_fn, _ = NETS[net]()
  _, params = init_fn(jax.random.key(0), x1.shape)
  # Jitted: one compilation each instead of one per operation.
  expected = jax.jit(explicit_ntk, static_argnums=0)(apply_fn, params, x1, x2)
  full = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), implementation=implementation))
  np.testing.assert_allclose(full(x1, x2, params), expected, rtol=1e-4, atol=1e-5)
  traced = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                       implementation=implementation))  # Mean over the outputs.
  np.testing.assert_allclose(traced(x1, x2, params),
                             jnp.einsum("ijaa->ij", expected) / expected.shape[-1],
                             rtol=1e-4, atol=1e-5)


def test_structured_derivatives_under_jit_and_of_a_flax_network():
  """Implementation 3 inside `jax.jit` (NT linearises under `disable_jit`) and of a network NT
  did not build (a Flax module's apply), against the explicit contraction."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(2)(x.reshape(x.shape[0], -1))

  rng = np.random.default_rng(6)
  x1 = jnp.asarray(rng.normal(size=(2, 5, 5, 1)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(3, 5, 5, 1)), jnp.float32)
  params = Net().init(jax.random.key(1), x1)
  apply_fn = Net().apply
  ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), implementation=3))
  np.testing.assert_allclose(ntk_fn(x1, x2, params), explicit_ntk(apply_fn, params, x1, x2),
                             rtol=1e-4, atol=1e-5)


def test_predict_with_a_vmapped_kernel_has_no_tracer_leak():
  """NT's predict caches an eigendecomposition inside `jax.core.eval_context()`; with a kernel
  that is a vmap tracer this raised UnexpectedTracerError on current JAX. Vmapped over two
  kernels, the predictions equal each kernel's own."""
  rng = np.random.default_rng(7)
  a = rng.normal(size=(2, 5, 5))
  k_dd = jnp.asarray(a @ np.swapaxes(a, 1, 2) + np.eye(5), jnp.float32)
  k_td = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(5, 1)), jnp.float32)

  def predict(k_dd, k_td):
    predict_fn = nt.predict.gradient_descent_mse(k_dd, y, diag_reg=1e-3)
    return predict_fn(0.5, jnp.zeros((5, 1)), jnp.zeros((3, 1)), k_td)

  batched = jax.vmap(predict)(k_dd, k_td)
  for i in range(2):
    one = predict(k_dd[i], k_td[i])
    for got, want in zip(batched, one):
      np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
  # Closed form of the train predictions from f0 = 0: (I - expm(-t K / y.size)) y (NT's MSE is
  # normalised by y's size; learning rate 1; diag_reg relative to the mean diagonal).
  k = np.asarray(k_dd[0], np.float64)
  k = k + 1e-3 * np.trace(k) / 5 * np.eye(5)
  w, v = np.linalg.eigh(k)
  expected = (v @ np.diag(1 - np.exp(-0.5 * w / y.size)) @ v.T) @ np.asarray(y, np.float64)
  np.testing.assert_allclose(batched[0][0], expected, rtol=1e-3, atol=1e-4)


def test_auto_cost_model_reads_one_cost_analysis():
  from neural_tangents._src import empirical
  get_flops = empirical._get_flops  # pylint: disable=protected-access
  flops = get_flops(lambda x: x @ x, True, jnp.ones((8, 8)))
  assert flops == pytest.approx(2 * 8 ** 3, rel=0.5)


def test_port_is_skipped_on_the_old_linearize_signature(monkeypatch):
  """On JAX with NT's `ad.linearize(traceable, *primals, **kwargs)` nothing is replaced."""
  from jax.interpreters import ad
  monkeypatch.setattr(ad, "linearize", lambda traceable, *primals, **kwargs: None)
  assert _nt_compat._linearize_has_old_signature()  # pylint: disable=protected-access
  monkeypatch.undo()
  assert not _nt_compat._linearize_has_old_signature()  # pylint: disable=protected-access


def test_apply_is_idempotent_and_keeps_existing_names():
  import jax.core
  shaped_array = jax.core.ShapedArray
  first = _nt_compat.apply()
  assert _nt_compat.apply() == first
  assert jax.core.ShapedArray is shaped_array
  import jax.extend.core
  assert jax.core.Jaxpr is jax.extend.core.Jaxpr


def test_nt_imports_and_works_without_tensorflow():
  script = textwrap.dedent("""
      import sys
      class Block:
          def find_spec(self, name, path=None, target=None):
              if name.split('.')[0] in ('tensorflow', 'tf2jax'):
                  raise ImportError('blocked: ' + name)
      sys.meta_path.insert(0, Block())
      import jax.numpy as jnp
      import robust_dd
      assert 'neural_tangents' not in sys.modules  # `import robust_dd` is lazy.
      import robust_dd.kernels  # Applies the compatibility layer, then imports NT.
      import neural_tangents as nt
      assert 'tensorflow' not in sys.modules
      k = robust_dd.make_kernel_fn('fc', kernel='ntk')(jnp.ones((2, 3)), jnp.ones((1, 3)))
      assert k.shape == (2, 1), k.shape
      try:
          nt.experimental.empirical_ntk_fn_tf
      except ImportError as e:
          assert 'TensorFlow' in str(e), e
          print('OK')
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK"), result.stdout
