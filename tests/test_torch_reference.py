"""scripts/_torch_dc.py, the PyTorch DC reference the matching benchmark times, computes what
robust_dd computes: same network, same matching loss, same gradient in the synthetic images.
Skipped where torch is not installed (it is not a robust_dd dependency)."""

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import _torch_dc  # pylint: disable=g-import-not-at-top,wrong-import-position

from robust_dd import matching  # pylint: disable=g-import-not-at-top,wrong-import-position
from robust_dd import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_torch_reference_loss_and_image_gradient_equal_robust_dds():
  model = models.make_network("convnet", num_classes=3, input_shape=(28, 28, 1), width=8)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  rng = np.random.default_rng(0)
  syn = rng.normal(size=(3, 2, 28, 28, 1)).astype(np.float32)
  real = rng.normal(size=(3, 5, 28, 28, 1)).astype(np.float32)
  apply_fn = models.logits_fn(model)
  loss, grad = jax.jit(jax.value_and_grad(
      lambda s: matching.gradient_match_loss(params, s, real, apply_fn=apply_fn)))(syn)

  net = _torch_dc.load_flax_convnet(_torch_dc.ConvNet(3, width=8), params)
  nchw = lambda a: torch.from_numpy(a.transpose(0, 1, 4, 2, 3).copy())
  syn_t = nchw(syn).requires_grad_(True)
  expected = _torch_dc.matching_loss(net, syn_t, nchw(real))
  expected.backward()
  np.testing.assert_allclose(float(loss), float(expected.detach()), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(grad), syn_t.grad.numpy().transpose(0, 1, 3, 4, 2),
                             rtol=1e-3, atol=1e-6)
  # Same logits, so the two networks are the same function.
  x = real[0]
  np.testing.assert_allclose(np.asarray(apply_fn(params, x)),
                             net(nchw(real)[0]).detach().numpy(), rtol=1e-4, atol=1e-5)
