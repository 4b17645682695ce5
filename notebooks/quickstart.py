# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # robust_dd quickstart
#
# Dataset distillation in JAX: distil 5,000 MNIST digits into 10 images per class with KIP, on
# whatever devices this runtime has (a TPU's 8 cores in Colab, a GPU, or the CPU), look at the
# images, evaluate them, run a group-robust and a subset-selection example, and use a pure,
# jittable loss in your own code. `tests/test_notebook.py` executes this notebook top to bottom
# on a CPU; its plain-text twin `quickstart.py` (jupytext percent format) keeps diffs readable.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # Colab: install robust_dd first (elsewhere: pip install -e .).
  # Set ROBUST_DD_SOURCE to where you get the package: a git URL, a wheel or a local checkout.
  source = os.environ.get("ROBUST_DD_SOURCE", "robust_dd")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)

# %%
import tempfile

from IPython.display import Image, display
import jax
import jax.numpy as jnp
import numpy as np
import robust_dd as rdd

mesh = rdd.make_mesh()  # All local devices on one `data` axis.
print(f"{len(jax.devices())} x {jax.devices()[0].device_kind} ({jax.default_backend()}); "
      f"mesh {dict(mesh.shape)}")
workdir = tempfile.mkdtemp(prefix="robust_dd_quickstart_")

# %% [markdown]
# ## Distil with KIP
#
# `DistillConfig.make` takes any flag by name (the same flags as `python -m experiments.distill`);
# `distill_experiment` loads the data, distils on the mesh, evaluates (KRR with the same kernel,
# beside random real subsets of the same size) and writes everything to the workdir.

# %%
config = rdd.DistillConfig.make(method="kip", dataset="mnist5k", ipc=10, steps=300, log_every=100,
                                robust_eval=False)
metrics = rdd.distill_experiment(config, os.path.join(workdir, "kip"))

# %%
display(Image(filename=os.path.join(workdir, "kip", "distilled.png")))  # One row per class.

# %% [markdown]
# ## Evaluate
#
# The metrics hold the distilled set's test accuracy and that of random real subsets of the same
# size; `evaluate_workdir` re-evaluates a saved set, here with the finite ConvNet too.

# %%
print(f"{metrics['evaluator']}: distilled {metrics['distilled_test_acc']:.3f}, random real "
      f"subsets of the same size {metrics['random_subset_test_acc_mean']:.3f}")

# %% [markdown]
# ## Group-robust distillation
#
# The rare-subgroup benchmark (5% of each class's training digits inverted) with the CVaR over
# k-means clusters of each class: the worst clusters' losses weigh more.

# %%
robust = rdd.DistillConfig.make(method="kip", dataset="mnist5k", ipc=1, steps=100,
                                subgroup="invert", robust="cvar", num_clusters=3,
                                log_every=100)
robust_metrics = rdd.distill_experiment(robust, os.path.join(workdir, "kip_cvar"))
r = robust_metrics["distilled_robustness"]
print(f"accuracy {r['accuracy']:.3f}, rare subgroup {r['rare_accuracy']:.3f}, worst test "
      f"cluster {r['worst_cluster_accuracy']:.3f}")

# %% [markdown]
# ## Provable subset selection
#
# Pick 1% of each class by k-means sensitivity sampling, evaluated by KRR.

# %%
selection = rdd.select_experiment(
    rdd.SelectConfig.make(method="sensitivity", dataset="mnist5k", fraction=0.01,
                          evaluators=("krr",)), os.path.join(workdir, "select"))
print(f"KRR test accuracy of the 1% coreset: {selection['krr']['test_acc']:.3f}")

# %% [markdown]
# ## A pure loss in your own code
#
# Losses are functions of arrays with keyword-only hyperparameters: jit them, differentiate them,
# and put them in your own optax loop.

# %%
import optax

ds = rdd.load_dataset("mnist5k")
prep = rdd.fit_preprocessing(ds.x_train)
x = rdd.apply_preprocessing(ds.x_train, prep).reshape(len(ds.x_train), -1)
y = rdd.one_hot_centered(ds.y_train, 10)
kernel_fn = rdd.make_kernel_fn("fc", kernel="ntk", depth=1)
support = jnp.asarray(x[:20])
support_y = y[:20]
opt = optax.adam(0.01)
opt_state = opt.init(support)


@jax.jit
def update(support, opt_state, target_x, target_y):
  loss, grad = jax.value_and_grad(rdd.kip_loss)(support, support_y, target_x, target_y,
                                                kernel_fn=kernel_fn, diag_reg=1e-6)
  updates, opt_state = opt.update(grad, opt_state)
  return optax.apply_updates(support, updates), opt_state, loss


for i in range(50):
  idx = np.random.default_rng(i).choice(len(x), 500, replace=False)
  support, opt_state, loss = update(support, opt_state, x[idx], y[idx])
print(f"KIP loss after 50 steps: {float(loss):.4f}")
