r"""Computes golden Conv NTK/NNGP values on an old, working stack, for tests/test_kernels.py.

neural-tangents 0.6.5 works unmodified on jax 0.4.38. This script runs THERE (not in the project's
environment) and saves inputs and kernels to tests/golden/conv_ntk.npz; the test recomputes them
through robust_dd's adapted NT on current JAX and compares.

  python3 -m venv /tmp/nt_old
  /tmp/nt_old/bin/pip install jax==0.4.38 jaxlib==0.4.38 tf2jax==0.3.6 neural-tangents==0.6.5
  /tmp/nt_old/bin/python scripts/golden_conv_ntk.py --out tests/golden/conv_ntk.npz

Expected: prints jax 0.4.38 and the kernel shapes; the architectures below must stay identical to
robust_dd.kernels.conv_layers (Conv 3x3 SAME -> ReLU [-> AvgPool 2x2] blocks -> Flatten/GAP ->
Dense) with W_std=sqrt(2), b_std=0.1.
"""

import argparse

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
from neural_tangents import stax

W_STD, B_STD = float(np.sqrt(2.0)), 0.1
# name -> (depth, pool, readout)
CASES = {
    "conv2_flatten": (2, False, "flatten"),
    "conv2_pool_flatten": (2, True, "flatten"),
    "conv1_gap": (1, False, "gap"),
}


def conv(depth, pool, readout):
  layers = []
  for _ in range(depth):
    layers += [stax.Conv(64, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD), stax.Relu()]
    if pool:
      layers.append(stax.AvgPool((2, 2), strides=(2, 2), padding="SAME"))
  layers.append(stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool())
  layers.append(stax.Dense(10, W_std=W_STD, b_std=B_STD))
  return stax.serial(*layers)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="tests/golden/conv_ntk.npz")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x1 = rng.normal(size=(5, 8, 8, 2)).astype(np.float32)
  x2 = rng.normal(size=(3, 8, 8, 2)).astype(np.float32)
  out = {"x1": x1, "x2": x2, "jax_version": np.array(jax.__version__),
         "nt_version": np.array(nt.__version__)}
  for name, (depth, pool, readout) in CASES.items():
    _, _, kernel_fn = conv(depth, pool, readout)
    k = kernel_fn(jnp.asarray(x1), jnp.asarray(x2), ("ntk", "nngp"))
    out[f"{name}_ntk"] = np.asarray(k.ntk)
    out[f"{name}_nngp"] = np.asarray(k.nngp)
    print(name, k.ntk.shape, float(k.ntk[0, 0]))
  np.savez(args.out, **out)
  print(f"jax {jax.__version__}, neural-tangents {nt.__version__}: wrote {args.out}")


if __name__ == "__main__":
  main()
