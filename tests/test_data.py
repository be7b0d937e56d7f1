import gzip
import os
import struct

import numpy as np
import pytest

from tfkd import data
from tfkd import errors


def write_idx(directory, x_train, y_train, x_test, y_test):
    """Writes the four MNIST-layout IDX .gz files (uint8) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    for stem, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        array = np.asarray(array, np.uint8)
        header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                          *array.shape)
        with gzip.open(os.path.join(directory, stem + ".gz"), "wb") as f:
            f.write(header + array.tobytes())


def test_fashion_mnist_from_debian_package(fashion):
    assert fashion.x_train.shape == (60000, 28, 28, 1)
    assert fashion.x_test.shape == (10000, 28, 28, 1)
    assert fashion.x_train.dtype == np.float32
    assert 0.0 <= fashion.x_train.min() and fashion.x_train.max() <= 1.0
    assert fashion.x_train.max() == 1.0
    assert fashion.y_train.dtype == np.int64
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert fashion.num_classes == 10 and len(fashion.class_names) == 10


def test_data_dir_round_trip(tmp_path, fashion):
    x = np.round(fashion.x_train[:30, ..., 0] * 255).astype(np.uint8)
    write_idx(tmp_path, x, fashion.y_train[:30], x[:5], fashion.y_train[:5])
    ds = data.load_dataset("fashion_mnist", str(tmp_path))
    np.testing.assert_array_equal(ds.x_train, fashion.x_train[:30])
    np.testing.assert_array_equal(ds.y_train, fashion.y_train[:30])
    assert ds.source == str(tmp_path)


def test_data_dir_missing_files_names_the_dir(tmp_path):
    with pytest.raises(errors.DatasetUnavailableError, match="data_dir=.*train-images-idx3-ubyte"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset='imagenet': expected one of"):
        data.load_dataset("imagenet")


def test_offline_keras_dataset_fails_clearly():
    """MNIST has no local copy here; offline, keras.datasets cannot download it."""
    try:
        data.load_dataset("mnist")
    except errors.DatasetUnavailableError as e:
        assert "dataset='mnist'" in str(e) and "online" in str(e)
    else:
        pytest.skip("this machine is online or has MNIST cached")


def test_few_shot_balanced_and_seeded(fashion):
    idx = data.few_shot_indices(fashion.y_train, 2000, 10, seed=0)
    assert idx.shape == (2000,) and len(np.unique(idx)) == 2000
    assert np.bincount(fashion.y_train[idx], minlength=10).tolist() == [200] * 10
    np.testing.assert_array_equal(idx, data.few_shot_indices(fashion.y_train, 2000, 10, seed=0))
    assert not np.array_equal(idx, data.few_shot_indices(fashion.y_train, 2000, 10, seed=1))


def test_few_shot_ignores_label_values(fashion):
    """Renaming the classes by a bijection picks the very same images: label values are unused."""
    renamed = (fashion.y_train * 7 + 3) % 10
    np.testing.assert_array_equal(data.few_shot_indices(fashion.y_train, 500, 10, seed=4),
                                  data.few_shot_indices(renamed, 500, 10, seed=4))


def test_few_shot_errors():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(ValueError, match="multiple of num_classes"):
        data.few_shot_indices(labels, 5, 2, seed=0)
    with pytest.raises(ValueError, match="too few images"):
        data.few_shot_indices(labels, 6, 2, seed=0)
    with pytest.raises(ValueError, match="num_shots=0"):
        data.few_shot_indices(labels, 0, 2, seed=0)
    assert len(data.few_shot_indices(labels, 5, 2, seed=0, balanced=False)) == 5
